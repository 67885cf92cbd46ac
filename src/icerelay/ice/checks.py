"""Connectivity checks (RFC 8445 sections 7.2, 7.3): sending ours, answering the peer's.

- *Sending* (section 7.2.4): a Binding request on a candidate pair, signed with the peer's
  short-term credentials (USERNAME ``remote-ufrag:local-ufrag``, MESSAGE-INTEGRITY keyed with the
  remote password), carrying PRIORITY (the peer-reflexive priority the local candidate would have,
  section 7.1.1), ICE-CONTROLLING or ICE-CONTROLLED with the *tie-breaker*, and USE-CANDIDATE when
  nominating (see :mod:`~icerelay.ice.nomination`). When they leave is :mod:`~icerelay.ice.pacing`'s
  business; consent requests (:mod:`~icerelay.ice.consent`) are sent the same way.
- *Answering* (section 7.3): a check from the peer is answered, and answered back with a
  *triggered check* on the same pair at once (section 7.3.1.4): the peer's check just opened the
  peer's NAT for it, so it is the check most likely to succeed right now. Checks from unknown
  addresses create *peer-reflexive* remote candidates (section 7.3.1.3). *Role conflicts*
  (section 7.3.1.1) are resolved by the tie-breakers, answering 487 or switching role.
- *Answers* (section 7.2.5): a success makes a *valid pair* (section 7.2.5.3), with a
  peer-reflexive local candidate when the mapped address is new (section 7.2.5.3.1), and
  unfreezes the pairs of the same foundation (section 7.2.5.3.3); a 487 switches role and retries
  (section 7.2.5.1); an answer from the wrong address, another error or no answer fails the pair.

:class:`ConnectivityChecks` is one part of an :class:`~icerelay.ice.agent.Agent` (as pion/ice
spreads its agent over files): it keeps no state of its own, and works on the agent's checks in
flight, candidates and checklists.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from icerelay.ice.candidate import (
    Candidate,
    CandidateType,
    TransportAddress,
    candidate_priority,
    compute_foundation,
    make_local_candidate,
)
from icerelay.ice.checklist import state_for_new_pair, unfreeze_foundation
from icerelay.ice.generation import Check, Generation
from icerelay.ice.pacing import check_rto, next_check
from icerelay.ice.pair import CandidatePair, PairState
from icerelay.stun import Address, AttributeType, ErrorCode, Message, MessageClass, Method
from icerelay.stun.transaction import ClientTransaction

if TYPE_CHECKING:
    from icerelay.ice.agent import Agent

ROLE_CONFLICT = 487


class ConnectivityChecks:
    """Sends the agent's checks and consent requests, answers the peer's, takes the answers."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.prflx_count = 0
        """Peer-reflexive remote candidates learned, for their foundations."""

    def form_pair(
        self,
        generation: Generation,
        local: Candidate,
        remote: Candidate,
        now: float,
        *,
        triggered: bool = False,
    ) -> CandidatePair | None:
        """Section 6.1.2.2: pair a local and a remote candidate into the checklist. A pair formed
        after checks started is Waiting or Frozen as its foundation says (RFC 8838 section 10),
        unless it is formed for a triggered check."""
        checklist = generation.checklist
        pair = checklist.add(CandidatePair(local, remote, self.agent.controlling))
        if pair is None or pair.state is not PairState.FROZEN:
            return pair
        if generation.started and not triggered:
            pair.state = state_for_new_pair(pair, self.agent._checklists())
        return pair

    def can_send(self) -> bool:
        """Whether checks may go: a full agent, not closed, with the peer's credentials."""
        agent = self.agent
        generation = agent.generation
        return (
            not agent.lite
            and not agent.closed
            and generation.started
            and generation.remote_pwd is not None
        )

    def send_next(self, now: float) -> bool:
        """Send the stream's next check (triggered first, then ordinary) regardless of Ta;
        False when there is none."""
        if not self.can_send():
            return False
        agent = self.agent
        pair = next_check(agent.generation.checklist, agent._checklists())
        if pair is None:
            return False
        self.send_check(agent.generation, pair, now)
        return True

    def send_now(self, generation: Generation, pair: CandidatePair, now: float) -> None:
        """Send a queued triggered check at once, outside Ta pacing.

        Only for two kinds of check, neither of which probes a new path: the answer to a check
        the peer just sent on this pair (RFC 8445 section 7.3.1.4; it goes out at the peer's own
        paced rate, one for one, so it adds no burst), and the nomination of a pair that is
        already valid (section 8.1.1). Waiting for the next Ta slot would cost up to 50 ms for
        nothing; ordinary checks, which do probe new paths, stay paced.
        """
        if not self.can_send() or generation is not self.agent.generation:
            self.agent._pace(now)  # no credentials yet: the queue is served when they come
            return
        checklist = generation.checklist
        if pair in checklist.triggered:
            checklist.triggered.remove(pair)
        self.send_check(generation, pair, now)

    def handle_request(
        self, request: Message, source: TransportAddress, destination: TransportAddress, now: float
    ) -> None:
        """Section 7.3: answer a connectivity check (or consent request) from the peer."""
        agent = self.agent
        local = agent.gatherer.local_base(destination)
        if local is None:
            return
        username = request.get(AttributeType.USERNAME)
        if username is None or AttributeType.MESSAGE_INTEGRITY not in request:
            self.respond_error(request, 400, "Bad Request", None, local, source, now)
            return
        local_ufrag = username.split(":", 1)[0]
        generation = agent._generation_for(local_ufrag)
        if generation is None or not request.check_integrity(generation.local_key):
            # RFC 8489 section 9.1.3: 401, and without integrity (we cannot know the key).
            self.respond_error(request, 401, "Unauthorized", None, local, source, now)
            return
        if request.unknown_comprehension_required:
            response = request.error_response(420, "Unknown Attribute")
            response.add(
                AttributeType.UNKNOWN_ATTRIBUTES, list(request.unknown_comprehension_required)
            )
            self.send_response(response, generation, local, source, now)
            return
        if not agent.lite and generation is agent.generation and self._role_conflict(request, now):
            self.respond_error(
                request, ROLE_CONFLICT, "Role Conflict", generation, local, source, now
            )
            return

        response = request.response()
        response.add(AttributeType.XOR_MAPPED_ADDRESS, Address(source[0], source[1]))
        self.send_response(response, generation, local, source, now)
        if generation is not agent.generation:
            return  # a consent request on the previous generation's pair: answering is all

        remote = generation.find_remote(source, local.component)
        if remote is None:
            priority = request.get(AttributeType.PRIORITY)
            learned = sum(
                1
                for c in generation.remote_candidates
                if c.type is CandidateType.PEER_REFLEXIVE and c.component == local.component
            )
            if priority is None or learned >= agent.config.max_peer_reflexive:
                return
            # Section 7.3.1.3: a peer-reflexive remote candidate, learned from the check itself.
            self.prflx_count += 1
            remote = Candidate(
                foundation=compute_foundation(
                    CandidateType.PEER_REFLEXIVE, source[0], str(self.prflx_count)
                ),
                component=local.component,
                transport="udp",
                priority=priority,
                host=source[0],
                port=source[1],
                type=CandidateType.PEER_REFLEXIVE,
            )
            generation.remote_candidates.append(remote)
        use_candidate = AttributeType.USE_CANDIDATE in request and not agent.controlling
        checklist = generation.checklist
        pair = checklist.find(local.base or local.address, source)
        if pair is None:
            pair = self.form_pair(generation, local, remote, now, triggered=True)
            if pair is None:
                return
        if agent.lite:
            # Section 7.3.1.5 for lite agents: the peer checked this pair, so it works; select
            # it when the peer nominates it.
            self.mark_succeeded(generation, pair, pair, now, nominated=use_candidate)
            return
        if pair.state is PairState.SUCCEEDED:
            if use_candidate:
                agent.selector.peer_nominated(generation, pair, now)
        else:
            if pair.state is PairState.IN_PROGRESS:
                # Section 7.3.1.4: the check in flight probably died at the peer's NAT; stop
                # retransmitting it (a late answer still counts) and check again right now.
                for check in agent._checks.values():
                    if check.pair is pair and not check.consent:
                        check.cancelled = True
            if use_candidate:
                pair.nominate_on_success = True
            agent.set_pair_state(pair, PairState.WAITING)
            checklist.trigger(pair)
            self.send_now(generation, pair, now)

    def _role_conflict(self, request: Message, now: float) -> bool:
        """Section 7.3.1.1; True when the request must be answered with 487."""
        agent = self.agent
        theirs_controlling = request.get(AttributeType.ICE_CONTROLLING)
        theirs_controlled = request.get(AttributeType.ICE_CONTROLLED)
        if agent.controlling and theirs_controlling is not None:
            if agent.tie_breaker >= theirs_controlling:
                return True
            agent._set_role(False, announce=True)
        elif not agent.controlling and theirs_controlled is not None:
            if agent.tie_breaker >= theirs_controlled:
                agent._set_role(True, announce=True)
            else:
                return True
        return False

    def handle_response(
        self,
        check: Check,
        response: Message,
        source: TransportAddress,
        destination: TransportAddress,
        now: float,
    ) -> None:
        """Section 7.2.5: the answer to one of our checks (or consent requests)."""
        agent = self.agent
        generation = check.generation
        success = response.message_class == MessageClass.SUCCESS_RESPONSE
        if success and not response.check_integrity(generation.remote_key):
            return  # not from the peer (or corrupted): keep waiting for the real answer
        check.transaction.receive(response)
        agent._checks.pop(response.transaction_id, None)
        pair = check.pair
        if check.consent:
            if success and source == pair.remote.address:
                pair.last_consent = now
            return
        # Section 7.2.5.2.1: the response must come from where the check went, to where it
        # came from; anything else means a NAT in between is not behaving, and the pair fails.
        if source != pair.remote.address or destination != pair.base:
            self.fail_pair(generation, pair, now)
            return
        if not success:
            error = response.get(AttributeType.ERROR_CODE)
            code = error.code if isinstance(error, ErrorCode) else 0
            if code == ROLE_CONFLICT:
                # Section 7.2.5.1: switch role (unless we already did) and check again.
                if check.controlling == agent.controlling:
                    agent._set_role(not agent.controlling, announce=True)
                generation.checklist.trigger(pair)
                agent.set_pair_state(pair, PairState.WAITING)
                agent._pace(now)
            else:
                self.fail_pair(generation, pair, now)
            return
        mapped = response.get(AttributeType.XOR_MAPPED_ADDRESS)
        if mapped is None:
            self.fail_pair(generation, pair, now)
            return
        pair.rtt = now - check.sent_at
        local = self._local_for_mapped((mapped.host, mapped.port), pair, check.priority)
        nominated = agent.selector.nominated_by_answer(check, pair)
        self.mark_succeeded(
            generation,
            pair,
            pair if local is pair.local else None,
            now,
            local=local,
            nominated=nominated,
        )

    def _local_for_mapped(
        self, mapped: TransportAddress, pair: CandidatePair, priority: int
    ) -> Candidate:
        """Section 7.2.5.3.1: the local candidate with the mapped address, or a new prflx one."""
        agent = self.agent
        if pair.local.address == mapped:
            return pair.local
        for candidate in agent.gatherer.candidates:
            if candidate.address == mapped and candidate.component == pair.component:
                return candidate
        for valid in agent.generation.checklist.valid:
            if valid.local.address == mapped and valid.component == pair.component:
                return valid.local
        return make_local_candidate(
            CandidateType.PEER_REFLEXIVE,
            mapped,
            pair.base,
            pair.component,
            priority=priority,
        )

    def mark_succeeded(
        self,
        generation: Generation,
        pair: CandidatePair,
        valid: CandidatePair | None,
        now: float,
        *,
        local: Candidate | None = None,
        nominated: bool = False,
    ) -> None:
        """Section 7.2.5.3: the pair succeeded; build the valid pair and move on."""
        agent = self.agent
        checklist = generation.checklist
        if valid is None:
            assert local is not None
            for existing in checklist.valid:
                if existing.local.address == local.address and existing.remote is pair.remote:
                    valid = existing
                    break
            else:
                valid = CandidatePair(local, pair.remote, agent.controlling)
                valid.state = PairState.SUCCEEDED
        valid.generating = pair
        valid.rtt = pair.rtt
        valid.last_consent = now
        pair.last_consent = now
        agent.set_pair_state(pair, PairState.SUCCEEDED)
        checklist.add_valid(valid)
        if nominated:
            valid.nominated = True
        pair.use_candidate = pair.use_candidate and not valid.nominated
        generation.first_valid_at.setdefault(pair.component, now)
        unfreeze_foundation(pair.foundation, agent._checklists())
        agent.selector.update_component(generation, pair.component, now)
        agent._pace(now)

    def timed_out(self, check: Check, now: float) -> None:
        """No answer after all retransmissions (section 7.2.5.2.4 Failure)."""
        agent = self.agent
        if check.consent:
            return
        pair = check.pair
        checklist = check.generation.checklist
        if pair.state is PairState.SUCCEEDED and any(
            valid.generating is pair
            and valid.last_consent is not None
            and valid.last_consent > check.sent_at
            for valid in checklist.valid
        ):
            # The nomination check went unanswered, but consent answers prove the path works:
            # only that check was unlucky (a lossy path). Nominate again rather than fail.
            pair.use_candidate = True
            checklist.trigger(pair)
            agent._pace(now)
            return
        if pair.state is PairState.SUCCEEDED:
            # The nomination check of a valid pair went unanswered: that path is gone.
            pair.use_candidate = False
            checklist.valid = [v for v in checklist.valid if v.generating is not pair]
        self.fail_pair(check.generation, pair, now)

    def fail_pair(self, generation: Generation, pair: CandidatePair, now: float) -> None:
        agent = self.agent
        agent.set_pair_state(pair, PairState.FAILED)
        for valid in generation.checklist.valid:
            if valid.generating is pair:
                valid.valid = False
        generation.checklist.valid = [v for v in generation.checklist.valid if v.valid]
        # The selection may lose its pair, or a nomination that waited for this one may go now.
        agent.selector.update_component(generation, pair.component, now)

    def send_check(self, generation: Generation, pair: CandidatePair, now: float) -> None:
        agent = self.agent
        rto = check_rto(agent._checklists(), agent.config.ta, agent.config.check_rto)
        self.start_transaction(
            generation,
            pair,
            now,
            use_candidate=agent.selector.uses_candidate(pair),
            rto=rto,
            rc=agent.config.check_rc,
        )
        if pair.state is not PairState.SUCCEEDED:
            agent.set_pair_state(pair, PairState.IN_PROGRESS)

    def start_transaction(
        self,
        generation: Generation,
        pair: CandidatePair,
        now: float,
        *,
        use_candidate: bool,
        rto: float,
        rc: int,
        consent: bool = False,
    ) -> None:
        """Send a Binding request on ``pair`` (a check, or a consent request) and keep it until
        it is answered or times out.

        Section 7.2.4: signed with the peer's short-term credentials (USERNAME
        ``remote-ufrag:local-ufrag``, MESSAGE-INTEGRITY keyed with the remote password), with
        PRIORITY, the role and tie-breaker, and USE-CANDIDATE when nominating.
        """
        agent = self.agent
        # Section 7.1.1: PRIORITY is what a peer-reflexive candidate from this base would have.
        local = pair.local
        priority = candidate_priority(
            CandidateType.PEER_REFLEXIVE, local.component, (local.priority >> 8) & 0xFFFF
        )
        request = Message(Method.BINDING, MessageClass.REQUEST, agent.rng.randbytes(12))
        request.add(AttributeType.USERNAME, f"{generation.remote_ufrag}:{generation.local_ufrag}")
        if agent.config.software:
            request.add(AttributeType.SOFTWARE, agent.config.software)
        request.add(AttributeType.PRIORITY, priority)
        if agent.controlling:
            request.add(AttributeType.ICE_CONTROLLING, agent.tie_breaker)
        else:
            request.add(AttributeType.ICE_CONTROLLED, agent.tie_breaker)
        if use_candidate:
            request.add(AttributeType.USE_CANDIDATE)
        data = request.encode(integrity_key=generation.remote_key, fingerprint=True)
        transaction = ClientTransaction(data, now=now, rto=rto, rc=rc)
        agent._checks[transaction.transaction_id] = Check(
            generation,
            pair,
            transaction,
            now,
            agent.controlling,
            use_candidate,
            priority,
            consent=consent,
        )
        for datagram in transaction.datagrams_to_send(now):
            if not consent:
                agent.checks_sent += 1
            agent.transmit(pair, datagram, now)

    def send_response(
        self,
        response: Message,
        generation: Generation,
        local: Candidate,
        destination: TransportAddress,
        now: float,
    ) -> None:
        agent = self.agent
        if agent.config.software:
            response.add(AttributeType.SOFTWARE, agent.config.software)
        data = response.encode(integrity_key=generation.local_key, fingerprint=True)
        agent._send_from(local, destination, data, now)

    def respond_error(
        self,
        request: Message,
        code: int,
        reason: str,
        generation: Generation | None,
        local: Candidate,
        destination: TransportAddress,
        now: float,
    ) -> None:
        agent = self.agent
        response = request.error_response(code, reason)
        if generation is not None:
            self.send_response(response, generation, local, destination, now)
        else:
            agent._send_from(local, destination, response.encode(fingerprint=True), now)

    def relay_lost(self, relayed: Candidate, now: float) -> None:
        """A relayed candidate died (TURN allocation gone): its pairs fail, so that media moves
        to another valid pair at once instead of waiting for consent to expire."""
        agent = self.agent
        for generation in (agent.generation, agent._previous):
            if generation is None:
                continue
            checklist = generation.checklist
            for pair in list(checklist.pairs):
                if pair.local.address == relayed.address and pair.state is not PairState.FAILED:
                    self.fail_pair(generation, pair, now)
            for valid in list(checklist.valid):
                if valid.local.address == relayed.address:
                    checklist.valid.remove(valid)
                    valid.valid = False
                    agent.selector.update_component(generation, valid.component, now)
