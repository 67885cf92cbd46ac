"""The probe state machine against our Binding engine through a tiny in-test NAT model.

Every combination of RFC 4787 mapping and filtering behaviour must be classified exactly; time is
virtual, so the tests that wait for timeouts take no time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from icerelay.probe import Behavior, Probe
from icerelay.stun import Address, decode_message
from icerelay.stun.binding import BindingEngine, Rfc5780Addresses

EI, AD, APD = (
    Behavior.ENDPOINT_INDEPENDENT,
    Behavior.ADDRESS_DEPENDENT,
    Behavior.ADDRESS_AND_PORT_DEPENDENT,
)
LOCAL = Address("10.0.0.2", 5000)
PUBLIC_IP = "203.0.113.1"
RFC5780 = Rfc5780Addresses(Address("198.51.100.1", 3478), Address("198.51.100.2", 3479))


@dataclass
class Nat:
    """One inside host behind a NAT with the given behaviours (None: no NAT at all)."""

    mapping: Behavior | None
    filtering: Behavior | None
    ports: dict[tuple[str, int] | str | None, int] = field(default_factory=dict)
    sent_to: set[tuple[int, Address]] = field(default_factory=set)

    def outbound(self, destination: Address) -> Address:
        if self.mapping is None:
            return LOCAL
        key: tuple[str, int] | str | None = {
            EI: None,
            AD: destination.host,
            APD: (destination.host, destination.port),
        }[self.mapping]
        port = self.ports.setdefault(key, 7000 + len(self.ports))
        self.sent_to.add((port, destination))
        return Address(PUBLIC_IP, port)

    def inbound_allowed(self, source: Address, destination: Address) -> bool:
        if self.filtering is None or self.mapping is None:
            return True
        sent = [d for port, d in self.sent_to if port == destination.port]
        if self.filtering is EI:
            return bool(sent)
        if self.filtering is AD:
            return any(d.host == source.host for d in sent)
        return source in sent


def run_probe(nat: Nat, engine: BindingEngine, behavior: bool = True) -> Probe:
    now = 0.0
    probe = Probe(RFC5780.primary, LOCAL, now, rng=random.Random(1), behavior=behavior, timeout=1.0)
    for _ in range(1000):
        if probe.done:
            return probe
        delivered = False
        for outgoing in probe.datagrams_to_send(now):
            engine.receive(outgoing.data, nat.outbound(outgoing.destination),
                           outgoing.destination, now, "udp")  # fmt: skip
            for datagram in engine.datagrams_to_send(now):
                if nat.inbound_allowed(datagram.source, datagram.destination):
                    probe.receive(decode_message(datagram.data), datagram.source, now + 0.001)
                    delivered = True
        if not delivered:
            timer = probe.next_timer()
            assert timer is not None
            now = max(now, timer)
            probe.handle_timer(now)
    raise AssertionError("probe did not finish")


@pytest.mark.parametrize("mapping", [EI, AD, APD])
@pytest.mark.parametrize("filtering", [EI, AD, APD])
def test_classifies_every_nat(mapping: Behavior, filtering: Behavior) -> None:
    probe = run_probe(Nat(mapping, filtering), BindingEngine(rfc5780=RFC5780))
    assert probe.error is None and probe.result is not None
    result = probe.result
    assert result.mapped.host == PUBLIC_IP
    assert result.behind_nat
    assert (result.mapping, result.filtering) == (mapping, filtering)
    assert result.notes == ()


def test_no_nat_skips_the_mapping_tests() -> None:
    probe = run_probe(Nat(None, None), BindingEngine(rfc5780=RFC5780))
    assert probe.result is not None
    assert probe.result.mapped == LOCAL and not probe.result.behind_nat
    assert (probe.result.mapping, probe.result.filtering) == (EI, EI)


def test_server_without_rfc5780_gives_unknown_behaviour() -> None:
    probe = run_probe(Nat(EI, EI), BindingEngine())
    assert probe.result is not None
    assert probe.result.mapping is None and probe.result.filtering is None
    assert "OTHER-ADDRESS" in probe.result.notes[0]


def test_plain_probe_reports_mapped_address_and_rtt() -> None:
    probe = run_probe(Nat(APD, APD), BindingEngine(rfc5780=RFC5780), behavior=False)
    assert probe.result is not None
    assert probe.result.mapped == Address(PUBLIC_IP, 7000)
    assert probe.result.rtt == pytest.approx(0.001)
    assert probe.result.first.other_address == RFC5780.alternate
    text = probe.result.to_text()
    assert "mapped" in text and "203.0.113.1:7000" in text and "mapping" not in text


def test_no_answer_is_an_error_after_the_timeout() -> None:
    probe = Probe(RFC5780.primary, LOCAL, 0.0, rng=random.Random(2), timeout=2.0)
    sends = 0
    now = 0.0
    while not probe.done:
        sends += len(probe.datagrams_to_send(now))
        timer = probe.next_timer()
        assert timer is not None
        now = timer
        probe.handle_timer(now)
    assert probe.error is not None and "no response" in str(probe.error)
    assert now == pytest.approx(2.0)
    assert sends >= 3  # retransmitted within the timeout


def test_json_summary() -> None:
    probe = run_probe(Nat(EI, APD), BindingEngine(rfc5780=RFC5780))
    assert probe.result is not None
    data = probe.result.to_dict()
    assert data["mapping"] == "endpoint-independent"
    assert data["filtering"] == "address-and-port-dependent"
    assert data["other_address"] == "198.51.100.2:3479"
    assert data["behind_nat"] is True


def test_transaction_ids_come_from_rng() -> None:
    """The same seed gives the same transaction ids, one per step; no other randomness."""

    def ids(seed: int) -> list[bytes]:
        probe = Probe(RFC5780.primary, LOCAL, 0.0, rng=random.Random(seed), timeout=1.0)
        return [decode_message(d.data).transaction_id for d in probe.datagrams_to_send(0.0)]

    assert ids(7) == ids(7) == [random.Random(7).randbytes(12)]
    assert ids(7) != ids(8)
