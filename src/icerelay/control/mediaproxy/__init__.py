"""The protocol of OpenSIPS's (and Kamailio's) ``mediaproxy`` module, sans-I/O.

- :mod:`.commands`: ``update`` and ``remove`` parsed from their header lines; the reply lines.
- :mod:`.framing`: commands cut out of the UNIX socket's byte stream (each ends with a blank line).
- :mod:`.handler`: runs the commands on the relay's
  :class:`~icerelay.relay.sessions.SessionEngine` through its structured core (no SDP involved).
"""

from icerelay.control.mediaproxy.commands import (
    ERROR_REPLY,
    REMOVED_REPLY,
    MediaproxyCommand,
    MediaproxyRemove,
    MediaproxyStream,
    MediaproxyUpdate,
    format_update_reply,
    parse_command,
)
from icerelay.control.mediaproxy.framing import MAX_COMMAND, MediaproxyFramer
from icerelay.control.mediaproxy.handler import (
    DEFAULT_MAX_STREAMS,
    MediaproxyHandler,
    stream_offers,
)

__all__ = [
    "DEFAULT_MAX_STREAMS",
    "ERROR_REPLY",
    "MAX_COMMAND",
    "REMOVED_REPLY",
    "MediaproxyCommand",
    "MediaproxyFramer",
    "MediaproxyHandler",
    "MediaproxyRemove",
    "MediaproxyStream",
    "MediaproxyUpdate",
    "format_update_reply",
    "parse_command",
    "stream_offers",
]
