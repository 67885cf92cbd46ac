"""Resource limits of the TURN server, on by default.

Without quotas a single credential (and REST API credentials are handed to every web client)
can exhaust the relay ports, the memory or the uplink of the server. The defaults suit a small
deployment and a laptop; operators raise them in the ``[turn.quotas]`` configuration section.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TurnQuotas(BaseModel):
    """Limits enforced by the TURN server engine (0 means unlimited where noted)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Concurrent allocations one user may hold, over all 5-tuples (486 Allocation Quota
    #: Reached beyond). For REST API credentials the user is the part after the timestamp, so a
    #: user cannot multiply the quota with fresh credentials.
    allocations_per_user: int = Field(default=100, ge=1)
    #: Concurrent allocations of the whole server (508 Insufficient Capacity beyond).
    total_allocations: int = Field(default=10000, ge=1)
    #: Peer IP addresses with a permission on one allocation (508 beyond).
    permissions_per_allocation: int = Field(default=64, ge=1)
    #: Channels bound on one allocation (508 beyond).
    channels_per_allocation: int = Field(default=64, ge=1)
    #: Relayed bytes per second per allocation, both directions together (0: unlimited).
    #: Excess packets are dropped and counted. The default (about 8 Mbit/s) carries HD video.
    bandwidth_per_allocation: int = Field(default=1_000_000, ge=0)
    #: Seconds of traffic at the full rate a burst may carry.
    bandwidth_burst_seconds: float = Field(default=1.0, gt=0)
