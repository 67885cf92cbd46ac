"""Candidate gathering as a sans-I/O engine (RFC 8445 section 5.1.1, trickle per RFC 8838).

The driver binds the sockets (one per component and interface; the engine does not enumerate
interfaces) and passes their addresses in. From them the gatherer makes:

- **host** candidates at once;
- **server-reflexive** candidates: a STUN Binding request from each host address to each STUN
  server, retransmitted with a short RTO; each candidate is reported the moment its response
  arrives, and a server that does not answer only delays ``GatheringComplete``, never the other
  candidates;
- **relayed** candidates: one allocation per component on each TURN server, through a
  :class:`~icerelay.ice.relay.RelayProvider`.

Redundant candidates (section 5.1.3: same address and base as a better one, e.g. a reflexive
address equal to the host address when there is no NAT) are never reported.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from icerelay.errors import IceError
from icerelay.ice.candidate import (
    MAX_LOCAL_PREFERENCE,
    Candidate,
    CandidateType,
    TransportAddress,
    address_family,
    is_redundant,
    make_local_candidate,
)
from icerelay.ice.config import AgentConfig
from icerelay.ice.events import CandidateGathered, Datagram, GatheringComplete
from icerelay.ice.relay import (
    RelayAllocated,
    RelayData,
    RelayFailed,
    RelayProvider,
    TurnRelay,
    TurnServer,
)
from icerelay.stun import AttributeType, Message, MessageClass, Method
from icerelay.stun.transaction import ClientTransaction

if TYPE_CHECKING:
    from random import Random

RelayFactory = Callable[[TurnServer, TransportAddress], RelayProvider]


@dataclass(frozen=True)
class RelayedData:
    """Internal event: a peer's datagram arrived on a relayed candidate."""

    relayed: TransportAddress
    peer: TransportAddress
    data: bytes


@dataclass(frozen=True)
class RelayLost:
    """Internal event: a relayed candidate died (its allocation expired or its connection
    closed); pairs on it cannot work any more."""

    relayed: Candidate


@dataclass
class _StunJob:
    transaction: ClientTransaction
    host: Candidate
    server: TransportAddress


@dataclass
class _RelayJob:
    provider: RelayProvider
    component: int
    server: TurnServer
    local_preference: int
    relayed: Candidate | None = None
    done: bool = False


GathererEvent = CandidateGathered | GatheringComplete | RelayedData | RelayLost


class Gatherer:
    """Gathers the local candidates of one agent; see the module documentation."""

    def __init__(
        self,
        components: Sequence[int],
        config: AgentConfig,
        rng: Random,
        *,
        turn_servers: Sequence[TurnServer] = (),
        relay_factory: RelayFactory | None = None,
        host_only: bool = False,
    ) -> None:
        self.components = tuple(components)
        self.config = config
        self.rng = rng
        self.turn_servers = tuple(turn_servers)
        self.host_only = host_only
        self._relay_factory: RelayFactory = relay_factory or (
            lambda server, base: TurnRelay(
                server,
                base,
                software=config.software,
                rng=rng,
                rto=config.gather_rto,
                rc=config.gather_rc,
            )
        )
        self.candidates: list[Candidate] = []
        self.started = False
        self.complete = False
        self._stun_jobs: dict[bytes, _StunJob] = {}
        self._relay_jobs: list[_RelayJob] = []
        self._outbox: list[Datagram] = []
        self._events: deque[GathererEvent] = deque()

    # --- driver interface -----------------------------------------------------------------

    def gather(self, addresses: Mapping[int, Sequence[TransportAddress]], now: float) -> None:
        """Start gathering from the bound sockets: ``{component: [address, ...]}``."""
        if self.started:
            raise IceError("gathering was already started")
        if set(addresses) != set(self.components):
            raise IceError(f"need local addresses for components {list(self.components)}")
        self.started = True
        for component in self.components:
            bases = list(addresses[component])
            if not bases:
                raise IceError(f"component {component} has no local address")
            for index, base in enumerate(bases):
                # Earlier addresses are preferred: the driver lists interfaces in its order.
                preference = max(MAX_LOCAL_PREFERENCE - index, 0)
                host = make_local_candidate(
                    CandidateType.HOST, base, base, component, local_preference=preference
                )
                if self.config.relay_only:
                    continue  # the socket only carries TURN traffic
                mapped = [m for m in self.config.host_mappings if m[0] == base[0]]
                for _, advertised, _ in mapped:
                    # 1:1 NAT: the same socket, announced at the public address.
                    self._add(replace(host, host=advertised))
                if not mapped or any(include_local for _, _, include_local in mapped):
                    self._add(host)
                allowed = self.config.stun_base_allowed
                if self.host_only or (allowed is not None and not allowed(base[0])):
                    continue
                for server in self.config.stun_servers:
                    if address_family(server[0]) == address_family(base[0]):
                        self._start_stun(host, server, now)
            if self.host_only:
                continue
            for index, turn in enumerate(self.turn_servers):
                family = address_family(turn.address[0])
                turn_base = next((b for b in bases if address_family(b[0]) == family), None)
                if turn_base is None:
                    continue
                provider = self._relay_factory(turn, turn_base)
                self._relay_jobs.append(
                    _RelayJob(provider, component, turn, MAX_LOCAL_PREFERENCE - index)
                )
                provider.start(now)
        self._check_complete()

    def relay_for(self, relayed: TransportAddress) -> RelayProvider | None:
        """The relay behind a relayed candidate's address."""
        for job in self._relay_jobs:
            if job.relayed is not None and job.relayed.address == relayed:
                return job.provider
        return None

    def pairable(self, component: int) -> list[Candidate]:
        """The local candidates that form checklist pairs (RFC 8445 section 6.1.2.4):
        server-reflexive ones are replaced by their base, so only host and relayed ones."""
        return [
            candidate
            for candidate in self.candidates
            if candidate.component == component
            and candidate.type in (CandidateType.HOST, CandidateType.RELAYED)
        ]

    def local_base(self, address: TransportAddress) -> Candidate | None:
        """The host or relayed candidate whose base is a local address (a socket, or a relayed
        address); for host candidates advertised at a 1:1 NAT address, their socket."""
        for candidate in self.candidates:
            if candidate.type is CandidateType.HOST and candidate.base == address:
                return candidate
            if candidate.type is CandidateType.RELAYED and candidate.address == address:
                return candidate
        return None

    def relays(self) -> list[RelayProvider]:
        return [job.provider for job in self._relay_jobs]

    def receive_relay(
        self,
        data: bytes,
        source: TransportAddress,
        destination: TransportAddress,
        now: float,
        transport: str = "udp",
    ) -> bool:
        """Feed a datagram if it comes from a relay's server to its base; True when taken."""
        job = self._relay_job(source, destination, transport)
        if job is None:
            return False
        job.provider.receive(data, now)
        self._drain_relay(job, now)
        return True

    def relay_connection_lost(
        self, server: TransportAddress, base: TransportAddress, transport: str, now: float
    ) -> None:
        """The driver's TCP/TLS connection for a relay ended."""
        job = self._relay_job(server, base, transport)
        if job is not None:
            job.provider.connection_lost(now)
            self._drain_relay(job, now)

    def _relay_job(
        self, server: TransportAddress, base: TransportAddress, transport: str
    ) -> _RelayJob | None:
        for job in self._relay_jobs:
            provider = job.provider
            if (
                provider.server == server
                and provider.base == base
                and provider.transport == transport
            ):
                return job
        return None

    def receive_response(self, message: Message, now: float) -> bool:
        """Feed a decoded STUN response; True if it answered one of our Binding requests."""
        job = self._stun_jobs.get(message.transaction_id)
        if job is None or not job.transaction.receive(message):
            return False
        del self._stun_jobs[message.transaction_id]
        if message.message_class == MessageClass.SUCCESS_RESPONSE:
            mapped = message.get(AttributeType.XOR_MAPPED_ADDRESS)
            if mapped is None:
                mapped = message.get(AttributeType.MAPPED_ADDRESS)  # RFC 3489 servers
            if mapped is not None:
                self._add(
                    make_local_candidate(
                        CandidateType.SERVER_REFLEXIVE,
                        (mapped.host, mapped.port),
                        job.host.address,
                        job.host.component,
                        local_preference=(job.host.priority >> 8) & 0xFFFF,
                        server=job.server[0],
                    )
                )
        self._check_complete()
        return True

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        outbox, self._outbox = self._outbox, []
        for job in self._relay_jobs:
            provider = job.provider
            for data in provider.datagrams_to_send(now):
                outbox.append(Datagram(data, provider.base, provider.server, provider.transport))
        return outbox

    def next_timer(self) -> float | None:
        timers = [job.transaction.next_timer() for job in self._stun_jobs.values()]
        timers += [job.provider.next_timer() for job in self._relay_jobs]
        return min((t for t in timers if t is not None), default=None)

    def handle_timer(self, now: float) -> None:
        for transaction_id, job in list(self._stun_jobs.items()):
            transaction = job.transaction
            transaction.handle_timer(now)
            for data in transaction.datagrams_to_send(now):
                self._outbox.append(Datagram(data, job.host.address, job.server))
            if transaction.done:
                # No answer from that server: it only ever delays GatheringComplete.
                del self._stun_jobs[transaction_id]
        for relay in self._relay_jobs:
            timer = relay.provider.next_timer()
            if timer is not None and timer <= now:
                relay.provider.handle_timer(now)
            self._drain_relay(relay, now)
        self._check_complete()

    def next_event(self) -> GathererEvent | None:
        return self._events.popleft() if self._events else None

    def close(self, now: float) -> None:
        self._stun_jobs.clear()
        for job in self._relay_jobs:
            job.provider.close(now)

    # --- internals ------------------------------------------------------------------------

    def _start_stun(self, host: Candidate, server: TransportAddress, now: float) -> None:
        request = Message(Method.BINDING, MessageClass.REQUEST, self.rng.randbytes(12))
        if self.config.software:
            request.add(AttributeType.SOFTWARE, self.config.software)
        transaction = ClientTransaction(
            request.encode(fingerprint=True),
            now=now,
            rto=self.config.gather_rto,
            rc=self.config.gather_rc,
        )
        self._stun_jobs[transaction.transaction_id] = _StunJob(transaction, host, server)
        for data in transaction.datagrams_to_send(now):
            self._outbox.append(Datagram(data, host.address, server))

    def _drain_relay(self, job: _RelayJob, now: float) -> None:
        while (event := job.provider.next_event()) is not None:
            if isinstance(event, RelayAllocated):
                relayed = make_local_candidate(
                    CandidateType.RELAYED,
                    event.relayed,
                    event.relayed,
                    job.component,
                    local_preference=job.local_preference,
                    server=job.server.address[0],
                    related=event.mapped,
                )
                if self.config.relay_only:
                    # raddr would name our address as the TURN server saw it (the local one
                    # when not behind a NAT): hidden, as Chromium hides it (raddr 0.0.0.0
                    # rport 0), since relay-only is asked for to keep the address private.
                    hidden = "::" if ":" in relayed.host else "0.0.0.0"
                    relayed = replace(relayed, related_address=hidden, related_port=0)
                job.relayed = relayed
                job.done = True
                if event.mapped is not None and not self.config.relay_only:
                    # The server saw our mapping: a server-reflexive candidate for free.
                    self._add(
                        make_local_candidate(
                            CandidateType.SERVER_REFLEXIVE,
                            event.mapped,
                            job.provider.base,
                            job.component,
                            local_preference=MAX_LOCAL_PREFERENCE,
                            server=job.server.address[0],
                        )
                    )
                self._add(relayed)
            elif isinstance(event, RelayFailed):
                job.done = True
                if job.relayed is not None and job.relayed in self.candidates:
                    self.candidates.remove(job.relayed)
                    self._events.append(RelayLost(job.relayed))
            elif isinstance(event, RelayData) and job.relayed is not None:
                self._events.append(RelayedData(job.relayed.address, event.peer, event.data))
        self._check_complete()

    def _add(self, candidate: Candidate) -> None:
        if is_redundant(candidate, self.candidates):
            return
        self.candidates.append(candidate)
        self._events.append(CandidateGathered(candidate))

    def _check_complete(self) -> None:
        if self.complete or not self.started:
            return
        if self._stun_jobs or any(not job.done for job in self._relay_jobs):
            return
        self.complete = True
        self._events.append(GatheringComplete())
