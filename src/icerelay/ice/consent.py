"""Consent freshness (RFC 7675) and keepalives (RFC 8445 section 11) on the pairs in use.

Once media flows, the agent keeps asking the peer whether it still wants it: a Binding request on
each selected pair every 5 s (randomized 0.8-1.2, section 5.1). No answer for 30 s means the peer
withdrew consent: the agent fails and stops sending (section 5.1). Before that, a pair without
answers for a while makes the agent *disconnected*, and when another valid pair exists media moves
there (failover). When nothing else was sent on a pair for the keepalive interval, a Binding
indication keeps its NAT bindings open (RFC 8445 section 11).

:class:`ConsentFreshness` is one part of an :class:`~icerelay.ice.agent.Agent`: it keeps the
consent deadlines and the time of the last packet on each pair, and acts through the agent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from icerelay.ice.candidate import TransportAddress
from icerelay.ice.events import ConnectionState
from icerelay.ice.generation import Generation
from icerelay.ice.pair import CandidatePair, PairState
from icerelay.stun import Message, MessageClass, Method

if TYPE_CHECKING:
    from icerelay.ice.agent import Agent


class ConsentFreshness:
    """Consent requests, their deadlines, failover and keepalives for one agent."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.config = agent.config
        self.lost = False
        """Consent expired (RFC 7675 section 5.1): nothing may be sent any more."""
        self.request_at: dict[int, float] = {}
        """When the next consent request goes, per component."""
        self.last_sent: dict[tuple[TransportAddress, TransportAddress], float] = {}
        """When anything last left on a pair (by pair key), for keepalives."""

    def sends(self, generation: Generation) -> bool:
        """Whether consent requests go on this generation's pairs (a lite agent sends none)."""
        return (
            self.config.consent_freshness
            and not self.agent.lite
            and generation.remote_pwd is not None
        )

    def interval(self) -> float:
        # RFC 7675 section 5.1: randomized to 0.8-1.2 times the interval, so that many flows
        # started together do not send their requests in bursts.
        return self.config.consent_interval * self.agent.rng.uniform(0.8, 1.2)

    def pair_selected(self, component: int, now: float, *, replacing: bool) -> None:
        """A component uses a new pair. A valid pair that was not in use had no consent
        requests, so its last answer may be old: it is asked for consent right away when it
        replaces another pair, one interval from now when it is the first."""
        self.request_at[component] = now if replacing else now + self.interval()

    def disconnected(self, paths: list[tuple[Generation, CandidatePair]], now: float) -> bool:
        """Whether a pair in use has had no consent answer for the disconnected timeout."""
        return any(
            self.sends(generation)
            and pair.last_consent is not None
            and now >= pair.last_consent + self.config.disconnected_timeout
            for generation, pair in paths
        )

    def timers(self, now: float) -> list[float]:
        # Deadlines are sums (last + timeout), and the checks in run() and disconnected()
        # compare with the very same sums: a timer that fires exactly at a deadline must see it
        # reached (now - last could round to just below the timeout).
        if self.lost:
            return []
        timers: list[float] = []
        for generation, pair in self.agent.paths():
            component = pair.component
            if self.sends(generation):
                if component in self.request_at:
                    timers.append(self.request_at[component])
                last = pair.last_consent or 0.0
                # Thresholds already passed (disconnected now) must not wake us in a loop.
                for threshold in (self.config.disconnected_timeout, self.config.consent_timeout):
                    if last + threshold > now:
                        timers.append(last + threshold)
            last_sent = self.last_sent.get(pair.key)
            if last_sent is not None:
                timers.append(last_sent + self.config.keepalive_interval)
        return timers

    def run(self, now: float) -> None:
        """Send the consent requests and keepalives that are due; fail over or fail."""
        if self.lost:
            return
        agent = self.agent
        for generation, pair in agent.paths():
            component = pair.component
            if self.sends(generation):
                last = pair.last_consent if pair.last_consent is not None else now
                if now >= last + self.config.disconnected_timeout and self._fail_over(
                    generation, pair, now
                ):
                    continue
                if now >= last + self.config.consent_timeout:
                    # RFC 7675 section 5.1: consent expired; stop sending, ICE has failed.
                    self.lost = True
                    agent.forget_consent_requests()
                    agent.set_state(ConnectionState.FAILED)
                    return
                deadline = self.request_at.get(component)
                if deadline is None:
                    self.request_at[component] = now + self.interval()
                elif deadline <= now:
                    self._send_request(generation, pair, now)
                    self.request_at[component] = now + self.interval()
            last_sent = self.last_sent.get(pair.key)
            if last_sent is not None and now >= last_sent + self.config.keepalive_interval:
                # RFC 8445 section 11: a Binding indication keeps NAT bindings alive when
                # nothing else was sent (it needs no answer and no credentials).
                indication = Message(
                    Method.BINDING, MessageClass.INDICATION, agent.rng.randbytes(12)
                )
                agent.transmit(pair, indication.encode(fingerprint=True), now)

    def _fail_over(self, generation: Generation, pair: CandidatePair, now: float) -> bool:
        """The pair in use lost consent but another valid pair exists: drop this one so that
        media moves there (and, when controlling, it is nominated in turn). False when there is
        no other pair to go to; then consent runs out and ICE fails."""
        checklist = generation.checklist
        if not any(v is not pair and v.component == pair.component for v in checklist.valid):
            return False
        checklist.valid.remove(pair)
        pair.valid = False
        pair.nominated = False
        generating = pair.generating
        if generating is not None:
            generating.use_candidate = False
            self.agent.set_pair_state(generating, PairState.FAILED)
        self.agent.selector.update_component(generation, pair.component, now)
        return True

    def _send_request(self, generation: Generation, pair: CandidatePair, now: float) -> None:
        # Retransmitted like a check, a few times: on a lossy path one lost request or answer
        # must not cost the consent of a working path (RFC 7675 counts any answer).
        self.agent.checks.start_transaction(
            generation,
            pair,
            now,
            use_candidate=False,
            rto=self.config.check_rto,
            rc=self.config.consent_rc,
            consent=True,
        )
