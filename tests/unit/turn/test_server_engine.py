"""The TURN server engine, driven directly with virtual time (no sockets)."""

from __future__ import annotations

import os

import pytest

from icerelay.stun import (
    Address,
    AttributeType,
    Message,
    MessageClass,
    Method,
    PasswordAlgorithm,
    PasswordAlgorithmEntry,
    decode_message,
)
from icerelay.stun.credentials import long_term_key, userhash
from icerelay.turn.server.engine import AllocationCreated, AllocationDeleted, Drained

from .server_helpers import CLIENT, REALM, SERVER, Client, error_code, make_engine

A = AttributeType
PEER = ("198.51.100.7", 5000)


def test_first_request_gets_401_with_realm_nonce_and_password_algorithms() -> None:
    engine, _ = make_engine()
    client = Client(engine)
    response = client.request(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17)], authenticate=False)
    assert error_code(response) == 401
    assert response.get(A.REALM) == REALM
    nonce = response.get(A.NONCE)
    assert nonce is not None and nonce.startswith("obMatJos2")
    algorithms = response.get(A.PASSWORD_ALGORITHMS)
    assert algorithms is not None
    assert [entry.algorithm for entry in algorithms] == [
        PasswordAlgorithm.SHA256,
        PasswordAlgorithm.MD5,
    ]
    assert response.get(A.MESSAGE_INTEGRITY) is None


def test_allocate_success_carries_relayed_mapped_lifetime_and_integrity() -> None:
    engine, binder = make_engine()
    client = Client(engine)
    response = client.allocate()
    assert response.message_class == MessageClass.SUCCESS_RESPONSE
    relayed = client.relayed(response)
    assert relayed[0] == "192.0.2.1" and 20000 <= relayed[1] <= 20099
    assert relayed in binder.bound
    assert response.get(A.XOR_MAPPED_ADDRESS) == Address(*CLIENT)
    assert response.get(A.LIFETIME) == 600
    assert response.check_integrity(client.key)
    event = engine.next_event()
    assert isinstance(event, AllocationCreated) and event.relayed == (relayed,)


def test_fingerprint_only_when_the_request_has_one() -> None:
    engine, _ = make_engine()
    client = Client(engine)
    client.allocate()
    message = Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12))
    plain = decode_message(client.send_raw(message.encode())[0][0])
    assert not plain.has_fingerprint
    with_fp = decode_message(client.send_raw(message.encode(fingerprint=True))[0][0])
    assert with_fp.has_fingerprint and with_fp.fingerprint_ok


def test_binding_request_on_the_turn_port_is_answered() -> None:
    engine, _ = make_engine()
    out = Client(engine).send_raw(
        Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12)).encode()
    )
    response = decode_message(out[0][0])
    assert response.message_class == MessageClass.SUCCESS_RESPONSE
    assert response.get(A.XOR_MAPPED_ADDRESS) == Address(*CLIENT)


def test_retransmitted_allocate_gets_the_same_answer_other_transactions_437() -> None:
    engine, _ = make_engine()
    client = Client(engine)
    client.allocate()  # learn the nonce
    client.refresh(0)
    transaction = os.urandom(12)
    first = client.request(
        Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17)], transaction_id=transaction
    )
    again = client.request(
        Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17)], transaction_id=transaction
    )
    assert first == again and error_code(first) is None
    assert error_code(client.allocate()) == 437
    assert len(engine.allocations) == 1


@pytest.mark.parametrize(
    ("attributes", "code"),
    [
        ([], 400),
        ([(A.REQUESTED_TRANSPORT, 6)], 442),
        ([(A.REQUESTED_TRANSPORT, 17), (A.REQUESTED_ADDRESS_FAMILY, 3)], 440),
        (
            [
                (A.REQUESTED_TRANSPORT, 17),
                (A.REQUESTED_ADDRESS_FAMILY, 1),
                (A.ADDITIONAL_ADDRESS_FAMILY, 2),
            ],
            400,
        ),
        ([(A.REQUESTED_TRANSPORT, 17), (A.ADDITIONAL_ADDRESS_FAMILY, 1)], 400),
        (
            [(A.REQUESTED_TRANSPORT, 17), (A.RESERVATION_TOKEN, b"12345678"), (A.EVEN_PORT, False)],
            400,
        ),
        ([(A.REQUESTED_TRANSPORT, 17), (A.RESERVATION_TOKEN, b"12345678")], 508),
    ],
    ids=[
        "no-transport",
        "tcp",
        "bad-family",
        "two-families",
        "additional-ipv4",
        "token+even",
        "unknown-token",
    ],
)
def test_allocate_refusals(attributes: list[tuple[int, object]], code: int) -> None:
    engine, binder = make_engine()
    response = Client(engine).request(Method.ALLOCATE, attributes)
    assert error_code(response) == code
    assert not engine.allocations and not binder.bound


def test_ipv6_relay_only_when_asked_and_440_without_one() -> None:
    engine, _ = make_engine()
    v6 = Client(engine).allocate((A.REQUESTED_ADDRESS_FAMILY, 2))
    assert v6.get(A.XOR_RELAYED_ADDRESS).host == "2001:db8::1"  # type: ignore[union-attr]
    engine, _ = make_engine(relay_ipv6=None)
    assert error_code(Client(engine).allocate((A.REQUESTED_ADDRESS_FAMILY, 2))) == 440


def test_ipv4_relay_by_default_for_a_client_over_ipv6() -> None:
    engine, _ = make_engine()
    client = Client(engine, address=("2001:db8:9::5", 4000), server=("2001:db8::1", 3478))
    response = client.allocate()
    assert response.get(A.XOR_RELAYED_ADDRESS).host == "192.0.2.1"  # type: ignore[union-attr]


def test_dual_allocation_gives_two_relayed_addresses() -> None:
    engine, binder = make_engine()
    client = Client(engine)
    response = client.allocate((A.ADDITIONAL_ADDRESS_FAMILY, 2))
    relayed = response.get_all(A.XOR_RELAYED_ADDRESS)
    assert {address.family for address in relayed} == {4, 6}
    assert client.permit("198.51.100.7", "2001:db8:1::9").message_class == (
        MessageClass.SUCCESS_RESPONSE
    )
    client.refresh(0)
    assert not binder.bound


def test_dual_allocation_without_ipv6_reports_address_error_code() -> None:
    engine, _ = make_engine(relay_ipv6=None)
    response = Client(engine).allocate((A.ADDITIONAL_ADDRESS_FAMILY, 2))
    assert len(response.get_all(A.XOR_RELAYED_ADDRESS)) == 1
    error = response.get(A.ADDRESS_ERROR_CODE)
    assert error is not None and (error.family, error.code) == (2, 440)


def test_lifetime_is_clamped_and_refresh_zero_deletes() -> None:
    engine, binder = make_engine()
    client = Client(engine)
    assert client.allocate((A.LIFETIME, 99999)).get(A.LIFETIME) == 3600
    assert client.refresh(30).get(A.LIFETIME) == 600  # never below the default
    assert client.refresh(1200).get(A.LIFETIME) == 1200
    assert client.refresh().get(A.LIFETIME) == 600
    response = client.refresh(0)
    assert response.get(A.LIFETIME) == 0 and not engine.allocations and not binder.bound
    assert error_code(client.refresh()) == 437
    events = [engine.next_event() for _ in range(2)]
    assert isinstance(events[1], AllocationDeleted) and events[1].reason == "refresh"
    assert events[1].duration == 0.0 and events[1].bytes_to_peers == 0


def test_refresh_with_other_family_gets_443() -> None:
    engine, _ = make_engine()
    client = Client(engine)
    client.allocate()
    response = client.request(Method.REFRESH, [(A.REQUESTED_ADDRESS_FAMILY, 2)])
    assert error_code(response) == 443


def test_other_credentials_on_the_same_five_tuple_get_441() -> None:
    engine, _ = make_engine()
    Client(engine).allocate()
    bob = Client(engine, username="bob", password="builder")
    assert error_code(bob.refresh()) == 441
    assert error_code(bob.permit("198.51.100.7")) == 441
    assert error_code(bob.allocate()) == 437


def test_requests_without_allocation_get_437() -> None:
    engine, _ = make_engine()
    client = Client(engine)
    assert error_code(client.permit("198.51.100.7")) == 437
    assert error_code(client.bind_channel(0x4000, PEER)) == 437


def test_permission_is_per_ip_ignoring_port_and_data_flows_both_ways() -> None:
    engine, _ = make_engine()
    client = Client(engine)
    relayed = client.relayed(client.allocate())
    assert error_code(client.permit("198.51.100.7")) is None
    out = client.send_indication(("198.51.100.7", 1234), b"hello")
    assert out == [(b"hello", relayed, ("198.51.100.7", 1234), "udp")]
    engine.receive_relayed(b"back", ("198.51.100.7", 7777), relayed, client.now)
    ((data, source, destination, transport),) = engine.datagrams_to_send()
    indication = decode_message(data)
    assert (source, destination, transport) == (SERVER, CLIENT, "udp")
    assert indication.method == Method.DATA
    assert indication.message_class == MessageClass.INDICATION
    assert indication.get(A.XOR_PEER_ADDRESS) == Address("198.51.100.7", 7777)
    assert indication.get(A.DATA) == b"back"


def test_data_without_permission_is_dropped_and_counted() -> None:
    engine, _ = make_engine()
    client = Client(engine)
    relayed = client.relayed(client.allocate())
    assert client.send_indication(PEER, b"x") == []
    engine.receive_relayed(b"x", PEER, relayed, client.now)
    assert engine.datagrams_to_send() == []
    assert engine.counters["dropped_no_permission"] == 2


def test_channel_bind_channel_data_both_ways_and_ipv6_data_indication() -> None:
    engine, _ = make_engine()
    client = Client(engine)
    relayed = client.relayed(client.allocate())
    assert error_code(client.bind_channel(0x4001, PEER)) is None
    # ChannelBind installs the permission (RFC 8656 §12.2).
    assert "198.51.100.7" in engine.allocations[("udp", CLIENT, SERVER)].permissions
    out = client.send_raw(b"\x40\x01\x00\x03abc\x00")  # UDP ChannelData may carry padding
    assert out == [(b"abc", relayed, PEER, "udp")]
    engine.receive_relayed(b"hello", PEER, relayed, client.now)
    assert engine.datagrams_to_send() == [(b"\x40\x01\x00\x05hello", SERVER, CLIENT, "udp")]
    # Unbound channel numbers and truncated frames are dropped.
    assert client.send_raw(b"\x40\x02\x00\x01a") == []
    assert client.send_raw(b"\x40\x01\x00\x09abc") == []
    assert engine.counters["dropped_no_channel"] == 1
    assert engine.counters["dropped_malformed"] == 1


def test_channel_data_to_a_tcp_client_is_padded() -> None:
    engine, _ = make_engine()
    client = Client(engine, transport="tcp")
    relayed = client.relayed(client.allocate())
    client.bind_channel(0x4000, PEER)
    engine.receive_relayed(b"hello", PEER, relayed, client.now)
    assert engine.datagrams_to_send() == [
        (b"\x40\x00\x00\x05hello\x00\x00\x00", SERVER, CLIENT, "tcp")
    ]
    engine.connection_lost(CLIENT, SERVER, "tcp", client.now)
    assert not engine.allocations


@pytest.mark.parametrize("number", [0x3FFF, 0x8000, 0xFFFF])
def test_channel_numbers_outside_the_range_get_400(number: int) -> None:
    engine, _ = make_engine()
    client = Client(engine)
    client.allocate()
    assert error_code(client.bind_channel(number, PEER)) == 400


def test_rfc8656_only_channel_range_when_legacy_is_off() -> None:
    engine, _ = make_engine(legacy_channel_numbers=False)
    client = Client(engine)
    client.allocate()
    assert error_code(client.bind_channel(0x5000, PEER)) == 400
    assert error_code(client.bind_channel(0x4FFF, PEER)) is None
    engine, _ = make_engine()
    client = Client(engine)
    client.allocate()
    assert error_code(client.bind_channel(0x7FFF, PEER)) is None


def test_channel_rebind_rules() -> None:
    engine, _ = make_engine()
    client = Client(engine)
    client.allocate()
    assert error_code(client.bind_channel(0x4000, PEER)) is None
    assert error_code(client.bind_channel(0x4000, PEER)) is None  # refresh: fine
    assert error_code(client.bind_channel(0x4000, ("198.51.100.7", 5001))) == 400
    assert error_code(client.bind_channel(0x4001, PEER)) == 400
    assert error_code(client.bind_channel(0x4001, ("198.51.100.7", 5001))) is None


def test_expiry_of_permissions_channels_and_allocations_with_virtual_time() -> None:
    engine, binder = make_engine()
    client = Client(engine)
    relayed = client.relayed(client.allocate((A.LIFETIME, 900)))
    client.bind_channel(0x4000, PEER)
    client.permit("198.51.100.8")
    start = client.now
    engine.handle_timer(start + 299)
    allocation = engine.allocations[("udp", CLIENT, SERVER)]
    assert set(allocation.permissions) == {"198.51.100.7", "198.51.100.8"}
    engine.handle_timer(start + 300)
    assert not allocation.permissions  # 300 s permissions (RFC 8656 §9)
    assert 0x4000 in allocation.channels
    # Channel still bound but the permission is gone: peer data is dropped.
    engine.receive_relayed(b"x", PEER, relayed, start + 301)
    assert engine.datagrams_to_send() == []
    engine.handle_timer(start + 600)
    assert not allocation.channels  # 600 s channels (RFC 8656 §12)
    # The expired number cannot go to another peer for 5 minutes, but the same pair may rebind.
    client.now = start + 601
    assert error_code(client.bind_channel(0x4000, ("198.51.100.9", 1))) == 400
    assert error_code(client.bind_channel(0x4000, PEER)) is None
    engine.handle_timer(start + 899)
    assert engine.allocations
    assert engine.next_timer() is not None
    engine.handle_timer(start + 900)
    assert not engine.allocations and not binder.bound
    assert engine.counters["allocations_expired"] == 1


def test_a_refresh_postpones_expiry() -> None:
    engine, _ = make_engine()
    client = Client(engine)
    client.allocate()
    client.now += 500
    client.refresh()
    engine.handle_timer(client.now + 599)
    assert engine.allocations
    engine.handle_timer(client.now + 600)
    assert not engine.allocations


def test_drain_mode_refuses_new_allocations_and_signals_the_end() -> None:
    engine, _ = make_engine()
    client = Client(engine)
    client.allocate()
    engine.start_drain()
    other = Client(engine, address=("203.0.113.6", 1))
    response = other.allocate()
    assert error_code(response) == 508
    assert engine.counters["refused_draining"] == 1
    assert error_code(client.refresh()) is None  # existing allocations keep working
    client.refresh(0)
    events = []
    while (event := engine.next_event()) is not None:
        events.append(event)
    assert isinstance(events[-1], Drained)


def test_bind_failure_tries_another_port() -> None:
    engine, binder = make_engine(relay_port_min=20000, relay_port_max=20002)
    binder.taken = {("192.0.2.1", 20000), ("192.0.2.1", 20001)}
    relayed = Client(engine).relayed(Client(engine).allocate())
    assert relayed == ("192.0.2.1", 20002)
    assert engine.counters["bind_failures"] <= 2  # ports are tried in random order
    assert error_code(Client(engine, address=("203.0.113.9", 9)).allocate()) == 508


def test_dont_fragment_is_passed_to_the_relay_socket() -> None:
    engine, binder = make_engine()
    relayed = Client(engine).relayed(Client(engine).allocate((A.DONT_FRAGMENT, None)))
    assert relayed in binder.dont_fragment


def test_even_port_without_reservation() -> None:
    engine, _ = make_engine()
    response = Client(engine).allocate((A.EVEN_PORT, False))
    assert response.get(A.XOR_RELAYED_ADDRESS).port % 2 == 0  # type: ignore[union-attr]
    assert response.get(A.RESERVATION_TOKEN) is None


def test_even_port_reservation_is_claimed_with_the_token() -> None:
    engine, binder = make_engine()
    first = Client(engine)
    response = first.allocate((A.EVEN_PORT, True))
    port = first.relayed(response)[1]
    token = response.get(A.RESERVATION_TOKEN)
    assert port % 2 == 0 and token is not None and len(token) == 8
    assert ("192.0.2.1", port + 1) in binder.bound  # held by us, not by another process
    second = Client(engine, address=(CLIENT[0], CLIENT[1] + 1))
    claimed = second.allocate((A.RESERVATION_TOKEN, token))
    assert second.relayed(claimed) == ("192.0.2.1", port + 1)
    # A token works once.
    third = Client(engine, address=(CLIENT[0], CLIENT[1] + 2))
    assert error_code(third.allocate((A.RESERVATION_TOKEN, token))) == 508


def test_sha256_password_algorithm_and_userhash() -> None:
    engine, _ = make_engine()
    client = Client(engine)
    challenge = client.request(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17)], authenticate=False)
    nonce = challenge.get(A.NONCE)
    algorithms = challenge.get(A.PASSWORD_ALGORITHMS)
    assert nonce is not None and algorithms is not None
    key = long_term_key("alice", REALM, "wonderland", PasswordAlgorithm.SHA256)
    message = Message(Method.ALLOCATE, MessageClass.REQUEST, os.urandom(12))
    message.add(A.REQUESTED_TRANSPORT, 17)
    message.add(A.USERHASH, userhash("alice", REALM))
    message.add(A.REALM, REALM)
    message.add(A.NONCE, nonce)
    message.add(A.PASSWORD_ALGORITHMS, algorithms)
    message.add(A.PASSWORD_ALGORITHM, PasswordAlgorithmEntry(PasswordAlgorithm.SHA256))
    response = decode_message(client.send_raw(message.encode(key, "sha256"))[0][0])
    assert response.message_class == MessageClass.SUCCESS_RESPONSE, response
    assert response.integrity_algorithm == "sha256" and response.check_integrity(key)
    # A bid-down (changed PASSWORD-ALGORITHMS list) is a 400.
    message = Message(Method.REFRESH, MessageClass.REQUEST, os.urandom(12))
    message.add(A.USERNAME, "alice")
    message.add(A.REALM, REALM)
    message.add(A.NONCE, nonce)
    message.add(A.PASSWORD_ALGORITHMS, [PasswordAlgorithmEntry(PasswordAlgorithm.MD5)])
    message.add(A.PASSWORD_ALGORITHM, PasswordAlgorithmEntry(PasswordAlgorithm.MD5))
    md5 = long_term_key("alice", REALM, "wonderland")
    response = decode_message(client.send_raw(message.encode(md5))[0][0])
    assert error_code(response) == 400


def test_rest_api_credentials() -> None:
    from icerelay.turn.credentials import rest_api_credentials

    engine, _ = make_engine()
    username, password = rest_api_credentials("north", "carol", ttl=600, now=1000.0)
    client = Client(engine, username=username, password=password)
    assert error_code(client.allocate()) is None
    allocation = next(iter(engine.allocations.values()))
    assert allocation.quota_user == "carol"
    expired, expired_password = rest_api_credentials("north", "carol", ttl=-1, now=1000.0)
    late = Client(engine, username=expired, password=expired_password, address=("203.0.113.5", 2))
    assert error_code(late.allocate()) == 401
    forged = Client(engine, username=username, password="AAAA", address=("203.0.113.5", 3))
    assert error_code(forged.allocate()) == 401


def test_rest_secret_rotation_accepts_every_configured_secret() -> None:
    from icerelay.turn.credentials import rest_api_credentials

    engine, _ = make_engine(auth_secrets=["new", "old"])
    for index, secret in enumerate(("new", "old")):
        username, password = rest_api_credentials(secret, "dave", ttl=600, now=1000.0)
        client = Client(engine, username=username, password=password, address=("10.9.9.9", index))
        assert error_code(client.allocate()) is None


def test_unknown_user_and_wrong_password_get_401() -> None:
    engine, _ = make_engine()
    assert error_code(Client(engine, username="mallory").allocate()) == 401
    assert error_code(Client(engine, password="wrong").allocate()) == 401
    assert engine.counters["refused_unauthenticated"] >= 4


def test_bandwidth_quota_drops_the_excess() -> None:
    engine, _ = make_engine(quotas={"bandwidth_per_allocation": 1000})
    client = Client(engine)
    client.allocate()
    client.bind_channel(0x4000, PEER)
    payload = b"x" * 400
    frame = b"\x40\x00" + len(payload).to_bytes(2, "big") + payload
    sent = sum(len(client.send_raw(frame)) for _ in range(5))
    assert sent == 2  # 1000-byte burst holds two 400-byte packets
    assert engine.counters["dropped_bandwidth"] == 3
    client.now += 1.0
    assert len(client.send_raw(frame)) == 1


def test_unknown_comprehension_required_attribute_gets_420() -> None:
    engine, _ = make_engine()
    client = Client(engine)
    response = client.request(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17), (0x7F01, b"zz")])
    assert error_code(response) == 420
    assert response.get(A.UNKNOWN_ATTRIBUTES) == [0x7F01]


def test_garbage_never_raises() -> None:
    engine, _ = make_engine()
    client = Client(engine)
    for data in (
        b"",
        b"\x00",
        b"\x01\x01\x00\x04" + b"\x00" * 16,
        b"\x80" * 30,
        os.urandom(64),
        b"\x40",
        b"\x60\x00",
    ):
        client.send_raw(data)
    engine.receive_relayed(b"x", PEER, ("192.0.2.1", 1), 0.0)
    assert engine.counters["dropped_malformed"] >= 3


def test_coturn_draft_additional_address_family_is_understood() -> None:
    engine, _ = make_engine()
    response = Client(engine).allocate((0x8032, b"\x02\x00\x00\x00"))
    assert {a.family for a in response.get_all(A.XOR_RELAYED_ADDRESS)} == {4, 6}


def test_drain_without_allocations_is_immediately_drained() -> None:
    engine, _ = make_engine()
    engine.start_drain()
    assert isinstance(engine.next_event(), Drained)
    assert engine.next_event() is None


def test_refresh_loops_do_not_grow_the_timer_heap() -> None:
    engine, _ = make_engine()
    client = Client(engine)
    client.allocate()
    for _ in range(300):
        client.permit("198.51.100.7")
        client.bind_channel(0x4000, PEER)
        client.refresh(1200)
        client.now += 0.01
    assert len(engine.state.expiry) < 10


def test_a_shortening_refresh_takes_effect() -> None:
    engine, _ = make_engine()
    client = Client(engine)
    client.allocate((A.LIFETIME, 3600))
    client.refresh(600)
    engine.handle_timer(client.now + 600)
    assert not engine.allocations
