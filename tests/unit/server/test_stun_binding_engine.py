"""The sans-I/O Binding engine: RFC 8489 Binding, RFC 5780, RFC 3489 compatibility, bad input."""

from __future__ import annotations

import logging
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icerelay.stun import (
    Address,
    AttributeType,
    ChangeRequest,
    Message,
    MessageClass,
    Method,
    decode_message,
)
from icerelay.stun.binding import BindingEngine, Datagram, Rfc5780Addresses

A = AttributeType
CLIENT = Address("192.0.2.7", 40000)
SERVER = Address("198.51.100.1", 3478)
CLIENT6 = Address("2001:db8::7", 40000)
SERVER6 = Address("2001:db8::1", 3478)
A1, A2, P1, P2 = "198.51.100.1", "198.51.100.2", 3478, 3479
RFC5780 = Rfc5780Addresses(Address(A1, P1), Address(A2, P2))


def request(*attributes: tuple[int, object], method: int = Method.BINDING) -> Message:
    message = Message(method, MessageClass.REQUEST, os.urandom(12))
    for attribute_type, value in attributes:
        message.add(attribute_type, value)  # type: ignore[arg-type]
    return message


def exchange(
    engine: BindingEngine,
    data: bytes,
    source: Address = CLIENT,
    destination: Address = SERVER,
    transport: str = "udp",
    now: float = 0.0,
) -> list[Datagram]:
    engine.receive(data, source, destination, now, transport)  # type: ignore[arg-type]
    return engine.datagrams_to_send(now)


def answer(engine: BindingEngine, message: Message, **kwargs: object) -> tuple[Message, Datagram]:
    out = exchange(engine, message.encode(), **kwargs)  # type: ignore[arg-type]
    assert len(out) == 1
    response = decode_message(out[0].data, allow_rfc3489=True)
    assert response.transaction_id == message.transaction_id
    assert response.method == message.method
    return response, out[0]


@pytest.mark.parametrize(("client", "server"), [(CLIENT, SERVER), (CLIENT6, SERVER6)])
def test_binding_success_reflects_the_source(client: Address, server: Address) -> None:
    engine = BindingEngine()
    response, datagram = answer(engine, request(), source=client, destination=server)
    assert response.message_class == MessageClass.SUCCESS_RESPONSE
    assert response.get(A.XOR_MAPPED_ADDRESS) == client
    # RFC 8489 server without RFC 5780: no MAPPED-ADDRESS, no SOFTWARE, no FINGERPRINT.
    assert [t for t, _ in response] == [A.XOR_MAPPED_ADDRESS]
    assert datagram.source == server and datagram.destination == client
    assert engine.counters.events["binding_requests"] == 1
    assert engine.next_timer() is None


def test_fingerprint_and_software_only_when_asked() -> None:
    engine = BindingEngine(software="icerelay test")
    message = request()
    out = exchange(engine, message.encode(fingerprint=True))
    response = decode_message(out[0].data)
    assert response.has_fingerprint and response.fingerprint_ok
    assert response.get(A.SOFTWARE) == "icerelay test"


def test_unknown_comprehension_required_attribute_gets_420() -> None:
    engine = BindingEngine()
    response, _ = answer(engine, request((0x7F01, b"abcd"), (0x7F02, b""), (0x7F01, b"x")))
    assert response.message_class == MessageClass.ERROR_RESPONSE
    error = response.get(A.ERROR_CODE)
    assert error is not None and error.code == 420
    assert response.get(A.UNKNOWN_ATTRIBUTES) == [0x7F01, 0x7F02]


def test_unknown_comprehension_optional_attribute_is_ignored() -> None:
    response, _ = answer(BindingEngine(), request((0xC001, b"whatever")))
    assert response.message_class == MessageClass.SUCCESS_RESPONSE


def test_unknown_attributes_list_is_bounded() -> None:
    attributes = [(0x7000 + i, b"") for i in range(200)]
    response, datagram = answer(BindingEngine(), request(*attributes))
    assert len(response.get(A.UNKNOWN_ATTRIBUTES) or []) == 16
    assert len(datagram.data) < 100


def test_change_request_without_alternate_address_gets_420() -> None:
    response, _ = answer(BindingEngine(), request((A.CHANGE_REQUEST, 0)))
    error = response.get(A.ERROR_CODE)
    assert error is not None and error.code == 420
    assert response.get(A.UNKNOWN_ATTRIBUTES) == [A.CHANGE_REQUEST]


def test_other_methods_get_400() -> None:
    response, _ = answer(BindingEngine(), request(method=Method.ALLOCATE))
    error = response.get(A.ERROR_CODE)
    assert response.method == Method.ALLOCATE
    assert error is not None and error.code == 400


def test_binding_indication_is_a_silent_keepalive() -> None:
    engine = BindingEngine()
    indication = Message(Method.BINDING, MessageClass.INDICATION, os.urandom(12))
    assert exchange(engine, indication.encode()) == []
    assert engine.counters.events["binding_indications"] == 1
    assert not engine.counters.dropped


def test_responses_sent_to_the_server_are_dropped() -> None:
    engine = BindingEngine()
    stray = Message(Method.BINDING, MessageClass.SUCCESS_RESPONSE, os.urandom(12)).add(
        A.XOR_MAPPED_ADDRESS, CLIENT
    )
    assert exchange(engine, stray.encode()) == []
    assert engine.counters.dropped["unexpected_response"] == 1


# --- RFC 5780 --------------------------------------------------------------------------------


@pytest.mark.parametrize("destination", RFC5780.all())
@pytest.mark.parametrize(
    "flags",
    [0, ChangeRequest.CHANGE_IP, ChangeRequest.CHANGE_PORT,
     ChangeRequest.CHANGE_IP | ChangeRequest.CHANGE_PORT],
)  # fmt: skip
def test_rfc5780_change_request_table(destination: Address, flags: int) -> None:
    """RFC 5780 §6.1 Table 1, from each of the four addresses."""
    engine = BindingEngine(rfc5780=RFC5780)
    response, datagram = answer(engine, request((A.CHANGE_REQUEST, flags)), destination=destination)
    other_ip = A2 if destination.host == A1 else A1
    other_port = P2 if destination.port == P1 else P1
    expected = Address(
        other_ip if flags & ChangeRequest.CHANGE_IP else destination.host,
        other_port if flags & ChangeRequest.CHANGE_PORT else destination.port,
    )
    assert datagram.source == expected
    assert datagram.destination == CLIENT
    assert response.get(A.RESPONSE_ORIGIN) == expected
    assert response.get(A.OTHER_ADDRESS) == Address(other_ip, other_port)
    # RFC 5780 §6.1: both mapped address attributes.
    assert response.get(A.XOR_MAPPED_ADDRESS) == CLIENT
    assert response.get(A.MAPPED_ADDRESS) == CLIENT


def test_rfc5780_response_port_redirects_to_the_same_ip() -> None:
    engine = BindingEngine(rfc5780=RFC5780)
    message = request((A.RESPONSE_PORT, 50001))
    response, datagram = answer(engine, message, destination=RFC5780.primary)
    assert response.message_class == MessageClass.SUCCESS_RESPONSE
    assert datagram.destination == Address(CLIENT.host, 50001)
    assert response.get(A.XOR_MAPPED_ADDRESS) == CLIENT


def test_response_port_zero_is_refused() -> None:
    response, _ = answer(BindingEngine(), request((A.RESPONSE_PORT, 0)))
    error = response.get(A.ERROR_CODE)
    assert error is not None and error.code == 400


def test_padding_with_response_port_gets_400() -> None:
    engine = BindingEngine(rfc5780=RFC5780)
    message = request((A.PADDING, bytes(100)), (A.RESPONSE_PORT, 50001))
    response, datagram = answer(engine, message, destination=RFC5780.primary)
    error = response.get(A.ERROR_CODE)
    assert error is not None and error.code == 400
    assert datagram.destination == CLIENT  # errors go back to the source, not RESPONSE-PORT


def test_padding_fills_up_to_the_request_size_never_more() -> None:
    engine = BindingEngine(rfc5780=RFC5780)
    message = request((A.PADDING, bytes(1400)))
    data = message.encode()
    out = exchange(engine, data, destination=RFC5780.primary)
    response = decode_message(out[0].data)
    padding = response.get(A.PADDING)
    assert padding is not None and len(padding) % 4 == 0
    assert len(data) - 4 < len(out[0].data) <= len(data)


def test_padding_is_capped_by_padding_limit() -> None:
    engine = BindingEngine(padding_limit=200)
    out = exchange(engine, request((A.PADDING, bytes(1400))).encode())
    padding = decode_message(out[0].data).get(A.PADDING)
    assert padding is not None and len(padding) == 200


def test_small_padded_request_cannot_amplify() -> None:
    engine = BindingEngine(rfc5780=RFC5780)
    data = request((A.PADDING, b"")).encode()
    out = exchange(engine, data, destination=RFC5780.primary)
    padding = decode_message(out[0].data).get(A.PADDING)
    assert padding == b""


@pytest.mark.parametrize(
    "attribute",
    [(A.PADDING, bytes(8)), (A.RESPONSE_PORT, 50001), (A.CHANGE_REQUEST, ChangeRequest.CHANGE_IP)],
)
def test_udp_only_attributes_over_tcp_get_400(attribute: tuple[int, object]) -> None:
    engine = BindingEngine(rfc5780=RFC5780)
    response, datagram = answer(
        engine, request(attribute), destination=RFC5780.primary, transport="tcp"
    )
    error = response.get(A.ERROR_CODE)
    assert error is not None and error.code == 400
    assert datagram.source == RFC5780.primary


def test_rfc5780_addresses_only_on_the_rfc5780_sockets() -> None:
    engine = BindingEngine(rfc5780=RFC5780)
    response, _ = answer(engine, request(), destination=Address("198.51.100.9", 3478))
    assert A.OTHER_ADDRESS not in response and A.RESPONSE_ORIGIN not in response
    response, _ = answer(
        engine, request((A.CHANGE_REQUEST, 0)), destination=Address("198.51.100.9", 3478)
    )
    error = response.get(A.ERROR_CODE)
    assert error is not None and error.code == 420


def test_rfc5780_addresses_are_validated() -> None:
    with pytest.raises(ValueError):
        Rfc5780Addresses(Address(A1, P1), Address(A1, P2))
    with pytest.raises(ValueError):
        Rfc5780Addresses(Address(A1, P1), Address("2001:db8::1", P2))


# --- RFC 3489 clients --------------------------------------------------------------------------


def rfc3489_request(*attributes: tuple[int, bytes]) -> bytes:
    body = b"".join(struct.pack("!HH", t, len(v)) + v for t, v in attributes)
    return struct.pack("!HH16s", 0x0001, len(body), os.urandom(16)) + body


def test_rfc3489_client_gets_mapped_address_only() -> None:
    engine = BindingEngine()
    out = exchange(engine, rfc3489_request())
    response = decode_message(out[0].data, allow_rfc3489=True)
    assert response.is_rfc3489
    assert response.get(A.MAPPED_ADDRESS) == CLIENT
    assert A.XOR_MAPPED_ADDRESS not in response


def test_rfc3489_client_with_rfc5780_gets_the_old_attribute_names() -> None:
    engine = BindingEngine(rfc5780=RFC5780)
    change = struct.pack("!I", ChangeRequest.CHANGE_PORT)
    out = exchange(engine, rfc3489_request((A.CHANGE_REQUEST, change)), destination=RFC5780.primary)
    response = decode_message(out[0].data, allow_rfc3489=True)
    assert out[0].source == Address(A1, P2)
    assert response.get(A.SOURCE_ADDRESS) == Address(A1, P2)
    assert response.get(A.CHANGED_ADDRESS) == Address(A2, P2)
    assert A.OTHER_ADDRESS not in response


# --- hostile input -----------------------------------------------------------------------------


def flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0xFF])


def valid_request_bytes() -> bytes:
    return request((A.PADDING, bytes(8))).encode(fingerprint=True)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not_stun"),
        (b"\x00\x01", "not_stun"),
        (b"\xff" * 40, "not_stun"),
        (b"\x16\xfe\xfd" + bytes(30), "not_stun"),  # DTLS
        (b"\x80\x00" + bytes(20), "not_stun"),  # RTP
        (b"\x40\x00\x00\x04abcd", "channel_data"),
        (valid_request_bytes()[:-3], "malformed"),  # truncated
        (valid_request_bytes()[:2] + b"\xff\xfc" + valid_request_bytes()[4:], "malformed"),
        # Flip the fingerprint's last byte (setting it to 0 left it valid once in 256 runs).
        (flip_last_byte(valid_request_bytes()), "bad_fingerprint"),
        (struct.pack("!HHI12s", 1, 8, 0x2112A442, bytes(12)) + b"\x00\x20\x00\xff" + bytes(4),
         "malformed"),  # attribute overrun
    ],
    # Explicit ids: the requests carry random transaction ids, and pytest-xdist needs every
    # worker to collect the same test names.
    ids=["empty", "short", "ff", "dtls", "rtp", "channel-data", "truncated", "length-overrun",
         "bad-fingerprint", "attribute-overrun"],
)  # fmt: skip
def test_malformed_input_is_dropped_and_counted(data: bytes, reason: str) -> None:
    engine = BindingEngine()
    assert exchange(engine, data) == []
    assert engine.counters.dropped == {reason: 1}
    assert engine.counters.events["internal_errors"] == 0


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_random_bytes_never_raise(data: bytes) -> None:
    engine = BindingEngine(rfc5780=RFC5780)
    out = exchange(engine, data, destination=RFC5780.primary)
    assert engine.counters.events["internal_errors"] == 0
    for datagram in out:
        assert len(datagram.data) <= max(len(data), 200)


@settings(max_examples=300, deadline=None)
@given(
    positions=st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=4),
    values=st.lists(st.integers(min_value=0, max_value=255), min_size=4, max_size=4),
)
def test_mutated_requests_never_raise(positions: list[int], values: list[int]) -> None:
    message = request((A.CHANGE_REQUEST, 6), (A.PADDING, bytes(12)), (A.RESPONSE_PORT, 9))
    data = bytearray(message.encode(fingerprint=True))
    for position, value in zip(positions, values, strict=False):
        data[position % len(data)] = value
    engine = BindingEngine(rfc5780=RFC5780)
    exchange(engine, bytes(data), destination=RFC5780.primary)
    exchange(engine, bytes(data), destination=RFC5780.primary, transport="tcp")
    assert engine.counters.events["internal_errors"] == 0


def test_drops_are_logged_once_per_source_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    engine = BindingEngine(log_interval=10.0)
    other = Address("192.0.2.99", 1)
    with caplog.at_level(logging.INFO, logger="icerelay.stun.binding"):
        for i in range(100):
            exchange(engine, b"garbage", source=Address(CLIENT.host, 1000 + i), now=i * 0.01)
        exchange(engine, b"garbage", source=other, now=1.0)
        exchange(engine, b"garbage", now=10.5)
    records = [r for r in caplog.records if r.getMessage() == "stun.dropped"]
    assert [(r.source, r.suppressed) for r in records] == [  # type: ignore[attr-defined]
        (f"{CLIENT.host}:1000", 0),
        (str(other), 0),
        (str(CLIENT), 99),
    ]
    assert engine.counters.dropped["not_stun"] == 102
