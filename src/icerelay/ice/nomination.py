"""Nomination and the selected pair (RFC 8445 section 8, RFC 5245 section 8.1.1.2).

For each component the agent picks the pair media uses: the nominated pair once there is one,
and until then the best valid pair (RFC 8445 allows media on a valid pair before nomination).

- *Regular nomination* (section 8.1.1): the controlling agent lets the checks run, then repeats
  the check on the best valid pair with USE-CANDIDATE. It waits a little (``nomination_wait``, or
  two round trips) when a better pair is still being checked, so that it does not nominate a
  relayed pair a moment before the direct one succeeds.
- *Aggressive nomination* (RFC 5245 section 8.1.1.2): USE-CANDIDATE in every check; the first
  pair that succeeds is nominated.
- The *controlled* agent follows both (section 7.3.1.5): a check with USE-CANDIDATE nominates its
  pair when that pair succeeded, or as soon as the triggered check on it succeeds.
- Once a component has a nominated pair, its checks stop (section 8.1.2).

:class:`Selector` is one part of an :class:`~icerelay.ice.agent.Agent` (as pion/ice's
selectors are): it keeps no state of its own beyond a role change to act upon, and acts through
the agent and the generation's checklist.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from icerelay.ice.candidate import CandidateType
from icerelay.ice.config import Nomination
from icerelay.ice.events import SelectedPairChanged
from icerelay.ice.generation import Check, Generation
from icerelay.ice.pair import CandidatePair, PairState

if TYPE_CHECKING:
    from icerelay.ice.agent import Agent


class Selector:
    """Chooses each component's pair and nominates, for one agent."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.config = agent.config
        self.role_changed = False
        """The role changed: what is valid must be re-evaluated at the next step."""

    def uses_candidate(self, pair: CandidatePair) -> bool:
        """Whether our next check on ``pair`` carries USE-CANDIDATE (only the controlling agent
        nominates: regularly, when the pair was chosen, or aggressively, in every check)."""
        return self.agent.controlling and (
            pair.use_candidate or self.config.nomination is Nomination.AGGRESSIVE
        )

    def nominated_by_answer(self, check: Check, pair: CandidatePair) -> bool:
        """Whether the success of ``check`` nominates its valid pair: our own USE-CANDIDATE
        check (section 8.1.1), or, controlled, a pair the peer nominated before it succeeded
        (section 7.3.1.5)."""
        return (check.use_candidate and check.controlling) or (
            not self.agent.controlling and pair.nominate_on_success
        )

    def peer_nominated(self, generation: Generation, pair: CandidatePair, now: float) -> None:
        """Section 7.3.1.5: the peer sent USE-CANDIDATE on a pair that already succeeded; the
        valid pair it generated is nominated."""
        for valid in generation.checklist.valid:
            if valid.generating is pair and not valid.nominated:
                valid.nominated = True
        self.update_component(generation, pair.component, now)

    def timers(self, now: float) -> list[float]:
        timers = list(self.agent.generation.nominate_at.values())
        if self.role_changed:
            timers.append(now)
        return timers

    def handle_timer(self, now: float) -> None:
        """Nominate where the wait for a better pair is over."""
        generation = self.agent.generation
        for component, deadline in list(generation.nominate_at.items()):
            if deadline <= now:
                del generation.nominate_at[component]
                self.nominate(generation, component, now)

    def after_role_change(self, now: float) -> None:
        """A new controlling agent nominates what is already valid (and a new controlled one
        stops doing so)."""
        if not self.role_changed:
            return
        self.role_changed = False
        generation = self.agent.generation
        for component in self.agent.components:
            if generation.checklist.best_valid(component) is not None:
                self.update_component(generation, component, now)

    def update_component(self, generation: Generation, component: int, now: float) -> None:
        """Choose the pair media uses for a component, and nominate when it is time."""
        agent = self.agent
        checklist = generation.checklist
        nominated = checklist.nominated(component)
        target = nominated or checklist.best_valid(component)
        if target is None:
            generation.selected.pop(component, None)
            generation.announced.pop(component, None)
        elif generation.announced.get(component) != (target, target.nominated):
            previous = generation.selected.get(component)
            generation.selected[component] = target
            generation.announced[component] = (target, target.nominated)
            if target is not previous:
                # Consent starts fresh on a pair that was not in use (RFC 7675).
                target.last_consent = now
                agent.consent.pair_selected(component, now, replacing=previous is not None)
            if target.nominated and target.local.type is CandidateType.RELAYED:
                provider = agent.gatherer.relay_for(target.local.address)
                if provider is not None:
                    provider.prefer(target.remote.address, now)
            agent.emit(SelectedPairChanged(component, target.info(), target.nominated))
        if nominated is not None:
            # Section 8.1.2: the component is done; no more checks for it.
            generation.nominate_at.pop(component, None)
            checklist.stop_component(component)
        elif (
            agent.controlling
            and self.config.nomination is Nomination.REGULAR
            and target is not None
            and not any(p.use_candidate and p.component == component for p in checklist.pairs)
        ):
            self._schedule(generation, component, target, now)
        agent.forget_previous_generation(generation)
        agent.update_state(now)

    def _schedule(
        self, generation: Generation, component: int, best: CandidatePair, now: float
    ) -> None:
        checklist = generation.checklist
        better_pending = any(
            p.component == component
            and p.priority > best.priority
            and p.state in (PairState.FROZEN, PairState.WAITING, PairState.IN_PROGRESS)
            for p in checklist.pairs
        )
        if not better_pending:
            generation.nominate_at.pop(component, None)
            self.nominate(generation, component, now)
            return
        if component not in generation.nominate_at:
            wait = max(self.config.nomination_wait, 2 * (best.rtt or 0.0))
            generation.nominate_at[component] = generation.first_valid_at.get(component, now) + wait

    def nominate(self, generation: Generation, component: int, now: float) -> None:
        """Section 8.1.1: check the best valid pair again, with USE-CANDIDATE."""
        checklist = generation.checklist
        if checklist.nominated(component) is not None:
            return
        best = checklist.best_valid(component)
        if best is None:
            return
        generating = best.generating or best
        generating.use_candidate = True
        checklist.trigger(generating)
        self.agent.checks.send_now(generation, generating, now)
