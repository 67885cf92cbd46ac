"""STUN credentials: string preparation and keys (RFC 8489 §9, RFC 8265, RFC 4013).

- short-term key: ``OpaqueString(password)`` (RFC 8489 §9.1.1);
- long-term key: ``MD5(username ":" OpaqueString(realm) ":" OpaqueString(password))``, or
  SHA-256 of the same when PASSWORD-ALGORITHM says SHA-256 (RFC 8489 §9.2.2);
- USERHASH: ``SHA-256(OpaqueString(username) ":" OpaqueString(realm))`` (RFC 8489 §14.4).

RFC 5389 used SASLprep (RFC 4013) where RFC 8489 uses OpaqueString; both are here, written on
the standard library's :mod:`unicodedata` and :mod:`stringprep` tables.
"""

from __future__ import annotations

import hashlib
import stringprep
import unicodedata
from collections.abc import Callable

from icerelay.errors import StunError
from icerelay.stun.constants import PasswordAlgorithm

__all__ = [
    "long_term_key",
    "opaque_string",
    "saslprep",
    "short_term_key",
    "userhash",
]


def _is_precis_disallowed(char: str) -> bool:
    """Code points the PRECIS FreeformClass does not allow (RFC 8264 §9), approximated with
    the Unicode data Python ships: controls, unassigned, surrogates, private use is allowed
    (FreeformClass allows it), noncharacters, and default-ignorable format characters."""
    code = ord(char)
    category = unicodedata.category(char)
    if category == "Cc":  # Controls (RFC 8264 §9.12), includes TAB, CR, LF and DEL
        return True
    if category == "Cn":  # Unassigned (§9.6) and noncharacters (§9.13)
        return True
    if category == "Cs":  # lone surrogates cannot be UTF-8 encoded
        return True
    # PrecisIgnorableProperties (§9.13): Default_Ignorable_Code_Point. Python has no direct
    # table for it; these ranges are the ones Unicode lists (DerivedCoreProperties.txt), minus
    # the join controls (ZWNJ/ZWJ), which RFC 8264 §9.8 handles by context and we allow.
    return (
        code == 0x00AD
        or code == 0x034F
        or code == 0x061C
        or 0x115F <= code <= 0x1160
        or 0x17B4 <= code <= 0x17B5
        or 0x180B <= code <= 0x180F
        or code == 0x200B
        or 0x200E <= code <= 0x200F
        or 0x202A <= code <= 0x202E
        or 0x2060 <= code <= 0x206F
        or code == 0x3164
        or 0xFE00 <= code <= 0xFE0F
        or code == 0xFEFF
        or code == 0xFFA0
        or 0xFFF0 <= code <= 0xFFF8
        or 0x1BCA0 <= code <= 0x1BCA3
        or 0x1D173 <= code <= 0x1D17A
        or 0xE0000 <= code <= 0xE0FFF
    )


def opaque_string(value: str) -> str:
    """Prepare a password (or username, realm) with the PRECIS OpaqueString profile
    (RFC 8265 §4.2): non-ASCII spaces become U+0020, then Unicode NFC; the result must be
    non-empty and free of code points FreeformClass disallows (controls, unassigned,
    default-ignorable). Raises StunError otherwise.
    """
    if value.isascii():
        # The common case: ASCII is all PVALID except controls, and NFC leaves it alone.
        if not value:
            raise StunError("OpaqueString: empty string")
        if any(c < " " or c == "\x7f" for c in value):
            raise StunError("OpaqueString: control character")
        return value
    mapped = "".join(" " if unicodedata.category(c) == "Zs" else c for c in value)
    normalized = unicodedata.normalize("NFC", mapped)
    if not normalized:
        raise StunError("OpaqueString: empty string")
    for char in normalized:
        if _is_precis_disallowed(char):
            raise StunError(f"OpaqueString: disallowed code point U+{ord(char):04X}")
    return normalized


def saslprep(value: str, *, allow_unassigned: bool = True) -> str:
    """SASLprep (RFC 4013), the stringprep profile RFC 5389 used for passwords.

    ``allow_unassigned`` is True for queries (what a STUN agent does with a received or
    configured password) and False for stored strings (RFC 3454 §7). Raises StunError on
    prohibited output or a bidirectional-text violation.
    """
    # RFC 4013 §2.1-2.2: non-ASCII space (C.1.2) -> SPACE; commonly mapped to nothing (B.1) ->
    # removed; then NFKC.
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c for c in value if not stringprep.in_table_b1(c)
    )
    prepared = unicodedata.normalize("NFKC", mapped)
    prohibited = (
        stringprep.in_table_c12,
        stringprep.in_table_c21,
        stringprep.in_table_c22,
        stringprep.in_table_c3,
        stringprep.in_table_c4,
        stringprep.in_table_c5,
        stringprep.in_table_c6,
        stringprep.in_table_c7,
        stringprep.in_table_c8,
        stringprep.in_table_c9,
    )
    for char in prepared:
        if any(table(char) for table in prohibited):
            raise StunError(f"SASLprep: prohibited code point U+{ord(char):04X}")
        if not allow_unassigned and stringprep.in_table_a1(char):
            raise StunError(f"SASLprep: unassigned code point U+{ord(char):04X}")
    # RFC 3454 §6: a string with RandALCat characters must not contain LCat ones, and must
    # start and end with RandALCat.
    if any(stringprep.in_table_d1(c) for c in prepared):
        if any(stringprep.in_table_d2(c) for c in prepared):
            raise StunError("SASLprep: mixes right-to-left and left-to-right text")
        if not (stringprep.in_table_d1(prepared[0]) and stringprep.in_table_d1(prepared[-1])):
            raise StunError("SASLprep: right-to-left text must start and end right-to-left")
    return prepared


def short_term_key(password: str, *, prep: Callable[[str], str] = opaque_string) -> bytes:
    """The key of the short-term credential mechanism: the prepared password (RFC 8489 §9.1.1).

    ICE passwords (ice-pwd) are ASCII, so preparation never changes them.
    """
    return prep(password).encode("utf-8")


def long_term_key(
    username: str,
    realm: str,
    password: str,
    algorithm: int = PasswordAlgorithm.MD5,
    *,
    prep: Callable[[str], str] = opaque_string,
) -> bytes:
    """The key of the long-term credential mechanism (RFC 8489 §9.2.2).

    ``username`` is used as it is (it was prepared before it went into USERNAME); realm and
    password are prepared with ``prep`` (OpaqueString; pass :func:`saslprep` for RFC 5389
    behaviour). Trailing NULs are dropped as the RFC says. ``algorithm`` is MD5 (16-byte key)
    or SHA-256 (32 bytes) from :class:`PasswordAlgorithm`.
    """
    text = ":".join(
        (username.rstrip("\x00"), prep(realm.rstrip("\x00")), prep(password.rstrip("\x00")))
    ).encode("utf-8")
    if algorithm == PasswordAlgorithm.MD5:
        return hashlib.md5(text, usedforsecurity=False).digest()
    if algorithm == PasswordAlgorithm.SHA256:
        return hashlib.sha256(text).digest()
    raise StunError(f"unsupported password algorithm {algorithm}")


def userhash(username: str, realm: str) -> bytes:
    """USERHASH = SHA-256(OpaqueString(username) ":" OpaqueString(realm)) (RFC 8489 §14.4)."""
    return hashlib.sha256(f"{opaque_string(username)}:{opaque_string(realm)}".encode()).digest()
