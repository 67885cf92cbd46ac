"""The TURN server (RFC 8656) as a sans-I/O engine; its asyncio shell is
:mod:`icerelay.daemon.turn_service` and its ``[turn]`` configuration section
:mod:`icerelay.daemon.turn_config`.

- :mod:`.engine`: :class:`TurnServerEngine`, the facade (no sockets, no clock, no randomness of
  its own) over :mod:`.state` (allocations, bookkeeping), :mod:`.expiry` (the expiry queue),
  :mod:`.requests` (STUN requests), :mod:`.relaying` (the data path), :mod:`.refusals` (error
  answers as exceptions), :mod:`.events` (what the shell gets back);
- :mod:`.settings`: :class:`TurnServerSettings`, the engine's plain settings;
- :mod:`.auth`: long-term credentials, TURN REST API secrets, stateless nonces;
- :mod:`.policy`: which peers may be relayed to (deny by default in special-purpose ranges);
- :mod:`.quotas`, :mod:`.ratelimit`: resource limits and the anti-amplification limiter;
- :mod:`.ports`: relay port selection, EVEN-PORT reservations, ephemeral-range check;
- :mod:`.framing`: cutting TCP/TLS streams into STUN and ChannelData frames.
"""

from icerelay.turn.server.engine import (
    AllocationCreated,
    AllocationDeleted,
    Drained,
    RelayBinder,
    TurnServerEngine,
)
from icerelay.turn.server.quotas import TurnQuotas
from icerelay.turn.server.settings import TurnServerSettings

__all__ = [
    "AllocationCreated",
    "AllocationDeleted",
    "Drained",
    "RelayBinder",
    "TurnQuotas",
    "TurnServerEngine",
    "TurnServerSettings",
]
