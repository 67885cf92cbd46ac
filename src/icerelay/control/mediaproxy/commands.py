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

This module parses the commands and formats the replies; :mod:`.framing` cuts them out of the
byte stream and :mod:`.handler` runs them on the relay's session engine.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from icerelay.errors import ControlError
from icerelay.numbers import parse_port

__all__ = [
    "ERROR_REPLY",
    "REMOVED_REPLY",
    "MediaproxyCommand",
    "MediaproxyRemove",
    "MediaproxyStream",
    "MediaproxyUpdate",
    "format_update_reply",
    "parse_command",
]

#: The reply to a ``remove`` that ended sessions.
REMOVED_REPLY = b"removed\r\n"
#: The reply to any command that failed (the module reads only this word; the reason is logged).
ERROR_REPLY = b"error\r\n"

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
        port = parse_port(port_text, allow_zero=True)
        if port is None:
            raise ControlError(
                f"media stream {index}: port {port_text[:20]!r} is not a port number",
                counter="malformed_command",
                remote=True,
            )
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            raise ControlError(f"media stream {index}: {address!r} is not an IP address") from None
        streams.append(MediaproxyStream(media, address, port, direction, ice))
    return tuple(streams)


def format_update_reply(address: str, ports: Sequence[int]) -> bytes:
    """The reply to an ``update``: the relay's address and one port per stream, in order."""
    return f"{address} {' '.join(str(port) for port in ports)}\r\n".encode()
