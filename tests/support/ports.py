"""Free ports for servers started by tests.

Ports are drawn at random from 10000-29999: below Linux's ephemeral range (32768-60999), so a port
we hand out is not also picked by the kernel for some client socket, and below coturn's default
relay range (49152-65535). A port is "free" when it can be bound for every protocol asked for on
every host given; it is released before returning, so a small race remains (another process could
take it), which random choice makes unlikely between parallel test runs.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterable, Sequence

LOW, HIGH = 10000, 29999


def _bindable(host: str, port: int, kinds: Iterable[str]) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for kind in kinds:
        sock_type = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
        with socket.socket(family, sock_type) as sock:
            if kind == "tcp":
                # A TCP port in TIME_WAIT is fine for a server that sets SO_REUSEADDR (ours and
                # coturn do); without this we'd reject ports that are really usable.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def free_ports(
    count: int = 1,
    *,
    hosts: Sequence[str] = ("127.0.0.1",),
    kinds: Sequence[str] = ("udp", "tcp"),
    consecutive: bool = False,
    rng: random.Random | None = None,
) -> list[int]:
    """``count`` ports bindable for all ``kinds`` on all ``hosts``.

    With ``consecutive`` they are ``p, p+1, ...`` (RFC 5780 servers such as coturn use the
    listening port + 1 as their alternate port).
    """
    rng = rng or random.Random()
    for _ in range(2000):
        if consecutive:
            start = rng.randrange(LOW, HIGH - count)
            candidates = list(range(start, start + count))
        else:
            candidates = rng.sample(range(LOW, HIGH), count)
        if all(_bindable(h, p, kinds) for p in candidates for h in hosts):
            return candidates
    raise RuntimeError(f"no {count} free port(s) for {kinds} on {hosts}")


def free_port(host: str = "127.0.0.1", kinds: Sequence[str] = ("udp", "tcp")) -> int:
    """One port free for UDP and TCP (by default) on ``host``."""
    return free_ports(1, hosts=(host,), kinds=kinds)[0]


def ipv6_loopback() -> bool:
    """Whether this machine can bind ::1 (containers often have IPv6 switched off)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True
