"""Property-based round trips and a fuzz run for the STUN decoder.

The fuzz tests feed random bytes, and mutations of valid messages (bit flips, truncation,
length-field changes, spliced attributes), to :func:`decode_message`: it must return a message
or raise StunError, never anything else.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.unit.stun.vectors import (
    LONG_TERM_REQUEST,
    SAMPLE_IPV4_RESPONSE,
    SAMPLE_IPV6_RESPONSE,
    SAMPLE_REQUEST,
    SHA256_REQUEST,
)

from icerelay.errors import StunError
from icerelay.stun import (
    Address,
    AddressErrorCode,
    AttributeType,
    ErrorCode,
    Icmp,
    Message,
    MessageClass,
    PasswordAlgorithmEntry,
    decode_message,
)
from icerelay.stun.channeldata import decode_channel_data
from icerelay.stun.demux import classify_packet, stream_frame_length

A = AttributeType
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _normal_ipv6(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6, packed)


addresses = st.one_of(
    st.builds(
        Address,
        st.binary(min_size=4, max_size=4).map(lambda b: socket.inet_ntop(socket.AF_INET, b)),
        st.integers(0, 0xFFFF),
    ),
    st.builds(
        Address, st.binary(min_size=16, max_size=16).map(_normal_ipv6), st.integers(0, 0xFFFF)
    ),
)


def _text(max_bytes: int) -> st.SearchStrategy[str]:
    return (
        st.text(max_size=40)
        .filter(lambda s: len(s.encode("utf-8", "surrogatepass")) <= max_bytes)
        .filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s))
    )


u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
error_codes = st.integers(300, 699)
algorithm_entries = st.builds(PasswordAlgorithmEntry, u16, st.binary(max_size=9))

VALUES: dict[int, st.SearchStrategy[Any]] = {
    A.MAPPED_ADDRESS: addresses,
    A.XOR_MAPPED_ADDRESS: addresses,
    A.XOR_PEER_ADDRESS: addresses,
    A.XOR_RELAYED_ADDRESS: addresses,
    A.ALTERNATE_SERVER: addresses,
    A.RESPONSE_ORIGIN: addresses,
    A.OTHER_ADDRESS: addresses,
    A.USERNAME: _text(512),
    A.REALM: _text(763),
    A.NONCE: _text(763),
    A.SOFTWARE: _text(763),
    A.ALTERNATE_DOMAIN: _text(763),
    A.ERROR_CODE: st.builds(ErrorCode, error_codes, _text(200)),
    A.ADDRESS_ERROR_CODE: st.builds(AddressErrorCode, u8, error_codes, _text(200)),
    A.UNKNOWN_ATTRIBUTES: st.lists(u16, max_size=6),
    A.LIFETIME: u32,
    A.PRIORITY: u32,
    A.CHANGE_REQUEST: u32,
    A.CONNECTION_ID: u32,
    A.CHANNEL_NUMBER: u16,
    A.RESPONSE_PORT: u16,
    A.REQUESTED_TRANSPORT: u8,
    A.REQUESTED_ADDRESS_FAMILY: u8,
    A.ADDITIONAL_ADDRESS_FAMILY: u8,
    A.ICE_CONTROLLED: u64,
    A.ICE_CONTROLLING: u64,
    A.EVEN_PORT: st.booleans(),
    A.USE_CANDIDATE: st.none(),
    A.DONT_FRAGMENT: st.none(),
    A.DATA: st.binary(max_size=64),
    A.PADDING: st.binary(max_size=64),
    A.RESERVATION_TOKEN: st.binary(min_size=8, max_size=8),
    A.USERHASH: st.binary(min_size=32, max_size=32),
    A.PASSWORD_ALGORITHM: algorithm_entries,
    A.PASSWORD_ALGORITHMS: st.lists(algorithm_entries, max_size=4),
    A.ICMP: st.builds(Icmp, u8, u8, u32),
}

unknown_types = st.integers(0, 0xFFFF).filter(lambda t: t not in {int(a) for a in AttributeType})
attribute = st.one_of(
    st.sampled_from(sorted(VALUES)).flatmap(lambda t: VALUES[t].map(lambda v: (t, v))),
    st.tuples(unknown_types, st.binary(max_size=20)),
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    message = Message(
        draw(st.integers(0, 0xFFF)),
        draw(st.sampled_from(list(MessageClass))),
        draw(st.binary(min_size=12, max_size=12)),
    )
    for attribute_type, value in draw(st.lists(attribute, max_size=8)):
        message.add(attribute_type, value)
    return message


@FAST
@given(messages(), st.sampled_from([None, "sha1", "sha256", "both"]), st.booleans())
def test_round_trip(message: Message, integrity: Any, fingerprint: bool) -> None:
    key = b"key"
    data = message.encode(key if integrity else None, integrity, fingerprint)
    decoded = decode_message(data)
    assert decoded.method == message.method
    assert decoded.message_class == message.message_class
    assert decoded.transaction_id == message.transaction_id
    computed = {A.MESSAGE_INTEGRITY, A.MESSAGE_INTEGRITY_SHA256, A.FINGERPRINT}
    assert [a for a in decoded if a[0] not in computed] == message.attributes
    assert decoded.fingerprint_ok is fingerprint
    if integrity:
        assert decoded.check_integrity(key)
    expected_unknown = [t for t, _ in message if t < 0x8000 and t not in set(AttributeType)]
    assert decoded.unknown_comprehension_required == expected_unknown
    # decode(encode(decode(x))) is stable, byte for byte
    assert decoded.encode(key if integrity else None, integrity, fingerprint) == data


VALID = [
    SAMPLE_REQUEST,
    SAMPLE_IPV4_RESPONSE,
    SAMPLE_IPV6_RESPONSE,
    LONG_TERM_REQUEST,
    SHA256_REQUEST,
]


def _decode_or_stun_error(data: bytes) -> None:
    for allow_rfc3489 in (False, True):
        for check_fingerprint in (True, False):
            try:
                message = decode_message(
                    data, allow_rfc3489=allow_rfc3489, check_fingerprint=check_fingerprint
                )
            except StunError:
                continue
            # whatever decodes can be checked and re-encoded
            message.check_integrity(b"key")
            message.check_integrity(b"key", "sha1")
            message.check_integrity(b"key", "sha256")
            repr(message)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_fuzz_random_bytes(data: bytes) -> None:
    _decode_or_stun_error(data)
    # give the random bytes a plausible header, so the attribute walk runs on them
    body = data[: len(data) & ~3]
    _decode_or_stun_error(struct.pack("!HHI", 0x0001, len(body), 0x2112A442) + bytes(12) + body)
    classify_packet(data)
    with contextlib.suppress(StunError):
        stream_frame_length(data)
    with contextlib.suppress(StunError):
        decode_channel_data(data)


@st.composite
def mutations(draw: st.DrawFn) -> bytes:
    source = draw(
        st.one_of(st.sampled_from(VALID), messages().map(lambda m: m.encode(b"k", "both", True)))
    )
    data = bytearray(source)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "length", "splice", "attr-length"]))
        if kind == "flip" and data:
            index = draw(st.integers(0, len(data) - 1))
            data[index] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif kind == "length" and len(data) >= 4:
            data[2:4] = struct.pack(
                "!H", draw(st.sampled_from([len(data) - 20, len(data) - 16, 0, 0xFFFF])) & 0xFFFF
            )
        elif kind == "splice":
            index = draw(st.integers(0, len(data)))
            data[index:index] = draw(st.binary(min_size=1, max_size=12))
        elif kind == "attr-length" and len(data) >= 24:
            # rewrite some attribute-length-sized field to a hostile value
            index = draw(st.integers(20, len(data) - 2))
            data[index : index + 2] = struct.pack(
                "!H", draw(st.sampled_from([0, 1, 3, 255, 0xFFFF]))
            )
    return bytes(data)


@settings(max_examples=300, deadline=None)
@given(mutations())
def test_fuzz_mutated_messages(data: bytes) -> None:
    _decode_or_stun_error(data)
    # and with the length field made consistent again, to get past the header checks
    if len(data) >= 20:
        body = len(data) - 20
        fixed = data[:2] + struct.pack("!H", body & 0xFFFF) + data[4:]
        _decode_or_stun_error(fixed)
