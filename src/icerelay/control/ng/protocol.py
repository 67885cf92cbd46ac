"""rtpengine's ng protocol, sans-I/O: cookies, bencode/JSON messages, the reply cache.

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
        reply = protocol.reply(outcome, handler.handle(outcome.command, now), now)
    elif isinstance(outcome, NgImmediateReply):
        reply = outcome.data          # a retransmission or a request we refused
    else:                             # NgDropped: not even a cookie to answer to
        reply = None

Every failure, whether the request could not be parsed or the relay could not carry it out, is a
:class:`~icerelay.errors.IcerelayError`; :func:`error_reply` is the one place it becomes
``result: error`` with its message as ``error-reason``, and its ``counter`` is counted there.

Counters (:class:`icerelay.counters.Counters`): events ``requests``, ``retransmissions``,
``errors``, ``command.<name>`` per command (errors included; only the commands of
:data:`KNOWN_COMMANDS`, every other name counts as ``command.unknown`` so that a client cannot
grow the table) and ``error.<counter>`` per kind of failure; drops (nothing could be answered) by
reason, ``no_cookie``.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from icerelay import bencode
from icerelay.control.ng.commands import (
    Command,
    Message,
    NgFailure,
    ReplyValue,
    command_name,
    decode_text,
    malformed,
    normalise,
    parse_command,
)
from icerelay.counters import Counters
from icerelay.errors import ControlError, IcerelayError

__all__ = [
    "KNOWN_COMMANDS",
    "NG_PORT",
    "Encoding",
    "NgDropped",
    "NgImmediateReply",
    "NgProtocol",
    "NgRequest",
    "command_counts",
    "error_reply",
]

#: rtpengine's customary ng port.
NG_PORT = 2223

# Cookies are opaque but printable in every implementation; the bound stops a garbage datagram
# from being taken for a cookie and echoed back at length.
_COOKIE = re.compile(rb"[\x21-\x7e]{1,128}")


# Counter names of the requests per command: "command.offer", ...
_COMMAND = "command."

#: The command names counted under their own name; rtpengine's other commands (``block dtmf``,
#: ``play media``...) are refused as unknown but named here so that the counters say what
#: proxies asked for. Anything else is counted as ``unknown``: names come from the network.
KNOWN_COMMANDS = frozenset(
    {
        "ping",
        "offer",
        "answer",
        "delete",
        "query",
        "list",
        "statistics",
        "start-recording",
        "stop-recording",
        "block-dtmf",
        "unblock-dtmf",
        "block-media",
        "unblock-media",
        "play-media",
        "stop-media",
        "play-dtmf",
        "publish",
        "subscribe-request",
        "subscribe-answer",
        "unsubscribe",
    }
)


class Encoding(StrEnum):
    """How the request's dictionary was written; the reply uses the same."""

    BENCODE = "bencode"
    JSON = "json"


# -- outcomes --------------------------------------------------------------------------


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


def error_reply(
    error: str | IcerelayError, counters: Counters | None = None
) -> dict[str, ReplyValue]:
    """The reply dictionary of a failed request: ``result: error`` and the ``error-reason``.

    The one place a failure becomes an ng answer. With ``counters``, the error's ``counter`` (the
    kind of failure, :class:`~icerelay.control.ng.commands.NgFailure` for a refused request) is
    counted as ``error.<counter>``; the total ``errors`` is counted when the reply is encoded.
    """
    if counters is not None and isinstance(error, IcerelayError) and error.counter is not None:
        counters.count(f"error.{error.counter}")
    return {"result": "error", "error-reason": str(error)}


def command_counts(counters: Counters) -> dict[str, int]:
    """Requests per command name (``offer``, ``answer``, ...), refused ones included."""
    return {
        name.removeprefix(_COMMAND): count
        for name, count in counters.events.items()
        if name.startswith(_COMMAND)
    }


class NgProtocol:
    """Sans-I/O ng protocol endpoint (one per relay, shared by its UDP and TCP listeners).

    :param cache_size: how many replies are kept for retransmissions; the oldest go first.
    :param cache_ttl: seconds a reply is kept. Kamailio gives up on a request after a few
        seconds; 30 s covers every proxy's retransmission window with a wide margin.
    :param counters: where to count (see the module's docstring); a fresh one by default.
    :param cache_bytes: the most bytes the kept replies may take together (replies of big
        offers or of ``list`` over TCP can be large; the oldest go first).
    """

    def __init__(
        self,
        *,
        cache_size: int = 10_000,
        cache_ttl: float = 30.0,
        counters: Counters | None = None,
        cache_bytes: int = 64 << 20,
    ) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        if cache_ttl <= 0:
            raise ValueError("cache_ttl must be positive")
        self.cache_size = cache_size
        self.cache_ttl = cache_ttl
        self.cache_bytes = cache_bytes
        self._cached_bytes = 0
        self.counters = counters if counters is not None else Counters()
        # cookie -> (expiry, reply bytes); insertion order is expiry order because the TTL is fixed.
        self._cache: OrderedDict[bytes, tuple[float, bytes]] = OrderedDict()

    def receive(self, data: bytes, now: float) -> NgRequest | NgImmediateReply | NgDropped:
        """Classify one message (a UDP datagram or one TCP frame)."""
        self._expire(now)
        counters = self.counters
        cookie, separator, payload = bytes(data).partition(b" ")
        if not separator or not _COOKIE.fullmatch(cookie):
            counters.drop("no_cookie")
            return NgDropped("message does not start with a cookie and a space")
        cached = self._cache.get(cookie)
        if cached is not None:
            counters.count("retransmissions")
            return NgImmediateReply(cached[1], retransmission=True)
        counters.count("requests")
        encoding = Encoding.JSON if payload.lstrip().startswith(b"{") else Encoding.BENCODE
        name = "unknown"
        try:
            message = _load(payload, encoding)
            name = command_name(message)
            command = parse_command(message)
        except ControlError as error:
            counters.count(_COMMAND + _counted(name))
            reason = str(error)
            reply = self._store(cookie, encoding, error_reply(error, counters), now)
            return NgImmediateReply(reply, retransmission=False, reason=reason)
        name = _counted(name)
        counters.count(_COMMAND + name)
        return NgRequest(cookie, command, encoding, name)

    def reply(self, request: NgRequest, result: Mapping[str, ReplyValue], now: float) -> bytes:
        """Encode the reply to ``request`` and keep it for retransmissions."""
        return self._store(request.cookie, request.encoding, result, now)

    def encode(self, request: NgRequest, result: Mapping[str, ReplyValue]) -> bytes:
        """The reply's bytes without keeping them: to check its size before committing to it
        (then :meth:`keep` it, or answer an error through :meth:`reply` instead)."""
        return request.cookie + b" " + _dump(result, request.encoding)

    def keep(self, request: NgRequest, data: bytes, error: bool, now: float) -> bytes:
        """Keep the reply :meth:`encode` made for retransmissions; ``error``: it is one."""
        return self._remember(request.cookie, data, error, now)

    def _store(
        self, cookie: bytes, encoding: Encoding, result: Mapping[str, ReplyValue], now: float
    ) -> bytes:
        data = cookie + b" " + _dump(result, encoding)
        return self._remember(cookie, data, result.get("result") == "error", now)

    def _remember(self, cookie: bytes, data: bytes, error: bool, now: float) -> bytes:
        if error:
            self.counters.count("errors")
        previous = self._cache.get(cookie)
        if previous is not None:
            self._cached_bytes -= len(previous[1])
        self._cache[cookie] = (now + self.cache_ttl, data)
        self._cached_bytes += len(data)
        self._cache.move_to_end(cookie)
        while len(self._cache) > 1 and (
            len(self._cache) > self.cache_size or self._cached_bytes > self.cache_bytes
        ):
            _, (_, dropped) = self._cache.popitem(last=False)
            self._cached_bytes -= len(dropped)
        return data

    def _expire(self, now: float) -> None:
        while self._cache:
            cookie, (expiry, _) = next(iter(self._cache.items()))
            if expiry > now:
                break
            self._cached_bytes -= len(self._cache.pop(cookie)[1])

    @property
    def cached_replies(self) -> int:
        """How many replies are currently kept."""
        return len(self._cache)

    @property
    def cached_bytes(self) -> int:
        """How many bytes the kept replies take."""
        return self._cached_bytes


def _counted(name: str) -> str:
    return name if name in KNOWN_COMMANDS else "unknown"


# -- encoding --------------------------------------------------------------------------------------


def _load(payload: bytes, encoding: Encoding) -> Message:
    """The request dictionary, keys normalised; ControlError when it is not one."""
    if encoding is Encoding.JSON:
        try:
            value = json.loads(payload)
        except (ValueError, RecursionError) as error:
            raise malformed(f"invalid JSON: {error}", NgFailure.UNDECODABLE) from None
        value = _from_json(value, 0)
    else:
        try:
            value = bencode.decode(payload)
        except bencode.BencodeError as error:
            raise malformed(f"invalid bencode: {error}", NgFailure.UNDECODABLE) from None
    if not isinstance(value, dict):
        raise malformed("the message is not a dictionary", NgFailure.UNDECODABLE)
    message: Message = {}
    for raw_key, item in value.items():
        key = _SPELLED.get(raw_key)
        if key is None:
            key = normalise(decode_text(raw_key, "a key"))
        if key in message:
            raise malformed(f"key {key!r} appears twice (spelt differently)")
        message[key] = item
    return message


# The keys proxies send, as they spell them, mapped to their normalised form: a dictionary
# lookup instead of decoding and normalising every key of every request. Any other spelling
# takes the general path (the result is the same).
_SPELLED: dict[bytes, str] = {
    spelling.encode(): normalise(spelling)
    for name in (
        "command", "call-id", "from-tag", "to-tag", "via-branch", "sdp", "flags", "replace",
        "ICE", "ICE-priority", "direction", "rtcp-mux", "received-from", "address-family",
        "media-address", "transport-protocol", "delete-delay", "supports", "record-call",
        "limit", "sdes", "DTLS", "OSRTP", "codec", "T38", "ptime", "metadata", "label",
    )
    for spelling in {name, name.lower(), name.replace("-", " "), name.lower().replace("-", " ")}
}


def _from_json(value: object, depth: int) -> bencode.BencodeValue:
    """Map JSON onto the bencode model (strings as UTF-8 bytes) so one parser serves both."""
    if depth > bencode.MAX_DEPTH:
        raise malformed("JSON nests too deeply", NgFailure.UNDECODABLE)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        # rtpengine's JSON reader takes only strings, integers, lists and objects.
        raise malformed(
            f"JSON value {value!r} has no ng meaning (use strings or integers)",
            NgFailure.UNDECODABLE,
        )
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return _utf8(value)
    if isinstance(value, list):
        return [_from_json(item, depth + 1) for item in value]
    if isinstance(value, dict):
        return {_utf8(key): _from_json(item, depth + 1) for key, item in value.items()}
    raise malformed(f"unexpected JSON value {value!r}")  # pragma: no cover - json gives no more


def _utf8(text: str) -> bytes:
    # json.loads accepts "\\ud800" (a lone surrogate), which no UTF-8 string can hold.
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise malformed(
            "invalid JSON: a string holds a lone surrogate (not Unicode text)",
            NgFailure.UNDECODABLE,
        ) from None


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
