"""Integers read off the wire: ASCII digits only, bounded in length, one place for all parsers.

Python's own tools are wrong for hostile text in two ways. ``str.isdigit()`` accepts every Unicode
digit (``'³'``, ``'٣'``, ``'²'``), which ``int()`` then rejects with ``ValueError`` or reads as a
number nobody wrote; and ``int()`` of a 5,000-digit string raises ``ValueError`` (CPython's
``sys.int_info.str_digits_check_threshold``) or costs quadratic time below that bound. Every
parser that reads a number from the network or a configuration file goes through these helpers,
which never raise on bad text: they return None, and the caller raises its own documented error
(or falls back to its documented default).

Signs, spaces, underscores and leading ``+`` are not digits here: ``int()`` accepts them, wire
formats do not.
"""

from __future__ import annotations

import re

__all__ = ["is_ascii_digits", "leading_int", "parse_port", "parse_uint"]

#: Enough for any 64-bit quantity; callers pass a tighter bound where the format has one.
MAX_DIGITS = 20

_LEADING = re.compile(r"\s*([+-]?)([0-9]+)", re.ASCII)


def is_ascii_digits(text: str, max_digits: int = MAX_DIGITS) -> bool:
    """True when ``text`` is 1 to ``max_digits`` ASCII digits and nothing else."""
    return 0 < len(text) <= max_digits and text.isascii() and text.isdigit()


def parse_uint(text: str, max_digits: int = MAX_DIGITS, maximum: int | None = None) -> int | None:
    """The value of ``text`` if it is 1 to ``max_digits`` ASCII digits, at most ``maximum``;
    else None. Leading zeros are allowed (``"0080"`` is 80), as the SIP and SDP grammars allow."""
    if not is_ascii_digits(text, max_digits):
        return None
    value = int(text)
    if maximum is not None and value > maximum:
        return None
    return value


def parse_port(text: str, *, allow_zero: bool = False) -> int | None:
    """A port number (``1..65535``, or ``0..65535`` with ``allow_zero``) or None."""
    value = parse_uint(text, max_digits=5, maximum=65535)
    if value is None or (value == 0 and not allow_zero):
        return None
    return value


def leading_int(text: str, max_digits: int = MAX_DIGITS) -> int | None:
    """C ``atoi``'s reading of ``text``: optional spaces and sign, then ASCII digits, anything
    after ignored. None when there are no digits or more than ``max_digits`` of them (where C
    would overflow)."""
    match = _LEADING.match(text)
    if match is None or len(match.group(2)) > max_digits:
        return None
    value = int(match.group(2))
    return -value if match.group(1) == "-" else value
