"""The relay's port pool: an even RTP port and the odd RTCP port after it, per media stream.

RFC 3550 §11 asks for RTP on an even port and RTCP on the next (odd) one, and peers that ignore
``a=rtcp`` (RFC 3605) assume exactly that, so the pool only ever hands out such pairs.

Ports are handed out in random order. A port that was just released may still receive stray
packets from the call that used it; picking the next port at random makes it unlikely that a new
call latches onto them, and makes relay ports hard to guess for someone spraying packets.
Allocation and release are O(1): the free pairs are kept in a list and a taken one is swapped with
the last entry.

Quarantine: a pair released with ``until`` (the relay stepped aside from an ICE call whose parties
still know the relay's candidate, and may send a late check or packet to it) is held out of the
pool until that time, so such a packet reaches no other call. :meth:`PortPool.expire` gives due
pairs back; the pool has no clock of its own.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import TYPE_CHECKING

from icerelay.errors import RelayError

if TYPE_CHECKING:
    from random import Random

__all__ = ["PortPair", "PortPool", "PortPoolExhausted"]


class PortPoolExhausted(RelayError):
    """Every port pair of the pool is in use."""


@dataclass(frozen=True, slots=True, order=True)
class PortPair:
    """An allocated pair: ``rtp`` is even, ``rtcp`` is ``rtp + 1``."""

    rtp: int

    @property
    def rtcp(self) -> int:
        """The RTCP port, always the one after the RTP port."""
        return self.rtp + 1


class PortPool:
    """Even/odd port pairs from ``first..last`` (inclusive), allocated in random order.

    :param first: lowest port; an odd value is rounded up so that pairs start even.
    :param last: highest port; a pair needs both its ports within the range.
    :param rng: source of the random order: :class:`random.SystemRandom` in production (relay
        ports hard to guess), a seeded :class:`random.Random` for reproducible tests.
    """

    def __init__(self, first: int, last: int, *, rng: Random) -> None:
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"port range {first}-{last} is not within 1-65535 in order")
        start = first + (first % 2)
        self.first = first
        self.last = last
        self._rng = rng
        # _free holds the RTP port of every free pair; _index maps a free pair to its position so
        # that a specific pair can be taken out in O(1) too.
        self._free: list[int] = list(range(start, last, 2))
        self._index: dict[int, int] = {port: i for i, port in enumerate(self._free)}
        self._used: set[int] = set()
        # Quarantined pairs: RTP port -> until, and a heap of (until, port) to expire in order.
        self._quarantine: dict[int, float] = {}
        self._quarantine_heap: list[tuple[float, int]] = []
        if not self._free:
            raise ValueError(f"port range {first}-{last} holds no even/odd pair")
        self.capacity = len(self._free)

    def allocate(self) -> PortPair:
        """Take a random free pair; raise :class:`PortPoolExhausted` when none is left."""
        if not self._free:
            raise PortPoolExhausted(
                f"all {self.capacity} port pairs of {self.first}-{self.last} are in use"
            )
        port = self._free[self._rng.randrange(len(self._free))]
        self._take(port)
        return PortPair(port)

    def reserve(self, pair: PortPair) -> None:
        """Take one specific pair (e.g. to restore a session); raise RelayError if it is taken.

        A quarantined pair may be reserved: whoever asks for it by name knows what it does."""
        if self._quarantine.pop(pair.rtp, None) is not None:
            self._used.add(pair.rtp)
            return
        if pair.rtp not in self._index:
            raise RelayError(f"port pair {pair.rtp}/{pair.rtcp} is not free in this pool")
        self._take(pair.rtp)

    def release(self, pair: PortPair, *, until: float | None = None) -> None:
        """Give a pair back; releasing a pair that is not allocated is a bug and raises.

        With ``until``, the pair stays out of circulation (quarantined) until :meth:`expire`
        is called with a time at or after it."""
        if pair.rtp not in self._used:
            raise RelayError(f"port pair {pair.rtp}/{pair.rtcp} is not allocated")
        self._used.remove(pair.rtp)
        if until is not None:
            self._quarantine[pair.rtp] = until
            heapq.heappush(self._quarantine_heap, (until, pair.rtp))
            return
        self._index[pair.rtp] = len(self._free)
        self._free.append(pair.rtp)

    def expire(self, now: float) -> int:
        """Return quarantined pairs whose time is up to the pool; how many were returned."""
        returned = 0
        heap = self._quarantine_heap
        while heap and heap[0][0] <= now:
            until, port = heapq.heappop(heap)
            if self._quarantine.get(port) != until:
                continue  # reserved meanwhile, or quarantined again later
            del self._quarantine[port]
            self._index[port] = len(self._free)
            self._free.append(port)
            returned += 1
        return returned

    def next_expiry(self) -> float | None:
        """When the next quarantined pair comes back, or None."""
        heap = self._quarantine_heap
        while heap and self._quarantine.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    @property
    def quarantined(self) -> int:
        """How many pairs are held out of circulation."""
        return len(self._quarantine)

    def is_allocated(self, pair: PortPair) -> bool:
        """True if ``pair`` is currently handed out."""
        return pair.rtp in self._used

    @property
    def in_use(self) -> int:
        """How many pairs are allocated."""
        return len(self._used)

    @property
    def available(self) -> int:
        """How many pairs are free."""
        return len(self._free)

    def check(self) -> None:
        """Verify the internal invariants (for tests and debugging); raise AssertionError."""
        free = set(self._free)
        assert len(free) == len(self._free), "a pair is listed free twice"
        assert not free & self._used, "a pair is both free and in use"
        quarantined = set(self._quarantine)
        assert not quarantined & (free | self._used), "a quarantined pair is free or in use"
        assert len(free) + len(self._used) + len(quarantined) == self.capacity, "a pair leaked"
        assert all(self._free[i] == port for port, i in self._index.items()), "index is stale"
        assert len(self._index) == len(self._free), "index has extra entries"

    def _take(self, port: int) -> None:
        position = self._index.pop(port)
        last = self._free.pop()
        if last != port:
            self._free[position] = last
            self._index[last] = position
        self._used.add(port)
