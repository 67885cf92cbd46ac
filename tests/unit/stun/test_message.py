"""Message encoding and decoding: every typed attribute, integrity and fingerprint rules,
RFC 8489 §14.5 (attributes after MESSAGE-INTEGRITY), 420 reporting, RFC 3489, and the
errors every kind of malformed input gives."""

from __future__ import annotations

import binascii
import random
import struct
from typing import Any

import pytest

from icerelay.errors import StunError
from icerelay.stun import (
    MAGIC_COOKIE,
    Address,
    AddressErrorCode,
    AttributeType,
    ErrorCode,
    Icmp,
    Message,
    MessageClass,
    Method,
    PasswordAlgorithm,
    PasswordAlgorithmEntry,
    decode_message,
    is_stun,
)
from icerelay.stun.message import message_type, new_transaction_id, split_message_type

A = AttributeType
TXID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
KEY = b"0123456789abcdef"


def _header(mtype: int, body: bytes, cookie: int = MAGIC_COOKIE, txid: bytes = TXID) -> bytes:
    return struct.pack("!HHI", mtype, len(body), cookie) + txid + body


def _attribute(attribute_type: int, value: bytes) -> bytes:
    return struct.pack("!HH", attribute_type, len(value)) + value + b"\x00" * (-len(value) % 4)


def _request(*attributes: tuple[int, Any]) -> Message:
    message = Message(Method.BINDING, MessageClass.REQUEST, TXID)
    for attribute_type, value in attributes:
        message.add(attribute_type, value)
    return message


# --- header ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "message_class", "wire"),
    [
        (Method.BINDING, MessageClass.REQUEST, 0x0001),
        (Method.BINDING, MessageClass.INDICATION, 0x0011),
        (Method.BINDING, MessageClass.SUCCESS_RESPONSE, 0x0101),
        (Method.BINDING, MessageClass.ERROR_RESPONSE, 0x0111),
        (Method.ALLOCATE, MessageClass.REQUEST, 0x0003),
        (Method.ALLOCATE, MessageClass.ERROR_RESPONSE, 0x0113),
        (Method.SEND, MessageClass.INDICATION, 0x0016),
        (Method.DATA, MessageClass.INDICATION, 0x0017),
        (Method.CHANNEL_BIND, MessageClass.SUCCESS_RESPONSE, 0x0109),
        (Method.CONNECTION_ATTEMPT, MessageClass.INDICATION, 0x001C),
        (0xFFF, MessageClass.ERROR_RESPONSE, 0x3FFF),
    ],
)
def test_message_type_bits(method: int, message_class: int, wire: int) -> None:
    assert message_type(method, message_class) == wire
    assert split_message_type(wire) == (method, message_class)


def test_empty_binding_request() -> None:
    message = Message(Method.BINDING, MessageClass.REQUEST, TXID)
    data = message.encode()
    assert data == bytes.fromhex("000100002112a442") + TXID
    assert is_stun(data)
    decoded = decode_message(data)
    assert decoded == message
    assert decoded.method is Method.BINDING
    assert not decoded.has_fingerprint and decoded.integrity_algorithm is None
    assert not decoded.check_integrity(KEY)


def test_random_transaction_ids() -> None:
    rng = random.Random(1)
    first = Message(Method.BINDING, MessageClass.REQUEST, new_transaction_id(rng))
    second = Message(Method.BINDING, MessageClass.REQUEST, new_transaction_id(rng))
    assert len(first.transaction_id) == 12 and first.transaction_id != second.transaction_id
    replay = random.Random(1)
    assert new_transaction_id(replay) == first.transaction_id
    with pytest.raises(TypeError):
        Message(Method.BINDING, MessageClass.REQUEST)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        Message(Method.BINDING, MessageClass.REQUEST, b"short")


def test_unknown_method_survives() -> None:
    data = Message(0x0ABC, MessageClass.REQUEST, TXID).encode()
    assert decode_message(data).method == 0x0ABC


# --- attribute values --------------------------------------------------------------------

ROUND_TRIPS: list[tuple[int, Any]] = [
    (A.MAPPED_ADDRESS, Address("192.0.2.1", 3478)),
    (A.MAPPED_ADDRESS, Address("2001:db8::1", 1)),
    (A.XOR_MAPPED_ADDRESS, Address("192.0.2.1", 32853)),
    (A.XOR_MAPPED_ADDRESS, Address("2001:db8:1234:5678:11:2233:4455:6677", 65535)),
    (A.XOR_PEER_ADDRESS, Address("198.51.100.7", 0)),
    (A.XOR_RELAYED_ADDRESS, Address("::1", 49152)),
    (A.ALTERNATE_SERVER, Address("203.0.113.1", 3478)),
    (A.RESPONSE_ORIGIN, Address("203.0.113.1", 3478)),
    (A.OTHER_ADDRESS, Address("203.0.113.2", 3479)),
    (A.CHANGED_ADDRESS, Address("203.0.113.2", 3479)),
    (A.SOURCE_ADDRESS, Address("203.0.113.1", 3478)),
    (A.USERNAME, "alice"),
    (A.USERNAME, "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"),
    (A.REALM, "example.org"),
    (A.NONCE, "obMatJos2gAAAabc"),
    (A.SOFTWARE, "icerelay 0.1"),
    (A.ALTERNATE_DOMAIN, "turn.example.org"),
    (A.ERROR_CODE, ErrorCode(401, "Unauthenticated")),
    (A.ERROR_CODE, ErrorCode(699, "")),
    (A.ERROR_CODE, ErrorCode(300, "Try Alternate \u263a")),
    (A.UNKNOWN_ATTRIBUTES, [0x0007, 0x7FFF, 0x002F]),
    (A.UNKNOWN_ATTRIBUTES, [0x0033]),
    (A.CHANNEL_NUMBER, 0x4000),
    (A.LIFETIME, 600),
    (A.DATA, b""),
    (A.DATA, b"\x00\x01\x02"),
    (A.REQUESTED_ADDRESS_FAMILY, 2),
    (A.ADDITIONAL_ADDRESS_FAMILY, 2),
    (A.EVEN_PORT, True),
    (A.EVEN_PORT, False),
    (A.REQUESTED_TRANSPORT, 17),
    (A.DONT_FRAGMENT, None),
    (A.RESERVATION_TOKEN, b"12345678"),
    (A.ADDRESS_ERROR_CODE, AddressErrorCode(2, 440, "Address Family not Supported")),
    (A.ICMP, Icmp(3, 4, 1400)),
    (A.CONNECTION_ID, 0xDEADBEEF),
    (A.PRIORITY, 0x6E0001FF),
    (A.USE_CANDIDATE, None),
    (A.ICE_CONTROLLED, 0xFFFFFFFFFFFFFFFF),
    (A.ICE_CONTROLLING, 0),
    (A.CHANGE_REQUEST, 0x06),
    (A.PADDING, b"\x00" * 17),
    (A.RESPONSE_PORT, 5000),
    (A.USERHASH, bytes(range(32))),
    (A.PASSWORD_ALGORITHM, PasswordAlgorithmEntry(PasswordAlgorithm.SHA256)),
    (
        A.PASSWORD_ALGORITHMS,
        [
            PasswordAlgorithmEntry(PasswordAlgorithm.SHA256),
            PasswordAlgorithmEntry(PasswordAlgorithm.MD5),
            PasswordAlgorithmEntry(7, b"\x01\x02\x03"),
        ],
    ),
    (0x7F00, b"unknown required"),
    (0xC001, b"unknown optional"),
]


@pytest.mark.parametrize(("attribute_type", "value"), ROUND_TRIPS)
def test_attribute_round_trip(attribute_type: int, value: Any) -> None:
    message = _request((attribute_type, value))
    data = message.encode()
    assert len(data) % 4 == 0
    decoded = decode_message(data)
    assert decoded.get(attribute_type) == value
    assert attribute_type in decoded
    assert decoded == message


def test_wire_form_of_some_attributes() -> None:
    # 420 reason with padding, REQUESTED-TRANSPORT with its RFFU bytes, EVEN-PORT of one byte.
    data = _request(
        (A.ERROR_CODE, ErrorCode(420)),
        (A.REQUESTED_TRANSPORT, 17),
        (A.EVEN_PORT, True),
        (A.CHANNEL_NUMBER, 0x4001),
    ).encode()
    body = data[20:]
    assert body == (
        _attribute(A.ERROR_CODE, b"\x00\x00\x04\x14Unknown Attribute")
        + _attribute(A.REQUESTED_TRANSPORT, b"\x11\x00\x00\x00")
        + _attribute(A.EVEN_PORT, b"\x80")
        + _attribute(A.CHANNEL_NUMBER, b"\x40\x01\x00\x00")
    )


def test_password_algorithm_accepts_plain_numbers() -> None:
    message = _request(
        (A.PASSWORD_ALGORITHMS, [PasswordAlgorithm.MD5, PasswordAlgorithm.SHA256]),
        (A.PASSWORD_ALGORITHM, PasswordAlgorithm.SHA256),
    )
    decoded = decode_message(message.encode())
    assert decoded.get(A.PASSWORD_ALGORITHMS) == [
        PasswordAlgorithmEntry(1),
        PasswordAlgorithmEntry(2),
    ]
    assert decoded.get(A.PASSWORD_ALGORITHM) == PasswordAlgorithmEntry(2)


def test_error_code_default_reason() -> None:
    assert ErrorCode(438).reason == "Stale Nonce"
    assert ErrorCode(487).reason == "Role Conflict"
    with pytest.raises(ValueError):
        ErrorCode(200)


def test_address_family() -> None:
    assert Address("192.0.2.1", 1).family == 4
    assert Address("::1", 1).family == 6
    assert str(Address("::1", 5)) == "[::1]:5"
    assert str(Address("192.0.2.1", 5)) == "192.0.2.1:5"


def test_ipv6_xor_uses_transaction_id() -> None:
    address = Address("2001:db8::1", 4000)
    one = _request((A.XOR_MAPPED_ADDRESS, address)).encode()
    other = Message(Method.BINDING, MessageClass.REQUEST, bytes(12))
    other.add(A.XOR_MAPPED_ADDRESS, address)
    two = other.encode()
    # same port XOR, different address XOR
    assert one[24:28] == two[24:28]
    assert one[28:] != two[28:]
    assert decode_message(two).get(A.XOR_MAPPED_ADDRESS) == address


def test_duplicates_kept_in_order() -> None:
    peers = [Address("192.0.2.1", 1), Address("192.0.2.2", 2), Address("192.0.2.1", 1)]
    message = _request(*((A.XOR_PEER_ADDRESS, peer) for peer in peers))
    decoded = decode_message(message.encode())
    assert decoded.get_all(A.XOR_PEER_ADDRESS) == peers
    assert decoded.get(A.XOR_PEER_ADDRESS) == peers[0]
    assert decoded.get_all(A.LIFETIME) == []
    assert decoded.get(A.LIFETIME) is None


def test_remove_and_response_helpers() -> None:
    message = _request((A.LIFETIME, 1), (A.SOFTWARE, "x"), (A.LIFETIME, 2))
    message.remove(A.LIFETIME)
    assert [t for t, _ in message] == [A.SOFTWARE]
    response = message.error_response(401)
    assert response.method == Method.BINDING
    assert response.message_class == MessageClass.ERROR_RESPONSE
    assert response.transaction_id == TXID
    assert response.get(A.ERROR_CODE) == ErrorCode(401, "Unauthenticated")
    assert "ERROR_CODE" in repr(response)


def test_encode_rejects_bad_values() -> None:
    for attribute_type, value in [
        (A.XOR_MAPPED_ADDRESS, Address("not an address", 1)),
        (A.XOR_MAPPED_ADDRESS, Address("192.0.2.1", 70000)),
        (A.USERNAME, "x" * 513),
        (A.LIFETIME, "600"),
        (A.LIFETIME, -1),
        (A.USE_CANDIDATE, 1),
        (A.REQUESTED_TRANSPORT, 256),
        (0x7F00, "unknown types want bytes"),
        (A.DATA, b"x" * 70000),
    ]:
        with pytest.raises(ValueError):
            _request((attribute_type, value)).encode()
    with pytest.raises(ValueError):
        _request().encode(KEY, "md5")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        _request().encode(KEY, "sha256", sha256_length=12)


def test_raw_bytes_for_known_type() -> None:
    # An escape hatch for crafting odd messages: bytes are written as they are.
    data = _request((A.LIFETIME, b"\x00\x00\x02")).encode()
    with pytest.raises(StunError, match="LIFETIME"):
        decode_message(data)


# --- integrity and fingerprint -----------------------------------------------------------


@pytest.mark.parametrize("integrity", ["sha1", "sha256", "both"])
@pytest.mark.parametrize("fingerprint", [False, True])
def test_integrity_round_trip(integrity: Any, fingerprint: bool) -> None:
    message = _request((A.USERNAME, "alice"), (A.PRIORITY, 5))
    data = message.encode(KEY, integrity, fingerprint)
    decoded = decode_message(data)
    assert decoded.check_integrity(KEY)
    assert not decoded.check_integrity(b"other key")
    assert decoded.has_fingerprint is fingerprint
    assert decoded.fingerprint_ok is fingerprint
    assert decoded.ignored_after_integrity == 0
    if integrity == "both":
        assert decoded.check_integrity(KEY, "sha1") and decoded.check_integrity(KEY, "sha256")
    assert decoded.integrity_algorithm == ("sha1" if integrity == "sha1" else "sha256")
    # decoded messages re-encode to the same bytes
    assert decoded.encode(KEY, integrity, fingerprint) == data


@pytest.mark.parametrize("length", [16, 20, 24, 28])
def test_truncated_sha256_integrity(length: int) -> None:
    data = _request((A.USERNAME, "bob")).encode(KEY, "sha256", sha256_length=length)
    decoded = decode_message(data)
    assert len(decoded.get(A.MESSAGE_INTEGRITY_SHA256) or b"") == length
    assert decoded.check_integrity(KEY)
    assert not decoded.check_integrity(KEY[:-1])


@pytest.mark.parametrize("length", [0, 12, 18, 36])
def test_bad_sha256_integrity_length(length: int) -> None:
    data = _header(0x0001, _attribute(A.MESSAGE_INTEGRITY_SHA256, bytes(length)))
    with pytest.raises(StunError, match="MESSAGE-INTEGRITY-SHA256"):
        decode_message(data)


def test_integrity_over_tampered_bytes_fails() -> None:
    data = bytearray(_request((A.USERNAME, "alice")).encode(KEY))
    data[25] ^= 1
    assert not decode_message(bytes(data)).check_integrity(KEY)


def test_check_integrity_on_a_built_message_is_false() -> None:
    assert not _request().check_integrity(KEY)


def _append_after(data: bytes, *attributes: bytes) -> bytes:
    """``data`` with attributes appended and the length field fixed up, as an attacker on the
    path could do: the integrity still verifies, because it stops at MESSAGE-INTEGRITY."""
    body = data[20:] + b"".join(attributes)
    return data[:2] + struct.pack("!H", len(body)) + data[4:20] + body


def test_attributes_after_integrity_are_ignored() -> None:
    signed = _request((A.USERNAME, "alice"), (A.LIFETIME, 600)).encode(KEY)
    forged = _append_after(
        signed,
        _attribute(A.LIFETIME, b"\x00\x00\x00\x00"),
        _attribute(0x7F00, b"unknown"),
        _attribute(A.XOR_PEER_ADDRESS, b"junk that would not even decode"),
    )
    decoded = decode_message(forged)
    assert decoded.check_integrity(KEY)
    assert decoded.get_all(A.LIFETIME) == [600]
    assert decoded.get(A.XOR_PEER_ADDRESS) is None
    assert decoded.unknown_comprehension_required == []
    assert decoded.ignored_after_integrity == 3


def test_sha256_may_follow_sha1_but_nothing_may_follow_sha256() -> None:
    signed = _request((A.USERNAME, "alice")).encode(KEY, "both")
    decoded = decode_message(signed)
    assert decoded.ignored_after_integrity == 0
    # MESSAGE-INTEGRITY after MESSAGE-INTEGRITY-SHA256 is ignored
    sha256_only = _request((A.USERNAME, "alice")).encode(KEY, "sha256")
    late_sha1 = _append_after(sha256_only, _attribute(A.MESSAGE_INTEGRITY, bytes(20)))
    decoded = decode_message(late_sha1)
    assert decoded.ignored_after_integrity == 1
    assert decoded.get(A.MESSAGE_INTEGRITY) is None
    assert decoded.integrity_algorithm == "sha256"
    assert decoded.check_integrity(KEY)
    assert not decoded.check_integrity(KEY, "sha1")


def test_fingerprint_after_ignored_attributes_still_checked() -> None:
    signed = _request((A.USERNAME, "alice")).encode(KEY)
    forged = _append_after(signed, _attribute(A.SOFTWARE, b"after"))
    # now add a FINGERPRINT by hand over the whole thing
    with_fp_len = forged[:2] + struct.pack("!H", len(forged) - 20 + 8) + forged[4:]
    crc = binascii.crc32(with_fp_len) ^ 0x5354554E
    data = with_fp_len + _attribute(A.FINGERPRINT, struct.pack("!I", crc))
    decoded = decode_message(data)
    assert decoded.fingerprint_ok and decoded.ignored_after_integrity == 1
    assert decoded.check_integrity(KEY)


def test_fingerprint_mismatch() -> None:
    data = bytearray(_request((A.SOFTWARE, "x")).encode(fingerprint=True))
    data[-1] ^= 0xFF
    with pytest.raises(StunError, match="FINGERPRINT mismatch"):
        decode_message(bytes(data))
    decoded = decode_message(bytes(data), check_fingerprint=False)
    assert decoded.has_fingerprint and not decoded.fingerprint_ok


def test_fingerprint_not_last() -> None:
    data = _request(
        (A.FINGERPRINT, b"\x00\x00\x00\x00"),  # bytes: written as is
    ).encode()
    # encode() leaves out FINGERPRINT in the attribute list, so craft by hand
    assert decode_message(data).has_fingerprint is False
    body = _attribute(A.FINGERPRINT, bytes(4)) + _attribute(A.SOFTWARE, b"x")
    with pytest.raises(StunError, match="FINGERPRINT is not the last"):
        decode_message(_header(0x0001, body))
    with pytest.raises(StunError, match="FINGERPRINT"):
        decode_message(_header(0x0001, _attribute(A.FINGERPRINT, bytes(8))))


# --- unknown attributes, RFC 3489 ----------------------------------------------------------


def test_unknown_comprehension_required_reported() -> None:
    message = _request(
        (0x07AD, b"\x01\x02\x03\x04"),
        (A.CHANNEL_NUMBER, 0x4000),
        (0x7FFF, bytes(4)),
        (0x8000 | 0x7FFF, bytes(4)),
        (0x07AD, b""),
    )
    decoded = decode_message(message.encode())
    assert decoded.unknown_comprehension_required == [0x07AD, 0x7FFF, 0x07AD]
    assert decoded.get_all(0x07AD) == [b"\x01\x02\x03\x04", b""]
    assert decoded.get(0xFFFF) == bytes(4)


def test_rfc3489_messages_need_the_flag() -> None:
    legacy_id = bytes(range(12))
    body = _attribute(A.MAPPED_ADDRESS, b"\x00\x01\x0d\x96\xc0\x00\x02\x01") + _attribute(
        A.CHANGED_ADDRESS, b"\x00\x01\x0d\x97\xc0\x00\x02\x02"
    )
    data = _header(0x0101, body, cookie=0x01020304, txid=legacy_id)
    assert not is_stun(data)
    assert is_stun(data, allow_rfc3489=True)
    with pytest.raises(StunError, match="magic cookie"):
        decode_message(data)
    decoded = decode_message(data, allow_rfc3489=True)
    assert decoded.is_rfc3489
    assert decoded.get(A.MAPPED_ADDRESS) == Address("192.0.2.1", 3478)
    assert decoded.get(A.CHANGED_ADDRESS) == Address("192.0.2.2", 3479)
    assert decoded.transaction_key == b"\x01\x02\x03\x04" + legacy_id
    # a response keeps the legacy 128-bit id
    assert decoded.response().encode()[4:20] == data[4:20]


# --- malformed input -------------------------------------------------------------------------

MALFORMED: list[tuple[bytes, str]] = [
    (b"", "short header"),
    (bytes(19), "short header"),
    (b"\xc0" + bytes(19), "first two bits"),
    (
        _header(0x0001, b"")[:2] + b"\x00\x02" + _header(0x0001, b"")[4:] + b"\x00\x00",
        "multiple of 4",
    ),
    (_header(0x0001, b"")[:2] + b"\x00\x04" + _header(0x0001, b"")[4:], "length field"),
    (_header(0x0001, b"") + b"\x00\x00\x00\x00", "length field"),
    (_header(0x0001, struct.pack("!HH", A.SOFTWARE, 8) + b"abcd"), "overruns"),
    (_header(0x0001, struct.pack("!HH", A.SOFTWARE, 5) + b"abcd"), "overruns"),
    (
        _header(0x0001, _attribute(A.XOR_MAPPED_ADDRESS, b"\x00\x03\x00\x01\x00\x00\x00\x00")),
        "family",
    ),
    (_header(0x0001, _attribute(A.XOR_MAPPED_ADDRESS, b"\x00\x01\x00\x01\x00\x00")), "IPv4"),
    (_header(0x0001, _attribute(A.MAPPED_ADDRESS, b"\x00\x02\x00\x01" + bytes(4))), "IPv6"),
    (_header(0x0001, _attribute(A.MAPPED_ADDRESS, b"\x00")), "too short"),
    (_header(0x0001, _attribute(A.ERROR_CODE, b"\x00\x00\x02\x00")), "error code"),
    (_header(0x0001, _attribute(A.ERROR_CODE, b"\x00\x00\x04\x64")), "error code"),
    (_header(0x0001, _attribute(A.ERROR_CODE, b"\x00\x00\x04")), "ERROR-CODE"),
    (_header(0x0001, _attribute(A.ERROR_CODE, b"\x00\x00\x04\x01\xff")), "UTF-8"),
    (_header(0x0001, _attribute(A.USERNAME, b"\xff\xfe")), "UTF-8"),
    (_header(0x0001, _attribute(A.USERNAME, b"u" * 513)), "USERNAME"),
    (_header(0x0001, _attribute(A.UNKNOWN_ATTRIBUTES, b"\x00\x01\x00")), "odd length"),
    (_header(0x0001, _attribute(A.LIFETIME, b"\x00\x01")), "LIFETIME"),
    (_header(0x0001, _attribute(A.ICE_CONTROLLING, bytes(4))), "ICE-CONTROLLING"),
    (_header(0x0001, _attribute(A.USE_CANDIDATE, bytes(4))), "USE-CANDIDATE"),
    (_header(0x0001, _attribute(A.EVEN_PORT, b"")), "EVEN-PORT"),
    (_header(0x0001, _attribute(A.MESSAGE_INTEGRITY, bytes(16))), "MESSAGE-INTEGRITY"),
    (_header(0x0001, _attribute(A.USERHASH, bytes(31))), "USERHASH"),
    (_header(0x0001, _attribute(A.RESERVATION_TOKEN, bytes(4))), "RESERVATION-TOKEN"),
    (_header(0x0001, _attribute(A.PASSWORD_ALGORITHM, b"")), "PASSWORD-ALGORITHM"),
    (_header(0x0001, _attribute(A.PASSWORD_ALGORITHMS, b"\x00\x01\x00\x08\x00")), "overrun"),
    (_header(0x0001, _attribute(A.PASSWORD_ALGORITHMS, b"\x00\x01")), "truncated"),
    (_header(0x0001, _attribute(A.ICMP, bytes(4))), "ICMP"),
    (_header(0x0001, _attribute(A.ADDRESS_ERROR_CODE, b"\x01\x00\x07\x00")), "error code"),
]


@pytest.mark.parametrize(("data", "reason"), MALFORMED)
def test_malformed_raises_stun_error(data: bytes, reason: str) -> None:
    with pytest.raises(StunError, match=reason):
        decode_message(data)


def test_decode_accepts_bytearray_and_memoryview() -> None:
    data = _request((A.SOFTWARE, "x")).encode(KEY, fingerprint=True)
    for form in (bytearray(data), memoryview(data)):
        decoded = decode_message(form)
        assert decoded.get(A.SOFTWARE) == "x" and decoded.check_integrity(KEY)


def test_every_registered_attribute_type_has_a_codec() -> None:
    from icerelay.stun.attributes import CODECS

    assert set(AttributeType) <= set(CODECS)


def test_decoded_attribute_types_are_enum_members() -> None:
    decoded = decode_message(_request((A.SOFTWARE, "x"), (0x7F00, b"")).encode())
    assert [type(t) for t, _ in decoded] == [AttributeType, int]


def test_is_stun_negatives() -> None:
    good = _request().encode()
    assert is_stun(good) and is_stun(bytearray(good)) and is_stun(memoryview(good))
    assert not is_stun(good[:19])
    assert not is_stun(b"\x80" + good[1:])  # RTP
    assert not is_stun(good + b"\x00\x00\x00\x00")  # length field disagrees
    assert not is_stun(good[:3] + b"\x02" + good[4:] + b"\x00\x00")  # not a multiple of 4
