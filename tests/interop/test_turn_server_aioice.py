"""aioice's TURN client against our TURN server: allocate, send to a UDP peer, receive back.

aioice (a second, independent Python TURN client) binds channels for its peers, speaks UDP and
TCP to the server, and deletes its allocation on close.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from icerelay.aio.loop import loop_factory
from icerelay.daemon.turn_config import TurnServerConfig
from icerelay.daemon.turn_service import TurnService
from icerelay.turn.credentials import rest_api_credentials
from tests.support.ports import free_port

aioice_turn = pytest.importorskip("aioice.turn", reason="aioice not installed (test extra)")

pytestmark = pytest.mark.interop

USER, PASSWORD, SECRET = "alice", "wonderland", "north"


class Collector(asyncio.DatagramProtocol):
    """Collects datagrams (both for aioice's relayed endpoint and for the peer)."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.received: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put_nowait((data, addr))
        if self.echo:
            self.transport.sendto(b"echo:" + data, addr)


async def _scenario(transport: str, rest: bool) -> TurnService:
    relay_low = random.randrange(20000, 29000, 2)
    config = TurnServerConfig(
        listen=[f"127.0.0.1:{free_port()}"],
        realm="example.org",
        users={USER: PASSWORD},
        auth_secrets=[SECRET],
        relay_port_min=relay_low,
        relay_port_max=relay_low + 999,
        allow_peers=["127.0.0.0/8"],
        workers=1,  # one process: the test looks at its engine
    )
    service = TurnService(config)
    await service.start()
    loop = asyncio.get_running_loop()
    peer_transport, peer = await loop.create_datagram_endpoint(
        lambda: Collector(echo=True), local_addr=("127.0.0.1", 0)
    )
    try:
        peer_address = peer_transport.get_extra_info("sockname")[:2]
        username, password = USER, PASSWORD
        if rest:
            username, password = rest_api_credentials(
                SECRET, "bob", ttl=600, now=loop.time() + service.engine.wall_clock_offset
            )
        server = service.listen_udp[0] if transport == "udp" else service.listen_tcp[0]
        relayed_transport, client = await asyncio.wait_for(
            aioice_turn.create_turn_endpoint(
                Collector,
                server_addr=server,
                username=username,
                password=password,
                transport=transport,
            ),
            5,
        )
        relayed = relayed_transport.get_extra_info("sockname")
        assert relayed[0] == "127.0.0.1"
        assert len(service.engine.allocations) == 1
        for index in range(5):
            relayed_transport.sendto(b"ping %d" % index, peer_address)
        for _ in range(5):
            data, source = await asyncio.wait_for(peer.received.get(), 5)
            assert source == tuple(relayed)
            assert data.startswith(b"ping ")
            data, source = await asyncio.wait_for(client.received.get(), 5)
            assert data.startswith(b"echo:ping ")
            assert source == tuple(peer_address)
        relayed_transport.close()
        for _ in range(50):
            if not service.engine.allocations:
                break
            await asyncio.sleep(0.05)
        assert not service.engine.allocations, "aioice's Refresh(lifetime=0) deletes it"
        return service
    finally:
        peer_transport.close()
        await service.stop()


@pytest.mark.parametrize(
    ("transport", "rest"),
    [("udp", False), ("tcp", False), ("udp", True)],
    ids=["udp-static", "tcp-static", "udp-rest"],
)
def test_aioice_turn_client_relays_both_ways(transport: str, rest: bool) -> None:
    # The loop `icerelay serve` uses (uvloop when installed).
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        service = runner.run(_scenario(transport, rest))
    counters = service.engine.counters
    assert counters["allocations_created"] == 1
    assert counters["dropped_no_permission"] == 0
    assert counters["refused_wrong_credentials"] == 0
