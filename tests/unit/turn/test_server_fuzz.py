"""Fuzzing the TURN server engine: hostile input never raises and never trips a bug counter."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icerelay.stun import Address, AttributeType, Message, MessageClass, Method

from .server_helpers import Client, make_engine

A = AttributeType

engine, _binder = make_engine()
client = Client(engine)
client.allocate()
client.bind_channel(0x4000, ("198.51.100.7", 5000))


def _signed_requests() -> list[bytes]:
    out = []
    for method, attributes in (
        (Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17), (A.EVEN_PORT, True)]),
        (Method.REFRESH, [(A.LIFETIME, 700)]),
        (Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, Address("198.51.100.9", 1))]),
        (
            Method.CHANNEL_BIND,
            [(A.CHANNEL_NUMBER, 0x4001), (A.XOR_PEER_ADDRESS, Address("198.51.100.8", 2))],
        ),
    ):
        message = Message(method, MessageClass.REQUEST, os.urandom(12))
        for attribute_type, value in attributes:
            message.add(attribute_type, value)  # type: ignore[arg-type]
        message.add(A.USERNAME, client.username)
        message.add(A.REALM, client.realm)
        assert client.nonce is not None
        message.add(A.NONCE, client.nonce)
        out.append(message.encode(client.key, fingerprint=True))
    send = Message(Method.SEND, MessageClass.INDICATION, os.urandom(12))
    send.add(A.XOR_PEER_ADDRESS, Address("198.51.100.7", 5000))
    send.add(A.DATA, b"hello")
    out.append(send.encode())
    out.append(b"\x40\x00\x00\x05hello\x00\x00\x00")
    return out


SEEDS = _signed_requests()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(SEEDS),
    flips=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 2000),
    transport=st.sampled_from(["udp", "tcp"]),
)
def test_mutated_requests_never_raise(
    seed: bytes, flips: list[tuple[int, int]], cut: int, transport: str
) -> None:
    data = bytearray(seed)
    for position, value in flips:
        if data:
            data[position % len(data)] = value
    data = data[: max(1, cut)] if cut < len(data) else data
    engine.receive(bytes(data), client.address, client.server, transport, client.now)
    engine.receive_relayed(bytes(data), ("198.51.100.7", 5000), ("192.0.2.1", 20000), client.now)
    engine.datagrams_to_send()
    engine.handle_timer(client.now)
    assert engine.counters["internal_errors"] == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    engine.receive(data, ("203.0.113.77", 1), client.server, "udp", client.now)
    engine.datagrams_to_send()
    assert engine.counters["internal_errors"] == 0
