"""Bencode, the serialisation of rtpengine's ng control protocol (and of BitTorrent, BEP 3).

Four kinds of value exist on the wire:

- integer: ``i<decimal>e`` (``i-3e``; no leading zeros, no ``-0``),
- byte string: ``<length>:<bytes>`` (``4:spam``),
- list: ``l<values>e``,
- dictionary: ``d<key><value>...e`` with byte-string keys.

:func:`decode` is strict about syntax: anything that is not exactly one well-formed value raises
:class:`BencodeError` with the offset and what was wrong, so a control server can answer the peer
with a precise ``error-reason``. It deliberately accepts dictionary keys in any order, because
Kamailio's and OpenSIPS's encoders emit keys in insertion order, not in the sorted order BEP 3
asks for; it rejects duplicate keys, which no encoder produces on purpose and which would make the
meaning of a request ambiguous. :func:`encode` always writes the canonical form (keys sorted by
their raw bytes).

Decoded strings are ``bytes`` (the protocol carries SDP bodies that need not be UTF-8); the encoder
also accepts ``str`` (written as UTF-8) and ``bool`` is refused, since it has no bencode form and
silently writing ``i1e`` would hide a programming error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TypeAlias, cast

from icerelay.errors import ControlError

__all__ = [
    "BencodeError",
    "BencodeValue",
    "Encodable",
    "IncompleteBencode",
    "decode",
    "decode_prefix",
    "encode",
]

#: A decoded value: the four bencode types, with ``bytes`` for strings and dictionary keys.
BencodeValue: TypeAlias = "int | bytes | list[BencodeValue] | dict[bytes, BencodeValue]"

#: Values :func:`encode` accepts: like :data:`BencodeValue`, plus ``str`` strings and keys.
Encodable: TypeAlias = (
    "int | bytes | str | Sequence[Encodable] | Mapping[str, Encodable] | Mapping[bytes, Encodable]"
)

# Nesting bound: ng messages nest three levels at most; the bound keeps a hostile "llll..." from
# exhausting the Python stack, which would otherwise surface as RecursionError, not BencodeError.
MAX_DEPTH = 64
# Decimal digits accepted in an integer or a string length. Bounding them before int() keeps a
# 100 kB digit run cheap and avoids CPython's int-conversion limit raising ValueError instead.
_MAX_DIGITS = 20

_DIGITS = frozenset(b"0123456789")
# Byte values of the type markers (data[pos] is an int; ord() on every value costs a call).
_I, _L, _D, _E, _ZERO = b"i"[0], b"l"[0], b"d"[0], b"e"[0], b"0"[0]
# rtpengine, Kamailio and OpenSIPS decode integers into 64-bit C integers; anything wider would be
# truncated silently on their side, so neither direction lets it through.
_INT_MIN = -(2**63)
_INT_MAX = 2**63 - 1


class BencodeError(ControlError):
    """Bytes that are not exactly one well-formed bencode value, or a value with no encoding."""


class IncompleteBencode(BencodeError):
    """The input ended in the middle of a value; more bytes might complete it."""


def encode(value: Encodable) -> bytes:
    """Encode ``value`` canonically: dictionary keys sorted by their bytes, strings as UTF-8."""
    out: list[bytes] = []
    _encode(value, out, 0)
    return b"".join(out)


def _encode(value: object, out: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise BencodeError(f"value nests deeper than {MAX_DEPTH} levels")
    # Exact types first, by identity (every ng reply is made of these): one comparison each
    # instead of a chain of isinstance checks. Subclasses, other mappings and sequences, and
    # bool (which must be refused, not written as i1e) take the general path below.
    kind = type(value)
    if kind is bytes:
        raw = cast(bytes, value)
        out.append(b"%d:%b" % (len(raw), raw))
    elif kind is str:
        raw = cast(str, value).encode("utf-8")
        out.append(b"%d:%b" % (len(raw), raw))
    elif kind is int:
        number = cast(int, value)
        if not _INT_MIN <= number <= _INT_MAX:
            raise BencodeError(f"integer {value} does not fit the 64 bits peers decode into")
        out.append(b"i%de" % number)
    elif kind is dict:
        _encode_mapping(cast("dict[object, object]", value), out, depth)
    elif kind is list or kind is tuple:
        out.append(b"l")
        for item in cast("list[object]", value):
            _encode(item, out, depth + 1)
        out.append(b"e")
    else:
        _encode_other(value, out, depth)


def _encode_mapping(value: Mapping[object, object], out: list[bytes], depth: int) -> None:
    if depth < MAX_DEPTH and type(value) is dict and all(type(key) is str for key in value):
        # Every reply's case: text keys, which cannot collide once encoded (UTF-8 is one-to-one)
        # and sort as their UTF-8 bytes do (UTF-8 keeps code point order), so the keys are
        # sorted as they are. The common item types are written here, without a call each.
        out.append(b"d")
        for key in sorted(value):
            raw_key = key.encode("utf-8")
            out.append(b"%d:%b" % (len(raw_key), raw_key))
            item = value[key]
            kind = type(item)
            if kind is str:
                raw = item.encode("utf-8")
                out.append(b"%d:%b" % (len(raw), raw))
            elif kind is int and _INT_MIN <= item <= _INT_MAX:
                out.append(b"i%de" % item)
            elif kind is bytes:
                out.append(b"%d:%b" % (len(item), item))
            elif kind is dict and depth + 1 < MAX_DEPTH:
                _encode_mapping(item, out, depth + 1)
            elif kind is list and depth + 2 < MAX_DEPTH:
                # A list of dictionaries (a delete's per-tag media) or of strings.
                out.append(b"l")
                for element in item:
                    if type(element) is dict:
                        _encode_mapping(element, out, depth + 2)
                    else:
                        _encode(element, out, depth + 2)
                out.append(b"e")
            else:
                _encode(item, out, depth + 1)
        out.append(b"e")
        return
    items: dict[bytes, object] = {}
    for key, item in value.items():
        kind = type(key)
        if kind is str:
            raw_key = cast(str, key).encode("utf-8")
        elif isinstance(key, bytes):
            raw_key = key
        elif isinstance(key, str):
            raw_key = key.encode("utf-8")
        else:
            raise BencodeError(f"dictionary key {key!r} is not a string")
        if raw_key in items:
            raise BencodeError(f"dictionary key {raw_key!r} appears twice")
        items[raw_key] = item
    out.append(b"d")
    for raw_key in sorted(items):
        out.append(b"%d:%b" % (len(raw_key), raw_key))
        _encode(items[raw_key], out, depth + 1)
    out.append(b"e")


def _encode_other(value: object, out: list[bytes], depth: int) -> None:
    """Everything that is not exactly bytes, str, int, dict, list or tuple."""
    # bool is an int subclass: test it first so that True does not become i1e unnoticed.
    if isinstance(value, bool):
        raise BencodeError("bencode has no boolean type; send 'yes'/'no' or an integer")
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise BencodeError(f"integer {value} does not fit the 64 bits peers decode into")
        out.append(b"i%de" % value)
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, Mapping):
        _encode_mapping(value, out, depth)
    elif isinstance(value, list | tuple):
        out.append(b"l")
        for item in value:
            _encode(item, out, depth + 1)
        out.append(b"e")
    else:
        raise BencodeError(f"cannot bencode a {type(value).__name__}")


def decode(data: bytes) -> BencodeValue:
    """Decode exactly one bencode value; trailing bytes are an error."""
    value, end = decode_prefix(data)
    if end != len(data):
        raise BencodeError(f"{len(data) - end} trailing bytes after the value at offset {end}")
    return value


def decode_prefix(data: bytes, start: int = 0) -> tuple[BencodeValue, int]:
    """Decode the one value that starts at ``start``; return it and the offset just after it.

    A stream transport uses this to find where a message ends. Input that ends in the middle of a
    value raises :class:`IncompleteBencode` (a :class:`BencodeError`), so a reader can tell "wait
    for more bytes" from "this is garbage".
    """
    data = bytes(data)
    try:
        if data[start : start + 1] == b"d":
            try:
                return _decode_request(data, start)
            except (_Unusual, IndexError):
                pass  # something else than a flat request: the general loop decides
        return _decode_fast(data, start)
    except _Unusual:
        # Anything the fast loop does not take (an error, a leading zero, deep nesting): the
        # recursive decoder decides, and names the problem precisely.
        return _Decoder(data).value(start, 0)


class _Unusual(Exception):
    """Raised by :func:`_decode_fast` for input it leaves to :class:`_Decoder`."""


# A canonical integer (what every encoder writes): "0" or an optional minus and no leading zero.
_CANONICAL_INTEGER = re.compile(rb"i(0|-?[1-9][0-9]{0,19})e")
# A string's length and its colon, canonical (no leading zero), at most _MAX_DIGITS digits.
_STRING_LENGTH = re.compile(rb"(0|[1-9][0-9]{0,%d}):" % (_MAX_DIGITS - 1))


def _decode_request(data: bytes, pos: int) -> tuple[BencodeValue, int]:
    """The dictionary at ``pos`` when it has the shape of an ng request (values that are
    strings, canonical integers or lists of strings), read key and value together; else
    :class:`_Unusual` (or IndexError at the end of the input)."""
    string_length = _STRING_LENGTH.match
    size = len(data)
    entries: dict[bytes, BencodeValue] = {}
    pos += 1
    while data[pos] != _E:
        length = string_length(data, pos)
        if length is None:
            raise _Unusual
        start = length.end()
        pos = start + int(length[1])
        key = data[start:pos]
        if pos >= size or key in entries:
            raise _Unusual
        lead = data[pos]
        if lead in _DIGITS:
            length = string_length(data, pos)
            if length is None:
                raise _Unusual
            start = length.end()
            pos = start + int(length[1])
            entries[key] = data[start:pos]
        elif lead == _L:
            items: list[BencodeValue] = []
            pos += 1
            while data[pos] != _E:
                length = string_length(data, pos)
                if length is None:
                    raise _Unusual
                start = length.end()
                pos = start + int(length[1])
                items.append(data[start:pos])
            entries[key] = items
            pos += 1
        elif lead == _I:
            number = _CANONICAL_INTEGER.match(data, pos)
            if number is None:
                raise _Unusual
            value = int(number[1])
            if not _INT_MIN <= value <= _INT_MAX:
                raise _Unusual
            entries[key] = value
            pos = number.end()
        else:
            raise _Unusual
        if pos > size:
            raise _Unusual
    return entries, pos + 1


def _decode_fast(data: bytes, pos: int) -> tuple[BencodeValue, int]:
    """Decode the well-formed value at ``pos`` in one loop, or raise :class:`_Unusual`.

    ng requests are a dictionary of a dozen strings and two short lists; the recursive decoder
    spent a method call and a tuple per value on them (a tenth of an offer's handling). This
    loop keeps the containers on an explicit stack and builds the same values; whatever it
    does not recognise as plainly valid it hands to the recursive decoder, so errors are
    reported exactly as before.
    """
    string_length = _STRING_LENGTH.match
    size = len(data)
    # (container, key pending in it) of every enclosing container; the top level's is None.
    stack: list[tuple[list[BencodeValue] | dict[bytes, BencodeValue] | None, bytes | None]] = []
    container: list[BencodeValue] | dict[bytes, BencodeValue] | None = None
    key: bytes | None = None
    value: BencodeValue
    while True:
        if pos >= size:
            raise _Unusual
        lead = data[pos]
        if lead in _DIGITS:
            length = string_length(data, pos)
            if length is None:
                raise _Unusual
            start = length.end()
            pos = start + int(length[1])
            if pos > size:
                raise _Unusual
            value = data[start:pos]
            if type(container) is dict and key is None:
                if value in container:
                    raise _Unusual
                key = value
                continue
        elif type(container) is dict and key is None:
            if lead != _E:
                raise _Unusual  # a key that is not a string
            value = container
            pos += 1
            container, key = stack.pop()
        elif lead == _I:
            match = _CANONICAL_INTEGER.match(data, pos)
            if match is None:
                raise _Unusual
            value = int(match.group(1))
            if not _INT_MIN <= value <= _INT_MAX:
                raise _Unusual
            pos = match.end()
        elif lead in (_L, _D):
            if len(stack) >= MAX_DEPTH:
                raise _Unusual
            stack.append((container, key))
            container = [] if lead == _L else {}
            key = None
            pos += 1
            continue
        elif lead == _E and type(container) is list:
            value = container
            pos += 1
            container, key = stack.pop()
        else:
            raise _Unusual
        if container is None:
            return value, pos
        if isinstance(container, list):
            container.append(value)
        else:
            assert key is not None  # a value follows its key
            container[key] = value
            key = None


class _Decoder:
    """Recursive-descent decoder over one immutable buffer (offsets, no slicing until the end)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def value(self, pos: int, depth: int) -> tuple[BencodeValue, int]:
        data = self.data
        if pos >= len(data):
            raise IncompleteBencode(f"input ends at offset {pos} where a value should start")
        lead = data[pos]
        if lead in _DIGITS:
            return self.string(pos)
        if lead == _I:
            return self.integer(pos)
        if depth >= MAX_DEPTH:
            raise BencodeError(f"value at offset {pos} nests deeper than {MAX_DEPTH} levels")
        if lead == _L:
            items: list[BencodeValue] = []
            pos += 1
            while True:
                if pos >= len(data):
                    raise IncompleteBencode("input ends inside a list")
                if data[pos] == _E:
                    return items, pos + 1
                item, pos = self.value(pos, depth + 1)
                items.append(item)
        if lead == _D:
            entries: dict[bytes, BencodeValue] = {}
            pos += 1
            string = self.string
            value = self.value
            while True:
                if pos >= len(data):
                    raise IncompleteBencode("input ends inside a dictionary")
                first = data[pos]
                if first == _E:
                    return entries, pos + 1
                if first not in _DIGITS:
                    raise BencodeError(
                        f"dictionary key at offset {pos} is not a string "
                        f"(starts with {chr(first)!r})"
                    )
                key, pos = string(pos)
                if key in entries:
                    raise BencodeError(f"dictionary key {key[:40]!r} appears twice")
                entries[key], pos = value(pos, depth + 1)
        raise BencodeError(f"unexpected byte {chr(lead)!r} at offset {pos}")

    def integer(self, pos: int) -> tuple[int, int]:
        data = self.data
        end = data.find(b"e", pos + 1, pos + 2 + _MAX_DIGITS + 1)
        if end < 0:
            if len(data) - pos < _MAX_DIGITS + 3 and _all_digits(data[pos + 1 :], signed=True):
                raise IncompleteBencode(f"input ends inside the integer at offset {pos}")
            raise BencodeError(f"integer at offset {pos} has no 'e' within {_MAX_DIGITS} digits")
        text = data[pos + 1 : end]
        body = text[1:] if text.startswith(b"-") else text
        if not body or not _all_digits(body, signed=False):
            raise BencodeError(f"integer at offset {pos} is not decimal: {text[:24]!r}")
        if body.startswith(b"0") and (len(body) > 1 or text.startswith(b"-")):
            raise BencodeError(f"integer at offset {pos} is not canonical: {text!r}")
        number = int(text)
        if not _INT_MIN <= number <= _INT_MAX:
            raise BencodeError(f"integer at offset {pos} does not fit in 64 bits")
        return number, end + 1

    def string(self, pos: int) -> tuple[bytes, int]:
        data = self.data
        colon = data.find(b":", pos, pos + _MAX_DIGITS + 1)
        if colon > pos:
            digits = data[pos:colon]
            # The usual case, checked in C: decimal digits without a leading zero (or "0").
            if digits.isdigit() and (digits[0] != _ZERO or colon == pos + 1):
                start = colon + 1
                end = start + int(digits)
                if end <= len(data):
                    return data[start:end], end
        return self._string_slow(pos)

    def _string_slow(self, pos: int) -> tuple[bytes, int]:
        """:meth:`string` for anything unusual: says precisely what is wrong."""
        data = self.data
        colon = data.find(b":", pos, pos + _MAX_DIGITS + 1)
        if colon < 0:
            if len(data) - pos <= _MAX_DIGITS and _all_digits(data[pos:], signed=False):
                raise IncompleteBencode(f"input ends inside the string length at offset {pos}")
            raise BencodeError(f"string length at offset {pos} is not followed by ':'")
        digits = data[pos:colon]
        if not _all_digits(digits, signed=False) or not digits:
            raise BencodeError(f"string length at offset {pos} is not decimal: {digits[:24]!r}")
        if digits.startswith(b"0") and len(digits) > 1:
            raise BencodeError(f"string length at offset {pos} has a leading zero")
        length = int(digits)
        start = colon + 1
        if start + length > len(data):
            raise IncompleteBencode(
                f"string at offset {pos} claims {length} bytes, {len(data) - start} remain"
            )
        return data[start : start + length], start + length


def _all_digits(text: bytes, *, signed: bool) -> bool:
    if signed and text.startswith(b"-"):
        text = text[1:]
    # bytes.isdigit() is ASCII-only for bytes and runs in C; an empty run counts as digits here,
    # as the generator this replaces did (callers check emptiness themselves).
    return not text or text.isdigit()
