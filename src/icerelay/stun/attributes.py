"""Typed STUN attribute values and their wire encoding (RFC 8489 §14, RFC 8656 §18, RFC 8445
§7.1.1-7.1.2, RFC 5780 §7, RFC 6062 §6.2, RFC 3489 §11.2).

Each attribute type maps to one Python value type (listed in the docstring of
:class:`~icerelay.stun.message.Message`); unknown types travel as raw ``bytes``. Decoders raise
only :class:`~icerelay.errors.StunError`, with a reason naming the attribute.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from operator import itemgetter
from typing import Any

from icerelay.errors import StunError
from icerelay.net import Address
from icerelay.stun.constants import (
    MAX_NONCE_LENGTH,
    MAX_REALM_LENGTH,
    MAX_REASON_LENGTH,
    MAX_SOFTWARE_LENGTH,
    MAX_USERNAME_LENGTH,
    REASON_PHRASES,
    AddressFamily,
    AttributeType,
)
from icerelay.stun.inet import ipv4_number, pack_ip, unpack_ip

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_ADDRESS_HEAD = struct.Struct("!xBH")
#: An XOR-...-ADDRESS value for IPv4: reserved, family 1, X-Port, X-Address.
_XOR_IPV4 = struct.Struct("!xBHI")
_FAMILY_IPV4 = int(AddressFamily.IPV4)  # a plain int: an enum member is a slow lookup
#: Address((host, port)) without the named tuple's Python-level __new__.
_new_address = partial(tuple.__new__, Address)


def _check_code_and_fill_reason(value: ErrorCode | AddressErrorCode) -> None:
    """Shared by the two error-code values: the RFC range, and the recommended reason phrase
    when none was given (the dataclasses are frozen, hence ``object.__setattr__``)."""
    if not 300 <= value.code <= 699:
        raise ValueError(f"error code {value.code} is outside 300-699")
    if not value.reason:
        object.__setattr__(value, "reason", REASON_PHRASES.get(value.code, ""))


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """ERROR-CODE value: a code 300-699 and a UTF-8 reason phrase (RFC 8489 §14.8).

    ``ErrorCode(438)`` fills in the RFC's recommended reason phrase.
    """

    code: int
    reason: str = ""

    def __post_init__(self) -> None:
        _check_code_and_fill_reason(self)


@dataclass(frozen=True, slots=True)
class AddressErrorCode:
    """ADDRESS-ERROR-CODE value (RFC 8656 §18.12): which family failed, and why."""

    family: int
    code: int
    reason: str = ""

    def __post_init__(self) -> None:
        _check_code_and_fill_reason(self)


@dataclass(frozen=True, slots=True)
class PasswordAlgorithmEntry:
    """One algorithm of PASSWORD-ALGORITHMS, or the PASSWORD-ALGORITHM value (RFC 8489 §14.11,
    §14.12): an algorithm number (see :class:`~icerelay.stun.constants.PasswordAlgorithm`) and
    its parameters (none for MD5 and SHA-256)."""

    algorithm: int
    parameters: bytes = b""


@dataclass(frozen=True, slots=True)
class Icmp:
    """ICMP value (RFC 8656 §18.13): the ICMP type and code a peer's packet caused, and the
    32-bit error data (for example the MTU of a "fragmentation needed")."""

    type: int
    code: int
    data: int = 0


#: Every typed value an attribute can carry.
AttributeValue = (
    str
    | bytes
    | int
    | bool
    | None
    | Address
    | ErrorCode
    | AddressErrorCode
    | PasswordAlgorithmEntry
    | Icmp
    | list[int]
    | list[PasswordAlgorithmEntry]
)

# A decoder gets the value bytes and the 16 bytes after the first four of the header (magic
# cookie and transaction id), which the XOR address family needs.
Decoder = Callable[[bytes, bytes], Any]
Encoder = Callable[[Any, bytes], bytes]


def _name(attribute_type: int) -> str:
    try:
        return AttributeType(attribute_type).name.replace("_", "-")
    except ValueError:
        return f"0x{attribute_type:04X}"


def _fail(attribute_type: int, reason: str) -> StunError:
    return StunError(f"{_name(attribute_type)}: {reason}")


# --- addresses ---------------------------------------------------------------------------


def _decode_address_fields(attribute_type: int, value: bytes) -> tuple[int, int, bytes]:
    if len(value) < 4:
        raise _fail(attribute_type, f"address attribute of {len(value)} bytes is too short")
    family, port = _ADDRESS_HEAD.unpack_from(value)
    raw = value[4:]
    if family == AddressFamily.IPV4:
        if len(raw) != 4:
            raise _fail(attribute_type, f"IPv4 address of {len(raw)} bytes, expected 4")
    elif family == AddressFamily.IPV6:
        if len(raw) != 16:
            raise _fail(attribute_type, f"IPv6 address of {len(raw)} bytes, expected 16")
    else:
        raise _fail(attribute_type, f"unknown address family 0x{family:02X}")
    return family, port, raw


def _address_bytes(address: Address) -> tuple[int, bytes]:
    if not 0 <= address.port <= 0xFFFF:
        raise ValueError(f"port {address.port} out of range")
    raw = pack_ip(address.host)
    return (AddressFamily.IPV4 if len(raw) == 4 else AddressFamily.IPV6), raw


def _xor(data: bytes, mask: bytes) -> bytes:
    # int arithmetic is the fastest pure-Python XOR of two short byte strings.
    n = len(data)
    return (int.from_bytes(data, "big") ^ int.from_bytes(mask[:n], "big")).to_bytes(n, "big")


def _make_address_decoder(attribute_type: int) -> Decoder:
    def decode(value: bytes, cookie_and_id: bytes) -> Address:
        _, port, raw = _decode_address_fields(attribute_type, value)
        return Address(unpack_ip(raw), port)

    return decode


def _encode_address(value: Address, cookie_and_id: bytes) -> bytes:
    family, raw = _address_bytes(value)
    return _ADDRESS_HEAD.pack(family, value.port) + raw


def _make_xor_address_decoder(attribute_type: int) -> Decoder:
    def decode(value: bytes, cookie_and_id: bytes) -> Address:
        if len(value) == 8 and value[1] == AddressFamily.IPV4:
            # IPv4, the common case, in a few operations (every ICE check and TURN ChannelBind,
            # CreatePermission and Send has one): RFC 8489 §14.2 as below.
            host = int.from_bytes(value[4:], "big") ^ int.from_bytes(cookie_and_id[:4], "big")
            port = (value[2] ^ cookie_and_id[0]) << 8 | (value[3] ^ cookie_and_id[1])
            return _new_address((unpack_ip(host.to_bytes(4, "big")), port))
        _, xport, xaddr = _decode_address_fields(attribute_type, value)
        # RFC 8489 §14.2: the port is XORed with the cookie's high 16 bits, an IPv4 address
        # with the cookie, an IPv6 address with the cookie followed by the transaction id.
        raw = _xor(xaddr, cookie_and_id)
        return Address(unpack_ip(raw), xport ^ (_U16.unpack_from(cookie_and_id)[0]))

    return decode


def _encode_xor_address(value: Address, cookie_and_id: bytes) -> bytes:
    host, port = value
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} out of range")
    if ":" not in host:
        # IPv4 (every XOR-MAPPED- and XOR-RELAYED-ADDRESS of an IPv4 server): on numbers,
        # the same bytes as below in a third of the work.
        cookie = _U32.unpack_from(cookie_and_id)[0]
        return _XOR_IPV4.pack(_FAMILY_IPV4, port ^ cookie >> 16, ipv4_number(host) ^ cookie)
    raw = pack_ip(host)
    n = len(raw)
    # RFC 8489 §14.2: the port XORed with the cookie's high 16 bits, the address with the
    # cookie (followed by the transaction id for IPv6).
    xored = (int.from_bytes(raw, "big") ^ int.from_bytes(cookie_and_id[:n], "big")).to_bytes(
        n, "big"
    )
    family = AddressFamily.IPV4 if n == 4 else AddressFamily.IPV6
    return _ADDRESS_HEAD.pack(family, port ^ (cookie_and_id[0] << 8 | cookie_and_id[1])) + xored


# --- text ---------------------------------------------------------------------------------


def _make_text_decoder(attribute_type: int, max_bytes: int) -> Decoder:
    def decode(value: bytes, cookie_and_id: bytes) -> str:
        if len(value) > max_bytes:
            raise _fail(attribute_type, f"{len(value)} bytes, more than the {max_bytes} allowed")
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise _fail(attribute_type, "not valid UTF-8") from None

    return decode


def _make_text_encoder(attribute_type: int, max_bytes: int) -> Encoder:
    def encode(value: str, cookie_and_id: bytes) -> bytes:
        raw = value.encode("utf-8")
        if len(raw) > max_bytes:
            raise ValueError(f"{_name(attribute_type)} of {len(raw)} bytes exceeds {max_bytes}")
        return raw

    return encode


# --- integers and flags --------------------------------------------------------------------


def _make_fixed_decoder(
    attribute_type: int, length: int, convert: Callable[[bytes], Any]
) -> Decoder:
    def decode(value: bytes, cookie_and_id: bytes) -> Any:
        if len(value) != length:
            raise _fail(attribute_type, f"length {len(value)}, expected {length}")
        return convert(value)

    return decode


# Big-endian unsigned integers of the value's whole length (checked before): a C call.
_u32 = _u64 = partial(int.from_bytes, byteorder="big")


def _high16(value: bytes) -> int:
    # 16-bit number followed by 16 bits RFFU (CHANNEL-NUMBER, RESPONSE-PORT).
    return int(_U16.unpack_from(value)[0])


# 8-bit number followed by 24 bits RFFU (REQUESTED-TRANSPORT, *-ADDRESS-FAMILY).
_high8 = itemgetter(0)


def _encode_u32(value: int, cookie_and_id: bytes) -> bytes:
    return _U32.pack(value)


def _encode_u64(value: int, cookie_and_id: bytes) -> bytes:
    return _U64.pack(value)


def _encode_high16(value: int, cookie_and_id: bytes) -> bytes:
    return _U16.pack(value) + b"\x00\x00"


def _encode_high8(value: int, cookie_and_id: bytes) -> bytes:
    if not 0 <= value <= 0xFF:
        raise ValueError(f"{value} does not fit in 8 bits")
    return bytes((value, 0, 0, 0))


def _make_flag_decoder(attribute_type: int) -> Decoder:
    def decode(value: bytes, cookie_and_id: bytes) -> None:
        if value:
            raise _fail(attribute_type, f"length {len(value)}, expected 0")

    return decode


def _encode_flag(value: None, cookie_and_id: bytes) -> bytes:
    if value is not None:
        raise ValueError("a flag attribute carries no value (use None)")
    return b""


def _decode_even_port(value: bytes, cookie_and_id: bytes) -> bool:
    # RFC 8656 §18.8: one byte, R in the top bit; some implementations pad it to four bytes.
    if len(value) not in (1, 4):
        raise _fail(AttributeType.EVEN_PORT, f"length {len(value)}, expected 1")
    return bool(value[0] & 0x80)


def _encode_even_port(value: bool, cookie_and_id: bytes) -> bytes:
    return b"\x80" if value else b"\x00"


# --- raw bytes --------------------------------------------------------------------------------


def _decode_bytes(value: bytes, cookie_and_id: bytes) -> bytes:
    return value


def _encode_bytes(value: bytes, cookie_and_id: bytes) -> bytes:
    return bytes(value)


def _make_sized_bytes_decoder(attribute_type: int, length: int) -> Decoder:
    def decode(value: bytes, cookie_and_id: bytes) -> bytes:
        if len(value) != length:
            raise _fail(attribute_type, f"length {len(value)}, expected {length}")
        return value

    return decode


def _decode_integrity_sha256(value: bytes, cookie_and_id: bytes) -> bytes:
    # RFC 8489 §14.6: may be truncated, but to no fewer than 16 bytes and a multiple of 4.
    if not 16 <= len(value) <= 32 or len(value) % 4:
        raise _fail(AttributeType.MESSAGE_INTEGRITY_SHA256, f"bad length {len(value)}")
    return value


# --- structured --------------------------------------------------------------------------------


def _decode_error_fields(attribute_type: int, value: bytes) -> tuple[int, str]:
    if len(value) < 4:
        raise _fail(attribute_type, f"length {len(value)} is shorter than 4")
    error_class = value[2] & 0x07
    number = value[3]
    if not 3 <= error_class <= 6 or number > 99:
        raise _fail(attribute_type, f"bad error code class {error_class} number {number}")
    reason = value[4:]
    if len(reason) > MAX_REASON_LENGTH:
        raise _fail(attribute_type, "reason phrase too long")
    try:
        text = reason.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(attribute_type, "reason phrase is not valid UTF-8") from None
    return error_class * 100 + number, text


def _encode_error_fields(head: int, code: int, reason: str) -> bytes:
    raw = reason.encode("utf-8")
    if len(raw) > MAX_REASON_LENGTH:
        raise ValueError(f"reason phrase of {len(raw)} bytes exceeds {MAX_REASON_LENGTH}")
    return _U32.pack(head | (code // 100) << 8 | code % 100) + raw


def _decode_error_code(value: bytes, cookie_and_id: bytes) -> ErrorCode:
    return ErrorCode(*_decode_error_fields(AttributeType.ERROR_CODE, value))


def _encode_error_code(value: ErrorCode, cookie_and_id: bytes) -> bytes:
    return _encode_error_fields(0, value.code, value.reason)


def _decode_address_error_code(value: bytes, cookie_and_id: bytes) -> AddressErrorCode:
    code, reason = _decode_error_fields(AttributeType.ADDRESS_ERROR_CODE, value)
    return AddressErrorCode(value[0], code, reason)


def _encode_address_error_code(value: AddressErrorCode, cookie_and_id: bytes) -> bytes:
    return _encode_error_fields(value.family << 24, value.code, value.reason)


def _decode_unknown_attributes(value: bytes, cookie_and_id: bytes) -> list[int]:
    if len(value) % 2:
        raise _fail(AttributeType.UNKNOWN_ATTRIBUTES, f"odd length {len(value)}")
    return list(struct.unpack(f"!{len(value) // 2}H", value))


def _encode_unknown_attributes(value: list[int], cookie_and_id: bytes) -> bytes:
    return struct.pack(f"!{len(value)}H", *value)


def _decode_algorithm_list(attribute_type: int, value: bytes) -> list[PasswordAlgorithmEntry]:
    entries = []
    offset = 0
    while offset < len(value):
        if offset + 4 > len(value):
            raise _fail(attribute_type, "truncated algorithm header")
        algorithm, length = struct.unpack_from("!HH", value, offset)
        offset += 4
        if offset + length > len(value):
            raise _fail(attribute_type, "algorithm parameters overrun the attribute")
        entries.append(PasswordAlgorithmEntry(algorithm, value[offset : offset + length]))
        offset += (length + 3) & ~3
    return entries


def _encode_algorithm(entry: PasswordAlgorithmEntry | int) -> bytes:
    if isinstance(entry, int):
        entry = PasswordAlgorithmEntry(entry)
    params = entry.parameters
    return struct.pack("!HH", entry.algorithm, len(params)) + params + b"\x00" * (-len(params) % 4)


def _decode_password_algorithms(value: bytes, cookie_and_id: bytes) -> list[PasswordAlgorithmEntry]:
    return _decode_algorithm_list(AttributeType.PASSWORD_ALGORITHMS, value)


def _encode_password_algorithms(
    value: list[PasswordAlgorithmEntry | int], cookie_and_id: bytes
) -> bytes:
    return b"".join(_encode_algorithm(entry) for entry in value)


def _decode_password_algorithm(value: bytes, cookie_and_id: bytes) -> PasswordAlgorithmEntry:
    entries = _decode_algorithm_list(AttributeType.PASSWORD_ALGORITHM, value)
    if len(entries) != 1:
        raise _fail(AttributeType.PASSWORD_ALGORITHM, f"{len(entries)} algorithms, expected 1")
    return entries[0]


def _encode_password_algorithm(value: PasswordAlgorithmEntry | int, cookie_and_id: bytes) -> bytes:
    return _encode_algorithm(value)


def _decode_icmp(value: bytes, cookie_and_id: bytes) -> Icmp:
    if len(value) != 8:
        raise _fail(AttributeType.ICMP, f"length {len(value)}, expected 8")
    return Icmp(value[2], value[3], _u32(value[4:]))


def _encode_icmp(value: Icmp, cookie_and_id: bytes) -> bytes:
    return struct.pack("!xxBBI", value.type, value.code, value.data)


# --- the table ---------------------------------------------------------------------------------

_A = AttributeType

#: attribute type -> (decoder, encoder)
CODECS: dict[int, tuple[Decoder, Encoder]] = {}

for _t in (
    _A.MAPPED_ADDRESS,
    _A.RESPONSE_ADDRESS,
    _A.SOURCE_ADDRESS,
    _A.CHANGED_ADDRESS,
    _A.REFLECTED_FROM,
    _A.ALTERNATE_SERVER,
    _A.RESPONSE_ORIGIN,
    _A.OTHER_ADDRESS,
):
    CODECS[_t] = (_make_address_decoder(_t), _encode_address)
for _t in (_A.XOR_MAPPED_ADDRESS, _A.XOR_PEER_ADDRESS, _A.XOR_RELAYED_ADDRESS):
    CODECS[_t] = (_make_xor_address_decoder(_t), _encode_xor_address)
for _t, _limit in (
    (_A.USERNAME, MAX_USERNAME_LENGTH),
    (_A.REALM, MAX_REALM_LENGTH),
    (_A.NONCE, MAX_NONCE_LENGTH),
    (_A.SOFTWARE, MAX_SOFTWARE_LENGTH),
    (_A.ALTERNATE_DOMAIN, MAX_REALM_LENGTH),
):
    CODECS[_t] = (_make_text_decoder(_t, _limit), _make_text_encoder(_t, _limit))
for _t in (_A.LIFETIME, _A.PRIORITY, _A.CHANGE_REQUEST, _A.CONNECTION_ID, _A.FINGERPRINT):
    CODECS[_t] = (_make_fixed_decoder(_t, 4, _u32), _encode_u32)
for _t in (_A.ICE_CONTROLLED, _A.ICE_CONTROLLING):
    CODECS[_t] = (_make_fixed_decoder(_t, 8, _u64), _encode_u64)
for _t in (_A.CHANNEL_NUMBER, _A.RESPONSE_PORT):
    CODECS[_t] = (_make_fixed_decoder(_t, 4, _high16), _encode_high16)
for _t in (_A.REQUESTED_TRANSPORT, _A.REQUESTED_ADDRESS_FAMILY, _A.ADDITIONAL_ADDRESS_FAMILY):
    CODECS[_t] = (_make_fixed_decoder(_t, 4, _high8), _encode_high8)
for _t in (_A.USE_CANDIDATE, _A.DONT_FRAGMENT):
    CODECS[_t] = (_make_flag_decoder(_t), _encode_flag)
for _t in (_A.DATA, _A.PADDING, _A.PASSWORD):
    CODECS[_t] = (_decode_bytes, _encode_bytes)
for _t, _size in (
    (_A.RESERVATION_TOKEN, 8),
    (_A.USERHASH, 32),
    (_A.MESSAGE_INTEGRITY, 20),
):
    CODECS[_t] = (_make_sized_bytes_decoder(_t, _size), _encode_bytes)
CODECS[_A.MESSAGE_INTEGRITY_SHA256] = (_decode_integrity_sha256, _encode_bytes)
CODECS[_A.EVEN_PORT] = (_decode_even_port, _encode_even_port)
CODECS[_A.ERROR_CODE] = (_decode_error_code, _encode_error_code)
CODECS[_A.ADDRESS_ERROR_CODE] = (_decode_address_error_code, _encode_address_error_code)
CODECS[_A.UNKNOWN_ATTRIBUTES] = (_decode_unknown_attributes, _encode_unknown_attributes)
CODECS[_A.PASSWORD_ALGORITHMS] = (_decode_password_algorithms, _encode_password_algorithms)
CODECS[_A.PASSWORD_ALGORITHM] = (_decode_password_algorithm, _encode_password_algorithm)
CODECS[_A.ICMP] = (_decode_icmp, _encode_icmp)
del _t, _limit, _size


def decode_value(attribute_type: int, value: bytes, cookie_and_id: bytes) -> Any:
    """Decode one attribute value; unknown types come back as the raw bytes."""
    codec = CODECS.get(attribute_type)
    if codec is None:
        return value
    return codec[0](value, cookie_and_id)


def encode_value(attribute_type: int, value: Any, cookie_and_id: bytes) -> bytes:
    """Encode one attribute value (without header or padding).

    ``bytes`` for any type is taken as the already-encoded value.
    """
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    codec = CODECS.get(attribute_type)
    if codec is None:
        raise ValueError(f"attribute {_name(attribute_type)} is unknown: give its value as bytes")
    try:
        return codec[1](value, cookie_and_id)
    except (struct.error, AttributeError, TypeError) as exc:
        raise ValueError(f"bad value {value!r} for {_name(attribute_type)}: {exc}") from None


def attribute_name(attribute_type: int) -> str:
    """The RFC name of an attribute type ("XOR-MAPPED-ADDRESS"), or its number in hex."""
    return _name(attribute_type)
