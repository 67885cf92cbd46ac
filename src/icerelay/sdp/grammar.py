"""Small lexical helpers shared by the SDP modules (RFC 8866 §9 ABNF, RFC 8839 §5).

Every helper raises :class:`~icerelay.errors.SdpError` naming the field it was checking, so the
callers can prefix the line number and the message tells an operator exactly what a peer got wrong.
"""

from __future__ import annotations

import ipaddress
import re

from icerelay.errors import SdpError

# ASCII digits only: Python's int() would also accept "+1", "1_000", " 1" and non-ASCII digits,
# none of which SDP allows and all of which would break the byte-exact model.
_DIGITS = re.compile(r"[0-9]+")
_BLANKS = re.compile(r"[ \t]+")
_DOTTED_DIGITS = re.compile(r"[0-9.]+")
# RFC 8866 token: any VCHAR except the separators below.
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
# RFC 8839 ice-char = ALPHA / DIGIT / "+" / "/".
_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")
# Host names as peers actually write them (RFC 1123 labels, plus "_" that some mDNS stacks emit).
_FQDN = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_.])?")
# What may not appear inside one rendered field. One regex search instead of a generator over
# the characters: check_field runs ~30 times per offer+answer on the relay's control path.
_FIELD_BREAKS = re.compile("[ \t\r\n\0]")


def parse_uint(text: str, field: str, maximum: int, minimum: int = 0) -> int:
    """Parse an unsigned decimal integer of ASCII digits within ``minimum..maximum``."""
    # Ports, payload types and clock rates: short ASCII digit runs, checked in C first.
    if 0 < len(text) < 10 and text.isascii() and text.isdigit():
        value = int(text)
        if minimum <= value <= maximum:
            return value
    if not _DIGITS.fullmatch(text):
        raise SdpError(f"{field} must be a decimal number, got {text!r}")
    # Bound the length before converting so that a hostile 100 kB digit string costs nothing.
    if len(text.lstrip("0")) > len(str(maximum)):
        raise SdpError(f"{field} {text[:20]!r} is out of range {minimum}..{maximum}")
    value = int(text)
    if not minimum <= value <= maximum:
        raise SdpError(f"{field} {value} is out of range {minimum}..{maximum}")
    return value


def parse_port(text: str, field: str = "port") -> int:
    """Parse a UDP/TCP port number (0..65535)."""
    return parse_uint(text, field, 65535)


def check_token(text: str, field: str) -> str:
    """Return ``text`` if it is an RFC 8866 token, else raise."""
    if not _TOKEN.fullmatch(text):
        raise SdpError(f"{field} must be a token, got {text!r}")
    return text


def check_field(text: str, field: str) -> str:
    """Return ``text`` if it can be written as one space-separated SDP field, else raise.

    Used when rendering values the caller built: an empty field or one with a blank, CR, LF or NUL
    in it would change the number of fields or split the line.
    """
    if not text or _FIELD_BREAKS.search(text):
        raise SdpError(f"{field} must be non-empty without blanks or line breaks, got {text!r}")
    return text


def check_ice_chars(text: str, field: str, minimum: int, maximum: int) -> str:
    """Return ``text`` if it is ``minimum..maximum`` RFC 8839 ice-chars, else raise."""
    if not _ICE_CHARS.fullmatch(text):
        raise SdpError(f"{field} must be letters, digits, '+' or '/', got {text!r}")
    if not minimum <= len(text) <= maximum:
        raise SdpError(f"{field} must be {minimum}..{maximum} characters long, got {len(text)}")
    return text


def address_family(address: str) -> int | None:
    """4 or 6 for an IP address literal, None for anything else (an FQDN)."""
    try:
        return ipaddress.ip_address(address).version
    except ValueError:
        return None


def check_connection_address(text: str, field: str) -> str:
    """Return ``text`` if it is an IPv4 address, an IPv6 address or an FQDN (RFC 8839 §5.1).

    Anything with a colon must be a valid IPv6 literal and anything made only of digits and dots
    must be a valid IPv4 literal: a mistyped address must not silently pass as a host name.
    """
    if ":" in text:
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            raise SdpError(f"{field} {text!r} is not a valid IPv6 address") from None
        return text
    if _DOTTED_DIGITS.fullmatch(text):
        try:
            ipaddress.IPv4Address(text)
        except ValueError:
            raise SdpError(f"{field} {text!r} is not a valid IPv4 address") from None
        return text
    if len(text) > 255 or not _FQDN.fullmatch(text):
        raise SdpError(f"{field} {text!r} is neither an IP address nor a host name")
    return text


def split_fields(value: str) -> list[str]:
    """Split on runs of spaces and tabs.

    RFC 8866 separates fields by exactly one SP, but phones are seen sending two spaces or a tab;
    the meaning of such a line is still clear, so we accept it (the raw line is kept untouched).
    """
    # Not str.split(): that also splits on form feeds, NEL and other Unicode spaces, which are not
    # separators in SDP and must stay inside a field (where validation then rejects them).
    if value and "\t" not in value and "  " not in value and value[0] != " " and value[-1] != " ":
        # What nearly every line looks like: single spaces only (no regex, no filtering).
        return value.split(" ")
    return [field for field in _BLANKS.split(value) if field]
