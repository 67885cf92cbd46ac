"""The protocol of OpenSIPS's (and Kamailio's) ``mediaproxy`` module, sans-I/O.

The module connects to a UNIX stream socket and, per SDP it sees, sends a command of header lines
ending with an empty line::

    update\\r\\n
    type: request\\r\\n                  (request: an INVITE/ACK; reply: a 1xx/2xx)
    dialog_id: 2613:1837\\r\\n
    call_id: 9f3b...@192.0.2.10\\r\\n
    cseq: 1 INVITE\\r\\n
    from_uri: sip:alice@example.com\\r\\n
    to_uri: sip:bob@example.com\\r\\n
    from_tag: 5a8c\\r\\n
    to_tag: \\r\\n
    user_agent: Blink 5.1\\r\\n
    media: audio:192.0.2.10:5000:sendrecv:ice=yes,video:192.0.2.10:5002:sendrecv:ice=no\\r\\n
    signaling_ip: 198.51.100.7\\r\\n
    media_relay: \\r\\n
    \\r\\n

and reads one line back: ``<relay ip> <port> <port>...`` (one port per stream of ``media``, in
order) or ``error``. ``remove`` (``call_id``, ``from_tag``, ``to_tag``) ends a session; its
answer is ``removed`` (or ``error``). Unlike rtpengine, the proxy rewrites the SDP itself, so the
relay only deals in addresses and ports.

This module parses and formats; :class:`MediaproxyHandler` runs the commands on the session
engine by describing each stream as a minimal SDP, so both control protocols share one engine.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

from icerelay.errors import ControlError, IcerelayError
from icerelay.relay.rewrite import describe
from icerelay.relay.sessions import MediaRequest, RelayOptions, SessionEngine
from icerelay.sdp import SessionDescription

__all__ = [
    "MediaproxyFramer",
    "MediaproxyHandler",
    "MediaproxyRemove",
    "MediaproxyStream",
    "MediaproxyUpdate",
    "parse_command",
]

# Bounds a client that never sends the blank line from making the relay buffer without end.
MAX_COMMAND = 64 * 1024
_DIRECTIONS = frozenset({"sendrecv", "sendonly", "recvonly", "inactive"})


@dataclass(frozen=True, slots=True)
class MediaproxyStream:
    """One entry of the ``media`` header: ``type:ip:port:direction[:ice=yes|no]``."""

    media: str
    address: str
    port: int
    direction: str | None
    ice: bool


@dataclass(frozen=True, slots=True)
class MediaproxyUpdate:
    """``update``: the SDP of a request (``is_reply`` False) or a reply passed through the proxy."""

    is_reply: bool
    call_id: str
    from_tag: str
    to_tag: str | None
    streams: tuple[MediaproxyStream, ...]
    dialog_id: str | None = None
    cseq: str | None = None
    from_uri: str | None = None
    to_uri: str | None = None
    user_agent: str | None = None
    signaling_ip: str | None = None
    media_relay: str | None = None


@dataclass(frozen=True, slots=True)
class MediaproxyRemove:
    """``remove``: the dialog ended."""

    call_id: str
    from_tag: str | None
    to_tag: str | None


MediaproxyCommand = MediaproxyUpdate | MediaproxyRemove


class MediaproxyFramer:
    """Splits the byte stream of one connection into commands (each ends with an empty line)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the complete commands. ControlError: close the connection."""
        self._buffer += data
        commands = []
        while True:
            # Both CRLF (what the module sends) and bare LF (people typing into socat) end lines.
            ends = [
                i for i in (self._buffer.find(b"\r\n\r\n"), self._buffer.find(b"\n\n")) if i >= 0
            ]
            if not ends:
                break
            end = min(ends)
            size = 4 if self._buffer.startswith(b"\r\n\r\n", end) else 2
            command, self._buffer = self._buffer[:end], self._buffer[end + size :]
            if command.strip():
                commands.append(command)
        if len(self._buffer) > MAX_COMMAND:
            raise ControlError(f"command longer than {MAX_COMMAND} bytes without an empty line")
        return commands


def parse_command(data: bytes) -> MediaproxyCommand:
    """Parse one command (without its terminating empty line); ControlError says what is wrong."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ControlError("command is not valid UTF-8") from None
    lines = [line.rstrip("\r") for line in text.split("\n")]
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines:
        raise ControlError("empty command")
    verb = lines[0].strip().lower()
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line.strip():
            continue
        name, separator, value = line.partition(":")
        if not separator:
            raise ControlError(f"header line without ':': {line[:60]!r}")
        key = name.strip().lower()
        if key in headers:
            raise ControlError(f"header {key!r} appears twice")
        headers[key] = value.strip()
    if verb == "remove":
        return MediaproxyRemove(
            call_id=_required(headers, "call_id"),
            from_tag=headers.get("from_tag") or None,
            to_tag=headers.get("to_tag") or None,
        )
    if verb == "update":
        kind = headers.get("type", "")
        if kind not in ("request", "reply"):
            raise ControlError(f"'type' must be request or reply, got {kind!r}")
        return MediaproxyUpdate(
            is_reply=kind == "reply",
            call_id=_required(headers, "call_id"),
            from_tag=_required(headers, "from_tag"),
            to_tag=headers.get("to_tag") or None,
            streams=_streams(_required(headers, "media")),
            dialog_id=headers.get("dialog_id") or None,
            cseq=headers.get("cseq") or None,
            from_uri=headers.get("from_uri") or None,
            to_uri=headers.get("to_uri") or None,
            user_agent=headers.get("user_agent") or None,
            signaling_ip=_optional_address(headers.get("signaling_ip"), "signaling_ip"),
            media_relay=headers.get("media_relay") or None,
        )
    raise ControlError(f"unknown command {verb[:40]!r} (supported: update, remove)")


def _required(headers: dict[str, str], name: str) -> str:
    value = headers.get(name)
    if not value:
        raise ControlError(f"'{name}' is missing or empty")
    return value


def _optional_address(value: str | None, name: str) -> str | None:
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ControlError(f"'{name}' {value[:60]!r} is not an IP address") from None


def _streams(text: str) -> tuple[MediaproxyStream, ...]:
    streams = []
    for index, item in enumerate(text.split(","), 1):
        item = item.strip()
        # The address may be IPv6 (colons): media type first, then port, direction and flags
        # counted from the end.
        media, _, rest = item.partition(":")
        fields = rest.split(":")
        ice = False
        if fields and fields[-1].startswith("ice="):
            flag = fields.pop()[4:]
            if flag not in ("yes", "no"):
                raise ControlError(f"media stream {index}: ice must be yes or no, got {flag!r}")
            ice = flag == "yes"
        direction: str | None = None
        if fields and fields[-1] in _DIRECTIONS | {""}:
            direction = fields.pop() or None
        if len(fields) < 2 or not media:
            raise ControlError(
                f"media stream {index} must be type:ip:port:direction[:ice=yes|no], got {item!r}"
            )
        port_text = fields.pop()
        address = ":".join(fields)
        if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
            raise ControlError(f"media stream {index}: port {port_text!r} is not a port number")
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            raise ControlError(f"media stream {index}: {address!r} is not an IP address") from None
        streams.append(MediaproxyStream(media, address, int(port_text), direction, ice))
    return tuple(streams)


class MediaproxyHandler:
    """Runs mediaproxy commands against a :class:`SessionEngine`; replies are the wire lines."""

    def __init__(self, engine: SessionEngine) -> None:
        self.engine = engine
        self.errors = 0

    def handle(self, data: bytes, now: float) -> bytes:
        """Parse and run one command; the reply line (``\\r\\n`` included)."""
        try:
            command = parse_command(data)
            if isinstance(command, MediaproxyRemove):
                self.engine.delete(
                    command.call_id,
                    now,
                    from_tag=command.from_tag,
                    to_tag=command.to_tag,
                )
                return b"removed\r\n"
            return self._update(command, now)
        except IcerelayError:
            # The module reads only the word "error"; the reason is for our counters and log.
            self.errors += 1
            return b"error\r\n"

    def _update(self, command: MediaproxyUpdate, now: float) -> bytes:
        sdp = _sdp(command)
        metadata = tuple(
            (key, value)
            for key, value in (
                ("from_uri", command.from_uri),
                ("to_uri", command.to_uri),
                ("dialog_id", command.dialog_id),
            )
            if value
        )
        options = RelayOptions(received_from=command.signaling_ip)
        engine = self.engine
        # Which party sent this SDP, and is it an offer or an answer? "request" comes from the
        # From party, "reply" from the To party; it answers when that party has an offer to
        # answer (a late offer puts the offer in the 200 OK and the answer in the ACK).
        sender, receiver = (
            (command.to_tag, command.from_tag)
            if command.is_reply
            else (command.from_tag, command.to_tag)
        )
        if sender is None:
            raise ControlError("a reply needs a to_tag")
        request = MediaRequest(
            call_id=command.call_id,
            from_tag=sender,
            sdp=sdp,
            to_tag=receiver,
            options=options,
            user_agent=command.user_agent,
            metadata=metadata,
        )
        if receiver is not None and engine.awaits_answer_from(command.call_id, sender):
            # The same request, seen from the answering side.
            answer = replace(request, from_tag=receiver, to_tag=sender)
            body = engine.answer(answer, now)
        else:
            body = engine.offer(request, now)
        rewritten = SessionDescription.parse(body)
        infos = describe(rewritten)
        address = next((info.address for info in infos if info.address), None)
        if address is None or _unspecified(address):
            address = engine.config.advertised_address(4)
        ports = " ".join(str(info.port) for info in infos)
        return f"{address} {ports}\r\n".encode()


def _sdp(command: MediaproxyUpdate) -> bytes:
    """A minimal SDP saying what the module said, so the engine can do the rest."""
    if not command.streams:
        raise ControlError("'media' lists no streams")
    first = command.streams[0].address
    family = "IP6" if ":" in first else "IP4"
    lines = ["v=0", f"o=- 0 0 IN {family} {first}", "s=-", "t=0 0"]
    for stream in command.streams:
        address = stream.address
        if (
            command.signaling_ip is not None
            and _private(address)
            and not _private(command.signaling_ip)
        ):
            # A phone behind a NAT writes its private address; the signalling source is where
            # it really is (MediaProxy's long-standing rule). Latching confirms it.
            address = command.signaling_ip
        stream_family = "IP6" if ":" in address else "IP4"
        lines.append(f"m={stream.media} {stream.port} RTP/AVP 0")
        lines.append(f"c=IN {stream_family} {address}")
        if stream.direction is not None:
            lines.append(f"a={stream.direction}")
        if stream.ice and stream.port:
            # The module only says "this party does ICE"; stand-in ICE lines carry that to the
            # engine, so silence after ICE went around the relay is not taken for a dead call.
            # (The module writes its own relay candidate into the real SDP.)
            lines += [
                "a=ice-ufrag:mediaproxy",
                "a=ice-pwd:mediaproxyicepassword00",
                f"a=candidate:1 1 UDP 2130706431 {address} {stream.port} typ host",
            ]
    return ("\r\n".join(lines) + "\r\n").encode()


# Where phones behind NATs live: RFC 1918, shared address space (RFC 6598), link-local, ULA.
_PRIVATE = tuple(
    ipaddress.ip_network(network)
    for network in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "fc00::/7",
        "fe80::/10",
    )
)


def _private(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip.version == network.version and ip in network for network in _PRIVATE)


def _unspecified(address: str) -> bool:
    return ipaddress.ip_address(address).is_unspecified
