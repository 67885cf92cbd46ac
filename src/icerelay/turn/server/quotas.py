"""Resource limits of the TURN server, on by default.

Without quotas a single credential (and REST API credentials are handed to every web client)
can exhaust the relay ports, the memory or the uplink of the server. The defaults suit a small
deployment and a laptop; operators raise them in the ``[turn.quotas]`` configuration section
(:class:`icerelay.daemon.turn_config.TurnQuotasConfig`, which validates them and makes one of
these).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TurnQuotas:
    """Limits enforced by the TURN server engine (0 means unlimited where noted)."""

    #: Concurrent allocations one user may hold, over all 5-tuples (486 Allocation Quota
    #: Reached beyond). For REST API credentials the user is the part after the timestamp, so a
    #: user cannot multiply the quota with fresh credentials.
    allocations_per_user: int = 100
    #: Concurrent allocations from one client IP address, whatever the users (486 Allocation
    #: Quota Reached beyond; 0: unlimited). Bounds what one host can take with many
    #: credentials; the default leaves room for an office NAT full of WebRTC clients.
    allocations_per_source: int = 300
    #: Concurrent allocations of the whole server (508 Insufficient Capacity beyond).
    total_allocations: int = 10000
    #: Peer IP addresses with a permission on one allocation (508 beyond).
    permissions_per_allocation: int = 64
    #: Channels bound on one allocation (508 beyond).
    channels_per_allocation: int = 64
    #: Relayed bytes per second per allocation, both directions together (0: unlimited).
    #: Excess packets are dropped and counted. The default (about 8 Mbit/s) carries HD video.
    bandwidth_per_allocation: int = 1_000_000
    #: Seconds of traffic at the full rate a burst may carry.
    bandwidth_burst_seconds: float = 1.0
