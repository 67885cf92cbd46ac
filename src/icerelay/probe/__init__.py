"""``icerelay stun-probe``: the mapped address and RTT, and RFC 5780 NAT behaviour discovery.

- :mod:`.behavior` — the probe as a sans-I/O state machine over STUN client transactions.
- :mod:`.results` — what it found, as text or JSON.
- :mod:`icerelay.aio.probe` runs it on asyncio sockets (UDP, or one Binding over TCP).
"""

from icerelay.errors import ProbeError
from icerelay.probe.behavior import Probe
from icerelay.probe.results import Behavior, BindingResult, ProbeResult

__all__ = ["Behavior", "BindingResult", "Probe", "ProbeError", "ProbeResult"]
