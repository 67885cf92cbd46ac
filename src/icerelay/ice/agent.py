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

What happens inside, with the RFC 8445 names, and where:

- *Gathering* (section 5.1): :class:`~icerelay.ice.gathering.Gatherer`.
- *Connectivity checks* (sections 7.2, 7.3): :mod:`~icerelay.ice.checks` sends ours, answers the
  peer's with a *triggered check* on the same pair at once (section 7.3.1.4: the peer's check
  just opened its NAT for it; this is what makes an agent connect in about one round trip),
  learns *peer-reflexive* candidates (sections 7.3.1.3, 7.2.5.3.1) and resolves *role
  conflicts* (sections 7.3.1.1, 7.2.5.1); one new check leaves every *Ta*
  (:mod:`~icerelay.ice.pacing`, sections 6.1.4.2, 14).
- *Freezing* (sections 6.1.2.6, 7.2.5.3.3): :mod:`~icerelay.ice.checklist`; several data
  streams share one checklist set and one pacer in a :class:`~icerelay.ice.session.Session`.
- *Nomination* (section 8.1.1, regular or RFC 5245's aggressive) and the selected pair:
  :mod:`~icerelay.ice.nomination`.
- *Consent freshness* (RFC 7675) and keepalives (section 11): :mod:`~icerelay.ice.consent`.
- *ICE restart* (section 9): new credentials and a new checklist (a new
  :class:`~icerelay.ice.generation.Generation`), while media keeps using the old selected pair
  until the new checks give a pair.
- *ICE lite* (section 2.5): a lite agent only has host candidates, never sends checks, answers the
  peer's and selects the pair the peer nominates.

This module is the state machine that ties them together: it takes the application's and the
driver's calls, routes each datagram (decoded once), keeps the generations and derives the
connection state.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from icerelay.errors import IceError, StunError
from icerelay.ice.candidate import Candidate, CandidateType, TransportAddress, address_family
from icerelay.ice.checklist import CheckList, set_initial_states
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
from icerelay.ice.generation import PWD_LENGTH, UFRAG_LENGTH, Check, Generation, ice_string
from icerelay.ice.nomination import Selector
from icerelay.ice.pacing import Pacer, has_check_to_send
from icerelay.ice.pair import CandidatePair, PairState
from icerelay.ice.relay import TurnServer
from icerelay.stun import Message, MessageClass, Method, decode_message, is_stun

if TYPE_CHECKING:
    from random import Random


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

    The agent is the state machine that routes, decides and reports; its parts live in their own
    modules: :mod:`~icerelay.ice.checks` (sending, answering, answers),
    :mod:`~icerelay.ice.pacing` (Ta), :mod:`~icerelay.ice.nomination` (the selected pair,
    USE-CANDIDATE) and :mod:`~icerelay.ice.consent` (RFC 7675, keepalives).
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
        # The generation whose pairs were all nominated (see update_state).
        self._completed_generation: Generation | None = None
        self._coordinator: Coordinator | None = None
        self._pacer: Pacer = Pacer(self.config.ta, [self])
        self.selector = Selector(self)
        self.consent = ConsentFreshness(self)
        self.checks = ConnectivityChecks(self)
        self.closed = False
        """close() was called: nothing more is sent or checked."""
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
        components = self.components
        return [c for c in self.gatherer.candidates if c.component in components]

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

    def use_rtcp_mux(self) -> None:
        """The answer accepted rtcp-mux (RFC 5761 §5.1.3): RTCP shares component 1, so
        component 2, gathered as the fallback, is neither signalled nor checked any more.
        IceError once the checks started (the components are settled by then)."""
        if self.components == (1,):
            return
        if self.generation.started:
            raise IceError("rtcp-mux must be settled before the connectivity checks start")
        self.components = (1,)

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
        existing = generation.find_remote(candidate.address, candidate.component)
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
        for local in self.gatherer.pairable(candidate.component):
            if address_family(local.host) == candidate.family:
                self.checks.form_pair(generation, local, candidate, now)
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
        if self.consent.lost or self.closed:
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
        if self.closed:
            return
        self.closed = True
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
        if self.closed:
            return min(timers, default=None)
        for check in self._checks.values():
            timer = check.transaction.next_timer()
            if timer is not None:
                timers.append(timer)
        if self.checks.can_send() and self.has_check_to_send():
            timers.append(self._pacer.next_check_at)
        timers.extend(self.selector.timers(self._now))
        timers.extend(self.consent.timers(self._now))
        return min(timers, default=None)

    def handle_timer(self, now: float) -> None:
        self._now = now
        self.gatherer.handle_timer(now)
        self._process_gatherer(now)
        if self.closed:
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
            local = self.gatherer.local_base(destination)
            if local is None or self.closed:
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
            if not self.closed:
                self.checks.handle_request(message, source, destination, now)
        elif message.message_class in (MessageClass.SUCCESS_RESPONSE, MessageClass.ERROR_RESPONSE):
            if not gathered and self.gatherer.receive_response(message, now):
                return
            check = self._checks.get(message.transaction_id)
            if check is not None:
                self.checks.handle_response(check, message, source, destination, now)
        # Binding indications are keepalives: nothing to do.

    # --- checks ------------------------------------------------------------------------------

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
        return self.checks.send_next(now)

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
        if self.closed or self.consent.lost:
            return
        generation = self.generation
        paths = self.paths()
        components_with_path = {pair.component for _, pair in paths}
        if len(components_with_path) == len(self.components):
            if all(pair.nominated for _, pair in paths):
                state = ConnectionState.COMPLETED
                self._completed_generation = generation
            elif self._completed_generation is generation:
                # Completed stays completed until an ICE restart: a transient selection (a
                # better valid pair before its nomination arrives) must not read "connected".
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
            local_ufrag=ufrag or ice_string(self.rng, UFRAG_LENGTH),
            local_pwd=pwd or ice_string(self.rng, PWD_LENGTH),
            checklist=CheckList(self.components, self.controlling, self.config.max_pairs),
        )

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

    def owns(self, address: TransportAddress) -> bool:
        """Whether datagrams to ``address`` are this agent's: one of its sockets (host bases,
        the sockets its TURN relays use)."""
        if self.gatherer.local_base(address) is not None:
            return True
        return any(provider.base == address for provider in self.gatherer.relays())

    def _known_remote(self, address: TransportAddress) -> bool:
        return any(
            candidate.address == address
            for generation in (self.generation, self._previous)
            if generation is not None
            for candidate in generation.remote_candidates
        )

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
                self.checks.relay_lost(event.relayed, now)
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
                            self.checks.form_pair(generation, candidate, remote, now)
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
