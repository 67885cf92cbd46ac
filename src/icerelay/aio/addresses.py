"""Conversions between socket addresses and :class:`~icerelay.stun.Address`, and socket setup."""

from __future__ import annotations

import socket
from typing import Any

from icerelay.stun import Address


def from_sockaddr(sockaddr: Any) -> Address:
    """``(host, port)`` or ``(host, port, flowinfo, scope_id)`` → Address (zone dropped)."""
    host = str(sockaddr[0]).split("%", 1)[0]
    return Address(host, int(sockaddr[1]))


def to_sockaddr(address: Address) -> tuple[str, int]:
    """Address → what ``sendto`` takes."""
    return (address.host, address.port)


def family_of(address: Address) -> socket.AddressFamily:
    return socket.AF_INET6 if address.family == 6 else socket.AF_INET


def bound_socket(address: Address, kind: socket.SocketKind) -> socket.socket:
    """A non-blocking socket bound to ``address`` (TCP: listening).

    IPv6 sockets are IPV6_V6ONLY so that ``[::]`` and ``0.0.0.0`` can be listened on side by
    side and so that IPv4 peers never show up as ``::ffff:a.b.c.d`` mapped addresses. TCP sets
    SO_REUSEADDR so a restart is not blocked by connections in TIME_WAIT; UDP does not, so two
    servers can never silently share a port.
    """
    # Created non-blocking (SOCK_NONBLOCK) rather than setblocking(False) afterwards: one
    # syscall less per socket, and the relay opens four sockets for every call it sets up.
    sock = socket.socket(family_of(address), kind | socket.SOCK_NONBLOCK)
    try:
        if address.family == 6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(to_sockaddr(address))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock
