"""Relayed candidates over TURN reached by TCP (RFC 8656 section 3.1), with icerelay's own TURN
server on 127.0.0.1: the asyncio driver keeps the stream, the engine does the rest."""

from __future__ import annotations

import asyncio

from tests.support.ports import free_port

from icerelay.ice import AgentConfig, CandidateType, ConnectionState, TurnServer
from icerelay.ice.aio import Connection
from icerelay.turn.server import TurnServerConfig
from icerelay.turn.server.service import TurnService

USER, PASSWORD = "alice", "wonderland"


async def relayed_over_tcp() -> None:
    service = TurnService(
        TurnServerConfig(
            listen=[("127.0.0.1", free_port())],
            transports=["udp", "tcp"],
            realm="icerelay.test",
            users={USER: PASSWORD},
            relay_port_min=21000,
            relay_port_max=21499,
            allow_peers=["127.0.0.0/8"],
        )
    )
    await service.start()
    try:
        server = service.listen_tcp[0]
        relayed = Connection(
            controlling=True,
            local_addresses=["127.0.0.1"],
            turn_servers=[TurnServer((server[0], server[1]), USER, PASSWORD, "tcp")],
            config=AgentConfig(relay_only=True),
        )
        peer = Connection(controlling=False, local_addresses=["127.0.0.1"])
        await asyncio.wait_for(relayed.gather(), 10)
        await peer.gather()
        relay = [c for c in relayed.local_candidates if c.type is CandidateType.RELAYED]
        assert relay == relayed.local_candidates and relay[0].host == "127.0.0.1"
        assert len(service.streams) == 1  # the allocation lives on one TCP connection
        relayed.set_remote_credentials(peer.local_username, peer.local_password)
        peer.set_remote_credentials(relayed.local_username, relayed.local_password)
        # Relay-only: the relayed side announces and checks from its relayed candidate alone, so
        # every check and packet crosses the TCP connection to the TURN server.
        for candidate in relayed.local_candidates:
            peer.add_remote_candidate(candidate)
        peer.add_remote_candidate(None)
        for candidate in peer.local_candidates:
            relayed.add_remote_candidate(candidate)
        relayed.add_remote_candidate(None)
        await asyncio.wait_for(asyncio.gather(relayed.connect(), peer.connect()), 10)
        await peer.wait_for(ConnectionState.COMPLETED, timeout=10)
        pair = peer.agent.selected_pair()
        assert pair is not None and pair.remote.type is CandidateType.RELAYED
        ours = relayed.agent.selected_pair()
        assert ours is not None and ours.local.type is CandidateType.RELAYED
        await peer.send(b"\x80through-tcp")
        assert await asyncio.wait_for(relayed.recv(), 5) == b"\x80through-tcp"
        await relayed.close()
        await peer.close()
        await asyncio.sleep(0.2)
        assert service.engine.allocations == {}  # closed connection or Refresh(0): gone
    finally:
        await service.stop()


def test_relayed_candidate_over_tcp() -> None:
    asyncio.run(relayed_over_tcp())
