"""rtpengine's ng control protocol, sans-I/O: framing, typed commands, reply cache, counters.

A request is ``<cookie> <dictionary>``: the cookie is an opaque token the proxy chooses (Kamailio
writes ``<pid>_<random>_<counter>``) and the dictionary is bencoded, or JSON when the payload starts
with ``{``. The reply is ``<cookie> <dictionary>`` in the same encoding, with ``result`` set to
``ok``, ``pong`` or ``error`` (then ``error-reason`` says why).

UDP loses and reorders datagrams, so a proxy retransmits a request with the same cookie when no
reply came in time. The command must not run twice (a second ``offer`` would allocate new ports),
so replies are kept by cookie for a while and a retransmission gets exactly the bytes of the first
reply, as rtpengine does.

Usage (the I/O shell owns sockets and the clock)::

    protocol = NgProtocol()
    outcome = protocol.receive(datagram, now)
    if isinstance(outcome, NgRequest):
        reply = protocol.reply(outcome, handler(outcome.command), now)
    elif isinstance(outcome, NgImmediateReply):
        reply = outcome.data          # a retransmission or a request we refused
    else:                             # NgDropped: not even a cookie to answer to
        reply = None

Keys are matched the way rtpengine matches them: case-insensitively and with ``-``, ``_`` and
space interchangeable (``address family`` == ``address-family``), because Kamailio, OpenSIPS and
hand-written scripts do not agree on one spelling. Flags in lists are matched the same way.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeAlias

from icerelay import bencode
from icerelay.errors import ControlError
from icerelay.relay.policy import IceMode, IcePriority

__all__ = [
    "NG_PORT",
    "Answer",
    "Command",
    "Delete",
    "Encoding",
    "List",
    "MediaOptions",
    "NgCounters",
    "NgDropped",
    "NgImmediateReply",
    "NgProtocol",
    "NgRequest",
    "NgStreamFramer",
    "Offer",
    "Ping",
    "Query",
    "ReplyValue",
    "Statistics",
    "error_reply",
    "parse_command",
]

#: rtpengine's customary ng port.
NG_PORT = 2223

#: A value in a reply dictionary: what both bencode and JSON can carry.
ReplyValue: TypeAlias = "str | bytes | int | Sequence[ReplyValue] | Mapping[str, ReplyValue]"

# Cookies are opaque but printable in every implementation; the bound stops a garbage datagram
# from being taken for a cookie and echoed back at length.
_COOKIE = re.compile(rb"[\x21-\x7e]{1,128}")
_KEY_SEPARATORS = str.maketrans({" ": "-", "_": "-"})

_REPLACE_VALUES = frozenset(
    {"origin", "session-connection", "origin-full", "sdp-version", "username", "session-name"}
)
_RTCP_MUX_VALUES = frozenset({"offer", "demux", "accept", "reject", "require"})
_FAMILIES = {"ip4": "IP4", "ip6": "IP6"}


class Encoding(StrEnum):
    """How the request's dictionary was written; the reply uses the same."""

    BENCODE = "bencode"
    JSON = "json"


# -- typed commands -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping:
    """``ping``: liveness check; the reply is ``result=pong``."""


@dataclass(frozen=True, slots=True)
class MediaOptions:
    """What ``offer`` and ``answer`` carry besides the identifiers and the SDP.

    :attr:`flags` are the normalised entries of the ``flags`` list (``trust-address``,
    ``strict-source``, ``symmetric``, ``asymmetric``, ``port-latching``, ...); :attr:`replace` the
    ``replace`` list (``origin``, ``session-connection``, ...); :attr:`direction` the two
    interface names of ``direction``; :attr:`received_from` the ``received-from`` pair (address
    family, address) that tells where the SIP message came from, used instead of the SDP's address
    when the SDP holds a private one. :attr:`ignored` lists keys and flags understood by rtpengine
    but not (yet) by icerelay, so a reply can warn instead of silently pretending.
    """

    flags: frozenset[str] = frozenset()
    replace: frozenset[str] = frozenset()
    ice: IceMode | None = None
    ice_priority: IcePriority | None = None
    direction: tuple[str, ...] = ()
    rtcp_mux: frozenset[str] = frozenset()
    received_from: tuple[str, str] | None = None
    address_family: str | None = None
    media_address: str | None = None
    transport_protocol: str | None = None
    ignored: tuple[str, ...] = ()

    @property
    def trust_address(self) -> bool:
        """``trust-address``: believe the SDP's ``c=`` instead of the signalling source."""
        return "trust-address" in self.flags

    @property
    def strict_source(self) -> bool:
        """``strict-source``: after latching, drop packets from any other source address."""
        return "strict-source" in self.flags


@dataclass(frozen=True, slots=True)
class Offer:
    """``offer``: the SDP offer from the ``from-tag`` party; the reply carries the rewritten SDP."""

    call_id: str
    from_tag: str
    sdp: bytes
    to_tag: str | None = None
    via_branch: str | None = None
    options: MediaOptions = field(default_factory=MediaOptions)


@dataclass(frozen=True, slots=True)
class Answer:
    """``answer``: the SDP answer travelling from the ``to-tag`` party back to ``from-tag``."""

    call_id: str
    from_tag: str
    to_tag: str
    sdp: bytes
    via_branch: str | None = None
    options: MediaOptions = field(default_factory=MediaOptions)


@dataclass(frozen=True, slots=True)
class Delete:
    """``delete``: end a call, or one branch of it; ``delete_delay`` seconds of grace (None:
    the relay's default)."""

    call_id: str
    from_tag: str | None = None
    to_tag: str | None = None
    via_branch: str | None = None
    delete_delay: int | None = None
    flags: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Query:
    """``query``: counters and addresses of one call."""

    call_id: str
    from_tag: str | None = None
    to_tag: str | None = None


@dataclass(frozen=True, slots=True)
class List:
    """``list``: the Call-IDs of up to ``limit`` active calls."""

    limit: int = 32


@dataclass(frozen=True, slots=True)
class Statistics:
    """``statistics``: the relay's global counters."""


Command: TypeAlias = Ping | Offer | Answer | Delete | Query | List | Statistics


# -- protocol outcomes --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NgRequest:
    """A fresh, well-formed request: run :attr:`command` and pass the result to
    :meth:`NgProtocol.reply`."""

    cookie: bytes
    command: Command
    encoding: Encoding
    #: The normalised name of the command (``offer``...), for logs and counters.
    name: str


@dataclass(frozen=True, slots=True)
class NgImmediateReply:
    """Send :attr:`data` back without running anything: a retransmission's cached reply, or the
    error reply to a request that could not be understood (then :attr:`reason` says why)."""

    data: bytes
    retransmission: bool
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class NgDropped:
    """Nothing can be answered (no cookie to reply to); :attr:`reason` is for the counters/log."""

    reason: str


@dataclass(slots=True)
class NgCounters:
    """What :class:`NgProtocol` has seen, for ``statistics`` and monitoring."""

    requests: int = 0
    retransmissions: int = 0
    errors: int = 0
    dropped: int = 0
    #: Requests per command name (``offer``, ``answer``, ...), errors included.
    commands: Counter[str] = field(default_factory=Counter)


def error_reply(reason: str) -> dict[str, ReplyValue]:
    """The reply dictionary of a failed request."""
    return {"result": "error", "error-reason": reason}


class NgProtocol:
    """Sans-I/O ng protocol endpoint (one per relay, shared by its UDP and TCP listeners).

    :param cache_size: how many replies are kept for retransmissions; the oldest go first.
    :param cache_ttl: seconds a reply is kept. Kamailio gives up on a request after a few
        seconds; 30 s covers every proxy's retransmission window with a wide margin.
    """

    def __init__(self, *, cache_size: int = 10_000, cache_ttl: float = 30.0) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        if cache_ttl <= 0:
            raise ValueError("cache_ttl must be positive")
        self.cache_size = cache_size
        self.cache_ttl = cache_ttl
        self.counters = NgCounters()
        # cookie -> (expiry, reply bytes); insertion order is expiry order because the TTL is fixed.
        self._cache: OrderedDict[bytes, tuple[float, bytes]] = OrderedDict()

    def receive(self, data: bytes, now: float) -> NgRequest | NgImmediateReply | NgDropped:
        """Classify one message (a UDP datagram or one TCP frame)."""
        self._expire(now)
        cookie, separator, payload = bytes(data).partition(b" ")
        if not separator or not _COOKIE.fullmatch(cookie):
            self.counters.dropped += 1
            return NgDropped("message does not start with a cookie and a space")
        cached = self._cache.get(cookie)
        if cached is not None:
            self.counters.retransmissions += 1
            return NgImmediateReply(cached[1], retransmission=True)
        self.counters.requests += 1
        encoding = Encoding.JSON if payload.lstrip().startswith(b"{") else Encoding.BENCODE
        name = "unknown"
        try:
            message = _load(payload, encoding)
            name = _command_name(message)
            command = parse_command(message)
        except ControlError as error:
            self.counters.errors += 1
            self.counters.commands[name] += 1
            reason = str(error)
            reply = self._store(cookie, encoding, error_reply(reason), now)
            return NgImmediateReply(reply, retransmission=False, reason=reason)
        self.counters.commands[name] += 1
        return NgRequest(cookie, command, encoding, name)

    def reply(self, request: NgRequest, result: Mapping[str, ReplyValue], now: float) -> bytes:
        """Encode the reply to ``request`` and keep it for retransmissions."""
        if result.get("result") == "error":
            self.counters.errors += 1
        return self._store(request.cookie, request.encoding, result, now)

    def _store(
        self, cookie: bytes, encoding: Encoding, result: Mapping[str, ReplyValue], now: float
    ) -> bytes:
        data = cookie + b" " + _dump(result, encoding)
        self._cache[cookie] = (now + self.cache_ttl, data)
        self._cache.move_to_end(cookie)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return data

    def _expire(self, now: float) -> None:
        while self._cache:
            cookie, (expiry, _) = next(iter(self._cache.items()))
            if expiry > now:
                break
            del self._cache[cookie]

    @property
    def cached_replies(self) -> int:
        """How many replies are currently kept."""
        return len(self._cache)


# -- decoding -----------------------------------------------------------------------------------

# A dictionary after normalisation: keys hyphenated and lower-case, strings as bytes.
_Message: TypeAlias = dict[str, bencode.BencodeValue]


def _load(payload: bytes, encoding: Encoding) -> _Message:
    if encoding is Encoding.JSON:
        try:
            value = json.loads(payload)
        except (ValueError, RecursionError) as error:
            raise ControlError(f"invalid JSON: {error}") from None
        value = _from_json(value, 0)
    else:
        try:
            value = bencode.decode(payload)
        except bencode.BencodeError as error:
            raise ControlError(f"invalid bencode: {error}") from None
    if not isinstance(value, dict):
        raise ControlError("the message is not a dictionary")
    message: _Message = {}
    for raw_key, item in value.items():
        key = _normalise(_text(raw_key, "a key"))
        if key in message:
            raise ControlError(f"key {key!r} appears twice (spelt differently)")
        message[key] = item
    return message


def _from_json(value: object, depth: int) -> bencode.BencodeValue:
    """Map JSON onto the bencode model (strings as UTF-8 bytes) so one parser serves both."""
    if depth > bencode.MAX_DEPTH:
        raise ControlError("JSON nests too deeply")
    if isinstance(value, bool) or value is None or isinstance(value, float):
        # rtpengine's JSON reader takes only strings, integers, lists and objects.
        raise ControlError(f"JSON value {value!r} has no ng meaning (use strings or integers)")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, list):
        return [_from_json(item, depth + 1) for item in value]
    if isinstance(value, dict):
        return {key.encode("utf-8"): _from_json(item, depth + 1) for key, item in value.items()}
    raise ControlError(f"unexpected JSON value {value!r}")  # pragma: no cover - json gives no more


def _dump(result: Mapping[str, ReplyValue], encoding: Encoding) -> bytes:
    if encoding is Encoding.JSON:
        return json.dumps(_to_json(result), separators=(",", ":")).encode("utf-8")
    return bencode.encode(result)


def _to_json(value: ReplyValue) -> object:
    if isinstance(value, bytes):
        # SDP bodies are ASCII in practice; replace keeps a stray byte from failing the reply.
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str | int):
        return value
    if isinstance(value, Mapping):
        return {key: _to_json(item) for key, item in value.items()}
    return [_to_json(item) for item in value]


def _normalise(text: str) -> str:
    return text.translate(_KEY_SEPARATORS).lower()


def _text(value: bencode.BencodeValue, what: str) -> str:
    if not isinstance(value, bytes):
        raise ControlError(f"{what} must be a string, got {_kind(value)}")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ControlError(f"{what} is not valid UTF-8") from None


def _kind(value: bencode.BencodeValue) -> str:
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, bytes):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "a dictionary"


def _command_name(message: _Message) -> str:
    if "command" not in message:
        raise ControlError("no 'command' key in the message")
    return _normalise(_text(message["command"], "'command'"))


def _required_text(message: _Message, key: str) -> str:
    if key not in message:
        raise ControlError(f"'{key}' is missing")
    value = _text(message[key], f"'{key}'")
    if not value:
        raise ControlError(f"'{key}' is empty")
    return value


def _optional_text(message: _Message, key: str) -> str | None:
    if key not in message:
        return None
    value = _text(message[key], f"'{key}'")
    # Kamailio sends an empty to-tag on an initial offer; empty means absent there too.
    return value or None


def _text_list(message: _Message, key: str) -> list[str]:
    if key not in message:
        return []
    value = message[key]
    if isinstance(value, bytes):
        # A single string where a list is expected: rtpengine accepts it, and so do we.
        return [_text(value, f"'{key}'")]
    if not isinstance(value, list):
        raise ControlError(f"'{key}' must be a list of strings, got {_kind(value)}")
    return [_text(item, f"an entry of '{key}'") for item in value]


def _integer(message: _Message, key: str, minimum: int, maximum: int) -> int | None:
    if key not in message:
        return None
    value = message[key]
    if isinstance(value, bytes):
        # Kamailio passes generic key=value flags through as strings ("delete-delay=5").
        text = _text(value, f"'{key}'")
        if not text.isascii() or not text.isdigit():
            raise ControlError(f"'{key}' must be an integer, got {text[:40]!r}")
        number = int(text[:20])
    elif isinstance(value, int):
        number = value
    else:
        raise ControlError(f"'{key}' must be an integer, got {_kind(value)}")
    if not minimum <= number <= maximum:
        raise ControlError(f"'{key}' {number} is outside {minimum}..{maximum}")
    return number


def _media_options(message: _Message) -> MediaOptions:
    ignored: list[str] = []
    flags = frozenset(_normalise(flag) for flag in _text_list(message, "flags"))

    replace = _known_values(message, "replace", _REPLACE_VALUES)

    ice: IceMode | None = None
    if "ice" in message:
        text = _normalise(_text(message["ice"], "'ICE'"))
        try:
            ice = IceMode(text)
        except ValueError:
            raise ControlError(
                f"'ICE' must be remove, force, force-relay or default, got {text!r}"
            ) from None

    priority: IcePriority | None = None
    if "ice-priority" in message:
        text = _normalise(_text(message["ice-priority"], "'ICE-priority'"))
        try:
            priority = IcePriority(text)
        except ValueError:
            raise ControlError(f"'ICE-priority' must be none, low or high, got {text!r}") from None

    direction = tuple(_text_list(message, "direction"))
    if len(direction) > 2:
        raise ControlError(f"'direction' names {len(direction)} interfaces; at most 2 make sense")

    rtcp_mux = _known_values(message, "rtcp-mux", _RTCP_MUX_VALUES)

    received_from: tuple[str, str] | None = None
    if "received-from" in message:
        pair = _text_list(message, "received-from")
        if len(pair) != 2:
            raise ControlError("'received-from' must be a list of an address family and an address")
        family = _FAMILIES.get(pair[0].lower())
        if family is None:
            raise ControlError(f"'received-from' family must be IP4 or IP6, got {pair[0]!r}")
        received_from = (family, _check_address(pair[1], family, "'received-from'"))

    address_family: str | None = None
    if "address-family" in message:
        text = _text(message["address-family"], "'address family'")
        address_family = _FAMILIES.get(text.lower())
        if address_family is None:
            raise ControlError(f"'address family' must be IP4 or IP6, got {text!r}")

    media_address = _optional_text(message, "media-address")
    if media_address is not None:
        media_address = _check_address(media_address, None, "'media address'")

    for key in _UNSUPPORTED_KEYS & message.keys():
        ignored.append(key)
    ignored.extend(sorted(flag for flag in flags if flag not in _KNOWN_FLAGS))

    return MediaOptions(
        flags=flags,
        replace=replace,
        ice=ice,
        ice_priority=priority,
        direction=direction,
        rtcp_mux=rtcp_mux,
        received_from=received_from,
        address_family=address_family,
        media_address=media_address,
        transport_protocol=_optional_text(message, "transport-protocol"),
        ignored=tuple(sorted(ignored)),
    )


def _known_values(message: _Message, key: str, known: frozenset[str]) -> frozenset[str]:
    """The list under ``key``, normalised; a value outside ``known`` is an error that names them."""
    values: set[str] = set()
    for item in _text_list(message, key):
        value = _normalise(item)
        if value not in known:
            raise ControlError(
                f"unknown '{key}' value {item!r} (known: {', '.join(sorted(known))})"
            )
        values.add(value)
    return frozenset(values)


def _check_address(text: str, family: str | None, what: str) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ControlError(f"{what} address {text[:60]!r} is not an IP address") from None
    if family is not None and f"IP{address.version}" != family:
        raise ControlError(f"{what} address {text!r} is not an {family} address")
    return str(address)


# Flags icerelay acts on; anything else in 'flags' is reported back as ignored.
_KNOWN_FLAGS = frozenset(
    {
        "trust-address",
        "strict-source",
        "symmetric",
        "asymmetric",
        "port-latching",
        "no-port-latching",
        "media-handover",
        "all",
        "fatal",
        "ice-lite",
        "sip-source-address",
        "full-rtcp-attribute",
        "no-rtcp-attribute",
        "loop-protect",
    }
)
# Keys rtpengine understands that icerelay does not act on yet (media features outside a relay's
# NAT job: recording, transcoding, SRTP bridging, ...).
_UNSUPPORTED_KEYS = frozenset(
    {
        "record-call",
        "sdes",
        "dtls",
        "osrtp",
        "codec",
        "t38",
        "ptime",
        "xmlrpc-callback",
        "metadata",
        "label",
        "set-label",
        "from-label",
        "to-label",
    }
)
# Keys that need no action: ``supports`` is the proxy declaring what replies it understands
# (Kamailio sends ``["load limit"]`` with every request); warning about it would be noise.


def parse_command(message: Mapping[str, bencode.BencodeValue]) -> Command:
    """Turn a normalised request dictionary into a typed command, or raise ControlError."""
    msg = dict(message)
    name = _command_name(msg)
    if name == "ping":
        return Ping()
    if name == "statistics":
        return Statistics()
    if name == "list":
        limit = _integer(msg, "limit", 0, 1_000_000)
        return List(limit=32 if limit is None else limit)
    if name in ("offer", "answer"):
        call_id = _required_text(msg, "call-id")
        from_tag = _required_text(msg, "from-tag")
        if "sdp" not in msg:
            raise ControlError(f"'sdp' is missing from the {name}")
        sdp = msg["sdp"]
        if not isinstance(sdp, bytes) or not sdp.strip():
            raise ControlError("'sdp' must be a non-empty string")
        options = _media_options(msg)
        via_branch = _optional_text(msg, "via-branch")
        if name == "offer":
            return Offer(call_id, from_tag, sdp, _optional_text(msg, "to-tag"), via_branch, options)
        return Answer(call_id, from_tag, _required_text(msg, "to-tag"), sdp, via_branch, options)
    if name == "delete":
        return Delete(
            call_id=_required_text(msg, "call-id"),
            from_tag=_optional_text(msg, "from-tag"),
            to_tag=_optional_text(msg, "to-tag"),
            via_branch=_optional_text(msg, "via-branch"),
            delete_delay=_integer(msg, "delete-delay", 0, 86_400),
            flags=frozenset(_normalise(flag) for flag in _text_list(msg, "flags")),
        )
    if name == "query":
        return Query(
            call_id=_required_text(msg, "call-id"),
            from_tag=_optional_text(msg, "from-tag"),
            to_tag=_optional_text(msg, "to-tag"),
        )
    raise ControlError(
        f"unknown command {name!r} "
        "(supported: ping, offer, answer, delete, query, list, statistics)"
    )


# -- TCP ----------------------------------------------------------------------------------------


class NgStreamFramer:
    """Splits an ng byte stream (TCP) into messages, and frames replies the same way.

    Two framings exist in the field and both are accepted per message: a length prefix
    ``<length>:<cookie> <dictionary>`` (the message as one bencode string), and the bare UDP form
    ``<cookie> <dictionary>``, whose end is where the bencoded (or JSON) dictionary ends. A reply
    goes back in the framing of its request.

    :param max_message: a message longer than this is a protocol error: it bounds what a
        misbehaving client can make the relay buffer.
    """

    def __init__(self, max_message: int = 1 << 20) -> None:
        self.max_message = max_message
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bool]]:
        """Add received bytes; return the complete messages as (message, length_prefixed).

        Raises ControlError when the stream cannot be framed: the connection should be closed.
        """
        self._buffer += data
        messages: list[tuple[bytes, bool]] = []
        while True:
            # Line breaks between messages are tolerated (people test with netcat).
            while self._buffer and self._buffer[0] in b"\r\n ":
                del self._buffer[:1]
            if not self._buffer:
                break
            found = self._next()
            if found is None:
                if len(self._buffer) > self.max_message:
                    raise ControlError(f"message longer than {self.max_message} bytes")
                break
            message, length_prefixed, end = found
            del self._buffer[:end]
            messages.append((message, length_prefixed))
        return messages

    @staticmethod
    def frame(message: bytes, length_prefixed: bool) -> bytes:
        """Frame one reply for the stream."""
        if length_prefixed:
            return b"%d:%s" % (len(message), message)
        return message

    def _next(self) -> tuple[bytes, bool, int] | None:
        buffer = bytes(self._buffer)
        prefix = re.match(rb"([0-9]{1,10}):", buffer)
        if prefix is not None:
            length = int(prefix.group(1))
            if length > self.max_message:
                raise ControlError(f"message of {length} bytes is longer than {self.max_message}")
            start = prefix.end()
            if len(buffer) - start < length:
                return None
            return buffer[start : start + length], True, start + length
        space = buffer.find(b" ")
        if space < 0:
            if len(buffer) > 128:
                raise ControlError("stream does not start with a cookie")
            return None
        start = space + 1
        while start < len(buffer) and buffer[start] in b" \t":
            start += 1
        if start >= len(buffer):
            return None
        if buffer[start] == ord("{"):
            end = _json_object_end(buffer, start)
        else:
            try:
                _, end = bencode.decode_prefix(buffer, start)
            except bencode.IncompleteBencode:
                return None
        if end is None:
            return None
        return buffer[:end], False, end


def _json_object_end(buffer: bytes, start: int) -> int | None:
    """Offset just after the JSON object starting at ``start``, or None if it is incomplete."""
    depth = 0
    in_string = False
    escaped = False
    for index in range(start, len(buffer)):
        byte = buffer[index]
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in b"{[":
            depth += 1
        elif byte in b"}]":
            depth -= 1
            if depth == 0:
                return index + 1
    return None
