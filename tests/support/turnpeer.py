"""The far end of a TURN allocation in the client tests: a UDP peer on loopback that echoes."""

from __future__ import annotations

import asyncio
from typing import cast

from icerelay.aio.turn_client import TurnClient
from icerelay.stun import Address


class EchoPeer(asyncio.DatagramProtocol):
    """Sends every datagram back where it came from (the relay), and remembers what it saw."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.seen: list[tuple[bytes, tuple[str, int]]] = []

    @property
    def sources(self) -> set[tuple[str, int]]:
        """Every address a datagram came from."""
        return {addr for _, addr in self.seen}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.seen.append((data, addr))
        assert self.transport is not None
        self.transport.sendto(data, addr)


async def echo_peer() -> tuple[EchoPeer, Address]:
    """An :class:`EchoPeer` on 127.0.0.1 and its address."""
    transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        EchoPeer, local_addr=("127.0.0.1", 0)
    )
    host, port = transport.get_extra_info("sockname")[:2]
    return protocol, Address(host, port)


async def exchange(turn: TurnClient, peer: Address, count: int) -> list[bytes]:
    """Send *count* numbered packets to the echo peer, one at a time, and return the echoes."""
    echoes = []
    for number in range(count):
        await turn.send_to(b"packet-%03d" % number, peer)
        data, source = await asyncio.wait_for(turn.recv_from(), 3.0)
        assert source == peer
        echoes.append(data)
    return echoes
