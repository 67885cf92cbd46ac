"""SIP messages (RFC 3261 section 7): a lenient parser and a strict serializer.

Lenient where real peers are sloppy (bare LF line endings, folded headers, compact header names,
any case, a missing Content-Length on UDP), strict where it matters (a start line that is not
SIP, a Content-Length that promises more body than arrived): those raise :class:`SipError`.

Headers keep their order and repetitions; names are normalised to their canonical long form so
lookups are simple. Values of the headers that take comma-separated lists (Via, Route,
Record-Route, Contact...) are split by :meth:`Headers.values`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from icerelay.numbers import parse_port, parse_uint
from icerelay.sip.errors import SipError

if TYPE_CHECKING:
    from random import Random

COMPACT_FORMS = {
    "i": "Call-ID", "m": "Contact", "e": "Content-Encoding", "l": "Content-Length",
    "c": "Content-Type", "f": "From", "s": "Subject", "k": "Supported", "t": "To", "v": "Via",
    "o": "Event", "r": "Refer-To", "u": "Allow-Events", "a": "Accept-Contact",
}
_CANONICAL = {name.lower(): name for name in (
    "Accept", "Allow", "Authorization", "Call-ID", "Contact", "Content-Length", "Content-Type",
    "CSeq", "Expires", "From", "Max-Forwards", "Proxy-Authenticate", "Proxy-Authorization",
    "Record-Route", "Require", "Route", "Server", "Supported", "To", "User-Agent", "Via",
    "WWW-Authenticate", "Allow-Events", "Event", "Subject", "Content-Encoding", "Unsupported",
    "Warning", "Reason", "Date", "Timestamp", "Min-Expires", "Retry-After", "Refer-To",
)}
_CANONICAL["www-authenticate"] = "WWW-Authenticate"
_CANONICAL["cseq"] = "CSeq"
_CANONICAL["call-id"] = "Call-ID"
LIST_HEADERS = frozenset({"Via", "Route", "Record-Route", "Contact", "Allow", "Supported",
                          "Require", "Accept", "Unsupported"})
"""Headers whose value is a comma-separated list (RFC 3261 section 7.3.1)."""

MAGIC_BRANCH = "z9hG4bK"
"""RFC 3261 section 8.1.1.7: branches that start with this are unique per transaction."""

REASON_PHRASES = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 183: "Session Progress",
    200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 407: "Proxy Authentication Required",
    408: "Request Timeout", 415: "Unsupported Media Type", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 491: "Request Pending", 500: "Server Internal Error",
    501: "Not Implemented", 503: "Service Unavailable", 603: "Decline",
}


def canonical_name(name: str) -> str:
    """The long, conventionally capitalised form of a header name."""
    name = name.strip()
    lower = name.lower()
    if len(lower) == 1 and lower in COMPACT_FORMS:
        return COMPACT_FORMS[lower]
    if lower in _CANONICAL:
        return _CANONICAL[lower]
    return "-".join(part.capitalize() for part in lower.split("-"))


def new_branch(rng: Random) -> str:
    """A Via branch (RFC 3261 section 8.1.1.7): the magic cookie and 64 random bits."""
    return MAGIC_BRANCH + rng.randbytes(8).hex()


def new_tag(rng: Random) -> str:
    """A From/To tag (RFC 3261 section 19.3): 40 random bits."""
    return rng.randbytes(5).hex()


def split_list(value: str) -> list[str]:
    """Split a header value on commas that are outside quotes and angle brackets."""
    items: list[str] = []
    depth = 0
    quoted = False
    start = 0
    index = 0
    while index < len(value):
        char = value[index]
        if quoted:
            if char == "\\":
                index += 1
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == "<":
            depth += 1
        elif char == ">":
            depth = max(0, depth - 1)
        elif char == "," and depth == 0:
            items.append(value[start:index].strip())
            start = index + 1
        index += 1
    items.append(value[start:].strip())
    return [item for item in items if item]


class Headers:
    """Ordered, repeatable, case-insensitive SIP headers."""

    def __init__(self, items: list[tuple[str, str]] | None = None) -> None:
        self._items: list[tuple[str, str]] = [(canonical_name(n), v) for n, v in items or []]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def copy(self) -> Headers:
        return Headers(list(self._items))

    def get(self, name: str) -> str | None:
        """The first value of ``name`` (as written, list items not split)."""
        name = canonical_name(name)
        return next((v for n, v in self._items if n == name), None)

    def get_all(self, name: str) -> list[str]:
        name = canonical_name(name)
        return [v for n, v in self._items if n == name]

    def values(self, name: str) -> list[str]:
        """Every value of ``name``, comma-separated lists split, in order."""
        name = canonical_name(name)
        out: list[str] = []
        for value in self.get_all(name):
            out.extend(split_list(value) if name in LIST_HEADERS else [value.strip()])
        return out

    def add(self, name: str, value: str) -> None:
        self._items.append((canonical_name(name), value))

    def prepend(self, name: str, value: str) -> None:
        self._items.insert(0, (canonical_name(name), value))

    def set(self, name: str, value: str) -> None:
        """Replace every ``name`` header by one (in the place of the first)."""
        name = canonical_name(name)
        for index, (n, _) in enumerate(self._items):
            if n == name:
                self._items[index] = (name, value)
                self._items = [item for i, item in enumerate(self._items)
                               if i <= index or item[0] != name]
                return
        self._items.append((name, value))

    def remove(self, name: str) -> None:
        name = canonical_name(name)
        self._items = [item for item in self._items if item[0] != name]

    def replace_first_value(self, name: str, value: str) -> None:
        """Replace the first list item of ``name`` (the top Via), keeping the others."""
        name = canonical_name(name)
        for index, (n, v) in enumerate(self._items):
            if n == name:
                rest = split_list(v)[1:]
                self._items[index] = (name, ", ".join([value, *rest]))
                return
        self._items.append((name, value))

    def pop_first_value(self, name: str) -> str | None:
        """Remove and return the first list item of ``name`` (a proxy popping a Route)."""
        name = canonical_name(name)
        for index, (n, v) in enumerate(self._items):
            if n == name:
                items = split_list(v)
                if len(items) > 1:
                    self._items[index] = (name, ", ".join(items[1:]))
                else:
                    del self._items[index]
                return items[0] if items else None
        return None


# --- URIs and name-addr ------------------------------------------------------------------------

_URI = re.compile(
    r"^(?P<scheme>sips?|tel):(?:(?P<user>[^@;?:]*)(?::(?P<password>[^@;?]*))?@)?"
    r"(?P<host>\[[0-9a-fA-F:.]+\]|[^:;?]*)(?::(?P<port>[0-9]+))?(?P<params>(?:;[^?]*)?)"
    r"(?:\?(?P<headers>.*))?$"
)


def _parse_params(text: str) -> tuple[tuple[str, str | None], ...]:
    params: list[tuple[str, str | None]] = []
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        params.append((name.strip().lower(), value.strip() if sep else None))
    return tuple(params)


def _format_params(params: tuple[tuple[str, str | None], ...]) -> str:
    return "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)


@dataclass(frozen=True)
class SipUri:
    """A ``sip:`` / ``sips:`` URI (RFC 3261 section 19.1)."""

    host: str
    user: str | None = None
    port: int | None = None
    scheme: str = "sip"
    params: tuple[tuple[str, str | None], ...] = ()
    headers: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, text: str) -> SipUri:
        match = _URI.match(text.strip())
        if match is None or not match["host"]:
            raise SipError(f"not a SIP URI: {text!r}")
        port = None
        if match["port"]:
            port = parse_port(match["port"])
            if port is None:
                raise SipError(f"bad port in SIP URI: {text[:200]!r}")
        host = match["host"]
        if host.startswith("["):
            host = host[1:-1]
        return cls(host=host, user=match["user"] or None, port=port,
                   scheme=match["scheme"].lower(), params=_parse_params(match["params"] or ""),
                   headers=match["headers"], password=match["password"])

    def param(self, name: str) -> str | None:
        return next((v or "" for n, v in self.params if n == name), None)

    def has_param(self, name: str) -> bool:
        return any(n == name for n, _ in self.params)

    @property
    def transport(self) -> str:
        return (self.param("transport") or "udp").lower()

    @property
    def host_port(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    def with_params(self, params: tuple[tuple[str, str | None], ...]) -> SipUri:
        return SipUri(self.host, self.user, self.port, self.scheme, params, self.headers,
                      self.password)

    def __str__(self) -> str:
        user = ""
        if self.user is not None:
            user = self.user + (f":{self.password}" if self.password is not None else "") + "@"
        text = f"{self.scheme}:{user}{self.host_port}{_format_params(self.params)}"
        return text + (f"?{self.headers}" if self.headers else "")


@dataclass(frozen=True)
class NameAddress:
    """``"Display" <sip:uri>;tag=...`` as in From, To, Contact, Route (RFC 3261 section 20)."""

    uri: SipUri
    display_name: str | None = None
    params: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def parse(cls, text: str) -> NameAddress:
        text = text.strip()
        display = None
        if "<" in text:
            before, _, rest = text.partition("<")
            uri_text, sep, after = rest.partition(">")
            if not sep:
                raise SipError(f"unterminated <...> in {text!r}")
            display = before.strip().strip('"').strip() or None
            params = _parse_params(after)
        else:
            # addr-spec without brackets: parameters belong to the header, not the URI.
            uri_text, _, after = text.partition(";")
            params = _parse_params(after)
        if uri_text.strip() == "*":
            raise SipError("'*' is not an address")
        return cls(SipUri.parse(uri_text), display, params)

    def param(self, name: str) -> str | None:
        return next((v or "" for n, v in self.params if n == name), None)

    @property
    def tag(self) -> str | None:
        return self.param("tag")

    def with_tag(self, tag: str) -> NameAddress:
        params = (*tuple(p for p in self.params if p[0] != "tag"), ("tag", tag))
        return NameAddress(self.uri, self.display_name, params)

    def __str__(self) -> str:
        display = f'"{self.display_name}" ' if self.display_name else ""
        return f"{display}<{self.uri}>{_format_params(self.params)}"


@dataclass(frozen=True)
class Via:
    """One Via entry (RFC 3261 section 20.42) with the RFC 3581 ``rport``."""

    transport: str
    host: str
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Via:
        sent_protocol, _, rest = text.strip().partition(" ")
        parts = [p.strip() for p in sent_protocol.split("/")]
        if len(parts) != 3 or parts[0].upper() != "SIP":
            raise SipError(f"bad Via: {text!r}")
        sent_by, _, params = rest.strip().partition(";")
        sent_by = sent_by.strip()
        host, port = sent_by, None
        if sent_by.startswith("["):
            host, _, tail = sent_by[1:].partition("]")
            if tail.startswith(":"):
                port = _int(tail[1:], text)
        elif ":" in sent_by:
            host, _, port_text = sent_by.partition(":")
            port = _int(port_text, text)
        if not host:
            raise SipError(f"Via without a host: {text!r}")
        if port is not None and not 0 < port < 65536:
            raise SipError(f"bad port in Via: {text!r}")
        return cls(parts[2].upper(), host, port, _parse_params(params))

    def param(self, name: str) -> str | None:
        return next((v or "" for n, v in self.params if n == name), None)

    def has_param(self, name: str) -> bool:
        return any(n == name for n, _ in self.params)

    @property
    def branch(self) -> str | None:
        return self.param("branch")

    def with_param(self, name: str, value: str | None) -> Via:
        params = (*tuple(p for p in self.params if p[0] != name), (name, value))
        return Via(self.transport, self.host, self.port, params)

    @property
    def rport(self) -> int | None:
        """The ``rport`` value filled in by the server (RFC 3581); None if absent, empty or
        not a port number (a peer's garbage must not become our destination)."""
        value = self.param("rport")
        return parse_port(value) if value else None

    def response_address(self, source: tuple[str, int] | None = None) -> tuple[str, int]:
        """Where a UDP response goes (RFC 3261 section 18.2.2, RFC 3581 section 4)."""
        host = self.param("received") or self.host
        rport = self.rport
        if rport is not None:
            return host, rport
        return host, self.port or 5060

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport} {host}{port}{_format_params(self.params)}"


def _int(text: str, context: str) -> int:
    # ASCII digits only (int() would take '٣', '1_0' or '+1') and at most 10 of them.
    value = parse_uint(text.strip(), max_digits=10, maximum=0xFFFFFFFF)
    if value is None:
        raise SipError(f"bad number {text[:40]!r} in {context[:200]!r}")
    return value


# --- messages ----------------------------------------------------------------------------------


@dataclass
class _Message:
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    # Typed accessors for the headers every layer needs; SipError when missing or malformed.

    @property
    def call_id(self) -> str:
        value = self.headers.get("Call-ID")
        if not value:
            raise SipError("no Call-ID")
        return value.strip()

    @property
    def cseq(self) -> tuple[int, str]:
        value = self.headers.get("CSeq")
        if value is None:
            raise SipError("no CSeq")
        number, _, method = value.strip().partition(" ")
        if not method.strip():
            raise SipError(f"bad CSeq {value!r}")
        return _int(number, value), method.strip().upper()

    @property
    def from_address(self) -> NameAddress:
        return NameAddress.parse(self._required("From"))

    @property
    def to_address(self) -> NameAddress:
        return NameAddress.parse(self._required("To"))

    @property
    def vias(self) -> list[Via]:
        return [Via.parse(v) for v in self.headers.values("Via")]

    @property
    def top_via(self) -> Via:
        values = self.headers.values("Via")
        if not values:
            raise SipError("no Via")
        return Via.parse(values[0])

    @property
    def contact(self) -> NameAddress | None:
        values = self.headers.values("Contact")
        if not values or values[0].strip() == "*":
            return None
        return NameAddress.parse(values[0])

    @property
    def record_route(self) -> list[NameAddress]:
        return [NameAddress.parse(v) for v in self.headers.values("Record-Route")]

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("Content-Type")
        return value.split(";")[0].strip().lower() if value else None

    def _required(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise SipError(f"no {name}")
        return value

    def _serialize(self, start_line: str) -> bytes:
        lines = [start_line]
        lines.extend(f"{name}: {value}" for name, value in self.headers if name != "Content-Length")
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body


@dataclass
class SipRequest(_Message):
    method: str = "OPTIONS"
    uri: str = ""

    def to_bytes(self) -> bytes:
        return self._serialize(f"{self.method} {self.uri} SIP/2.0")

    @property
    def request_uri(self) -> SipUri:
        return SipUri.parse(self.uri)


@dataclass
class SipResponse(_Message):
    status: int = 200
    reason: str = "OK"

    def to_bytes(self) -> bytes:
        return self._serialize(f"SIP/2.0 {self.status} {self.reason}")


SipMessage = SipRequest | SipResponse

_REQUEST_LINE = re.compile(r"^([A-Za-z]+) +(\S+) +SIP/2\.0$", re.IGNORECASE)
_STATUS_LINE = re.compile(r"^SIP/2\.0 +(\d{3})(?: +(.*))?$", re.IGNORECASE)


def parse_message(data: bytes, *, stream: bool = False) -> SipMessage:
    """Parse one SIP message from a datagram (or, with ``stream``, a complete stream frame).

    Raises :class:`SipError` when the message is not SIP or is missing what every message needs
    (Via, CSeq, Call-ID, From, To are checked lazily by the accessors, so an odd but harmless
    message can still be answered with 400).
    """
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head.decode("latin-1")
    lines = text.replace("\r\n", "\n").split("\n")
    while lines and not lines[0].strip():  # RFC 3261 section 7.5: ignore leading CRLFs
        lines.pop(0)
    if not lines:
        raise SipError("empty message")
    start = lines[0].strip()
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line.strip():
            continue
        if line[0] in " \t" and headers:  # folded continuation line
            name, value = headers[-1]
            headers[-1] = (name, value + " " + line.strip())
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip() or " " in name.strip():
            raise SipError(f"bad header line {line!r}")
        headers.append((name, value.strip()))
    parsed_headers = Headers(headers)
    length_text = parsed_headers.get("Content-Length")
    if length_text is not None:
        length = _int(length_text, "Content-Length")
        if length > len(body):
            raise SipError(f"Content-Length {length} but only {len(body)} body bytes")
        body = body[:length]
    elif stream:
        raise SipError("a message on a stream needs Content-Length")
    if match := _REQUEST_LINE.match(start):
        return SipRequest(headers=parsed_headers, body=bytes(body), method=match[1].upper(),
                          uri=match[2])
    if match := _STATUS_LINE.match(start):
        status = int(match[1])
        if not 100 <= status <= 699:
            raise SipError(f"status code {status} out of range")
        return SipResponse(headers=parsed_headers, body=bytes(body), status=status,
                           reason=(match[2] or "").strip())
    raise SipError(f"not a SIP start line: {start[:80]!r}")


def stream_frame_length(buffer: bytes) -> int | None:
    """Length of the first complete message in a TCP buffer, or None if more is needed."""
    stripped = buffer.lstrip(b"\r\n")
    skipped = len(buffer) - len(stripped)
    end = stripped.find(b"\r\n\r\n")
    if end < 0:
        if len(stripped) > 65536:
            raise SipError("SIP header section larger than 64 KiB")
        return None
    head = stripped[:end].decode("latin-1")
    length = 0
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if canonical_name(name) == "Content-Length":
            length = _int(value, "Content-Length")
    total = skipped + end + 4 + length
    return total if len(buffer) >= total else None


def make_response(request: SipRequest, status: int, reason: str | None = None, *,
                  to_tag: str | None = None, body: bytes = b"",
                  content_type: str | None = None) -> SipResponse:
    """A response copying Via, From, To, Call-ID, CSeq (RFC 3261 section 8.2.6.2).

    ``to_tag`` is added to To when it has none (every response but 100 should carry one).
    """
    headers = Headers()
    for value in request.headers.get_all("Via"):
        headers.add("Via", value)
    headers.add("From", request._required("From"))
    to = request._required("To")
    if to_tag is not None and status != 100:
        address = NameAddress.parse(to)
        if address.tag is None:
            to = str(address.with_tag(to_tag))
    headers.add("To", to)
    headers.add("Call-ID", request.call_id)
    headers.add("CSeq", request._required("CSeq"))
    if status == 100 and (timestamp := request.headers.get("Timestamp")):
        headers.add("Timestamp", timestamp)
    if content_type is not None:
        headers.add("Content-Type", content_type)
    return SipResponse(headers=headers, body=body, status=status,
                       reason=reason or REASON_PHRASES.get(status, "Unknown"))
