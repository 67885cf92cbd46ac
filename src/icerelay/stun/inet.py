"""IP address text <-> packed bytes, in pure Python, as the C library's inet_pton/inet_ntop.

STUN carries addresses packed (4 or 16 bytes); :class:`icerelay.net.Address` holds them as text.
These two functions convert exactly as glibc's ``inet_pton``/``inet_ntop`` do (which the
``socket`` module called before), so that decoded addresses compare equal to the text the rest
of the code holds: IPv4 without leading zeros; IPv6 lower-case, the longest run of two or more
zero groups shortened to ``::``, and ``::ffff:a.b.c.d`` / ``::a.b.c.d`` for IPv4-mapped and
-compatible addresses.

A wire-format module has no sockets; the ``ipaddress`` module would do, but costs microseconds
per call where these cost a fraction of one. Both are memoised (bounded): a client or server
converts the same few addresses over and over, and a cache hit is a dict lookup.
"""

from __future__ import annotations

import struct
from functools import lru_cache

_EIGHT_GROUPS = struct.Struct("!8H")
_HEX = frozenset("0123456789abcdefABCDEF")
#: Enough for every peer of a busy server; an attacker cycling addresses only evicts entries.
_CACHE_SIZE = 4096


#: The numbers inet_pton takes in an IPv4 address (0-255, ASCII, no leading zeros), and their
#: values: one dict lookup per part both checks and converts it.
_OCTETS = {str(value): value for value in range(256)}


def _pack_ipv4(text: str) -> bytes:
    parts = text.split(".")
    if len(parts) == 4:
        try:
            return bytes(map(_OCTETS.__getitem__, parts))
        except KeyError:
            pass
    raise ValueError(f"not an IPv4 address: {text!r}")


def ipv4_number(text: str) -> int:
    """IPv4 address *text* as a 32-bit number: what :func:`pack_ip` packs, without making the
    bytes (an XOR address is computed on the number). Raises :class:`ValueError` for anything
    :func:`pack_ip` refuses."""
    parts = text.split(".")
    if len(parts) == 4:
        octets = _OCTETS
        try:
            return (
                octets[parts[0]] << 24 | octets[parts[1]] << 16 | octets[parts[2]] << 8
            ) | octets[parts[3]]
        except KeyError:
            pass
    raise ValueError(f"not an IPv4 address: {text!r}")


def _pack_ipv6(text: str) -> bytes:
    tail = b""
    if "." in text:
        # A dotted IPv4 address in the last 32 bits (::ffff:192.0.2.1).
        head, colon, dotted = text.rpartition(":")
        if not colon:
            raise ValueError(f"not an IPv6 address: {text!r}")
        tail = _pack_ipv4(dotted)
        text = head + ":" if head.endswith(":") else head
    groups_wanted = 6 if tail else 8
    if "::" in text:
        left, _, right = text.partition("::")
        head_groups = left.split(":") if left else []
        tail_groups = right.split(":") if right else []
        # "::" stands for at least one zero group (glibc refuses it for none).
        missing = groups_wanted - len(head_groups) - len(tail_groups)
        if missing < 1:
            raise ValueError(f"not an IPv6 address: {text!r}")
        groups = head_groups + ["0"] * missing + tail_groups
    else:
        groups = text.split(":")
        if len(groups) != groups_wanted:
            raise ValueError(f"not an IPv6 address: {text!r}")
    for group in groups:
        if not 0 < len(group) <= 4 or not _HEX.issuperset(group):
            raise ValueError(f"not an IPv6 address: {text!r}")
    packed = bytes.fromhex("".join(group.rjust(4, "0") for group in groups))
    return packed + tail


@lru_cache(maxsize=_CACHE_SIZE)
def pack_ip(host: str) -> bytes:
    """The 4 or 16 bytes of IP address *host* (an IPv6 zone, ``%eth0``, is ignored).

    Raises :class:`ValueError` when *host* is not an IP address.
    """
    if ":" in host:
        return _pack_ipv6(host.partition("%")[0])
    return _pack_ipv4(host)


def _unpack_ipv6(raw: bytes) -> str:
    words = _EIGHT_GROUPS.unpack(raw)
    # The longest run of zero groups (the first of equal ones), if two or more long.
    best_start, best_length, start = -1, 0, -1
    for index, word in enumerate(words):
        if word == 0:
            if start < 0:
                start = index
            if index - start + 1 > best_length:
                best_start, best_length = start, index - start + 1
        else:
            start = -1
    if best_length < 2:
        best_start, best_length = -1, 0
    if best_start == 0 and (best_length == 6 or (best_length == 5 and words[5] == 0xFFFF)):
        # IPv4-compatible or IPv4-mapped: glibc writes the last 32 bits dotted.
        prefix = "::" if best_length == 6 else "::ffff:"
        return f"{prefix}{raw[12]}.{raw[13]}.{raw[14]}.{raw[15]}"
    if best_start < 0:
        return ":".join(f"{word:x}" for word in words)
    head = ":".join(f"{word:x}" for word in words[:best_start])
    tail = ":".join(f"{word:x}" for word in words[best_start + best_length :])
    return f"{head}::{tail}"


@lru_cache(maxsize=_CACHE_SIZE)
def unpack_ip(raw: bytes) -> str:
    """The text of a packed IP address (4 or 16 bytes), as inet_ntop writes it."""
    if len(raw) == 4:
        return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"
    if len(raw) == 16:
        return _unpack_ipv6(raw)
    raise ValueError(f"a packed IP address has 4 or 16 bytes, not {len(raw)}")
