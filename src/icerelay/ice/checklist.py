"""Checklists: forming, ordering, pruning and unfreezing candidate pairs (RFC 8445 section 6.1.2).

Each data stream has one *checklist*: its candidate pairs ordered by pair priority, highest first,
plus the *triggered-check queue* (section 6.1.4.1) and the *valid list* (section 6.1.2.7). All the
checklists of an agent form the *checklist set*; freezing works across the set, so that a
foundation that succeeded for the audio stream unfreezes the same foundation for video. The
functions at the end of this module take the set as a sequence of checklists.

Pairing (section 6.1.2.2) happens in the agent; this module does the rest:

- *pruning* (section 6.1.2.4): pairs whose local candidate is server-reflexive are replaced by
  their base (the agent pairs the base directly), and of two pairs with the same local base and
  remote address only the higher-priority one is kept;
- the *limit* on the number of pairs (section 6.1.2.5; 100 by default), dropping the
  lowest-priority ones that have not been checked;
- the initial *Frozen*/*Waiting* states (section 6.1.2.6), one Waiting pair per foundation;
- unfreezing when a pair succeeds (section 7.2.5.3.3) and when nothing is left to do
  (section 6.1.4.2).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Sequence

from icerelay.ice.candidate import TransportAddress
from icerelay.ice.pair import CandidatePair, PairState

DEFAULT_MAX_PAIRS = 100


class CheckListState(enum.Enum):
    """Section 6.1.2.1: Running, Completed (a nominated pair for every component) or Failed."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class CheckList:
    """The pairs of one data stream, the triggered-check queue and the valid list."""

    def __init__(
        self, components: Iterable[int], controlling: bool, max_pairs: int = DEFAULT_MAX_PAIRS
    ) -> None:
        self.components = tuple(sorted(components))
        self.controlling = controlling
        self.max_pairs = max_pairs
        self.state = CheckListState.RUNNING
        self.pairs: list[CandidatePair] = []
        self.valid: list[CandidatePair] = []
        self.triggered: deque[CandidatePair] = deque()
        self._by_key: dict[tuple[TransportAddress, TransportAddress], CandidatePair] = {}

    # --- forming --------------------------------------------------------------------------

    def find(self, base: TransportAddress, remote: TransportAddress) -> CandidatePair | None:
        """The pair with this local base and remote address, if the checklist has it."""
        return self._by_key.get((base, remote))

    def add(self, pair: CandidatePair) -> CandidatePair | None:
        """Insert a new pair in priority order; returns the pair that ends up in the list.

        A pair with the same local base and remote address as one already present is redundant
        (section 6.1.2.4): the existing one is returned, and takes the new candidates if they have
        the higher priority (as when a signalled candidate replaces a peer-reflexive one). Returns
        None when the limit drops the new pair.
        """
        existing = self._by_key.get(pair.key)
        if existing is not None:
            if pair.priority > existing.priority:
                existing.local, existing.remote = pair.local, pair.remote
                existing.update_priority(self.controlling)
                self._sort()
            return existing
        self.pairs.append(pair)
        self._by_key[pair.key] = pair
        self._sort()
        if len(self.pairs) > self.max_pairs:
            victim = self._lowest_unchecked()
            if victim is not None:
                self.remove(victim)
                if victim is pair:
                    return None
        return pair

    def remove(self, pair: CandidatePair) -> None:
        self.pairs.remove(pair)
        self._by_key.pop(pair.key, None)
        if pair in self.triggered:
            self.triggered.remove(pair)

    def _lowest_unchecked(self) -> CandidatePair | None:
        for pair in reversed(self.pairs):
            if pair.state in (PairState.FROZEN, PairState.WAITING):
                return pair
        return None

    def _sort(self) -> None:
        # Ties (equal priorities) keep insertion order: sorted() is stable.
        self.pairs.sort(key=lambda pair: -pair.priority)

    def set_role(self, controlling: bool) -> None:
        """A role change changes every pair priority (section 7.2.5.1) and thus the order."""
        self.controlling = controlling
        for pair in {id(p): p for p in [*self.pairs, *self.valid]}.values():
            pair.update_priority(controlling)
        self._sort()
        self.valid.sort(key=lambda pair: -pair.priority)

    # --- scheduling -----------------------------------------------------------------------

    def trigger(self, pair: CandidatePair) -> None:
        """Queue a triggered check (section 7.3.1.4); the pair becomes Waiting.

        A Succeeded pair keeps its state: that is the controlling agent's nomination check
        (section 8.1.1), which re-checks a valid pair with USE-CANDIDATE.
        """
        if pair.state is not PairState.SUCCEEDED:
            pair.state = PairState.WAITING
        if pair not in self.triggered:
            self.triggered.append(pair)

    def next_triggered(self) -> CandidatePair | None:
        while self.triggered:
            pair = self.triggered.popleft()
            if self._by_key.get(pair.key) is not pair:
                continue  # pruned or removed since it was queued
            if pair.state is PairState.WAITING or (
                pair.state is PairState.SUCCEEDED and pair.use_candidate and not pair.nominated
            ):
                return pair
        return None

    def next_waiting(self) -> CandidatePair | None:
        """The highest-priority Waiting pair (section 6.1.4.2), if any."""
        for pair in self.pairs:
            if pair.state is PairState.WAITING:
                return pair
        return None

    def has_work(self) -> bool:
        """Whether a check could be sent now or later from this checklist."""
        return bool(self.triggered) or any(
            pair.state in (PairState.WAITING, PairState.FROZEN) for pair in self.pairs
        )

    # --- results --------------------------------------------------------------------------

    def add_valid(self, pair: CandidatePair) -> None:
        """Put a pair on the valid list (section 7.2.5.3.2), keeping it sorted by priority."""
        pair.valid = True
        if pair not in self.valid:
            self.valid.append(pair)
            self.valid.sort(key=lambda p: -p.priority)

    def best_valid(self, component: int) -> CandidatePair | None:
        """The highest-priority valid pair of a component."""
        for pair in self.valid:
            if pair.component == component:
                return pair
        return None

    def nominated(self, component: int) -> CandidatePair | None:
        """The highest-priority nominated valid pair of a component: the selected pair."""
        for pair in self.valid:
            if pair.component == component and pair.nominated:
                return pair
        return None

    def all_nominated(self) -> bool:
        return all(self.nominated(component) is not None for component in self.components)

    def component_failed(self, component: int) -> bool:
        """True when every pair of a component failed and none is valid."""
        pairs = [pair for pair in self.pairs if pair.component == component]
        return self.best_valid(component) is None and all(
            pair.state is PairState.FAILED for pair in pairs
        )

    def stop_component(self, component: int) -> None:
        """After nomination (section 8.1.2): drop Waiting and Frozen pairs of the component."""
        for pair in list(self.pairs):
            if pair.component == component and pair.state in (
                PairState.WAITING,
                PairState.FROZEN,
            ):
                self.remove(pair)


# --- the checklist set --------------------------------------------------------------------


def _pairs(checklists: Sequence[CheckList]) -> Iterable[CandidatePair]:
    for checklist in checklists:
        yield from checklist.pairs


def foundation_active(foundation: tuple[str, str], checklists: Sequence[CheckList]) -> bool:
    """Whether a pair with this foundation is Waiting or In-Progress anywhere in the set."""
    return any(
        pair.foundation == foundation and pair.state in (PairState.WAITING, PairState.IN_PROGRESS)
        for pair in _pairs(checklists)
    )


def set_initial_states(checklists: Sequence[CheckList]) -> None:
    """Section 6.1.2.6: for each foundation, unfreeze exactly one pair.

    The pair chosen is the first one with that foundation in the first checklist that has it,
    ordered by lowest component ID and then highest priority. Everything else stays Frozen.
    """
    seen: set[tuple[str, str]] = set()
    for checklist in checklists:
        ordered = sorted(checklist.pairs, key=lambda pair: (pair.component, -pair.priority))
        for pair in ordered:
            if pair.state is not PairState.FROZEN:
                seen.add(pair.foundation)
        for pair in ordered:
            if pair.state is PairState.FROZEN and pair.foundation not in seen:
                pair.state = PairState.WAITING
                seen.add(pair.foundation)


def state_for_new_pair(pair: CandidatePair, checklists: Sequence[CheckList]) -> PairState:
    """The state of a pair formed after checks started (trickle ICE, RFC 8838 section 10).

    Waiting when one with that foundation has already Succeeded, or when no pair with the same
    foundation and the same or a lower component ID is Waiting or In-Progress; Frozen otherwise,
    to wait for that one's result.

    Why the component matters: candidates trickle in a different order on each side, so one
    agent may be checking RTP's pair of a foundation while the other checks RTCP's. Behind
    port-restricted NATs each check is then filtered by the NAT of the agent that froze that
    pair, and both wait for a timeout (about 40 s). Letting the lowest component of a foundation
    always go first, as the initial states of section 6.1.2.6 do, makes both agents pick the same
    pair whatever the arrival order.
    """
    foundation = pair.foundation
    others = [p for p in _pairs(checklists) if p is not pair and p.foundation == foundation]
    if any(p.state is PairState.SUCCEEDED for p in others):
        return PairState.WAITING
    if any(
        p.state in (PairState.WAITING, PairState.IN_PROGRESS) and p.component <= pair.component
        for p in others
    ):
        return PairState.FROZEN
    return PairState.WAITING


def unfreeze_foundation(foundation: tuple[str, str], checklists: Sequence[CheckList]) -> None:
    """Section 7.2.5.3.3: a success makes every Frozen pair with that foundation Waiting."""
    for pair in _pairs(checklists):
        if pair.foundation == foundation and pair.state is PairState.FROZEN:
            pair.state = PairState.WAITING


def next_ordinary_check(
    checklist: CheckList, checklists: Sequence[CheckList]
) -> CandidatePair | None:
    """Section 6.1.4.2: the pair for the next ordinary check in ``checklist``.

    The highest-priority Waiting pair; failing that, the highest-priority Frozen pair whose
    foundation is not being checked anywhere in the set (it is unfrozen on the way).
    """
    pair = checklist.next_waiting()
    if pair is not None:
        return pair
    for pair in checklist.pairs:
        if pair.state is PairState.FROZEN and not foundation_active(pair.foundation, checklists):
            pair.state = PairState.WAITING
            return pair
    return None
