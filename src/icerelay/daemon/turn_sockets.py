"""The UDP socket of a TURN relayed address (RFC 8656 §7.2: one per allocation).

One is made for every Allocate, so it is made with as little work as the options allow:
non-blocking from ``socket()`` on (no ``setblocking`` call after), and its options from a table
per address family, each set on its own (an option the system refuses is skipped, as before).
"""

from __future__ import annotations

import socket

from icerelay.turn.server.allocation import HostPort

#: SO_RCVBUF of a relayed socket (the kernel doubles it and counts each datagram's whole
#: buffer, ~840 bytes for a 172-byte voice packet): ~150 voice packets, or a video key frame's
#: burst of ~60 full-size ones. Smaller (4 KiB, 0.2 s of voice) lost whole bursts whenever a
#: worker was off the CPU for a moment on a busy host (uclient's 10-packet bursts with two
#: workers); Linux's default (rmem_default, often 208 KiB) queues several seconds of voice
#: above capacity, and for real-time media a packet that late is as useless as a lost one.
RELAY_RCVBUF = 65536
# Linux socket options that the socket module may not name.
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)
IPV6_DONTFRAG = getattr(socket, "IPV6_DONTFRAG", 62)
# ICMP errors on relayed sockets (Linux IP_RECVERR / IPV6_RECVERR).
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
_SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)

Option = tuple[int, int, int]
#: (IPv6?, DONT-FRAGMENT?) -> the options of a relayed socket, set after bind: the receive
#: buffer; ICMP errors queued (with the peer they concern) so that they can be told to the
#: client; the DF bit when the client asked for it (RFC 8656 §7.2).
_OPTIONS: dict[tuple[bool, bool], tuple[Option, ...]] = {}
for _ipv6 in (False, True):
    _common: tuple[Option, ...] = (
        (socket.SOL_SOCKET, socket.SO_RCVBUF, RELAY_RCVBUF),
        (socket.IPPROTO_IPV6, IPV6_RECVERR, 1) if _ipv6 else (socket.IPPROTO_IP, IP_RECVERR, 1),
    )
    _dont_fragment: Option = (
        (socket.IPPROTO_IPV6, IPV6_DONTFRAG, 1)
        if _ipv6
        else (socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
    )
    _OPTIONS[(_ipv6, False)] = _common
    _OPTIONS[(_ipv6, True)] = (*_common, _dont_fragment)


def relay_socket(address: HostPort, dont_fragment: bool) -> socket.socket:
    """A non-blocking UDP socket bound to *address* (OSError if that fails), with the relayed
    address's options."""
    ipv6 = ":" in address[0]
    sock = socket.socket(
        socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_DGRAM | _SOCK_NONBLOCK
    )
    try:
        if ipv6:
            # Keep the families apart: an IPv6 relay must not receive IPv4-mapped traffic.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        if not _SOCK_NONBLOCK:
            sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    for level, option, value in _OPTIONS[(ipv6, dont_fragment)]:
        try:
            sock.setsockopt(level, option, value)
        except OSError:
            continue  # not on this system: the socket works without it
    return sock
