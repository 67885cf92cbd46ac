"""Keys, OpaqueString, SASLprep, USERHASH and the RFC 8489 nonce cookie."""

from __future__ import annotations

import hashlib

import pytest

from icerelay.errors import StunError
from icerelay.stun import PasswordAlgorithm, SecurityFeature
from icerelay.stun.credentials import (
    long_term_key,
    opaque_string,
    saslprep,
    short_term_key,
    userhash,
)
from icerelay.stun.nonce import make_nonce, nonce_opaque_part, nonce_security_features


def test_long_term_key_md5_and_sha256() -> None:
    assert long_term_key("user", "realm", "pass") == hashlib.md5(b"user:realm:pass").digest()
    assert (
        long_term_key("user", "realm", "pass", PasswordAlgorithm.SHA256)
        == hashlib.sha256(b"user:realm:pass").digest()
    )
    with pytest.raises(StunError):
        long_term_key("user", "realm", "pass", 9)


def test_short_term_key() -> None:
    assert short_term_key("VOkJxbRl1RmTxUk/WvJxBt") == b"VOkJxbRl1RmTxUk/WvJxBt"


def test_trailing_nuls_are_dropped() -> None:
    assert long_term_key("user\x00", "realm\x00", "pass\x00") == long_term_key(
        "user", "realm", "pass"
    )


@pytest.mark.parametrize(
    ("raw", "prepared"),
    [
        ("I\u00adX", "IX"),  # soft hyphen mapped to nothing
        ("user", "user"),
        ("USER", "USER"),  # no case folding
        ("\u00aa", "a"),  # NFKC
        ("\u2168", "IX"),
        ("a\u00a0b", "a b"),  # non-ASCII space
        ("The\u00adM\u00aatr\u2168", "TheMatrIX"),
    ],
)
def test_saslprep(raw: str, prepared: str) -> None:
    assert saslprep(raw) == prepared


@pytest.mark.parametrize("raw", ["\u0007", "a\u200eb", "\u0627\u0031", "\ud800"])
def test_saslprep_prohibited(raw: str) -> None:
    # control, bidi mark (C.8), RandAL text not ending in RandAL, lone surrogate (C.5)
    with pytest.raises(StunError):
        saslprep(raw)


def test_saslprep_unassigned_only_for_stored_strings() -> None:
    unassigned = "\u0221"  # unassigned in Unicode 3.2 (stringprep's table A.1)
    assert saslprep(unassigned) == unassigned
    with pytest.raises(StunError):
        saslprep(unassigned, allow_unassigned=False)


@pytest.mark.parametrize(
    ("raw", "prepared"),
    [
        ("correct horse", "correct horse"),
        ("Passw\u00f6rd", "Passw\u00f6rd"),
        ("Passwo\u0308rd", "Passw\u00f6rd"),  # NFC
        ("a\u3000b", "a b"),  # ideographic space -> U+0020
        ("\u2168", "\u2168"),  # no compatibility mapping (unlike SASLprep)
        ("\u30de\u30c8\u30ea\u30c3\u30af\u30b9", "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"),
    ],
)
def test_opaque_string(raw: str, prepared: str) -> None:
    assert opaque_string(raw) == prepared


@pytest.mark.parametrize("raw", ["", "tab\there", "\x7f", "soft\u00adhyphen", "\u0378", "\ufeff"])
def test_opaque_string_disallowed(raw: str) -> None:
    with pytest.raises(StunError):
        opaque_string(raw)


def test_userhash() -> None:
    assert userhash("user", "realm") == hashlib.sha256(b"user:realm").digest()


def test_nonce_cookie() -> None:
    features = SecurityFeature.PASSWORD_ALGORITHMS | SecurityFeature.USERNAME_ANONYMITY
    nonce = make_nonce("abc", features)
    assert nonce == "obMatJos2wAAAabc"
    assert nonce_security_features(nonce) == features
    assert nonce_opaque_part(nonce) == "abc"
    only_algorithms = make_nonce("xyz", SecurityFeature.PASSWORD_ALGORITHMS)
    assert only_algorithms.startswith("obMatJos2gAAA")
    assert nonce_security_features(only_algorithms) == SecurityFeature.PASSWORD_ALGORITHMS
    # no features: a plain RFC 5389 nonce
    assert make_nonce("plain") == "plain"
    assert nonce_security_features("plain") is None
    assert nonce_opaque_part("plain") == "plain"
    assert nonce_security_features("obMatJos2") is None
    assert nonce_security_features("obMatJos2!!!!rest") is None
