"""Ta pacing of connectivity checks (RFC 8445 sections 6.1.4.2, 14).

ICE sends many checks to addresses that may not answer; RFC 8445 keeps that from turning into a
burst: one new check (ordinary or triggered) leaves every *Ta* (50 ms by default, section 14.2),
and retransmissions back off from an RTO that grows with the number of pairs in flight
(section 14.3). A :class:`Pacer` spaces the checks of one agent, or of all the data streams of a
:class:`~icerelay.ice.session.Session` together, which then take turns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from icerelay.ice.checklist import CheckList, foundation_active, next_ordinary_check
from icerelay.ice.pair import CandidatePair, PairState


class PacedStream(Protocol):
    """What the pacer needs from a data stream's agent."""

    def send_next_check(self, now: float) -> bool: ...


class Pacer:
    """Ta pacing (RFC 8445 section 6.1.4.2, 14.2) over one or several data streams.

    A new check (ordinary or triggered) leaves at most every Ta; when several streams have
    checks to send they take turns, as the checklists of a checklist set do.
    """

    def __init__(self, ta: float, agents: Sequence[PacedStream]) -> None:
        self.ta = ta
        self.agents = list(agents)
        self.next_check_at = 0.0
        self._turn = 0

    def pace(self, now: float) -> None:
        if now < self.next_check_at:
            return
        count = len(self.agents)
        for offset in range(count):
            agent = self.agents[(self._turn + offset) % count]
            if agent.send_next_check(now):
                self._turn = (self._turn + offset + 1) % count
                self.next_check_at = now + self.ta
                return


def next_check(checklist: CheckList, checklists: Sequence[CheckList]) -> CandidatePair | None:
    """The pair to check when Ta allows (section 6.1.4.2): the triggered-check queue first,
    then the highest-priority Waiting pair (unfreezing one when nothing waits)."""
    pair = checklist.next_triggered()
    if pair is None:
        pair = next_ordinary_check(checklist, checklists)
    return pair


def has_check_to_send(checklist: CheckList, checklists: Sequence[CheckList]) -> bool:
    """Whether a check could leave now if Ta allowed (for the pacer's timer)."""
    if checklist.triggered:
        return True
    return any(
        pair.state is PairState.WAITING
        or (pair.state is PairState.FROZEN and not foundation_active(pair.foundation, checklists))
        for pair in checklist.pairs
    )


def check_rto(checklists: Sequence[CheckList], ta: float, minimum: float) -> float:
    """RFC 8445 section 14.3: RTO = MAX(500 ms, N * Ta * (Waiting + In-Progress pairs)), N
    the number of checklists: with many pairs in flight, retransmissions must not crowd out
    the paced new checks."""
    busy = sum(
        1
        for checklist in checklists
        for pair in checklist.pairs
        if pair.state in (PairState.WAITING, PairState.IN_PROGRESS)
    )
    return max(minimum, len(checklists) * ta * busy)
