"""Our TURN client against our own TURN server (:class:`icerelay.daemon.turn_service.TurnService`)
on loopback, in one event loop: the same life of an allocation as against coturn, over UDP, TCP
and TLS, with the server's RFC 8489 SHA-256 keys and USERHASH, and REST API credentials.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from icerelay.aio.turn_client import AllocationError, TurnClient, create_turn_allocation
from icerelay.errors import TurnError
from icerelay.stun import Address
from icerelay.stun.constants import PasswordAlgorithm
from icerelay.turn.client import (
    AllocationClosed,
    AllocationRefreshed,
    ChannelBound,
    Event,
    PermissionFailed,
)
from icerelay.turn.credentials import rest_api_credentials
from tests.support import certs
from tests.support.ports import free_port
from tests.support.turnpeer import EchoPeer, echo_peer, exchange

try:
    from icerelay.daemon.turn_config import TurnServerConfig
    from icerelay.daemon.turn_service import TurnService
except ImportError as exc:  # pragma: no cover - only while the server is being written
    pytest.skip(f"icerelay.daemon.turn_service.TurnService missing: {exc}", allow_module_level=True)

pytestmark = pytest.mark.interop

USER, PASSWORD = "alice", "wonderland"
SECRET = "north-wind"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl CLI), for the TLS listener."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not installed (Debian package openssl)")
    directory = tmp_path_factory.mktemp("tls")
    return certs.self_signed(directory)


@asynccontextmanager
async def running_server(
    certificate: tuple[Path, Path] | None = None, **overrides: Any
) -> AsyncIterator[TurnService]:
    port = free_port()
    # A private relay range per run, below the ephemeral range and away from coturn tests'.
    base = random.randrange(210, 299) * 100
    settings: dict[str, Any] = {
        "enabled": True,
        "listen": [("127.0.0.1", port)],
        "realm": "icerelay.test",
        "users": {USER: PASSWORD},
        "auth_secrets": [SECRET],
        "relay_ipv4": "127.0.0.1",
        "relay_port_min": base,
        "relay_port_max": base + 99,
        "allow_peers": ["127.0.0.0/8"],
        # One process: the tests look at the service's engine (its allocations).
        "workers": 1,
    }
    if certificate is not None:
        settings["tls_cert"], settings["tls_key"] = certificate
        settings["tls_listen"] = [("127.0.0.1", free_port())]
    settings.update(overrides)
    service = TurnService(TurnServerConfig(**settings))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def _until(condition: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_allocate_permission_channel_data_refresh_deallocate(
    certificate: tuple[Path, Path], transport: str
) -> None:
    async def scenario() -> None:
        # Static users only: then the server also offers username anonymity (USERHASH), which
        # it cannot with REST API secrets (a computed username has no hash to look up).
        async with running_server(certificate, auth_secrets=[]) as service:
            echo, peer = await echo_peer()
            events: list[Event] = []
            if transport == "tls":
                server = service.listen_tls[0]
                context: ssl.SSLContext | None = ssl.create_default_context(
                    cafile=str(certificate[0])
                )
            else:
                server = (service.listen_udp if transport == "udp" else service.listen_tcp)[0]
                context = None
            async with create_turn_allocation(
                server,
                USER,
                PASSWORD,
                transport=transport,  # type: ignore[arg-type]
                ssl=context,
                on_event=events.append,
            ) as turn:
                # Our server offers SHA-256 and username anonymity (RFC 8489 §9.2): both used.
                assert turn.engine.password_algorithm == PasswordAlgorithm.SHA256
                assert turn.engine.uses_userhash
                relayed = turn.relayed_address
                assert relayed.host == "127.0.0.1"
                assert (
                    service.config.relay_port_min <= relayed.port <= service.config.relay_port_max
                )
                assert turn.mapped_address is not None

                echoes = await exchange(turn, peer, 10)
                assert echoes == [b"packet-%03d" % n for n in range(10)]
                assert echo.sources == {(relayed.host, relayed.port)}
                assert any(isinstance(e, ChannelBound) and e.peer == peer for e in events)
                counters = turn.counters
                assert counters.send_indications_sent >= 1
                assert counters.channel_data_sent >= 8
                # After the binding the server relays the peer's packets as ChannelData.
                assert counters.channel_data_received >= 8
                assert counters.malformed == 0 and counters.integrity_failures == 0

                await turn.refresh()
                await _until(lambda: any(isinstance(e, AllocationRefreshed) for e in events))
                assert turn.lifetime == 600
                assert await exchange(turn, peer, 1) == [b"packet-000"]
                assert len(service.engine.allocations) == 1
            assert events[-1] == AllocationClosed(confirmed=True)
            # Deallocation removed it from the server at once, not at lifetime's end.
            await _until(lambda: len(service.engine.allocations) == 0)
            assert echo.transport is not None
            echo.transport.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_rest_api_credentials_and_wrong_password() -> None:
    async def scenario() -> None:
        async with running_server() as service:
            echo, peer = await echo_peer()
            server = service.listen_udp[0]
            username, password = rest_api_credentials(SECRET, "bob", ttl=600, now=time.time())
            async with create_turn_allocation(server, username, password) as turn:
                assert turn.engine.password_algorithm == PasswordAlgorithm.SHA256
                assert await exchange(turn, peer, 2) == [b"packet-000", b"packet-001"]
            with pytest.raises(AllocationError) as info:
                await TurnClient.connect(server, USER, "not the password", timeout=5)
            assert info.value.code == 401
            assert echo.transport is not None
            echo.transport.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_md5_only_server() -> None:
    async def scenario() -> None:
        async with running_server(sha256=False) as service:
            echo, peer = await echo_peer()
            async with create_turn_allocation(service.listen_udp[0], USER, PASSWORD) as turn:
                assert turn.engine.password_algorithm == PasswordAlgorithm.MD5
                assert not turn.engine.uses_userhash
                assert await exchange(turn, peer, 2) == [b"packet-000", b"packet-001"]
            assert echo.transport is not None
            echo.transport.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_callback_style_and_end_of_allocation() -> None:
    async def scenario() -> None:
        async with running_server() as service:
            echo, peer = await echo_peer()
            received: list[tuple[bytes, Address]] = []
            turn = await TurnClient.connect(
                service.listen_udp[0],
                USER,
                PASSWORD,
                on_data=lambda data, source: received.append((data, source)),
            )
            for number in range(5):
                await turn.send_to(b"cb-%d" % number, peer)
            await _until(lambda: len(received) == 5)
            assert received == [(b"cb-%d" % n, peer) for n in range(5)]
            with pytest.raises(TurnError):
                await turn.recv_from()  # not with on_data
            await turn.close()
            assert turn.closed
            with pytest.raises(TurnError):
                await turn.send_to(b"late", peer)
            # A second client, recv_from style: ending the allocation wakes a waiting reader.
            other = await TurnClient.connect(service.listen_udp[0], USER, PASSWORD)
            reader = asyncio.ensure_future(other.recv_from())
            await asyncio.sleep(0.05)
            await other.close()
            with pytest.raises(TurnError):
                await asyncio.wait_for(reader, 2)
            assert echo.transport is not None
            echo.transport.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_even_port_pair_with_reservation_token() -> None:
    async def scenario() -> None:
        async with running_server() as service:
            server = service.listen_udp[0]
            async with create_turn_allocation(server, USER, PASSWORD, even_port=True) as rtp:
                token = rtp.engine.reserved_token
                assert token is not None and rtp.relayed_address.port % 2 == 0
                async with create_turn_allocation(
                    server, USER, PASSWORD, reservation_token=token
                ) as rtcp:
                    assert rtcp.relayed_address.port == rtp.relayed_address.port + 1

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_ipv6_relay_requested_over_ipv4() -> None:
    async def scenario() -> None:
        async with running_server(relay_ipv6="::1", allow_peers=["127.0.0.0/8", "::1/128"]) as s:
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(EchoPeer, local_addr=("::1", 0))
            peer = Address("::1", transport.get_extra_info("sockname")[1])
            async with create_turn_allocation(s.listen_udp[0], USER, PASSWORD, family=6) as turn:
                # REQUESTED-ADDRESS-FAMILY (RFC 8656 §7.1): IPv6 relay, IPv4 path to the server.
                assert turn.relayed_address.host == "::1"
                assert turn.mapped_address is not None and turn.mapped_address.family == 4
                assert await exchange(turn, peer, 3) == [
                    b"packet-000",
                    b"packet-001",
                    b"packet-002",
                ]
            transport.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_first_packets_ride_right_behind_the_create_permission(transport: str) -> None:
    # Pipelining (Allocation(pipeline_permissions=True), the default): the server handles one
    # 5-tuple's messages in order, so Send indications that follow a CreatePermission before
    # its success came back are relayed, not dropped. This is what saves ICE a round trip.
    async def scenario() -> None:
        async with running_server() as service:
            echo, peer = await echo_peer()
            async with create_turn_allocation(
                service.config.listen[0],
                USER,
                PASSWORD,
                transport=transport,  # type: ignore[arg-type]
                channel_threshold=0,
            ) as turn:
                for number in range(3):
                    await turn.send_to(b"early-%d" % number, peer)
                # All three are on the wire; the server (same loop) has not even read them.
                assert not turn.engine.has_permission(peer.host)
                assert turn.counters.send_indications_sent == 3
                echoes = []
                for _ in range(3):
                    data, source = await asyncio.wait_for(turn.recv_from(), 3.0)
                    assert source == peer
                    echoes.append(data)
                assert sorted(echoes) == [b"early-0", b"early-1", b"early-2"]
                assert turn.engine.has_permission(peer.host)
                assert turn.counters.dropped == 0
            assert echo.transport is not None
            echo.transport.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_denied_private_peer_does_not_cost_the_allowed_one_its_permission() -> None:
    # The server denies RFC 1918 by default and refuses a whole CreatePermission that names one
    # such peer (RFC 8656 §10.2). ICE asks for all remote candidates at once, private host
    # candidates included: the client must keep the allowed peers' permission apart.
    async def scenario() -> None:
        async with running_server() as service:
            loop = asyncio.get_running_loop()
            peer_transport, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
            )
            peer = Address(*peer_transport.get_extra_info("sockname")[:2])
            events: list[Event] = []
            async with create_turn_allocation(
                service.config.listen[0], USER, PASSWORD, on_event=events.append
            ) as turn:
                await turn.create_permission([Address("10.9.9.9", 5000), peer])
                await _until(lambda: turn.engine.has_permission(peer.host))
                relayed = turn.relayed_address
                peer_transport.sendto(b"check", (relayed.host, relayed.port))
                data, source = await asyncio.wait_for(turn.recv_from(), 3.0)
                assert (data, source) == (b"check", peer)
                await _until(lambda: any(isinstance(e, PermissionFailed) for e in events))
                failed = [e for e in events if isinstance(e, PermissionFailed)]
                assert [(e.peer, e.code) for e in failed] == [("10.9.9.9", 403)]
            peer_transport.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))
