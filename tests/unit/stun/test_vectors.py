"""The published STUN test vectors: RFC 5769 §2.1-2.4 and RFC 8489 Appendix B.1 (as corrected
by erratum 6268). The bytes are typed in from the RFCs."""

from __future__ import annotations

import pytest
from tests.unit.stun.vectors import (
    LONG_TERM_REQUEST,
    PASSWORD_MATRIX,
    SAMPLE_IPV4_RESPONSE,
    SAMPLE_IPV6_RESPONSE,
    SAMPLE_REQUEST,
    SHA256_REQUEST,
    SHORT_TERM_PASSWORD,
    USERNAME_MATRIX,
)

from icerelay.stun import (
    Address,
    AttributeType,
    MessageClass,
    Method,
    PasswordAlgorithm,
    PasswordAlgorithmEntry,
    decode_message,
    is_stun,
)
from icerelay.stun.credentials import long_term_key, saslprep, short_term_key, userhash

A = AttributeType


def test_sample_request() -> None:
    assert is_stun(SAMPLE_REQUEST)
    message = decode_message(SAMPLE_REQUEST)
    assert message.method == Method.BINDING
    assert message.message_class == MessageClass.REQUEST
    assert message.transaction_id == bytes.fromhex("b7e7a701bc34d686fa87dfae")
    assert message.get(A.SOFTWARE) == "STUN test client"
    assert message.get(A.PRIORITY) == 0x6E0001FF
    assert message.get(A.ICE_CONTROLLED) == 0x932FF9B151263B36
    assert message.get(A.USERNAME) == "evtj:h6vY"
    assert message.has_fingerprint and message.fingerprint_ok
    key = short_term_key(SHORT_TERM_PASSWORD)
    assert message.check_integrity(key)
    assert not message.check_integrity(short_term_key("wrong"))
    assert message.unknown_comprehension_required == []
    # Re-encoding gives the same bytes (the vector pads with spaces).
    assert message.encode(key, fingerprint=True, padding_byte=0x20) == SAMPLE_REQUEST


@pytest.mark.parametrize(
    ("data", "address"),
    [
        (SAMPLE_IPV4_RESPONSE, Address("192.0.2.1", 32853)),
        (SAMPLE_IPV6_RESPONSE, Address("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
    ],
)
def test_sample_responses(data: bytes, address: Address) -> None:
    message = decode_message(data)
    assert message.method == Method.BINDING
    assert message.message_class == MessageClass.SUCCESS_RESPONSE
    assert message.get(A.SOFTWARE) == "test vector"
    assert message.get(A.XOR_MAPPED_ADDRESS) == address
    mapped = message.get(A.XOR_MAPPED_ADDRESS)
    assert mapped is not None and mapped.family == address.family
    assert message.fingerprint_ok
    key = short_term_key(SHORT_TERM_PASSWORD)
    assert message.check_integrity(key)
    assert message.encode(key, fingerprint=True, padding_byte=0x20) == data


def test_saslprep_of_the_rfc5769_password() -> None:
    assert saslprep(PASSWORD_MATRIX) == "TheMatrIX"


def test_long_term_request() -> None:
    message = decode_message(LONG_TERM_REQUEST)
    assert message.get(A.USERNAME) == USERNAME_MATRIX
    assert message.get(A.NONCE) == "f//499k954d6OL34oL9FSTvy64sA"
    assert message.get(A.REALM) == "example.org"
    assert not message.has_fingerprint
    key = long_term_key(USERNAME_MATRIX, "example.org", PASSWORD_MATRIX, prep=saslprep)
    assert key == long_term_key(USERNAME_MATRIX, "example.org", "TheMatrIX")
    assert message.check_integrity(key)
    assert message.integrity_algorithm == "sha1"
    assert message.encode(key) == LONG_TERM_REQUEST
    assert not message.check_integrity(long_term_key(USERNAME_MATRIX, "example.org", "TheMatrix"))


def test_sha256_request_with_userhash() -> None:
    message = decode_message(SHA256_REQUEST)
    assert message.get(A.USERHASH) == userhash(USERNAME_MATRIX, "example.org")
    assert message.get(A.NONCE) == "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA"
    assert message.get(A.REALM) == "example.org"
    assert message.get(A.PASSWORD_ALGORITHM) == PasswordAlgorithmEntry(PasswordAlgorithm.SHA256)
    assert message.integrity_algorithm == "sha256"
    key = long_term_key(USERNAME_MATRIX, "example.org", "TheMatrIX", PasswordAlgorithm.SHA256)
    assert len(key) == 32
    assert message.check_integrity(key)
    assert not message.check_integrity(key, "sha1")
    assert message.encode(key, "sha256") == SHA256_REQUEST
