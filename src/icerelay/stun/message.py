"""STUN messages: header, attribute list, MESSAGE-INTEGRITY(-SHA256), FINGERPRINT (RFC 8489 §5,
§14.5-14.7), with RFC 3489 compatibility on request.

:func:`decode_message` parses and checks a whole datagram (or one framed TCP message);
:meth:`Message.encode` writes one. Decoding raises only :class:`~icerelay.errors.StunError`.
"""

from __future__ import annotations

import binascii
import hmac
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal, overload

from icerelay.errors import StunError
from icerelay.net import Address
from icerelay.stun.attributes import (
    CODECS,
    AddressErrorCode,
    AttributeValue,
    ErrorCode,
    Icmp,
    PasswordAlgorithmEntry,
    encode_value,
)
from icerelay.stun.constants import (
    FINGERPRINT_XOR,
    HEADER_LENGTH,
    MAGIC_COOKIE,
    MAX_NONCE_LENGTH,
    MAX_REALM_LENGTH,
    MAX_SOFTWARE_LENGTH,
    MAX_USERNAME_LENGTH,
    TRANSACTION_ID_LENGTH,
    AttributeType,
    MessageClass,
    Method,
)
from icerelay.stun.integrity import keyed

if TYPE_CHECKING:
    from random import Random

_HEADER = struct.Struct("!HHI12s")
_ATTRIBUTE_HEADER = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_MEMBERS: dict[int, AttributeType] = {int(t): t for t in AttributeType}
_DECODERS = {t: codec[0] for t, codec in CODECS.items()}
_ENCODERS = {t: codec[1] for t, codec in CODECS.items()}
#: Text attributes and the most bytes each may have (RFC 8489 §14).
_TEXT_LIMITS = {
    int(AttributeType.USERNAME): MAX_USERNAME_LENGTH,
    int(AttributeType.REALM): MAX_REALM_LENGTH,
    int(AttributeType.NONCE): MAX_NONCE_LENGTH,
    int(AttributeType.SOFTWARE): MAX_SOFTWARE_LENGTH,
    int(AttributeType.ALTERNATE_DOMAIN): MAX_REALM_LENGTH,
}
_new_message = object.__new__
_FINGERPRINT = int(AttributeType.FINGERPRINT)
_MESSAGE_INTEGRITY = int(AttributeType.MESSAGE_INTEGRITY)
_MESSAGE_INTEGRITY_SHA256 = int(AttributeType.MESSAGE_INTEGRITY_SHA256)
# message type -> (method, class); at most 16384 entries, filled as types are seen.
_MESSAGE_TYPES: dict[int, tuple[int, MessageClass]] = {}

_A = AttributeType

# Attributes that encode() computes itself; any copies in the attribute list are skipped.
_MESSAGE_INTEGRITY_HEADER = _ATTRIBUTE_HEADER.pack(_A.MESSAGE_INTEGRITY, 20)
_FINGERPRINT_HEADER = _ATTRIBUTE_HEADER.pack(_A.FINGERPRINT, 4)
_COMPUTED = frozenset({_A.MESSAGE_INTEGRITY, _A.MESSAGE_INTEGRITY_SHA256, _A.FINGERPRINT})

IntegrityAlgorithm = Literal["sha1", "sha256", "both"]

_AddressType = Literal[
    AttributeType.MAPPED_ADDRESS,
    AttributeType.XOR_MAPPED_ADDRESS,
    AttributeType.XOR_PEER_ADDRESS,
    AttributeType.XOR_RELAYED_ADDRESS,
    AttributeType.ALTERNATE_SERVER,
    AttributeType.RESPONSE_ORIGIN,
    AttributeType.OTHER_ADDRESS,
    AttributeType.CHANGED_ADDRESS,
    AttributeType.SOURCE_ADDRESS,
    AttributeType.RESPONSE_ADDRESS,
    AttributeType.REFLECTED_FROM,
]
_TextType = Literal[
    AttributeType.USERNAME,
    AttributeType.REALM,
    AttributeType.NONCE,
    AttributeType.SOFTWARE,
    AttributeType.ALTERNATE_DOMAIN,
]
_IntType = Literal[
    AttributeType.LIFETIME,
    AttributeType.CHANNEL_NUMBER,
    AttributeType.PRIORITY,
    AttributeType.REQUESTED_TRANSPORT,
    AttributeType.ICE_CONTROLLED,
    AttributeType.ICE_CONTROLLING,
    AttributeType.CHANGE_REQUEST,
    AttributeType.RESPONSE_PORT,
    AttributeType.REQUESTED_ADDRESS_FAMILY,
    AttributeType.ADDITIONAL_ADDRESS_FAMILY,
    AttributeType.CONNECTION_ID,
    AttributeType.FINGERPRINT,
]
_BytesType = Literal[
    AttributeType.DATA,
    AttributeType.RESERVATION_TOKEN,
    AttributeType.PADDING,
    AttributeType.USERHASH,
    AttributeType.MESSAGE_INTEGRITY,
    AttributeType.MESSAGE_INTEGRITY_SHA256,
    AttributeType.PASSWORD,
]
_FlagType = Literal[AttributeType.USE_CANDIDATE, AttributeType.DONT_FRAGMENT]


def message_type(method: int, message_class: int) -> int:
    """Interleave method and class bits into the 14-bit message type (RFC 8489 §5, Figure 3)."""
    return (
        (method & 0x000F)
        | (method & 0x0070) << 1
        | (method & 0x0F80) << 2
        | (message_class & 0b01) << 4
        | (message_class & 0b10) << 7
    )


def split_message_type(value: int) -> tuple[int, int]:
    """The inverse of :func:`message_type`: (method, class)."""
    method = (value & 0x000F) | (value & 0x00E0) >> 1 | (value & 0x3E00) >> 2
    message_class = (value & 0x0010) >> 4 | (value & 0x0100) >> 7
    return method, message_class


def new_transaction_id(rng: Random) -> bytes:
    """A fresh 96-bit transaction id drawn from *rng* (RFC 8489 §6: uniformly random, so an
    off-path attacker cannot guess it; pass :class:`random.SystemRandom` outside tests)."""
    return rng.randbytes(TRANSACTION_ID_LENGTH)


def is_stun(data: bytes | bytearray | memoryview, *, allow_rfc3489: bool = False) -> bool:
    """Cheap check that a datagram looks like one whole STUN message (RFC 8489 §6.3).

    Looks at the first two bits, the length field and the magic cookie (unless RFC 3489
    messages are allowed), not at attributes; :func:`decode_message` may still reject it.
    """
    if len(data) < HEADER_LENGTH or data[0] & 0xC0:
        return False
    length = data[2] << 8 | data[3]
    if length & 3 or length + HEADER_LENGTH != len(data):
        return False
    return allow_rfc3489 or bytes(data[4:8]) == b"\x21\x12\xa4\x42"


def _method_or_int(value: int) -> int:
    try:
        return Method(value)
    except ValueError:
        return value


class Message:
    """One STUN message: method, class, transaction id, and attributes in order.

    Attribute values are typed (see :mod:`icerelay.stun.attributes`): ``str`` for USERNAME,
    REALM, NONCE, SOFTWARE, ALTERNATE-DOMAIN; :class:`Address` for every ``*-ADDRESS``
    attribute (XOR applied on the wire); :class:`ErrorCode`; ``int`` for LIFETIME,
    CHANNEL-NUMBER, PRIORITY, REQUESTED-TRANSPORT, ICE-CONTROLLING/-CONTROLLED, CHANGE-REQUEST,
    RESPONSE-PORT, REQUESTED-/ADDITIONAL-ADDRESS-FAMILY, CONNECTION-ID; ``bytes`` for DATA,
    RESERVATION-TOKEN, PADDING, USERHASH; ``None`` for the flags USE-CANDIDATE and
    DONT-FRAGMENT (test with ``in``); ``bool`` for EVEN-PORT (the R bit); ``list[int]`` for
    UNKNOWN-ATTRIBUTES; :class:`PasswordAlgorithmEntry` (or a list of them) for
    PASSWORD-ALGORITHM(S); :class:`AddressErrorCode` for ADDRESS-ERROR-CODE; :class:`Icmp`
    for ICMP; ``int`` for a decoded FINGERPRINT; raw ``bytes`` for unknown types. A ``bytes``
    value given for a known type is written as it is (to craft odd messages in tests).

    A message from :func:`decode_message` also remembers its bytes, so that
    :meth:`check_integrity` can verify MESSAGE-INTEGRITY(-SHA256) without re-encoding.
    """

    __slots__ = (
        "_integrity_offset",
        "_integrity_sha256_offset",
        "_raw",
        "attributes",
        "cookie",
        "fingerprint_ok",
        "has_fingerprint",
        "ignored_after_integrity",
        "message_class",
        "method",
        "transaction_id",
        "unknown_comprehension_required",
    )

    def __init__(
        self,
        method: int,
        message_class: int,
        transaction_id: bytes,
        attributes: list[tuple[int, Any]] | None = None,
        *,
        cookie: int = MAGIC_COOKIE,
    ) -> None:
        if len(transaction_id) != TRANSACTION_ID_LENGTH:
            raise ValueError("a transaction id has 12 bytes (96 bits)")
        #: The STUN method (a :class:`Method` when known).
        self.method: int = method
        #: The :class:`MessageClass`.
        self.message_class: int = message_class
        #: 96 bits (RFC 8489). With RFC 3489 peers the 128-bit id is ``cookie`` + this.
        self.transaction_id: bytes = bytes(transaction_id)
        #: The magic cookie field; anything else than MAGIC_COOKIE means an RFC 3489 message.
        self.cookie: int = cookie
        #: (type, value) in wire order, duplicates kept.
        self.attributes: list[tuple[int, Any]] = attributes if attributes is not None else []
        #: Comprehension-required types (< 0x8000) that this module does not know: the
        #: UNKNOWN-ATTRIBUTES list of a 420 answer.
        self.unknown_comprehension_required: list[int] = []
        #: Attributes that followed MESSAGE-INTEGRITY(-SHA256) and were ignored (RFC 8489 §14.5).
        self.ignored_after_integrity: int = 0
        #: Whether the decoded message ended with FINGERPRINT, and whether it matched.
        self.has_fingerprint: bool = False
        self.fingerprint_ok: bool = False
        self._raw: bytes | None = None
        self._integrity_offset: int | None = None
        self._integrity_sha256_offset: int | None = None

    # --- convenience --------------------------------------------------------------------

    @property
    def is_rfc3489(self) -> bool:
        """True when the header has no magic cookie (an RFC 3489 peer)."""
        return self.cookie != MAGIC_COOKIE

    @property
    def transaction_key(self) -> bytes:
        """The full 128 bits after the length field, unique per transaction even for RFC 3489."""
        return _U32.pack(self.cookie) + self.transaction_id

    def add(self, attribute_type: int, value: AttributeValue = None) -> Message:
        """Append an attribute (duplicates allowed, order kept); returns the message."""
        self.attributes.append((attribute_type, value))
        return self

    def remove(self, attribute_type: int) -> None:
        """Drop every attribute of that type."""
        self.attributes = [a for a in self.attributes if a[0] != attribute_type]

    def __contains__(self, attribute_type: object) -> bool:
        return any(t == attribute_type for t, _ in self.attributes)

    def has(self, attribute_type: int) -> bool:
        """Whether an attribute of that type is present (for flags such as USE-CANDIDATE)."""
        return attribute_type in self

    @overload
    def get(self, attribute_type: _AddressType) -> Address | None: ...
    @overload
    def get(self, attribute_type: _TextType) -> str | None: ...
    @overload
    def get(self, attribute_type: _IntType) -> int | None: ...
    @overload
    def get(self, attribute_type: _BytesType) -> bytes | None: ...
    @overload
    def get(self, attribute_type: _FlagType) -> None: ...
    @overload
    def get(self, attribute_type: Literal[AttributeType.ERROR_CODE]) -> ErrorCode | None: ...
    @overload
    def get(
        self, attribute_type: Literal[AttributeType.ADDRESS_ERROR_CODE]
    ) -> AddressErrorCode | None: ...
    @overload
    def get(self, attribute_type: Literal[AttributeType.EVEN_PORT]) -> bool | None: ...
    @overload
    def get(
        self, attribute_type: Literal[AttributeType.UNKNOWN_ATTRIBUTES]
    ) -> list[int] | None: ...
    @overload
    def get(
        self, attribute_type: Literal[AttributeType.PASSWORD_ALGORITHMS]
    ) -> list[PasswordAlgorithmEntry] | None: ...
    @overload
    def get(
        self, attribute_type: Literal[AttributeType.PASSWORD_ALGORITHM]
    ) -> PasswordAlgorithmEntry | None: ...
    @overload
    def get(self, attribute_type: Literal[AttributeType.ICMP]) -> Icmp | None: ...
    @overload
    def get(self, attribute_type: int) -> Any: ...
    def get(self, attribute_type: int) -> Any:
        """The value of the first attribute of that type, or None."""
        for t, value in self.attributes:
            if t == attribute_type:
                return value
        return None

    @overload
    def get_all(self, attribute_type: _AddressType) -> list[Address]: ...
    @overload
    def get_all(self, attribute_type: _TextType) -> list[str]: ...
    @overload
    def get_all(self, attribute_type: _IntType) -> list[int]: ...
    @overload
    def get_all(self, attribute_type: _BytesType) -> list[bytes]: ...
    @overload
    def get_all(self, attribute_type: int) -> list[Any]: ...
    def get_all(self, attribute_type: int) -> list[Any]:
        """The values of every attribute of that type, in message order."""
        return [value for t, value in self.attributes if t == attribute_type]

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        return iter(self.attributes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (
            self.method == other.method
            and self.message_class == other.message_class
            and self.transaction_id == other.transaction_id
            and self.cookie == other.cookie
            and self.attributes == other.attributes
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        try:
            method = Method(self.method).name
        except ValueError:
            method = f"0x{self.method:03X}"
        attrs = ", ".join(_attribute_repr(t, v) for t, v in self.attributes)
        return (
            f"Message({method} {MessageClass(self.message_class).name}"
            f" id={self.transaction_id.hex()} [{attrs}])"
        )

    # --- responses ----------------------------------------------------------------------

    def response(self, message_class: int = MessageClass.SUCCESS_RESPONSE) -> Message:
        """An empty success (or error) response to this request: same method, same id."""
        return Message(self.method, message_class, self.transaction_id, cookie=self.cookie)

    def error_response(self, code: int, reason: str = "") -> Message:
        """An error response to this request carrying ERROR-CODE."""
        response = self.response(MessageClass.ERROR_RESPONSE)
        response.add(_A.ERROR_CODE, ErrorCode(code, reason))
        return response

    # --- encoding -----------------------------------------------------------------------

    def encode(
        self,
        integrity_key: bytes | None = None,
        integrity: IntegrityAlgorithm | None = "sha1",
        fingerprint: bool = False,
        *,
        sha256_length: int = 32,
        padding_byte: int = 0,
    ) -> bytes:
        """The message on the wire.

        With ``integrity_key``, appends MESSAGE-INTEGRITY (``"sha1"``, HMAC-SHA1),
        MESSAGE-INTEGRITY-SHA256 (``"sha256"``, truncated to ``sha256_length`` bytes if asked)
        or both, in that order (RFC 8489 §14.5-14.6); then FINGERPRINT if asked. Those three are
        always computed here: copies of them in :attr:`attributes` are left out.
        ``padding_byte`` fills the padding after odd-length values (the RFC 5769 vectors pad
        with spaces; any value is legal, receivers ignore it).

        Raises ValueError when a value cannot be encoded (a programming error, not bad input).
        """
        body = encode_attributes(
            self.attributes, _U32.pack(self.cookie) + self.transaction_id, padding_byte
        )
        return encode_message(
            message_type(self.method, self.message_class),
            self.transaction_id,
            body,
            self.cookie,
            integrity_key,
            integrity,
            fingerprint,
            sha256_length,
        )

    # --- integrity ------------------------------------------------------------------------

    @property
    def integrity_algorithm(self) -> Literal["sha1", "sha256"] | None:
        """The strongest integrity attribute the decoded message carries, if any."""
        if self._integrity_sha256_offset is not None:
            return "sha256"
        if self._integrity_offset is not None:
            return "sha1"
        return None

    def check_integrity(
        self, key: bytes, algorithm: Literal["sha1", "sha256"] | None = None
    ) -> bool:
        """Verify MESSAGE-INTEGRITY-SHA256 (preferred) or MESSAGE-INTEGRITY with ``key``.

        Only for decoded messages; False when the attribute is absent. ``algorithm`` forces
        which one is checked. The comparison is constant-time.
        """
        raw = self._raw
        if raw is None:
            return False
        if algorithm is None:
            algorithm = self.integrity_algorithm
            if algorithm is None:
                return False
        offset = self._integrity_sha256_offset if algorithm == "sha256" else self._integrity_offset
        if offset is None:
            return False
        value_length = raw[offset + 2] << 8 | raw[offset + 3]
        received = raw[offset + 4 : offset + 4 + value_length]
        # The length field as if the message ended right after this attribute. One copy of
        # the (small) message is cheaper than feeding the HMAC three slices.
        text = raw[0:2] + _U16.pack(offset + 4 + value_length - HEADER_LENGTH) + raw[4:offset]
        hmac_of = keyed(key if key.__class__ is bytes else bytes(key))
        digest = hmac_of.sha256(text) if algorithm == "sha256" else hmac_of.sha1(text)
        return hmac.compare_digest(digest[:value_length], received)


def encode_attributes(
    attributes: list[tuple[int, Any]], cookie_and_id: bytes, padding_byte: int = 0
) -> bytes:
    """The attribute part of a message: each (type, value) with its header and padding.

    MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT are left out (:func:`encode_message` computes
    them). ``cookie_and_id`` is the header's magic cookie and transaction id (XOR addresses use
    them). ``bytes`` values are written as they are. Raises ValueError for a value that cannot
    be encoded.
    """
    chunks: list[bytes] = []
    append = chunks.append
    pack_header = _ATTRIBUTE_HEADER.pack
    encoders = _ENCODERS
    pad = bytes((padding_byte,)) * 3
    for attribute_type, value in attributes:
        if attribute_type in _COMPUTED:
            continue
        if value.__class__ is bytes:
            raw = value  # already encoded
        else:
            encoder = encoders.get(attribute_type)
            try:
                if encoder is None:
                    raise TypeError
                raw = encoder(value, cookie_and_id)
            except (struct.error, AttributeError, TypeError):
                # The slow path says what was wrong (or encodes bytearray/memoryview).
                raw = encode_value(attribute_type, value, cookie_and_id)
        size = len(raw)
        if size > 0xFFFF:
            raise ValueError(f"attribute 0x{attribute_type:04X} is longer than 65535 bytes")
        try:
            append(pack_header(attribute_type, size))
        except struct.error:
            raise ValueError(f"attribute type {attribute_type} does not fit in 16 bits") from None
        append(raw)
        padding = -size & 3
        if padding:
            append(pad[:padding])
    return b"".join(chunks)


def encode_message(
    mtype: int,
    transaction_id: bytes,
    body: bytes,
    cookie: int = MAGIC_COOKIE,
    integrity_key: bytes | None = None,
    integrity: IntegrityAlgorithm | None = "sha1",
    fingerprint: bool = False,
    sha256_length: int = 32,
) -> bytes:
    """A whole message from its type (:func:`message_type`), transaction id and attribute part
    (:func:`encode_attributes`, or bytes prepared beforehand), with MESSAGE-INTEGRITY(-SHA256)
    and FINGERPRINT added as :meth:`Message.encode` describes."""
    length = len(body)
    if integrity_key is not None and integrity is not None:
        if integrity_key.__class__ is not bytes:
            integrity_key = bytes(integrity_key)
        if integrity == "sha1" or integrity == "both":
            # RFC 8489 §14.5: the length field covers up to and including this attribute.
            length += 24
            head = _HEADER.pack(mtype, length, cookie, transaction_id)
            digest = keyed(integrity_key).sha1(head + body)
            body += _MESSAGE_INTEGRITY_HEADER + digest
        if integrity == "sha256" or integrity == "both":
            if not 16 <= sha256_length <= 32 or sha256_length % 4:
                raise ValueError("MESSAGE-INTEGRITY-SHA256 length must be 16-32, a multiple of 4")
            length += 4 + sha256_length
            head = _HEADER.pack(mtype, length, cookie, transaction_id)
            digest = keyed(integrity_key).sha256(head + body)
            body += (
                _ATTRIBUTE_HEADER.pack(_A.MESSAGE_INTEGRITY_SHA256, sha256_length)
                + digest[:sha256_length]
            )
        elif integrity != "sha1":
            raise ValueError(f"unknown integrity algorithm {integrity!r}")
    if fingerprint:
        length += 8
        data = _HEADER.pack(mtype, length, cookie, transaction_id) + body
        crc = binascii.crc32(data) ^ FINGERPRINT_XOR
        return data + _FINGERPRINT_HEADER + _U32.pack(crc)
    if length > 0xFFFF:
        raise ValueError("message longer than 65535 bytes after the header")
    return _HEADER.pack(mtype, length, cookie, transaction_id) + body


def _attribute_repr(attribute_type: int, value: Any) -> str:
    try:
        name = AttributeType(attribute_type).name
    except ValueError:
        name = f"0x{attribute_type:04X}"
    return name if value is None else f"{name}={value!r}"


def decode_message(
    data: bytes | bytearray | memoryview,
    *,
    allow_rfc3489: bool = False,
    check_fingerprint: bool = True,
) -> Message:
    """Parse one whole STUN message.

    Raises :class:`~icerelay.errors.StunError` with a reason on anything malformed: short or
    inconsistent header, missing magic cookie (unless ``allow_rfc3489``), attribute overruns,
    bad attribute values, FINGERPRINT not last, or (with ``check_fingerprint``) a FINGERPRINT
    that does not match. Attributes after MESSAGE-INTEGRITY(-SHA256) other than FINGERPRINT
    (and MESSAGE-INTEGRITY-SHA256 after MESSAGE-INTEGRITY) are ignored, only counted
    (RFC 8489 §14.5-14.6).
    """
    raw = data if isinstance(data, bytes) else bytes(data)
    size = len(raw)
    if size < HEADER_LENGTH:
        raise StunError(f"short header: {size} bytes")
    if raw[0] & 0xC0:
        raise StunError("first two bits are not zero: not a STUN message")
    mtype, length, cookie, transaction_id = _HEADER.unpack_from(raw)
    if length & 3:
        raise StunError(f"length {length} is not a multiple of 4")
    if length + HEADER_LENGTH != size:
        raise StunError(f"length field says {length} but {size - HEADER_LENGTH} bytes follow")
    if cookie != MAGIC_COOKIE and not allow_rfc3489:
        raise StunError(f"bad magic cookie 0x{cookie:08X}")
    kind = _MESSAGE_TYPES.get(mtype)
    if kind is None:
        method, message_class = split_message_type(mtype)
        kind = _MESSAGE_TYPES[mtype] = (_method_or_int(method), MessageClass(message_class))
    # Message.__init__'s checks hold by construction here; its call is a tenth of a decode.
    message = _new_message(Message)
    message.method = kind[0]
    message.message_class = kind[1]
    message.transaction_id = transaction_id
    message.cookie = cookie
    message.attributes = attributes = []
    message.unknown_comprehension_required = []
    message.ignored_after_integrity = 0
    message.has_fingerprint = False
    message.fingerprint_ok = False
    message._raw = raw
    message._integrity_offset = None
    message._integrity_sha256_offset = None
    cookie_and_id = raw[4:20]
    offset = HEADER_LENGTH
    # State for RFC 8489 §14.5-14.6: after MESSAGE-INTEGRITY only MESSAGE-INTEGRITY-SHA256
    # and FINGERPRINT count; after MESSAGE-INTEGRITY-SHA256 only FINGERPRINT.
    seen_integrity = False
    seen_integrity_sha256 = False
    unpack_attribute = _ATTRIBUTE_HEADER.unpack_from
    while offset < size:
        if offset + 4 > size:
            raise StunError(f"attribute header overruns the message at offset {offset}")
        attribute_type, value_length = unpack_attribute(raw, offset)
        start = offset + 4
        next_offset = start + ((value_length + 3) & ~3)
        if next_offset > size:
            raise StunError(
                f"attribute 0x{attribute_type:04X} of length {value_length} overruns the message"
            )
        if attribute_type == _FINGERPRINT:
            if next_offset != size:
                raise StunError("FINGERPRINT is not the last attribute")
            if value_length != 4:
                raise StunError(f"FINGERPRINT: length {value_length}, expected 4")
            received = _U32.unpack_from(raw, start)[0]
            # FINGERPRINT is last, so the length field already covers it as §14.7 requires.
            expected = binascii.crc32(raw[:offset]) ^ FINGERPRINT_XOR
            message.has_fingerprint = True
            message.fingerprint_ok = received == expected
            if check_fingerprint and not message.fingerprint_ok:
                raise StunError("FINGERPRINT mismatch")
            attributes.append((_A.FINGERPRINT, received))
            break
        if seen_integrity_sha256 or (
            seen_integrity and attribute_type != _MESSAGE_INTEGRITY_SHA256
        ):
            message.ignored_after_integrity += 1
            offset = next_offset
            continue
        value: Any = raw[start : start + value_length]
        limit = _TEXT_LIMITS.get(attribute_type)
        if limit is not None and value_length <= limit:
            # Text (USERNAME, REALM, NONCE, ...): decoded here, without a decoder call.
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                value = _DECODERS[attribute_type](value, cookie_and_id)  # raises, with the reason
            attributes.append((_MEMBERS[attribute_type], value))
            offset = next_offset
            continue
        decoder = _DECODERS.get(attribute_type)
        if decoder is not None:
            value = decoder(value, cookie_and_id)
            if attribute_type == _MESSAGE_INTEGRITY:
                message._integrity_offset = offset
                seen_integrity = True
            elif attribute_type == _MESSAGE_INTEGRITY_SHA256:
                message._integrity_sha256_offset = offset
                seen_integrity_sha256 = True
            attribute_type = _MEMBERS[attribute_type]
        elif attribute_type < 0x8000:
            message.unknown_comprehension_required.append(attribute_type)
        attributes.append((attribute_type, value))
        offset = next_offset
    return message
