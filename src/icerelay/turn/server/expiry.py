"""One queue of everything in the TURN server that expires (RFC 8656's lifetimes).

Allocations (``LIFETIME``), permissions (300 s), channel bindings (600 s) and the cooldown after
them (300 s), EVEN-PORT reservations (30 s): each gets a typed entry in one heap, ordered by
when it is due. Entries are never removed early: a deleted or refreshed item leaves its entry
in place and the owner checks, when the entry comes due, whether it still applies (see
:meth:`~.state.ServerState.expire`). That keeps refreshes O(1): a refreshed permission or channel
is re-armed when its old entry comes due, instead of pushing a new entry per refresh.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass

from icerelay.turn.server.allocation import Allocation, HostPort
from icerelay.turn.server.ports import Reservation


@dataclass(frozen=True, slots=True)
class AllocationExpiry:
    """The allocation's lifetime may be over."""

    allocation: Allocation


@dataclass(frozen=True, slots=True)
class PermissionExpiry:
    """The permission for *host* on *allocation* may be over."""

    allocation: Allocation
    host: str


@dataclass(frozen=True, slots=True)
class ChannelExpiry:
    """Channel *number* on *allocation* may be over."""

    allocation: Allocation
    number: int


@dataclass(frozen=True, slots=True)
class CooldownExpiry:
    """The cooldown of an expired channel (its number and its peer) ends."""

    allocation: Allocation
    number: int
    peer: HostPort


@dataclass(frozen=True, slots=True)
class ReservationExpiry:
    """An EVEN-PORT reservation's token is no longer good."""

    reservation: Reservation


Expiry = AllocationExpiry | PermissionExpiry | ChannelExpiry | CooldownExpiry | ReservationExpiry


class ExpiryQueue:
    """A heap of (when, entry); ties keep insertion order."""

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Expiry]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, when: float, entry: Expiry) -> None:
        """Have *entry* come due at *when*."""
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, entry))

    def next_time(self) -> float | None:
        """When the earliest entry comes due, or None when the queue is empty."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> Iterator[tuple[float, Expiry]]:
        """Remove and yield (when, entry) for every entry due at *now*, earliest first; entries
        pushed while iterating are yielded too if they are due."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _seq, entry = heapq.heappop(heap)
            yield when, entry
