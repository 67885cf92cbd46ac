"""Token buckets: unauthenticated requests per source, bandwidth per allocation.

A STUN/TURN server answers unauthenticated requests (Binding, the first Allocate that draws a
401) with responses larger than the requests. Over UDP the source address can be spoofed, so an
unlimited server is a reflection amplifier. Answers to unauthenticated requests are therefore
limited per source IP address; requests over the limit are dropped silently (and counted).

Time is passed in, like everywhere in the engines.
"""

from __future__ import annotations


class TokenBucket:
    """A classic token bucket: *rate* tokens per second, at most *burst* saved up."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = now

    def take(self, amount: float, now: float) -> bool:
        """Spend *amount* tokens if the bucket has them; False (and nothing spent) otherwise."""
        tokens = self.tokens + (now - self.last) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.last = now
        if tokens < amount:
            self.tokens = tokens
            return False
        self.tokens = tokens - amount
        return True


class SourceRateLimiter:
    """One token bucket per source key (an IP address), with a bounded table.

    The table is bounded because spoofed sources are free to invent: when it is full, buckets
    that have refilled completely (they carry no information) are forgotten first, and if that
    is not enough the table is cleared, which errs on the side of answering.
    """

    def __init__(self, rate: float, burst: float, max_sources: int = 65536) -> None:
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: dict[str, TokenBucket] = {}

    def allow(self, source: str, now: float) -> bool:
        """Whether one more unauthenticated answer to *source* is allowed now."""
        if self.rate <= 0:
            return True
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                self._evict(now)
            bucket = self._buckets[source] = TokenBucket(self.rate, self.burst, now)
        return bucket.take(1.0, now)

    def _evict(self, now: float) -> None:
        full = [
            key
            for key, bucket in self._buckets.items()
            if bucket.tokens + (now - bucket.last) * bucket.rate >= bucket.burst
        ]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self.max_sources:
            self._buckets.clear()
