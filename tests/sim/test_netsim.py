"""The simulator itself: delivery, delay, loss, and the RFC 4787 NAT behaviours."""

from __future__ import annotations

from dataclasses import replace

import pytest

from icerelay.net import Address, Datagram
from icerelay.netsim import (
    FULL_CONE,
    PORT_RESTRICTED_CONE,
    RESTRICTED_CONE,
    SYMMETRIC,
    Behaviour,
    Host,
    Link,
    Nat,
    NatConfig,
    Network,
    PortAssignment,
    SimulationError,
    StunServer,
)
from icerelay.stun import Message, MessageClass, Method

SERVER_A = ("198.51.100.1", 3478)
SERVER_B = ("198.51.100.2", 3478)


def build(config: NatConfig, seed: int = 0) -> tuple[Network, Nat, Host, Host, Host]:
    network = Network(seed)
    nat = network.add_nat("nat", "203.0.113.1", config)
    inside = network.add_host("inside", "10.0.0.2", realm=nat.inside)
    a = network.add_host("a", SERVER_A[0])
    b = network.add_host("b", SERVER_B[0])
    return network, nat, inside, a, b


def seen_from(network: Network, host: Host) -> list[tuple[str, int]]:
    network.run(1.0)
    sources = [packet.source for _, packet in host.received]
    host.received.clear()
    return sources


def test_delay_and_routing_between_public_hosts() -> None:
    network = Network()
    a = network.add_host("a", "192.0.2.1", link=Link(delay=0.010))
    b = network.add_host("b", "192.0.2.2", link=Link(delay=0.015))
    a.send(b"x", ("192.0.2.1", 1), ("192.0.2.2", 2))
    a.send(b"y", ("192.0.2.1", 1), ("192.0.2.99", 2))  # nobody there
    network.run(1.0)
    assert [(round(t, 6), p.data) for t, p in b.received] == [(0.025, b"x")]
    assert network.counters["dropped-no-route"] == 1


def test_hosts_send_the_shared_datagram_addresses() -> None:
    """icerelay.net.Address is accepted as a source and destination; None names no address."""
    network = Network()
    a = network.add_host("a", "192.0.2.1")
    b = network.add_host("b", "192.0.2.2")
    a.send(b"x", Address("192.0.2.1", 1), Address("192.0.2.2", 2))
    a.send(b"y", None, Address("192.0.2.2", 2))
    network.run(1.0)
    assert [(p.data, p.source, p.destination) for _, p in b.received] == [
        (b"x", ("192.0.2.1", 1), ("192.0.2.2", 2))
    ]
    assert network.counters["dropped-bad-source"] == 1


def test_stun_server_answers_with_the_shared_datagram() -> None:
    server = StunServer()
    request = Message(Method.BINDING, MessageClass.REQUEST, bytes(12))
    server.receive(request.encode(), ("203.0.113.1", 7000), SERVER_A, 0.0)
    (answer,) = server.datagrams_to_send(0.0)
    assert isinstance(answer, Datagram)
    assert (answer.source, answer.destination) == (Address(*SERVER_A), Address("203.0.113.1", 7000))


def test_loss_is_seeded_and_deterministic() -> None:
    def survivors(seed: int) -> list[bytes]:
        network = Network(seed)
        a = network.add_host("a", "192.0.2.1", link=Link(loss=0.3))
        b = network.add_host("b", "192.0.2.2")
        for i in range(200):
            a.send(bytes([i]), ("192.0.2.1", 1), ("192.0.2.2", 2))
        network.run(1.0)
        return [p.data for _, p in b.received]

    first = survivors(7)
    assert first == survivors(7)
    assert first != survivors(8)
    assert 100 < len(first) < 180  # about 70 % of 200


def test_endpoint_independent_mapping_reuses_the_external_port() -> None:
    network, _nat, inside, a, b = build(FULL_CONE)
    inside.send(b"1", ("10.0.0.2", 5000), SERVER_A)
    inside.send(b"2", ("10.0.0.2", 5000), SERVER_B)
    assert seen_from(network, a) == [("203.0.113.1", 5000)]  # port preserved
    assert seen_from(network, b) == [("203.0.113.1", 5000)]


@pytest.mark.parametrize(
    ("mapping", "same_ip_other_port_reuses"),
    [(Behaviour.ADDRESS_DEPENDENT, True), (Behaviour.ADDRESS_AND_PORT_DEPENDENT, False)],
)
def test_dependent_mappings(mapping: Behaviour, same_ip_other_port_reuses: bool) -> None:
    network, nat, inside, a, b = build(NatConfig(mapping, Behaviour.ENDPOINT_INDEPENDENT))
    inside.send(b"1", ("10.0.0.2", 5000), SERVER_A)
    inside.send(b"2", ("10.0.0.2", 5000), (SERVER_A[0], 9999))
    inside.send(b"3", ("10.0.0.2", 5000), SERVER_B)
    to_a = seen_from(network, a)
    to_b = seen_from(network, b)
    assert (to_a[0] == to_a[1]) is same_ip_other_port_reuses
    assert to_b[0] not in to_a
    assert len(nat.bindings) == (2 if same_ip_other_port_reuses else 3)


@pytest.mark.parametrize(
    ("config", "from_same_ip_other_port", "from_other_ip"),
    [
        (FULL_CONE, True, True),
        (RESTRICTED_CONE, True, False),
        (PORT_RESTRICTED_CONE, False, False),
    ],
)
def test_filtering(config: NatConfig, from_same_ip_other_port: bool, from_other_ip: bool) -> None:
    network, _nat, inside, a, b = build(config)
    inside.send(b"open", ("10.0.0.2", 5000), SERVER_A)
    network.run(1.0)
    external = ("203.0.113.1", 5000)
    a.send(b"reply", SERVER_A, external)
    a.send(b"same-ip", (SERVER_A[0], 1), external)
    b.send(b"other-ip", SERVER_B, external)
    network.run(1.0)
    got = {packet.data for _, packet in inside.received}
    assert b"reply" in got
    assert (b"same-ip" in got) is from_same_ip_other_port
    assert (b"other-ip" in got) is from_other_ip


def test_unsolicited_inbound_is_dropped() -> None:
    network, _nat, inside, a, _b = build(FULL_CONE)
    a.send(b"hello", SERVER_A, ("203.0.113.1", 5000))
    network.run(1.0)
    assert inside.received == []
    assert network.counters["dropped-no-mapping"] == 1


def test_binding_lifetime_is_refreshed_by_outbound_traffic_only() -> None:
    config = replace(PORT_RESTRICTED_CONE, binding_lifetime=30.0)
    network, nat, inside, a, _b = build(config)
    external = ("203.0.113.1", 5000)
    inside.send(b"1", ("10.0.0.2", 5000), SERVER_A)
    network.run(20.0)
    inside.send(b"2", ("10.0.0.2", 5000), SERVER_A)  # refresh at t=20
    network.run(20.0)  # t=40: alive until 50
    a.send(b"in-time", SERVER_A, external)
    network.run(5.0)
    a.send(b"refreshes-nothing", SERVER_A, external)
    network.run(10.0)  # t=55: expired
    a.send(b"late", SERVER_A, external)
    network.run(1.0)
    assert [p.data for _, p in inside.received] == [b"in-time", b"refreshes-nothing"]
    assert nat.bindings == []


def test_inbound_refresh_when_configured() -> None:
    config = replace(FULL_CONE, binding_lifetime=30.0, inbound_refresh=True)
    network, _nat, inside, a, _b = build(config)
    inside.send(b"1", ("10.0.0.2", 5000), SERVER_A)
    for _ in range(4):
        network.run(20.0)
        a.send(b"keep", SERVER_A, ("203.0.113.1", 5000))
    network.run(1.0)
    assert len(inside.received) == 4


@pytest.mark.parametrize(
    ("assignment", "expected"),
    [
        (PortAssignment.PRESERVE, [5000, 5001, 5002]),
        (PortAssignment.SEQUENTIAL, [49152, 49153, 49154]),
    ],
)
def test_port_assignment(assignment: PortAssignment, expected: list[int]) -> None:
    network, _nat, inside, a, _b = build(replace(SYMMETRIC, port_assignment=assignment))
    for port in (1, 2, 3):
        inside.send(b"x", ("10.0.0.2", 5000), (SERVER_A[0], port))
    assert [port for _, port in seen_from(network, a)] == expected


def test_random_port_assignment_is_seeded() -> None:
    def ports(seed: int) -> list[int]:
        network, _nat, inside, a, _b = build(
            replace(SYMMETRIC, port_assignment=PortAssignment.RANDOM), seed
        )
        for port in (1, 2, 3):
            inside.send(b"x", ("10.0.0.2", 5000), (SERVER_A[0], port))
        return [port for _, port in seen_from(network, a)]

    assert ports(1) == ports(1)
    assert len(set(ports(1))) == 3
    assert all(port >= 49152 for port in ports(2))


@pytest.mark.parametrize("hairpinning", [True, False])
def test_hairpinning(hairpinning: bool) -> None:
    network = Network()
    nat = network.add_nat("nat", "203.0.113.1", replace(FULL_CONE, hairpinning=hairpinning))
    x = network.add_host("x", "10.0.0.2", realm=nat.inside)
    y = network.add_host("y", "10.0.0.3", realm=nat.inside)
    server = network.add_host("s", SERVER_A[0])
    y.send(b"map", ("10.0.0.3", 6000), SERVER_A)  # y's mapping: 203.0.113.1:6000
    x.send(b"map", ("10.0.0.2", 5000), SERVER_A)
    network.run(1.0)
    x.send(b"hairpin", ("10.0.0.2", 5000), ("203.0.113.1", 6000))
    network.run(1.0)
    got = [(p.data, p.source) for _, p in y.received]
    if hairpinning:
        # RFC 4787 REQ-9: the source is x's external mapping, not its private address.
        assert got == [(b"hairpin", ("203.0.113.1", 5000))]
    else:
        assert got == []
        assert network.counters["dropped-no-hairpin"] == 1
    assert len(server.received) == 2


def test_same_private_addresses_in_two_realms() -> None:
    network = Network()
    left = network.add_nat("left", "203.0.113.1", FULL_CONE)
    right = network.add_nat("right", "203.0.113.2", FULL_CONE)
    a = network.add_host("a", "10.0.0.2", realm=left.inside)
    b = network.add_host("b", "10.0.0.2", realm=right.inside)
    b.send(b"open", ("10.0.0.2", 5000), ("203.0.113.1", 5000))
    a.send(b"hi", ("10.0.0.2", 5000), ("203.0.113.2", 5000))
    network.run(1.0)
    assert [(p.data, p.source) for _, p in b.received] == [(b"hi", ("203.0.113.1", 5000))]


def test_duplicate_address_in_a_realm_is_an_error() -> None:
    network = Network()
    network.add_host("a", "192.0.2.1")
    with pytest.raises(SimulationError):
        network.add_host("b", "192.0.2.1")


def test_nat_labels() -> None:
    assert SYMMETRIC.name == "APDM/APDF"
    assert FULL_CONE.name == "EIM/EIF"
    assert RESTRICTED_CONE.name == "EIM/ADF"
