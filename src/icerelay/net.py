"""The vocabulary every layer shares: transport addresses, datagrams, ``host:port`` text.

A wire-format module, so engines and shells alike can use it: no I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from icerelay.numbers import parse_port

__all__ = ["Address", "Datagram", "require_brackets", "split_host_port"]


class Address(NamedTuple):
    """A transport address: IP address text (no brackets, no zone) and port.

    A named tuple, so it *is* the ``(host, port)`` pair that sockets, the ICE agent and the
    simulator use: no conversion at the edges, and hashing and comparison run in C on the hot
    paths. ``Address("192.0.2.1", 3478) == ("192.0.2.1", 3478)``.
    """

    host: str
    port: int

    @property
    def family(self) -> int:
        """4 or 6."""
        return 6 if ":" in self.host else 4

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Datagram:
    """Bytes to put on the wire from ``source`` (a local address) to ``destination``.

    ``source`` is None when the engine has a single socket and the shell knows which it is.
    ``transport`` is "udp" for datagrams; for a stream transport ("tcp", "tls") ``data`` is a
    piece of the byte stream to write on the connection from ``source`` to ``destination``.
    """

    data: bytes
    source: Address | None
    destination: Address
    transport: str = "udp"


def split_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """Split ``host:port``, ``[v6]:port``, ``host``, ``[v6]`` or a bare IPv6 address.

    Port 0 is accepted (a listen address on port 0 lets the kernel choose, as tests do).

    The host is returned without brackets and is not resolved (it may be a name). Raises
    ``ValueError`` with a readable message when the text cannot be a host and port.
    """
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    host: str
    port_text: str | None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"missing ']' in {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"unexpected {rest!r} after ']' in {text!r}")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        # No colon, or several (a bare IPv6 address, which cannot carry a port without brackets).
        host, port_text = text, None
    if not host:
        raise ValueError(f"missing host in {text!r}")
    if port_text is None:
        if default_port is None:
            raise ValueError(f"missing port in {text!r}")
        return host, default_port
    port = parse_port(port_text, allow_zero=True)
    if port is None:
        raise ValueError(f"invalid port {port_text[:20]!r} in {text[:200]!r}")
    return host, port


def require_brackets(text: str) -> None:
    """Refuse an IPv6 listen address written without brackets (ValueError).

    ``::1:3478`` is a valid IPv6 address on its own, so without brackets nobody can tell
    whether a port was meant; a server would bind the wrong address and fail with a bind error
    far from the setting. Configuration insists on ``[::1]:3478`` (or ``[::1]``).
    """
    text = text.strip()
    if text.count(":") > 1 and not text.startswith("["):
        raise ValueError(
            f"{text!r}: write an IPv6 address in brackets, with the port after them "
            "(e.g. [::1]:3478, or [::1] for the default port)"
        )
