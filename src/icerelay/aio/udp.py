"""A UDP endpoint: every datagram goes to a callback with its source and our local address."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import cast

from icerelay.aio.addresses import bound_socket, from_sockaddr, to_sockaddr
from icerelay.stun import Address

#: (data, remote source, local address the datagram arrived on)
DatagramHandler = Callable[[bytes, Address, Address], None]

logger = logging.getLogger("icerelay.aio.udp")


class UdpEndpoint(asyncio.DatagramProtocol):
    """One bound UDP socket. Create with :meth:`open`."""

    def __init__(self, handler: DatagramHandler) -> None:
        self._handler = handler
        self._transport: asyncio.DatagramTransport | None = None
        self.local_address = Address("0.0.0.0", 0)
        #: sendto() failures and ICMP errors reported on the socket (not fatal for a server).
        self.send_errors = 0

    @classmethod
    async def open(cls, local: Address, handler: DatagramHandler) -> UdpEndpoint:
        """Bind ``local`` (port 0 picks one; see :attr:`local_address`) and start receiving."""
        loop = asyncio.get_running_loop()
        sock = bound_socket(local, socket.SOCK_DGRAM)
        endpoint = cls(handler)
        endpoint.local_address = from_sockaddr(sock.getsockname())
        await loop.create_datagram_endpoint(lambda: endpoint, sock=sock)
        return endpoint

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio's classes.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self._handler(data, from_sockaddr(addr), self.local_address)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a peer that went away, and the like: count, keep serving.
        self.send_errors += 1

    def send(self, data: bytes, destination: Address) -> bool:
        """Queue ``data`` for ``destination``; False if the socket refused it."""
        if self._transport is None or self._transport.is_closing():
            return False
        try:
            self._transport.sendto(data, to_sockaddr(destination))
        except (OSError, ValueError):
            self.send_errors += 1
            return False
        return True

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
