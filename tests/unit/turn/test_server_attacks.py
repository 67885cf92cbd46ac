"""Regression tests for known attacks on TURN servers: each one must be refused."""

from __future__ import annotations

import os
import struct

import pytest

from icerelay.stun import Address, AttributeType, Message, MessageClass, Method, decode_message
from icerelay.turn.credentials import rest_api_credentials
from icerelay.turn.server.ports import RESERVATION_LIFETIME

from .server_helpers import CLIENT, REALM, SERVER, Client, error_code, make_engine

A = AttributeType


# --- relaying to where the server must never send (SSRF through TURN) ---------------------

DENIED_IPV4 = [
    "0.0.0.0",
    "127.0.0.1",
    "169.254.169.254",
    "10.1.2.3",
    "192.168.1.1",
    "100.64.0.1",
    "224.0.0.251",
    "255.255.255.255",
    "172.16.0.1",
]
DENIED_IPV6 = [
    "::",
    "::1",
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:169.254.169.254",
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, obfuscated client 127.0.0.1
    "2001:0:a00:1:8000:63bf:3fff:fdd2",  # Teredo, server 10.0.0.1
    "fe80::1",
    "fc00::1",
    "ff02::1",
]


@pytest.mark.parametrize("host", DENIED_IPV4)
def test_permission_and_channel_to_denied_ipv4_peers_get_403(host: str) -> None:
    engine, _ = make_engine()
    client = Client(engine)
    relayed = client.relayed(client.allocate())
    assert error_code(client.permit(host)) == 403
    assert error_code(client.bind_channel(0x4000, (host, 80))) == 403
    # Without a permission, Send indications and peer data go nowhere.
    assert client.send_indication((host, 80), b"GET / HTTP/1.0\r\n\r\n") == []
    engine.receive_relayed(b"x", (host, 80), relayed, client.now)
    assert engine.datagrams_to_send() == []
    assert engine.counters["refused_peer_policy"] == 2


@pytest.mark.parametrize("host", DENIED_IPV6)
def test_permission_to_denied_ipv6_forms_gets_403(host: str) -> None:
    engine, _ = make_engine()
    client = Client(engine)
    client.allocate((A.REQUESTED_ADDRESS_FAMILY, 2))
    assert error_code(client.permit(host)) == 403
    assert error_code(client.bind_channel(0x4000, (host, 80))) == 403


def test_mapped_loopback_is_refused_even_with_an_allowed_public_prefix() -> None:
    engine, _ = make_engine(allow_peers=["::/0"])
    client = Client(engine)
    client.allocate((A.REQUESTED_ADDRESS_FAMILY, 2))
    assert error_code(client.permit("::ffff:127.0.0.1")) == 403
    assert error_code(client.permit("2002:7f00:1::1")) == 403


def test_embedded_public_addresses_are_allowed() -> None:
    engine, _ = make_engine()
    client = Client(engine)
    client.allocate((A.REQUESTED_ADDRESS_FAMILY, 2))
    for host in (
        "2002:808:808::1",
        "64:ff9b::808:808",
        "2001:0:808:808:8000:63bf:f7f7:f7f7",
        "2600::1",
    ):
        assert error_code(client.permit(host)) is None, host


def test_allow_list_opens_loopback_for_tests_and_deny_list_wins() -> None:
    engine, _ = make_engine(allow_peers=["127.0.0.0/8"], deny_peers=["127.0.0.2/32"])
    client = Client(engine)
    client.allocate()
    assert error_code(client.permit("127.0.0.1")) is None
    assert error_code(client.permit("127.0.0.2")) == 403
    assert error_code(client.permit("10.0.0.1")) == 403


def test_permission_request_with_one_denied_peer_installs_nothing() -> None:
    engine, _ = make_engine()
    client = Client(engine)
    client.allocate()
    assert error_code(client.permit("198.51.100.7", "127.0.0.1")) == 403
    assert not engine.allocations[("udp", CLIENT, SERVER)].permissions


# --- attributes after MESSAGE-INTEGRITY --------------------------------------------------


def _append_after_integrity(data: bytes, attribute_type: int, value: bytes) -> bytes:
    """Append an attribute after MESSAGE-INTEGRITY and fix the header length, as an attacker
    on the path (or a sloppy client) would; the integrity still verifies."""
    padded = value + b"\x00" * (-len(value) % 4)
    extra = struct.pack("!HH", attribute_type, len(value)) + padded
    length = struct.unpack_from("!H", data, 2)[0] + len(extra)
    return data[:2] + struct.pack("!H", length) + data[4:] + extra


def _signed(client: Client, method: int, attributes: list[tuple[int, object]]) -> bytes:
    message = Message(method, MessageClass.REQUEST, os.urandom(12))
    for attribute_type, value in attributes:
        message.add(attribute_type, value)  # type: ignore[arg-type]
    message.add(A.USERNAME, client.username)
    message.add(A.REALM, REALM)
    assert client.nonce is not None
    message.add(A.NONCE, client.nonce)
    return message.encode(client.key)


def test_peer_address_smuggled_after_integrity_is_ignored() -> None:
    engine, _ = make_engine(allow_peers=["127.0.0.0/8", "198.51.100.0/24"])
    client = Client(engine)
    client.allocate()
    data = _signed(
        client, Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, Address("198.51.100.7", 1))]
    )
    xor_loopback = Message(Method.BINDING, MessageClass.REQUEST, data[8:20])
    xor_loopback.add(A.XOR_PEER_ADDRESS, Address("127.0.0.1", 1))
    raw = xor_loopback.encode()[24:]  # the attribute value, XORed with this transaction id
    tampered = _append_after_integrity(data, A.XOR_PEER_ADDRESS, raw)
    assert decode_message(tampered).ignored_after_integrity == 1
    response = decode_message(client.send_raw(tampered)[0][0])
    assert response.message_class == MessageClass.SUCCESS_RESPONSE
    assert set(engine.allocations[("udp", CLIENT, SERVER)].permissions) == {"198.51.100.7"}


def test_lifetime_smuggled_after_integrity_is_ignored() -> None:
    engine, _ = make_engine()
    client = Client(engine)
    client.allocate()
    data = _signed(client, Method.REFRESH, [(A.LIFETIME, 1200)])
    tampered = _append_after_integrity(data, A.LIFETIME, struct.pack("!I", 0))
    assert decode_message(tampered).ignored_after_integrity == 1
    response = decode_message(client.send_raw(tampered)[0][0])
    assert response.get(A.LIFETIME) == 1200
    assert engine.allocations


def test_attributes_before_integrity_cannot_be_changed() -> None:
    engine, _ = make_engine()
    client = Client(engine)
    client.allocate()
    data = bytearray(_signed(client, Method.REFRESH, [(A.LIFETIME, 1200)]))
    data[27] = 0  # LIFETIME 1200 -> 1024: integrity must now fail
    response = decode_message(client.send_raw(bytes(data))[0][0])
    assert error_code(response) == 401
    assert engine.allocations


# --- nonces --------------------------------------------------------------------------------


def test_nonce_replayed_from_another_address_gets_438() -> None:
    engine, _ = make_engine()
    victim = Client(engine)
    victim.allocate()
    attacker = Client(engine, address=("203.0.113.66", 40000), nonce=victim.nonce)
    data = _signed(attacker, Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17)])
    assert error_code(decode_message(attacker.send_raw(data)[0][0])) == 438
    # Same address and port but over TCP: another 5-tuple, another nonce.
    over_tcp = Client(engine, transport="tcp", nonce=victim.nonce)
    data = _signed(over_tcp, Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17)])
    assert error_code(decode_message(over_tcp.send_raw(data)[0][0])) == 438
    assert engine.counters["refused_stale_nonce"] == 2


@pytest.mark.parametrize(
    "nonce",
    ["obMatJos2wAAAAAAAAAAABGRscwe967-oORyNTYA", "deadbeef", "obMatJos2wAAA", "", "x" * 700],
)
def test_forged_nonces_get_438(nonce: str) -> None:
    engine, _ = make_engine()
    client = Client(engine, nonce=nonce or "z")
    data = _signed(client, Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17)])
    response = decode_message(client.send_raw(data)[0][0])
    assert error_code(response) == 438
    assert response.get(A.NONCE) not in (None, nonce)


def test_nonce_from_another_server_instance_gets_438() -> None:
    first, _ = make_engine()
    second, _ = make_engine()
    client = Client(first)
    client.allocate()
    client.engine = second
    data = _signed(client, Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17)])
    assert error_code(decode_message(client.send_raw(data)[0][0])) == 438


def test_nonce_expires() -> None:
    engine, _ = make_engine(nonce_lifetime=60)
    client = Client(engine)
    client.allocate()
    client.now += 61
    data = _signed(client, Method.REFRESH, [])
    assert error_code(decode_message(client.send_raw(data)[0][0])) == 438
    assert error_code(client.refresh()) is None  # the helper retries with the fresh nonce


# --- EVEN-PORT reservations ----------------------------------------------------------------


def test_reserved_port_is_never_given_to_another_user_and_is_released_on_expiry() -> None:
    engine, binder = make_engine(relay_port_min=20000, relay_port_max=20003)
    owner = Client(engine)
    response = owner.allocate((A.EVEN_PORT, True))
    port = owner.relayed(response)[1]
    token = response.get(A.RESERVATION_TOKEN)
    assert token is not None
    reserved = ("192.0.2.1", port + 1)
    # Exhaust the pool: the reserved port must not come out.
    others = [
        Client(engine, username="bob", password="builder", address=("203.0.113.7", i))
        for i in range(3)
    ]
    got = [other.allocate() for other in others]
    relayed = [
        other.relayed(r) for other, r in zip(others, got, strict=True) if error_code(r) is None
    ]
    assert reserved not in relayed and len(relayed) == 2
    assert error_code(got[2]) == 508
    # Another user cannot claim it with the stolen token.
    thief = Client(engine, username="bob", password="builder", address=("203.0.113.8", 1))
    assert error_code(thief.allocate((A.RESERVATION_TOKEN, token))) == 508
    # After 30 s the reservation is gone: the socket is closed and the port is usable again.
    engine.handle_timer(owner.now + RESERVATION_LIFETIME)
    assert reserved not in binder.bound
    assert engine.counters["reservations_expired"] == 1
    late = Client(engine, address=(CLIENT[0], CLIENT[1] + 9))
    assert error_code(late.allocate((A.RESERVATION_TOKEN, token))) == 508
    newcomer = Client(engine, username="bob", password="builder", address=("203.0.113.9", 1))
    assert newcomer.relayed(newcomer.allocate()) == reserved


def test_reservations_count_against_the_user_quota() -> None:
    engine, binder = make_engine(quotas={"allocations_per_user": 3})
    client = Client(engine)
    for _ in range(2):
        client.allocate((A.EVEN_PORT, True))
        client.refresh(0)  # delete the allocation, the reservation stays for 30 s
    assert len(binder.bound) == 2
    client.allocate((A.EVEN_PORT, True))  # third "slot"
    other = Client(engine, address=(CLIENT[0], 1))
    assert error_code(other.allocate()) == 486
    assert engine.counters["refused_user_quota"] == 1


# --- quota bypass ------------------------------------------------------------------------


def test_allocations_per_user_cannot_be_multiplied_with_five_tuples() -> None:
    engine, _ = make_engine(quotas={"allocations_per_user": 3})
    codes = [
        error_code(Client(engine, address=("203.0.113.5", port)).allocate()) for port in range(1, 6)
    ]
    assert codes == [None, None, None, 486, 486]
    # Another user is not affected.
    assert error_code(Client(engine, username="bob", password="builder").allocate()) is None


def test_rest_api_users_cannot_multiply_the_quota_with_fresh_timestamps() -> None:
    engine, _ = make_engine(quotas={"allocations_per_user": 2})
    codes = []
    for index in range(3):
        username, password = rest_api_credentials("north", "eve", ttl=600 + index, now=1000.0)
        client = Client(engine, username=username, password=password, address=("10.0.0.1", index))
        codes.append(error_code(client.allocate()))
    assert codes == [None, None, 486]


def test_total_allocations_quota_gets_508() -> None:
    engine, _ = make_engine(quotas={"total_allocations": 2})
    codes = [
        error_code(Client(engine, address=("203.0.113.5", port)).allocate()) for port in range(3)
    ]
    assert codes == [None, None, 508]


def test_permissions_per_allocation_quota() -> None:
    engine, _ = make_engine(quotas={"permissions_per_allocation": 3})
    client = Client(engine)
    client.allocate()
    assert error_code(client.permit("198.51.100.1", "198.51.100.2")) is None
    assert error_code(client.permit("198.51.100.1", "198.51.100.3")) is None
    assert error_code(client.permit("198.51.100.4")) == 508
    assert error_code(client.bind_channel(0x4000, ("198.51.100.5", 1))) == 508
    # Refreshing existing ones is still fine.
    assert error_code(client.permit("198.51.100.1")) is None


def test_channels_per_allocation_quota() -> None:
    engine, _ = make_engine(quotas={"channels_per_allocation": 2})
    client = Client(engine)
    client.allocate()
    assert error_code(client.bind_channel(0x4000, ("198.51.100.1", 1))) is None
    assert error_code(client.bind_channel(0x4001, ("198.51.100.1", 2))) is None
    assert error_code(client.bind_channel(0x4002, ("198.51.100.1", 3))) == 508


# --- amplification -----------------------------------------------------------------------


def test_unauthenticated_answers_are_rate_limited_per_source() -> None:
    engine, _ = make_engine(unauthenticated_rate=10, unauthenticated_burst=20)
    spoofed = Client(engine, address=("198.51.100.99", 53))
    request = Message(Method.ALLOCATE, MessageClass.REQUEST, os.urandom(12))
    request.add(A.REQUESTED_TRANSPORT, 17)
    data = request.encode()
    binding = Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12)).encode()
    answers = sum(len(spoofed.send_raw(data if i % 2 else binding)) for i in range(200))
    assert answers == 20
    assert engine.counters["dropped_rate_limited"] == 180
    # Other sources are still answered, and the bucket refills with time.
    assert len(Client(engine, address=("198.51.100.98", 53)).send_raw(binding)) == 1
    spoofed.now += 1.0
    assert sum(len(spoofed.send_raw(binding)) for _ in range(20)) == 10


# --- relay loops through the server itself -------------------------------------------------


def test_relaying_into_the_servers_own_listener_is_refused() -> None:
    engine, _ = make_engine(allow_peers=["192.0.2.0/24", "198.51.100.0/24"])
    attacker = Client(engine, address=("203.0.113.6", 2))
    attacker.allocate()
    # A permission is per IP: the server's IP itself may be permitted (peers may share it) ...
    assert error_code(attacker.permit("192.0.2.1")) is None
    # ... but no channel to the listener and no Send to it (TURN over TURN through itself).
    assert error_code(attacker.bind_channel(0x4001, SERVER)) == 403
    assert attacker.send_indication(SERVER, b"\x00\x01\x00\x00") == []
    assert engine.counters["refused_peer_loop"] == 1
    assert engine.counters["dropped_peer_loop"] == 1
    # Other ports of the same host are ordinary peers.
    assert len(attacker.send_indication(("192.0.2.1", 9), b"fine")) == 1


def test_relayed_addresses_of_other_allocations_are_ordinary_peers() -> None:
    """Two agents behind symmetric NATs meet relay-to-relay on one TURN server."""
    engine, _ = make_engine(allow_peers=["192.0.2.0/24"])
    alice = Client(engine, address=("203.0.113.5", 1))
    bob = Client(engine, address=("203.0.113.6", 2), username="bob", password="builder")
    alice_relay = alice.relayed(alice.allocate())
    bob_relay = bob.relayed(bob.allocate())
    assert error_code(alice.permit(bob_relay[0])) is None
    assert error_code(bob.bind_channel(0x4000, alice_relay)) is None
    assert alice.send_indication(bob_relay, b"hi bob") == [
        (b"hi bob", alice_relay, bob_relay, "udp")
    ]
    # What the socket layer then delivers to Bob's relayed address reaches Bob as ChannelData.
    engine.receive_relayed(b"hi bob", alice_relay, bob_relay, bob.now)
    assert engine.datagrams_to_send() == [
        (b"\x40\x00\x00\x06hi bob", ("192.0.2.1", 3478), bob.address, "udp")
    ]


def test_advertised_relay_address_behind_nat() -> None:
    engine, binder = make_engine(relay_advertised_ipv4="198.51.100.200")
    client = Client(engine)
    relayed = client.relayed(client.allocate())
    assert relayed[0] == "198.51.100.200"
    assert ("192.0.2.1", relayed[1]) in binder.bound
