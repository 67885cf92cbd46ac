"""rtpengine's ng control protocol, sans-I/O: how Kamailio and OpenSIPS drive the media relay.

- :mod:`.commands`: the typed commands (offer, answer, delete, query, list, ping, statistics),
  their media options and flags, parsed from the request dictionary; the reply value types.
- :mod:`.protocol`: cookies, bencode/JSON messages, the reply cache for retransmitted requests,
  the counters, and :func:`error_reply`, where every failure becomes ``result: error``.
- :mod:`.framing`: ng over a byte stream (TCP), both framings in the field.
- :mod:`.handler`: runs the commands on the relay's :class:`~icerelay.relay.sessions.SessionEngine`.
"""

from icerelay.control.ng.commands import (
    Answer,
    Command,
    Delete,
    List,
    MediaOptions,
    NgFailure,
    Offer,
    Ping,
    Query,
    Reply,
    ReplyValue,
    Statistics,
    parse_command,
)
from icerelay.control.ng.framing import NgStreamFramer
from icerelay.control.ng.handler import (
    DEFAULT_MAX_STREAMS,
    NgHandler,
    media_count,
    relay_options,
    reply_too_big,
)
from icerelay.control.ng.protocol import (
    KNOWN_COMMANDS,
    NG_PORT,
    Encoding,
    NgDropped,
    NgImmediateReply,
    NgProtocol,
    NgRequest,
    command_counts,
    error_reply,
)

__all__ = [
    "DEFAULT_MAX_STREAMS",
    "KNOWN_COMMANDS",
    "NG_PORT",
    "Answer",
    "Command",
    "Delete",
    "Encoding",
    "List",
    "MediaOptions",
    "NgDropped",
    "NgFailure",
    "NgHandler",
    "NgImmediateReply",
    "NgProtocol",
    "NgRequest",
    "NgStreamFramer",
    "Offer",
    "Ping",
    "Query",
    "Reply",
    "ReplyValue",
    "Statistics",
    "command_counts",
    "error_reply",
    "media_count",
    "parse_command",
    "relay_options",
    "reply_too_big",
]
