"""The ICE agent, sans I/O (RFC 8445, compatible with RFC 5245 peers).

One :class:`Agent` runs ICE for one data stream (an ``m=`` line) with one or two components
(RTP = 1, RTCP = 2; one with rtcp-mux). It never touches a socket or a clock: the driver feeds it
datagrams and time, and sends what it returns::

    agent = Agent(controlling=True, components=1, config=AgentConfig(stun_servers=(...,)))
    agent.gather({1: [("192.0.2.10", 40000)]}, now)          # bound sockets
    agent.set_remote_credentials(ufrag, pwd, now)             # from the peer's SDP
    agent.add_remote_candidate(candidate, now)                # trickle, any time
    agent.add_remote_candidate(None, now)                     # end-of-candidates
    agent.receive(data, source, destination, now)             # every datagram on those sockets
    for datagram in agent.datagrams_to_send(now): ...         # put on the wire
    agent.next_timer() / agent.handle_timer(now)
    while (event := agent.next_event()) is not None: ...      # CandidateGathered, ...
    agent.send(rtp, component=1, now=now)                     # media on the selected pair

What happens inside, with the RFC 8445 names:

- *Gathering* (section 5.1) is done by :class:`~icerelay.ice.gathering.Gatherer`.
- *Connectivity checks* (section 7.2) are STUN Binding requests on each candidate pair, signed
  with the short-term credentials of the peer (USERNAME ``remote-ufrag:local-ufrag``,
  MESSAGE-INTEGRITY keyed with the remote password), carrying PRIORITY (the peer-reflexive
  priority the local candidate would have), ICE-CONTROLLING or ICE-CONTROLLED with the
  *tie-breaker*, and USE-CANDIDATE when nominating. One new check leaves every *Ta* (pacing).
- A check from the peer is answered, and answered back with a *triggered check* on the same pair
  at once (section 7.3.1.4): the peer's check just opened the peer's NAT for it, so it is the
  check most likely to succeed right now. This is what makes an agent connect in about one round
  trip once both sides have the candidates.
- *Freezing* (sections 6.1.2.6, 7.2.5.3.3): one pair per foundation is checked first and its
  success unfreezes the others; pairs that trickle in later follow the same rule, lowest component
  first (see :func:`~icerelay.ice.checklist.state_for_new_pair`). Several data streams share one
  checklist set and one pacer in a :class:`~icerelay.ice.session.Session`.
- Checks from unknown addresses create *peer-reflexive* remote candidates (section 7.3.1.3);
  responses that reveal an unknown mapped address create peer-reflexive local ones
  (section 7.2.5.3.1).
- *Role conflicts* (both controlling or both controlled, section 7.3.1.1) are resolved by the
  tie-breakers, answering 487 (Role Conflict) or switching role; a 487 response switches role and
  retries the check (section 7.2.5.1).
- *Nomination* (section 8.1.1): regular (the controlling agent checks first, then repeats the
  check on the best valid pair with USE-CANDIDATE) or aggressive (RFC 5245: USE-CANDIDATE in
  every check). The controlled agent follows both.
- *Consent freshness* (RFC 7675): on the pairs in use a Binding request goes every 5 s
  (randomized 0.8-1.2); no answer for 30 s means the peer withdrew consent: the agent fails and
  stops sending. Keepalives (section 11) cover the time when consent requests are not sent.
- *ICE restart* (section 9): new credentials and a new checklist, while media keeps using the old
  selected pair until the new checks give a pair.
- *ICE lite* (section 2.5): a lite agent only has host candidates, never sends checks, answers the
  peer's and selects the pair the peer nominates.
"""

from __future__ import annotations

import string
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from icerelay.errors import IceError, StunError
from icerelay.ice.candidate import (
    Candidate,
    CandidateType,
    TransportAddress,
    address_family,
)
from icerelay.ice.checklist import (
    CheckList,
    set_initial_states,
    state_for_new_pair,
)
from icerelay.ice.checks import ConnectivityChecks
from icerelay.ice.config import AgentConfig
from icerelay.ice.consent import ConsentFreshness
from icerelay.ice.events import (
    CandidateGathered,
    CandidatePairStateChanged,
    ConnectionState,
    ConnectionStateChanged,
    Datagram,
    DataReceived,
    Event,
    GatheringComplete,
    RoleChanged,
)
from icerelay.ice.gathering import Gatherer, RelayedData, RelayFactory, RelayLost
from icerelay.ice.generation import Check, Generation
from icerelay.ice.nomination import Selector
from icerelay.ice.pacing import Pacer, has_check_to_send, next_check
from icerelay.ice.pair import CandidatePair, PairState
from icerelay.ice.relay import TurnServer
from icerelay.stun import (
    Message,
    MessageClass,
    Method,
    decode_message,
    is_stun,
)

if TYPE_CHECKING:
    from random import Random

ICE_CHARS = string.ascii_letters + string.digits + "+/"
UFRAG_LENGTH = 8  # RFC 8445 section 5.3: at least 24 bits of randomness (4 ice-chars)
PWD_LENGTH = 24  # at least 128 bits (22 ice-chars)



class Coordinator(Protocol):
    """What a multi-stream session provides to its agents (one per data stream)."""

    def checklists(self) -> list[CheckList]: ...

    def set_role(self, controlling: bool) -> None: ...


class Agent:
    """A sans-I/O ICE agent for one data stream; see the module documentation.

    ``controlling`` is the initial role (the offerer is controlling, section 6.1.1).
    ``components`` is 1 (RTP with rtcp-mux, or data) or 2 (RTP and RTCP). ``lite`` makes an
    ICE-lite agent. ``rng`` makes every random choice (credentials, tie-breaker, transaction ids,
    consent jitter): pass a seeded :class:`random.Random` for reproducible simulations, and
    :class:`random.SystemRandom` in production.

    The agent is the state machine that receives, answers and sends; three parts of it live in
    their own modules: :mod:`~icerelay.ice.pacing` (Ta), :mod:`~icerelay.ice.nomination` (the
    selected pair, USE-CANDIDATE) and :mod:`~icerelay.ice.consent` (RFC 7675, keepalives).
    """

    def __init__(
        self,
        *,
        controlling: bool,
        components: int = 1,
        lite: bool = False,
        config: AgentConfig | None = None,
        turn_servers: Sequence[TurnServer] = (),
        relay_factory: RelayFactory | None = None,
        rng: Random,
        local_ufrag: str | None = None,
        local_pwd: str | None = None,
        tie_breaker: int | None = None,
    ) -> None:
        if components not in (1, 2):
            raise IceError("an agent has 1 (rtcp-mux) or 2 (RTP and RTCP) components")
        self.config = config or AgentConfig()
        self.rng = rng
        self.lite = lite
        self.controlling = controlling and not lite
        self.components = tuple(range(1, components + 1))
        self.tie_breaker = tie_breaker if tie_breaker is not None else self.rng.getrandbits(64)
        self.remote_lite = False
        self.gatherer = Gatherer(
            self.components,
            self.config,
            self.rng,
            turn_servers=() if lite else turn_servers,
            relay_factory=relay_factory,
            host_only=lite,
        )
        self.generation = self._new_generation(local_ufrag, local_pwd)
        """The current ICE generation (credentials, remote candidates, checklist)."""
        self._previous: Generation | None = None
        self._checks: dict[bytes, Check] = {}
        self._outbox: list[Datagram] = []
        self._events: deque[Event] = deque()
        self._state = ConnectionState.NEW
        self._coordinator: Coordinator | None = None
        self._pacer: Pacer = Pacer(self.config.ta, [self])
        self.selector = Selector(self)
        self.consent = ConsentFreshness(self)
        self.checks = ConnectivityChecks(self)
        self._closed = False
        self._prflx_count = 0
        self._now = 0.0
        self.checks_sent = 0
        """Connectivity-check requests put on the wire, retransmissions included."""
        self.data_dropped = 0
        """Non-STUN datagrams dropped because they came from an unknown address."""

    # --- properties -------------------------------------------------------------------------

    @property
    def local_username(self) -> str:
        """ice-ufrag to signal to the peer."""
        return self.generation.local_ufrag

    @property
    def local_password(self) -> str:
        """ice-pwd to signal to the peer."""
        return self.generation.local_pwd

    @property
    def remote_credentials(self) -> tuple[str, str] | None:
        """The peer's (ice-ufrag, ice-pwd) for the current generation, once known."""
        generation = self.generation
        if generation.remote_ufrag is None or generation.remote_pwd is None:
            return None
        return (generation.remote_ufrag, generation.remote_pwd)

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def local_candidates(self) -> list[Candidate]:
        """The gathered candidates to signal (host, server-reflexive, relayed)."""
        return list(self.gatherer.candidates)

    @property
    def remote_candidates(self) -> list[Candidate]:
        """Signalled and peer-reflexive remote candidates of the current generation."""
        return list(self.generation.remote_candidates)

    @property
    def checklist(self) -> CheckList:
        """The current checklist (read it, do not change it)."""
        return self.generation.checklist

    def selected_pair(self, component: int = 1) -> CandidatePair | None:
        """The pair media for ``component`` uses now (nominated, or best valid until then)."""
        pair = self.generation.selected.get(component)
        if pair is None and self._previous is not None:
            pair = self._previous.selected.get(component)
        return pair

    # --- application interface --------------------------------------------------------------

    def gather(self, addresses: Mapping[int, Sequence[TransportAddress]], now: float) -> None:
        """Start gathering from the driver's bound sockets, ``{component: [address, ...]}``.

        Host candidates are reported at once; server-reflexive and relayed ones as they arrive.
        """
        self.gatherer.gather(addresses, now)
        self._process_gatherer(now)

    def set_remote_credentials(
        self, ufrag: str, pwd: str, now: float, *, lite: bool = False
    ) -> None:
        """The peer's ice-ufrag and ice-pwd (and whether it is ICE-lite); checks start now.

        New credentials for a running session mean an ICE restart: call :meth:`restart` first.
        """
        generation = self.generation
        known = (generation.remote_ufrag, generation.remote_pwd)
        if generation.remote_ufrag is not None and known != (ufrag, pwd):
            raise IceError("the peer changed its credentials: that is an ICE restart")
        generation.remote_ufrag, generation.remote_pwd = ufrag, pwd
        self.remote_lite = lite
        if lite and not self.lite and not self.controlling:
            # Section 6.1.1: facing a lite peer, the full agent is controlling.
            self._set_role(True, announce=True)
        self._start_checks(now)

    def add_remote_candidate(self, candidate: Candidate | None, now: float) -> None:
        """A remote candidate from signalling (trickle, any time); ``None`` = end-of-candidates."""
        generation = self.generation
        if candidate is None:
            generation.remote_complete = True
            self.update_state(now)
            return
        if candidate.component not in self.components:
            return  # e.g. an RTCP candidate when rtcp-mux was negotiated
        if candidate.transport.lower() != "udp":
            return
        existing = self._find_remote(generation, candidate.address, candidate.component)
        if existing is not None:
            if existing.type is CandidateType.PEER_REFLEXIVE:
                # The peer now signals what we learned from its check: same pairs, better data.
                generation.remote_candidates.remove(existing)
                generation.remote_candidates.append(candidate)
                checklist = generation.checklist
                for pair in [*checklist.pairs, *checklist.valid]:
                    if pair.remote is existing:
                        pair.remote = candidate
                # New priorities, so a new order.
                checklist.set_role(self.controlling)
            return
        generation.remote_candidates.append(candidate)
        for local in self._pairable_locals(candidate.component):
            if address_family(local.host) == candidate.family:
                self._add_pair(generation, local, candidate, now)
        for provider in self.gatherer.relays():
            provider.permit([candidate.address], now)
        self._pace(now)

    def apply_remote_pacing(self, milliseconds: int) -> None:
        """The peer's ``a=ice-pacing`` (RFC 8839 section 5.5): both agents use the larger Ta
        (RFC 8445 section 14.2), so that neither sends checks faster than the other accepts."""
        self._pacer.ta = max(self._pacer.ta, self.config.ta, milliseconds / 1000.0)

    def end_of_candidates(self, now: float) -> None:
        """The peer sent end-of-candidates (RFC 8838)."""
        self.add_remote_candidate(None, now)

    def send(self, data: bytes, component: int = 1, *, now: float) -> None:
        """Send media on the component's selected pair.

        Raises IceError when there is no pair yet, or after consent was lost (RFC 7675 forbids
        sending then).
        """
        if self.consent.lost or self._closed:
            raise IceError("no consent to send (ICE failed or closed)")
        pair = self.selected_pair(component)
        if pair is None:
            raise IceError(f"component {component} has no selected pair yet")
        self.transmit(pair, data, now)

    def restart(
        self,
        now: float,
        *,
        controlling: bool | None = None,
        local_ufrag: str | None = None,
        local_pwd: str | None = None,
    ) -> None:
        """ICE restart (section 9): new local credentials, a new checklist; signal again.

        Media keeps flowing on the current selected pairs until the new checks find pairs. The
        local candidates are kept and reported again (CandidateGathered, GatheringComplete) so
        that the driver can signal them with the new credentials.
        """
        old = self.generation
        for transaction_id, check in list(self._checks.items()):
            if check.generation is old and not check.consent:
                del self._checks[transaction_id]
        self._previous = old if old.selected else self._previous
        self.generation = self._new_generation(local_ufrag, local_pwd)
        if controlling is not None and controlling != self.controlling and not self.lite:
            self._set_role(controlling, announce=True)
        for candidate in self.gatherer.candidates:
            self._events.append(CandidateGathered(candidate))
        if self.gatherer.complete:
            self._events.append(GatheringComplete())

    def close(self, now: float) -> None:
        """Stop everything: checks, consent, relays (they are deallocated)."""
        if self._closed:
            return
        self._closed = True
        self._checks.clear()
        self.gatherer.close(now)
        self.set_state(ConnectionState.CLOSED)

    # --- driver interface -------------------------------------------------------------------

    def receive(
        self,
        data: bytes,
        source: TransportAddress,
        destination: TransportAddress,
        now: float,
        *,
        transport: str = "udp",
    ) -> None:
        """Feed one datagram that arrived on one of the agent's sockets (or, with ``transport``
        "tcp"/"tls", bytes from a TURN server's stream connection; see ``Datagram``)."""
        self._now = now
        source = (str(source[0]), int(source[1]))
        destination = (str(destination[0]), int(destination[1]))
        if transport != "udp":
            self.gatherer.receive_relay(data, source, destination, now, transport)
            self._process_gatherer(now)
            return
        # Decoded once, here, and the message passed along (the checks' hot path).
        message = _decode(data) if is_stun(data) else None
        if message is not None and self.gatherer.receive_response(message, now):
            # Answers to gathering requests first: a TURN server is often the STUN server too,
            # so its Binding responses arrive on a relay's socket.
            self._process_gatherer(now)
            return
        if not self.gatherer.receive_relay(data, source, destination, now):
            self._receive_on(data, source, destination, now, message, gathered=True)
        self._process_gatherer(now)

    def connection_lost(
        self, server: TransportAddress, base: TransportAddress, transport: str, now: float
    ) -> None:
        """The driver's TCP/TLS connection to a TURN server ended (or never opened)."""
        self.gatherer.relay_connection_lost(server, base, transport, now)
        self._process_gatherer(now)

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        outbox, self._outbox = self._outbox, []
        return outbox + self.gatherer.datagrams_to_send(now)

    def next_timer(self) -> float | None:
        timers: list[float] = []
        gatherer_timer = self.gatherer.next_timer()
        if gatherer_timer is not None:
            timers.append(gatherer_timer)
        if self._closed:
            return min(timers, default=None)
        for check in self._checks.values():
            timer = check.transaction.next_timer()
            if timer is not None:
                timers.append(timer)
        if self._can_check() and self.has_check_to_send():
            timers.append(self._pacer.next_check_at)
        timers.extend(self.selector.timers(self._now))
        timers.extend(self.consent.timers(self._now))
        return min(timers, default=None)

    def handle_timer(self, now: float) -> None:
        self._now = now
        self.gatherer.handle_timer(now)
        self._process_gatherer(now)
        if self._closed:
            return
        for transaction_id, check in list(self._checks.items()):
            transaction = check.transaction
            transaction.handle_timer(now)
            retransmissions = transaction.datagrams_to_send(now)
            if not check.cancelled:
                for data in retransmissions:
                    if not check.consent:
                        self.checks_sent += 1
                    self.transmit(check.pair, data, now)
            if transaction.done:
                self._checks.pop(transaction_id, None)
                if not check.cancelled:
                    self.checks.timed_out(check, now)
        self.selector.handle_timer(now)
        self.selector.after_role_change(now)
        self._pace(now)
        self.consent.run(now)
        self.update_state(now)

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    # --- receiving --------------------------------------------------------------------------

    def _receive_on(
        self,
        data: bytes,
        source: TransportAddress,
        destination: TransportAddress,
        now: float,
        message: Message | None = None,
        *,
        gathered: bool = False,
    ) -> None:
        """A datagram for one of our candidates' bases (host socket or relayed address).

        ``message`` is ``data`` decoded, when the caller did it already; ``gathered`` says that
        the gatherer has already seen it (and did not take it as one of its responses).
        """
        if not is_stun(data):
            local = self._local_base(destination)
            if local is None or self._closed:
                return
            if not self._known_remote(source):
                # Media only from addresses the peer signalled or checked from: anything else
                # is someone spraying the port (RTP injection), not the peer.
                self.data_dropped += 1
                return
            self._events.append(DataReceived(local.component, bytes(data), source))
            return
        if message is None:
            message = _decode(data)
            if message is None:
                return
        if message.message_class == MessageClass.REQUEST and message.method == Method.BINDING:
            if not self._closed:
                self.checks.handle_request(message, source, destination, now)
        elif message.message_class in (MessageClass.SUCCESS_RESPONSE, MessageClass.ERROR_RESPONSE):
            if not gathered and self.gatherer.receive_response(message, now):
                return
            check = self._checks.get(message.transaction_id)
            if check is not None:
                self.checks.handle_response(check, message, source, destination, now)
        # Binding indications are keepalives: nothing to do.

    def _relay_lost(self, relayed: Candidate, now: float) -> None:
        """A relayed candidate died (TURN allocation gone): its pairs fail, so that media moves
        to another valid pair at once instead of waiting for consent to expire."""
        for generation in (self.generation, self._previous):
            if generation is None:
                continue
            checklist = generation.checklist
            for pair in list(checklist.pairs):
                if pair.local.address == relayed.address and pair.state is not PairState.FAILED:
                    self.checks.fail_pair(generation, pair, now)
            for valid in list(checklist.valid):
                if valid.local.address == relayed.address:
                    checklist.valid.remove(valid)
                    valid.valid = False
                    self.selector.update_component(generation, valid.component, now)

    # --- checks ------------------------------------------------------------------------------

    def _can_check(self) -> bool:
        generation = self.generation
        return (
            not self.lite
            and not self._closed
            and generation.started
            and generation.remote_pwd is not None
        )

    def has_check_to_send(self) -> bool:
        """Whether a check could leave now if Ta allowed (for the pacer's timer)."""
        return has_check_to_send(self.generation.checklist, self._checklists())

    def _checklists(self) -> list[CheckList]:
        """The checklist set: this stream's, or every stream's in a session."""
        if self._coordinator is not None:
            return self._coordinator.checklists()
        return [self.generation.checklist]

    def join(self, coordinator: Coordinator, pacer: Pacer) -> None:
        """Become one data stream of a session (see :mod:`icerelay.ice.session`)."""
        self._coordinator = coordinator
        self._pacer = pacer

    def _pace(self, now: float) -> None:
        """Send the next check if Ta has passed since the last one (section 6.1.4.2).

        In a :class:`~icerelay.ice.session.Session` the pacer is shared: Ta spaces the checks
        of all data streams together, which take turns.
        """
        self._pacer.pace(now)

    def send_next_check(self, now: float) -> bool:
        """Send this stream's next check (triggered first, then ordinary) regardless of Ta;
        False when there is none. The pacer calls this."""
        if not self._can_check():
            return False
        pair = next_check(self.generation.checklist, self._checklists())
        if pair is None:
            return False
        self.checks.send_check(self.generation, pair, now)
        return True

    def send_now(self, generation: Generation, pair: CandidatePair, now: float) -> None:
        """Send a queued triggered check at once, outside Ta pacing.

        Only for two kinds of check, neither of which probes a new path: the answer to a check
        the peer just sent on this pair (RFC 8445 section 7.3.1.4; it goes out at the peer's own
        paced rate, one for one, so it adds no burst), and the nomination of a pair that is
        already valid (section 8.1.1). Waiting for the next Ta slot would cost up to 50 ms for
        nothing; ordinary checks, which do probe new paths, stay paced.
        """
        if not self._can_check() or generation is not self.generation:
            self._pace(now)  # no credentials yet: the queue is served when they come
            return
        checklist = generation.checklist
        if pair in checklist.triggered:
            checklist.triggered.remove(pair)
        self.checks.send_check(generation, pair, now)

    def forget_consent_requests(self) -> None:
        """Consent is gone: not even a retransmission of a consent request may leave."""
        self._checks = {k: c for k, c in self._checks.items() if not c.consent}

    # --- state ----------------------------------------------------------------------------

    def paths(self) -> list[tuple[Generation, CandidatePair]]:
        """The pairs media uses now, with the generation whose credentials they use."""
        paths: list[tuple[Generation, CandidatePair]] = []
        for component in self.components:
            pair = self.generation.selected.get(component)
            if pair is not None:
                paths.append((self.generation, pair))
            elif self._previous is not None and component in self._previous.selected:
                paths.append((self._previous, self._previous.selected[component]))
        return paths

    def update_state(self, now: float) -> None:
        """Derive the connection state from the pairs in use and the checklist."""
        if self._closed or self.consent.lost:
            return
        generation = self.generation
        paths = self.paths()
        components_with_path = {pair.component for _, pair in paths}
        if len(components_with_path) == len(self.components):
            if all(pair.nominated for _, pair in paths):
                state = ConnectionState.COMPLETED
            else:
                state = ConnectionState.CONNECTED
            if self.consent.disconnected(paths, now):
                state = ConnectionState.DISCONNECTED
        elif self._checklist_failed(generation):
            state = ConnectionState.FAILED
        elif generation.started:
            state = ConnectionState.CHECKING
        else:
            state = ConnectionState.NEW
        self.set_state(state)

    def _checklist_failed(self, generation: Generation) -> bool:
        """Section 8.1.2 with trickle (RFC 8838 section 8): nothing left to try, nothing more to
        come from either side, and some component without a valid pair."""
        if not generation.started or not generation.remote_complete or not self.gatherer.complete:
            return False
        checklist = generation.checklist
        if self.lite:
            return False
        if checklist.triggered or any(
            pair.state in (PairState.WAITING, PairState.IN_PROGRESS, PairState.FROZEN)
            for pair in checklist.pairs
        ):
            return False
        return any(checklist.best_valid(component) is None for component in self.components)

    def set_state(self, state: ConnectionState) -> None:
        """Enter ``state``, reporting the change."""
        if state is not self._state:
            self._state = state
            self._events.append(ConnectionStateChanged(state))

    def _set_role(self, controlling: bool, *, announce: bool) -> None:
        if controlling == self.controlling:
            return
        if self._coordinator is not None:
            # One agent, one role: every data stream of the session switches together.
            self._coordinator.set_role(controlling)
        self.apply_role(controlling, announce=announce)

    def apply_role(self, controlling: bool, *, announce: bool) -> None:
        """Take a role decided elsewhere (the session); re-sorts the checklists."""
        if controlling == self.controlling:
            return
        self.controlling = controlling
        for generation in (self.generation, self._previous):
            if generation is not None:
                generation.checklist.set_role(controlling)
                generation.nominate_at.clear()
        # A new controlling agent must nominate what is already valid (and a new controlled
        # one stop doing so): re-evaluated at the next step, which has the time.
        self.selector.role_changed = True
        if announce:
            self._events.append(RoleChanged(controlling))

    def set_pair_state(self, pair: CandidatePair, state: PairState) -> None:
        """Move a pair to ``state``, reporting the change."""
        if pair.state is not state:
            pair.state = state
            self._events.append(CandidatePairStateChanged(pair.info()))

    def emit(self, event: Event) -> None:
        """Queue an event for :meth:`next_event`."""
        self._events.append(event)

    def forget_previous_generation(self, generation: Generation) -> None:
        """Section 9: once the restart found pairs for every component, the old generation
        (whose pairs media used meanwhile) can go."""
        if (
            generation is self.generation
            and self._previous is not None
            and all(c in generation.selected for c in self.components)
        ):
            self._previous = None

    # --- helpers --------------------------------------------------------------------------

    def _new_generation(self, ufrag: str | None, pwd: str | None) -> Generation:
        return Generation(
            local_ufrag=ufrag or self._random_string(UFRAG_LENGTH),
            local_pwd=pwd or self._random_string(PWD_LENGTH),
            checklist=CheckList(self.components, self.controlling, self.config.max_pairs),
        )

    def _random_string(self, length: int) -> str:
        return "".join(self.rng.choice(ICE_CHARS) for _ in range(length))

    def _generation_for(self, local_ufrag: str) -> Generation | None:
        for generation in (self.generation, self._previous):
            if generation is not None and generation.local_ufrag == local_ufrag:
                return generation
        return None

    def _start_checks(self, now: float) -> None:
        generation = self.generation
        if generation.started:
            return
        generation.started = True
        set_initial_states(self._checklists())
        # Pairs made by the peer's early checks are already queued as triggered checks.
        self.update_state(now)
        self._pace(now)

    def _pairable_locals(self, component: int) -> list[Candidate]:
        """Section 6.1.2.4: server-reflexive locals are replaced by their base, so only host
        and relayed candidates form checklist pairs."""
        return [
            candidate
            for candidate in self.gatherer.candidates
            if candidate.component == component
            and candidate.type in (CandidateType.HOST, CandidateType.RELAYED)
        ]

    def _add_pair(
        self,
        generation: Generation,
        local: Candidate,
        remote: Candidate,
        now: float,
        *,
        triggered: bool = False,
    ) -> CandidatePair | None:
        checklist = generation.checklist
        pair = checklist.add(CandidatePair(local, remote, self.controlling))
        if pair is None or pair.state is not PairState.FROZEN:
            return pair
        if generation.started and not triggered:
            pair.state = state_for_new_pair(pair, self._checklists())
        return pair

    def _find_remote(
        self, generation: Generation, address: TransportAddress, component: int
    ) -> Candidate | None:
        for candidate in generation.remote_candidates:
            if candidate.address == address and candidate.component == component:
                return candidate
        return None

    def owns(self, address: TransportAddress) -> bool:
        """Whether datagrams to ``address`` are this agent's: one of its sockets (host bases,
        the sockets its TURN relays use)."""
        if self._local_base(address) is not None:
            return True
        return any(provider.base == address for provider in self.gatherer.relays())

    def _known_remote(self, address: TransportAddress) -> bool:
        return any(
            candidate.address == address
            for generation in (self.generation, self._previous)
            if generation is not None
            for candidate in generation.remote_candidates
        )

    def _local_base(self, address: TransportAddress) -> Candidate | None:
        """The host or relayed candidate whose base is a local address (a socket, or a relayed
        address); for host candidates advertised at a 1:1 NAT address, their socket."""
        for candidate in self.gatherer.candidates:
            if candidate.type is CandidateType.HOST and candidate.base == address:
                return candidate
            if candidate.type is CandidateType.RELAYED and candidate.address == address:
                return candidate
        return None

    def transmit(self, pair: CandidatePair, data: bytes, now: float) -> None:
        """Send ``data`` on ``pair`` (from its local candidate to its remote one)."""
        self.consent.last_sent[pair.key] = now
        self._send_from(pair.local, pair.remote.address, data, now)

    def _send_from(
        self, local: Candidate, destination: TransportAddress, data: bytes, now: float
    ) -> None:
        if local.type is CandidateType.RELAYED:
            provider = self.gatherer.relay_for(local.address)
            if provider is not None:
                provider.send_to(data, destination, now)
            return
        base = local.base or local.address
        self._outbox.append(Datagram(data, base, destination))

    def _process_gatherer(self, now: float) -> None:
        """Pass the gatherer's events on, pairing new local candidates as they come."""
        while (event := self.gatherer.next_event()) is not None:
            if isinstance(event, RelayedData):
                self._receive_on(event.data, event.peer, event.relayed, now)
                continue
            if isinstance(event, RelayLost):
                self._relay_lost(event.relayed, now)
                continue
            if isinstance(event, CandidateGathered):
                candidate = event.candidate
                if candidate.type in (CandidateType.HOST, CandidateType.RELAYED):
                    generation = self.generation
                    for remote in generation.remote_candidates:
                        if (
                            remote.component == candidate.component
                            and remote.family == candidate.family
                        ):
                            self._add_pair(generation, candidate, remote, now)
                    if candidate.type is CandidateType.RELAYED:
                        provider = self.gatherer.relay_for(candidate.address)
                        if provider is not None and generation.remote_candidates:
                            provider.permit([r.address for r in generation.remote_candidates], now)
            self._events.append(event)
        self.selector.after_role_change(now)
        self._pace(now)
        self.update_state(now)


def _decode(data: bytes) -> Message | None:
    try:
        return decode_message(data)
    except StunError:
        return None
