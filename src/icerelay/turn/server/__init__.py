"""The TURN server (RFC 8656): a sans-I/O engine and its asyncio service.

- :mod:`.engine`: :class:`TurnServerEngine`, the protocol state machine (no sockets, no clock);
- :mod:`.auth`: long-term credentials, TURN REST API secrets, stateless nonces;
- :mod:`.policy`: which peers may be relayed to (deny by default in special-purpose ranges);
- :mod:`.quotas`, :mod:`.ratelimit`: resource limits and the anti-amplification limiter;
- :mod:`.ports`: relay port selection, EVEN-PORT reservations, ephemeral-range check;
- :mod:`.framing`: cutting TCP/TLS streams into STUN and ChannelData frames;
- :mod:`.service`: :class:`TurnService`, the asyncio shell (UDP/TCP/TLS listeners, one UDP
  socket per relayed address), used by ``icerelay serve``;
- :mod:`.config`: :class:`TurnServerConfig`, the ``[turn]`` configuration section.
"""

from icerelay.turn.server.config import TurnServerConfig
from icerelay.turn.server.engine import (
    AllocationCreated,
    AllocationDeleted,
    Drained,
    RelayBinder,
    TurnServerEngine,
)
from icerelay.turn.server.quotas import TurnQuotas

__all__ = [
    "AllocationCreated",
    "AllocationDeleted",
    "Drained",
    "RelayBinder",
    "TurnQuotas",
    "TurnServerConfig",
    "TurnServerEngine",
]
