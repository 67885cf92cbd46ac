"""Whatever a TURN server (or anyone spoofing it) sends, the client engine never raises anything
but TurnError/StunError (in practice: nothing at all) and counts what it dropped."""

from __future__ import annotations

import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icerelay.stun import (
    AttributeType,
    Message,
    MessageClass,
    Method,
    decode_message,
)
from icerelay.turn.client import AllocationFailed, AllocationSucceeded, State

from .test_client_fakes import PEER, SERVER, FakeServer, Harness, make

A = AttributeType


def _feed(h: Harness, data: bytes) -> None:
    # The contract allows TurnError/StunError; the engine promises more (it counts and never
    # raises), so any exception at all fails these tests.
    h.engine.receive(data, SERVER, None, h.now)
    h.pump()
    h.engine.handle_timer(h.now + 1.0)
    h.pump()


def _dropped(h: Harness) -> int:
    c = h.engine.counters
    return c.malformed + c.ignored + c.integrity_failures


def _pending_request(h: Harness) -> Message:
    """Put a Refresh in flight and return it, so forged answers can match its transaction."""
    h.engine.refresh(h.now)
    (datagram,) = h.engine.datagrams_to_send(h.now)
    return decode_message(datagram.data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=200))
def test_random_bytes_never_raise(data: bytes) -> None:
    h = make()
    before = _dropped(h)
    _feed(h, data)
    # Nothing random can be a valid answer or data from a peer with a permission: every input
    # is accounted for.
    assert _dropped(h) == before + 1


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=120), chunk=st.integers(1, 40))
def test_random_stream_bytes_never_raise(data: bytes, chunk: int) -> None:
    h = make(transport="tcp")
    for offset in range(0, len(data), chunk):
        _feed(h, data[offset : offset + chunk])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(position=st.integers(0, 400), value=st.integers(0, 255))
def test_mutated_responses_never_raise(position: int, value: int) -> None:
    h = make()
    request = _pending_request(h)
    key = h.server.key_for("alice", 1)
    answer = request.response()
    answer.add(A.LIFETIME, 600)
    data = bytearray(answer.encode(integrity_key=key, fingerprint=False))
    data[position % len(data)] = value
    _feed(h, bytes(data))


def _answer_missing(
    request: Message, h: Harness, *, message_class: int, attributes: list[tuple[int, object]]
) -> bytes:
    key = h.server.key_for("alice", 1)
    answer = Message(request.method, message_class, request.transaction_id)
    for attribute_type, value in attributes:
        answer.add(attribute_type, value)  # type: ignore[arg-type]
    return answer.encode(integrity_key=key)


def test_allocate_success_without_relayed_address_fails_cleanly() -> None:
    h = make(start=False)
    h.engine.start(h.now)
    (first,) = h.engine.datagrams_to_send(h.now)
    for answer in h.server.handle(first.data):
        h.deliver(answer)
    (second,) = h.engine.datagrams_to_send(h.now)
    request = decode_message(second.data)
    bogus = _answer_missing(
        request, h, message_class=MessageClass.SUCCESS_RESPONSE, attributes=[(A.LIFETIME, 600)]
    )
    h.deliver(bogus)
    events = h.pump()
    assert len(events) == 1 and isinstance(events[0], AllocationFailed)
    assert "XOR-RELAYED-ADDRESS" in events[0].reason
    assert h.engine.counters.malformed == 1


def test_error_response_without_error_code_is_counted() -> None:
    h = make()
    request = _pending_request(h)
    h.deliver(_answer_missing(request, h, message_class=MessageClass.ERROR_RESPONSE, attributes=[]))
    h.pump()
    assert h.engine.counters.malformed == 1
    assert h.engine.state is State.ALLOCATED  # a failed refresh is retried, not fatal


def test_401_without_realm_or_nonce_fails_the_allocation() -> None:
    h = make(start=False)
    h.engine.start(h.now)
    (first,) = h.engine.datagrams_to_send(h.now)
    request = decode_message(first.data)
    answer = request.error_response(401)
    h.deliver(answer.encode())
    events = h.pump()
    assert isinstance(events[-1], AllocationFailed)
    assert h.engine.counters.malformed == 1


def test_401_offering_only_unknown_password_algorithms_fails() -> None:
    h = make(start=False)
    h.engine.start(h.now)
    (first,) = h.engine.datagrams_to_send(h.now)
    request = decode_message(first.data)
    answer = request.error_response(401)
    answer.add(A.REALM, "r")
    answer.add(A.NONCE, "n")
    answer.add(A.PASSWORD_ALGORITHMS, [7])
    h.deliver(answer.encode())
    assert isinstance(h.pump()[-1], AllocationFailed)


def test_unexpected_messages_are_ignored_and_counted() -> None:
    h = make()
    request = Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12))
    h.deliver(request.encode())
    stray = Message(
        Method.ALLOCATE, MessageClass.SUCCESS_RESPONSE, os.urandom(12)
    )  # unknown transaction
    h.deliver(stray.encode())
    odd = Message(Method.SEND, MessageClass.INDICATION, os.urandom(12))
    h.deliver(odd.encode())
    no_data = Message(Method.DATA, MessageClass.INDICATION, os.urandom(12))
    no_data.add(A.XOR_PEER_ADDRESS, PEER)
    h.deliver(no_data.encode())
    h.deliver(struct.pack("!HH", 0x4ABC, 1) + b"x\x00\x00\x00")  # unbound channel
    assert h.pump() == []
    assert h.engine.counters.ignored == 5
    assert h.engine.state is State.ALLOCATED


def test_malformed_channel_data_is_counted() -> None:
    h = make()
    h.deliver(struct.pack("!HH", 0x4000, 50) + b"short")
    h.deliver(b"\x40")
    assert h.pump() == []
    assert h.engine.counters.malformed == 2


def test_438_without_nonce_is_a_failed_request_not_an_exception() -> None:
    h = make()
    request = _pending_request(h)
    answer = request.error_response(438)
    h.deliver(answer.encode())
    h.pump()
    assert h.engine.counters.malformed == 1
    assert h.engine.state is State.ALLOCATED


def test_second_success_for_same_transaction_is_ignored() -> None:
    h = make()
    request = _pending_request(h)
    key = h.server.key_for("alice", 1)
    answer = request.response()
    answer.add(A.LIFETIME, 300)
    data = answer.encode(integrity_key=key)
    h.deliver(data)
    h.deliver(data)
    h.pump()
    assert h.engine.lifetime == 300
    assert h.engine.counters.ignored == 1


def test_success_with_wrong_types_does_not_escape() -> None:
    server = FakeServer()
    h = make(server=server, start=False)

    def mangle(message: Message, data: bytes) -> bytes:
        if message.message_class == MessageClass.SUCCESS_RESPONSE:
            # XOR-RELAYED-ADDRESS of the wrong family length: decoding must fail.
            return data[:24] + b"\x00\x09" + data[26:]
        return data

    server.mangle = mangle
    h.engine.start(h.now)
    h.advance(40.0)
    assert not any(isinstance(e, AllocationSucceeded) for e in h.events)
    assert h.engine.counters.malformed >= 1


def test_alternate_server_with_error_code_only() -> None:
    h = make(start=False)
    h.engine.start(h.now)
    (first,) = h.engine.datagrams_to_send(h.now)
    request = decode_message(first.data)
    answer = request.error_response(300)
    h.deliver(answer.encode())
    failed = h.pump()[-1]
    assert isinstance(failed, AllocationFailed) and failed.code == 300
