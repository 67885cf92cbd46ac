"""Relayed candidates over TURN reached by TCP and TLS (RFC 8656 section 3.1), with icerelay's own
TURN server on 127.0.0.1: the asyncio driver keeps the stream, the engine does the rest."""

from __future__ import annotations

import asyncio
import random
import shutil
import ssl
from pathlib import Path
from typing import Any

import pytest
from tests.support import certs
from tests.support.ports import free_port

from icerelay.aio.ice import Connection
from icerelay.daemon.turn_config import TurnServerConfig
from icerelay.daemon.turn_service import TurnService
from icerelay.ice import AgentConfig, CandidateType, ConnectionState, TurnServer

USER, PASSWORD = "alice", "wonderland"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not installed (Debian package openssl)")
    directory = tmp_path_factory.mktemp("ice-tls")
    return certs.self_signed(directory)


async def relayed_over_stream(transport: str, certificate: tuple[Path, Path] | None) -> None:
    settings: dict[str, Any] = {
        "listen": [("127.0.0.1", free_port())],
        "transports": ["udp", "tcp"],
        "realm": "icerelay.test",
        "users": {USER: PASSWORD},
        "relay_port_min": (low := random.randrange(210, 299) * 100),
        "relay_port_max": low + 99,
        "allow_peers": ["127.0.0.0/8"],
        "workers": 1,  # one process: the test looks at its connections
    }
    context: ssl.SSLContext | None = None
    if certificate is not None:
        settings["tls_cert"], settings["tls_key"] = certificate
        settings["tls_listen"] = [("127.0.0.1", free_port())]
        context = ssl.create_default_context(cafile=str(certificate[0]))
    service = TurnService(TurnServerConfig(**settings))
    await service.start()
    try:
        server = (service.listen_tls if transport == "tls" else service.listen_tcp)[0]
        relayed = Connection(
            controlling=True,
            local_addresses=["127.0.0.1"],
            turn_servers=[TurnServer((server[0], server[1]), USER, PASSWORD, transport)],  # type: ignore[arg-type]
            config=AgentConfig(relay_only=True),
            tls_context=context,
        )
        peer = Connection(controlling=False, local_addresses=["127.0.0.1"])
        await asyncio.wait_for(relayed.gather(), 10)
        await peer.gather()
        relay = [c for c in relayed.local_candidates if c.type is CandidateType.RELAYED]
        assert relay == relayed.local_candidates and relay[0].host == "127.0.0.1"
        # The local address stays private: raddr hidden as Chromium does (issue 11).
        assert (relay[0].related_address, relay[0].related_port) == ("0.0.0.0", 0)
        assert "raddr 0.0.0.0 rport 0" in relay[0].to_attribute()
        assert len(service.streams) == 1  # the allocation lives on one stream connection
        relayed.set_remote_credentials(peer.local_username, peer.local_password)
        peer.set_remote_credentials(relayed.local_username, relayed.local_password)
        # Relay-only: the relayed side announces and checks from its relayed candidate alone, so
        # every check and packet crosses the stream to the TURN server.
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
        await peer.send(b"\x80through-the-stream")
        assert await asyncio.wait_for(relayed.recv(), 5) == b"\x80through-the-stream"
        await relayed.send(b"\x80back")
        assert await asyncio.wait_for(peer.recv(), 5) == b"\x80back"
        await relayed.close()
        await peer.close()
        await asyncio.sleep(0.2)
        assert service.engine.allocations == {}  # closed connection or Refresh(0): gone
    finally:
        await service.stop()


def test_relayed_candidate_over_tcp() -> None:
    asyncio.run(relayed_over_stream("tcp", None))


def test_relayed_candidate_over_tls(certificate: tuple[Path, Path]) -> None:
    asyncio.run(relayed_over_stream("tls", certificate))
