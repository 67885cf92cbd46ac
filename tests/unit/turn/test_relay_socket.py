"""The relayed address's socket (daemon.turn_sockets): bound, non-blocking, with its options;
a taken port is an OSError and leaves nothing open."""

from __future__ import annotations

import os
import socket

import pytest
from tests.support.ports import ipv6_loopback

from icerelay.daemon.turn_sockets import (
    IP_MTU_DISCOVER,
    IP_PMTUDISC_DO,
    IP_RECVERR,
    IPV6_DONTFRAG,
    IPV6_RECVERR,
    RELAY_RCVBUF,
    relay_socket,
)


@pytest.mark.parametrize("dont_fragment", [False, True])
def test_an_ipv4_relay_socket(dont_fragment: bool) -> None:
    sock = relay_socket(("127.0.0.1", 0), dont_fragment)
    try:
        assert sock.family == socket.AF_INET and sock.type == socket.SOCK_DGRAM
        assert sock.getsockname()[0] == "127.0.0.1"
        assert sock.gettimeout() == 0.0
        with pytest.raises(BlockingIOError):
            sock.recvfrom(2048)
        # Linux doubles SO_RCVBUF; the default is larger than what is asked for.
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * RELAY_RCVBUF
        assert sock.getsockopt(socket.IPPROTO_IP, IP_RECVERR) == 1
        discover = sock.getsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER)
        assert (discover == IP_PMTUDISC_DO) == dont_fragment
    finally:
        sock.close()


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback")
@pytest.mark.parametrize("dont_fragment", [False, True])
def test_an_ipv6_relay_socket(dont_fragment: bool) -> None:
    sock = relay_socket(("::1", 0), dont_fragment)
    try:
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        assert sock.gettimeout() == 0.0
        assert sock.getsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR) == 1
        assert sock.getsockopt(socket.IPPROTO_IPV6, IPV6_DONTFRAG) == int(dont_fragment)
    finally:
        sock.close()


def test_a_taken_port_raises_and_leaves_nothing_open() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(OSError):
            relay_socket(holder.getsockname(), False)
        assert len(os.listdir("/proc/self/fd")) == before
