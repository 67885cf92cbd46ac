"""The probe as a sans-I/O state machine: STUN Binding, and RFC 5780 NAT behaviour discovery.

Tests run one after another from one local socket (RFC 5780 §5 asks clients to pace
transactions, and the NAT's state must not be disturbed by parallel probes)::

    test I          Binding to A1:P1 → mapped address M1, OTHER-ADDRESS A2:P2       (§4.2)
    filtering II    to A1:P1 with CHANGE-REQUEST ip+port: answer from A2:P2?          (§4.4)
                    yes → endpoint-independent filtering
    filtering III   to A1:P1 with CHANGE-REQUEST port: answer from A1:P2?
                    yes → address-dependent, no → address-and-port-dependent
    mapping II      to A2:P1 → M2; M2 == M1 → endpoint-independent mapping          (§4.3)
    mapping III     to A2:P2 → M3; M3 == M2 → address-dependent, else
                    address-and-port-dependent

Filtering runs before mapping on purpose: mapping tests send to A2, which would open the NAT's
filter for A2 and make an address-dependent filter look endpoint-independent. If M1 equals the
local address there is no NAT and the mapping tests are skipped (the mapping is endpoint-
independent by definition); the filtering tests still run, since a firewall may filter.

Usage: ``probe = Probe(server, local, now, rng=random.SystemRandom())``, then loop: send
:meth:`Probe.datagrams_to_send`, feed decoded messages to :meth:`Probe.receive`, call
:meth:`Probe.handle_timer` at :meth:`Probe.next_timer`, until :attr:`Probe.done`; then
:attr:`Probe.result` or :attr:`Probe.error`.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from icerelay.errors import ProbeError
from icerelay.net import Datagram
from icerelay.probe.results import Behavior, BindingResult, ProbeResult
from icerelay.stun import (
    Address,
    AttributeType,
    ChangeRequest,
    Message,
    MessageClass,
    Method,
    new_transaction_id,
)
from icerelay.stun.transaction import ClientTransaction, Transport

if TYPE_CHECKING:
    from random import Random

A = AttributeType


class Step(Enum):
    TEST_I = "test I"
    FILTERING_II = "filtering test II"
    FILTERING_III = "filtering test III"
    MAPPING_II = "mapping test II"
    MAPPING_III = "mapping test III"


class Probe:
    """See the module docstring. ``rng`` draws the transaction ids (RFC 8489 §6: they must be
    uniformly random, so shells pass :class:`random.SystemRandom`; tests pass a seeded one)."""

    def __init__(
        self,
        server: Address,
        local: Address,
        now: float,
        *,
        rng: Random,
        behavior: bool = False,
        transport: Transport = "udp",
        timeout: float = 3.0,
        rto: float | None = None,
    ) -> None:
        if behavior and transport != "udp":
            raise ValueError("NAT behaviour discovery runs over UDP only")
        self.server = server
        self.local = local
        #: Draws the transaction ids (RFC 8489 §6): SystemRandom in use, seeded in tests.
        self.rng = rng
        self.behavior = behavior
        self.transport: Transport = transport
        self.timeout = timeout
        # RFC 8489's 500 ms first RTO, shortened for short timeouts so that a lost datagram is
        # still retransmitted a few times before the step gives up.
        self.rto = rto if rto is not None else min(0.5, timeout / 4)
        self.done = False
        self.result: ProbeResult | None = None
        self.error: ProbeError | None = None
        self._notes: list[str] = []
        self._first: BindingResult | None = None
        self._mapped2: Address | None = None
        self._filtering: Behavior | None = None
        self._mapping: Behavior | None = None
        self._step = Step.TEST_I
        self._destination = server
        self._expected_source: Address | None = None
        self._transaction: ClientTransaction
        self._deadline = 0.0
        self._last_send = now
        self._outgoing: list[Datagram] = []
        self._start(Step.TEST_I, server, 0, now)

    # --- sans-I/O interface ----------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        if not self.done:
            for data in self._transaction.datagrams_to_send(now):
                self._last_send = now
                self._outgoing.append(Datagram(data, None, self._destination))
        out, self._outgoing = self._outgoing, []
        return out

    def next_timer(self) -> float | None:
        if self.done:
            return None
        timer = self._transaction.next_timer()
        return self._deadline if timer is None else min(timer, self._deadline)

    def handle_timer(self, now: float) -> None:
        if self.done:
            return
        self._transaction.handle_timer(now)
        if now >= self._deadline or self._transaction.error is not None:
            self._transaction.cancel()
            self._on_timeout(now)

    def receive(self, message: Message, source: Address, now: float) -> None:
        """A decoded STUN message arrived from ``source`` on our socket."""
        if self.done or not self._transaction.receive(message):
            return
        response = self._transaction.response
        assert response is not None
        if response.message_class == MessageClass.ERROR_RESPONSE:
            error = response.get(A.ERROR_CODE)
            text = f"{error.code} {error.reason}" if error is not None else "no ERROR-CODE"
            self._on_error_response(text, now)
            return
        mapped = response.get(A.XOR_MAPPED_ADDRESS) or response.get(A.MAPPED_ADDRESS)
        if mapped is None:
            self._on_error_response("success response without a mapped address", now)
            return
        result = BindingResult(
            destination=self._destination,
            source=source,
            mapped=mapped,
            rtt=max(0.0, now - self._last_send),
            response_origin=response.get(A.RESPONSE_ORIGIN),
            other_address=response.get(A.OTHER_ADDRESS),
        )
        self._on_success(result, now)

    # --- the state machine -----------------------------------------------------------------

    def _start(self, step: Step, destination: Address, flags: int, now: float) -> None:
        request = Message(Method.BINDING, MessageClass.REQUEST, new_transaction_id(self.rng))
        if flags:
            request.add(A.CHANGE_REQUEST, flags)
        self._step = step
        self._destination = destination
        self._transaction = ClientTransaction(
            request.encode(fingerprint=True), self.transport, now, rto=self.rto, ti=self.timeout
        )
        self._deadline = now + self.timeout
        self._last_send = now

    def _on_success(self, result: BindingResult, now: float) -> None:
        step = self._step
        if step is Step.TEST_I:
            self._first = result
            other = result.other_address
            if not self.behavior:
                self._finish()
            elif other is None:
                self._notes.append("server sent no OTHER-ADDRESS: it does not do RFC 5780")
                self._finish()
            else:
                self._expected_source = other
                flags = ChangeRequest.CHANGE_IP | ChangeRequest.CHANGE_PORT
                self._start(Step.FILTERING_II, self.server, flags, now)
        elif step is Step.FILTERING_II:
            self._check_source(result.source)
            self._filtering = Behavior.ENDPOINT_INDEPENDENT
            self._start_mapping(now)
        elif step is Step.FILTERING_III:
            self._check_source(result.source)
            self._filtering = Behavior.ADDRESS_DEPENDENT
            self._start_mapping(now)
        elif step is Step.MAPPING_II:
            assert self._first is not None
            if result.mapped == self._first.mapped:
                self._mapping = Behavior.ENDPOINT_INDEPENDENT
                self._finish()
            else:
                self._mapped2 = result.mapped
                other = self._other()
                self._start(Step.MAPPING_III, other, 0, now)
        elif step is Step.MAPPING_III:
            same = result.mapped == self._mapped2
            self._mapping = (
                Behavior.ADDRESS_DEPENDENT if same else Behavior.ADDRESS_AND_PORT_DEPENDENT
            )
            self._finish()

    def _on_timeout(self, now: float) -> None:
        step = self._step
        if step is Step.TEST_I:
            self._fail(f"no response from {self.server} within {self.timeout:g} s")
        elif step is Step.FILTERING_II:
            other = self._other()
            self._expected_source = Address(self.server.host, other.port)
            self._start(Step.FILTERING_III, self.server, ChangeRequest.CHANGE_PORT, now)
        elif step is Step.FILTERING_III:
            self._filtering = Behavior.ADDRESS_AND_PORT_DEPENDENT
            self._start_mapping(now)
        else:
            self._notes.append(f"{step.value}: no response from {self._destination}")
            self._finish()

    def _on_error_response(self, text: str, now: float) -> None:
        if self._step is Step.TEST_I:
            self._fail(f"{self.server} answered with an error: {text}")
            return
        self._notes.append(f"{self._step.value}: error response {text}")
        if self._step in (Step.FILTERING_II, Step.FILTERING_III):
            self._start_mapping(now)
        else:
            self._finish()

    def _start_mapping(self, now: float) -> None:
        assert self._first is not None
        if self._first.mapped == self.local:
            self._mapping = Behavior.ENDPOINT_INDEPENDENT
            self._finish()
            return
        other = self._other()
        self._start(Step.MAPPING_II, Address(other.host, self.server.port), 0, now)

    def _check_source(self, source: Address) -> None:
        if self._expected_source is not None and source != self._expected_source:
            self._notes.append(
                f"{self._step.value}: answer came from {source}, expected"
                f" {self._expected_source}; the server may not honour CHANGE-REQUEST"
            )

    def _other(self) -> Address:
        assert self._first is not None and self._first.other_address is not None
        return self._first.other_address

    def _finish(self) -> None:
        assert self._first is not None
        self.done = True
        self.result = ProbeResult(
            server=self.server,
            transport=self.transport,
            local=self.local,
            first=self._first,
            behavior_requested=self.behavior,
            mapping=self._mapping,
            filtering=self._filtering,
            notes=tuple(self._notes),
        )

    def _fail(self, message: str) -> None:
        self.done = True
        self.error = ProbeError(message)
