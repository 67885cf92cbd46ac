"""The RFC 8489 nonce cookie: a NONCE that starts with "obMatJos2" followed by the server's
STUN Security Feature set, 24 bits in base64 (RFC 8489 §9.2, §18.1).

A client that sees the password-algorithms bit uses PASSWORD-ALGORITHMS; the
username-anonymity bit lets it send USERHASH instead of USERNAME. The same cookie in later
nonces lets a client detect a bid-down attack.
"""

from __future__ import annotations

import base64
import binascii

from icerelay.stun.constants import NONCE_COOKIE, SecurityFeature

__all__ = ["SecurityFeature", "make_nonce", "nonce_opaque_part", "nonce_security_features"]

_NO_FEATURES = SecurityFeature(0)

_COOKIE_LENGTH = len(NONCE_COOKIE) + 4  # cookie + four base64 characters (24 bits)


def make_nonce(opaque: str, features: SecurityFeature = _NO_FEATURES) -> str:
    """A NONCE value announcing ``features`` (if any) followed by ``opaque``, the server's
    own nonce text. Without features the nonce is returned unchanged, as RFC 5389 servers do."""
    if not features:
        return opaque
    bits = int(features) & 0xFFFFFF
    return NONCE_COOKIE + base64.b64encode(bits.to_bytes(3, "big")).decode("ascii") + opaque


def nonce_security_features(nonce: str) -> SecurityFeature | None:
    """The security features a nonce cookie announces, or None if the nonce has no cookie."""
    if not nonce.startswith(NONCE_COOKIE) or len(nonce) < _COOKIE_LENGTH:
        return None
    try:
        raw = base64.b64decode(nonce[len(NONCE_COOKIE) : _COOKIE_LENGTH], validate=True)
    except (binascii.Error, ValueError):
        return None
    return SecurityFeature(int.from_bytes(raw, "big"))


def nonce_opaque_part(nonce: str) -> str:
    """The nonce without its cookie (the server's own part)."""
    if nonce_security_features(nonce) is None:
        return nonce
    return nonce[_COOKIE_LENGTH:]
