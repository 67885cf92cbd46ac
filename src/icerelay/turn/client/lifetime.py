"""When to refresh the allocation, and when it ends without one (RFC 8656 §7.2, §7.3).

The server grants a LIFETIME in each Allocate and Refresh success; the allocation ends that
many seconds later unless refreshed. We refresh a minute before the end (or at half the
lifetime, when that is shorter), and after a Refresh that timed out or failed oddly try again
every :data:`REFRESH_RETRY` seconds until the end.
"""

from __future__ import annotations

#: Refresh the allocation this long before it ends (or at half its life when that is shorter).
REFRESH_MARGIN = 60.0
#: After a Refresh that timed out or failed oddly, try again this much later (until expiry).
REFRESH_RETRY = 10.0


class Lifetime:
    """The granted lifetime, the end of the allocation and the next refresh."""

    __slots__ = ("expires_at", "in_flight", "lifetime", "refresh_at")

    def __init__(self) -> None:
        #: The last lifetime the server granted, in seconds (0: none yet).
        self.lifetime = 0
        #: Absolute time (the driver's clock) when the server will drop the allocation.
        self.expires_at: float | None = None
        self.refresh_at: float | None = None
        #: A Refresh is on the wire: don't send another.
        self.in_flight = False

    def granted(self, lifetime: int, now: float) -> None:
        """The server granted *lifetime* seconds at *now*."""
        self.lifetime = lifetime
        self.expires_at = now + lifetime
        self.refresh_at = now + max(lifetime - min(REFRESH_MARGIN, lifetime / 2), 0.0)

    def retry_later(self, now: float) -> None:
        """The Refresh failed but the allocation may live on: try again soon."""
        self.in_flight = False
        if self.expires_at is not None:
            self.refresh_at = min(now + REFRESH_RETRY, self.expires_at)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def refresh_due(self, now: float) -> bool:
        return self.refresh_at is not None and now >= self.refresh_at and not self.in_flight

    def deadlines(self) -> list[float]:
        deadlines: list[float] = []
        if self.refresh_at is not None and not self.in_flight:
            deadlines.append(self.refresh_at)
        if self.expires_at is not None:
            deadlines.append(self.expires_at)
        return deadlines
