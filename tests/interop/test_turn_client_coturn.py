"""Our TURN client against coturn 4.6.1 (a real ``turnserver`` on loopback, started per test).

Each scenario is the whole life of an allocation: Allocate (401, then long-term credentials),
permission, channel binding, data both ways with a UDP echo peer on loopback, refresh, and
deallocation, over UDP, TCP and TLS to the server; also TURN REST API shared-secret credentials
(coturn's ``use-auth-secret``), coturn's stale nonces (438) and its ``alternate-server`` (300).
"""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from icerelay.aio.turn_client import AllocationError, TurnClient, create_turn_allocation
from icerelay.stun import Address
from icerelay.turn.client import (
    AllocationClosed,
    AllocationRefreshed,
    AlternateServer,
    ChannelBound,
    Event,
)
from icerelay.turn.credentials import rest_api_credentials
from tests.support import certs
from tests.support.coturn import Coturn
from tests.support.ports import free_ports
from tests.support.process import stop_group
from tests.support.turnpeer import echo_peer, exchange

pytestmark = pytest.mark.interop

USER, PASSWORD = "alice", "wonderland"
SECRET = "north-wind"
CoturnFactory = Callable[..., Coturn]


async def _wait_for(events: list[Event], kind: type[Event], timeout: float) -> Event:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in events:
            if isinstance(event, kind):
                return event
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {kind.__name__} within {timeout} s; events: {events}")


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_allocate_permission_channel_data_refresh_deallocate(
    coturn_factory: CoturnFactory, transport: str
) -> None:
    # A 6 s lifetime makes coturn's grant short enough that our refresh timer (at half life)
    # fires during the test: a real timer-driven Refresh, not one we call by hand. (coturn
    # ignores "--max-allocate-lifetime 6" with a space: its optional-argument parsing wants "=".)
    server = coturn_factory(users=[(USER, PASSWORD)], extra_args=["--max-allocate-lifetime=6"])

    async def scenario() -> None:
        echo, peer = await echo_peer()
        events: list[Event] = []
        async with create_turn_allocation(
            ("127.0.0.1", server.port),
            USER,
            PASSWORD,
            transport=transport,  # type: ignore[arg-type]
            on_event=events.append,
        ) as turn:
            assert turn.relayed_address.host == "127.0.0.1"
            assert server.relay_range[0] <= turn.relayed_address.port <= server.relay_range[1]
            assert turn.mapped_address is not None and turn.mapped_address.host == "127.0.0.1"
            assert turn.lifetime == 6

            echoes = await exchange(turn, peer, 10)
            assert echoes == [b"packet-%03d" % n for n in range(10)]
            # The peer saw our relayed address as the source: the data really went through coturn.
            assert {addr for _, addr in echo.seen} == {
                (turn.relayed_address.host, turn.relayed_address.port)
            }
            bound = await _wait_for(events, ChannelBound, 2.0)
            assert isinstance(bound, ChannelBound) and bound.peer == peer
            counters = turn.counters
            # The first packet went as a Send indication and started the ChannelBind; the rest
            # went as ChannelData, and coturn answered on the channel too.
            assert counters.send_indications_sent >= 1
            assert counters.channel_data_sent >= 8
            assert counters.channel_data_received >= 8
            assert counters.malformed == 0 and counters.integrity_failures == 0

            refreshed = await _wait_for(events, AllocationRefreshed, 6.0)
            assert isinstance(refreshed, AllocationRefreshed) and refreshed.lifetime == 6
            assert await exchange(turn, peer, 2) == [b"packet-000", b"packet-001"]
        assert events[-1] == AllocationClosed(confirmed=True)
        assert turn.closed
        assert echo.transport is not None
        echo.transport.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_peer_speaks_first_through_a_data_indication(coturn_factory: CoturnFactory) -> None:
    server = coturn_factory(users=[(USER, PASSWORD)])

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        peer_transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        peer = Address(*peer_transport.get_extra_info("sockname")[:2])
        async with create_turn_allocation(("127.0.0.1", server.port), USER, PASSWORD) as turn:
            # ICE does this for a remote candidate before any check: permission, no data.
            await turn.create_permission([peer])
            deadline = time.monotonic() + 2
            while not turn.engine.has_permission(peer.host) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            relayed = turn.relayed_address
            peer_transport.sendto(b"hello from the peer", (relayed.host, relayed.port))
            data, source = await asyncio.wait_for(turn.recv_from(), 3.0)
            assert (data, source) == (b"hello from the peer", peer)
            assert turn.counters.data_indications_received == 1
        peer_transport.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_rest_api_shared_secret_credentials(coturn_factory: CoturnFactory) -> None:
    # coturn refuses to start use-auth-secret without --lt-cred-mech, which the launcher adds
    # when users are given; the static user is never used.
    server = coturn_factory(
        users=[("unused", "unused")],
        extra_args=["--use-auth-secret", "--static-auth-secret", SECRET],
    )

    async def scenario() -> None:
        echo, peer = await echo_peer()
        username, password = rest_api_credentials(SECRET, "bob", ttl=600, now=time.time())
        async with create_turn_allocation(("127.0.0.1", server.port), username, password) as turn:
            assert await exchange(turn, peer, 3) == [b"packet-000", b"packet-001", b"packet-002"]
        # The same user with a key from another secret, and an expired credential: both 401.
        wrong = rest_api_credentials("south-wind", "bob", ttl=600, now=time.time())
        expired = rest_api_credentials(SECRET, "bob", ttl=-60, now=time.time())
        for bad_username, bad_password in (wrong, expired):
            with pytest.raises(AllocationError) as info:
                await TurnClient.connect(
                    ("127.0.0.1", server.port), bad_username, bad_password, timeout=5
                )
            assert info.value.code == 401
        assert echo.transport is not None
        echo.transport.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_wrong_password_is_refused(coturn_factory: CoturnFactory, transport: str) -> None:
    server = coturn_factory(users=[(USER, PASSWORD)])

    async def scenario() -> None:
        with pytest.raises(AllocationError) as info:
            await TurnClient.connect(
                ("127.0.0.1", server.port),
                USER,
                "not the password",
                transport=transport,  # type: ignore[arg-type]
                timeout=5,
            )
        assert info.value.code == 401

    asyncio.run(scenario())


def test_stale_nonce_from_coturn_is_retried(coturn_factory: CoturnFactory) -> None:
    # coturn's --stale-nonce=N makes its nonces expire after N seconds (438 Stale Nonce).
    server = coturn_factory(users=[(USER, PASSWORD)], extra_args=["--stale-nonce=1"])

    async def scenario() -> None:
        echo, peer = await echo_peer()
        events: list[Event] = []
        options: dict[str, Any] = {"on_event": events.append}
        async with create_turn_allocation(
            ("127.0.0.1", server.port), USER, PASSWORD, **options
        ) as turn:
            await asyncio.sleep(2.2)
            # A new permission needs a request: coturn answers 438, we retry with its new nonce.
            assert await exchange(turn, peer, 2) == [b"packet-000", b"packet-001"]
            assert turn.counters.stale_nonces >= 1
        assert events[-1] == AllocationClosed(confirmed=True)
        assert echo.transport is not None
        echo.transport.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_alternate_server_redirection(coturn_factory: CoturnFactory, transport: str) -> None:
    # coturn's --alternate-server answers every Allocate with 300 (Try Alternate) naming it.
    target = coturn_factory(users=[(USER, PASSWORD)])
    redirector = coturn_factory(
        users=[(USER, PASSWORD)], extra_args=[f"--alternate-server=127.0.0.1:{target.port}"]
    )

    async def scenario() -> None:
        echo, peer = await echo_peer()
        events: list[Event] = []
        async with create_turn_allocation(
            ("127.0.0.1", redirector.port),
            USER,
            PASSWORD,
            transport=transport,  # type: ignore[arg-type]
            on_event=events.append,
        ) as turn:
            assert events[0] == AlternateServer(Address("127.0.0.1", target.port))
            assert turn.engine.server.port == target.port
            assert target.relay_range[0] <= turn.relayed_address.port <= target.relay_range[1]
            assert await exchange(turn, peer, 3) == [b"packet-000", b"packet-001", b"packet-002"]
        assert events[-1] == AllocationClosed(confirmed=True)
        assert echo.transport is not None
        echo.transport.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


@pytest.fixture
def coturn_tls(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """coturn with a TLS listener and a self-signed certificate for 127.0.0.1.

    tests.support.coturn starts coturn with --no-tls, so this one is launched here, with the
    same isolation (-n, own pidfile and log, no CLI, loopback peers allowed).
    """
    for tool in ("turnserver", "openssl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (Debian packages coturn, openssl)")
    cert, key = certs.self_signed(tmp_path)
    port, tls_port = free_ports(2)
    base = random.randrange(300, 327) * 100
    argv = [
        "turnserver", "-n",
        "--listening-ip", "127.0.0.1",
        "--listening-port", str(port),
        "--tls-listening-port", str(tls_port),
        "--cert", str(cert), "--pkey", str(key),
        "--min-port", str(base), "--max-port", str(base + 99),
        "--pidfile", str(tmp_path / "turnserver.pid"),
        "--log-file", str(tmp_path / "turnserver.log"),
        "--simple-log", "--no-stdout-log", "--no-cli", "--no-dtls",
        "--allow-loopback-peers", "--realm", "icerelay.test",
        "--lt-cred-mech", "--user", f"{USER}:{PASSWORD}",
    ]  # fmt: skip
    process = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", tls_port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail(f"coturn TLS listener did not come up (exit={process.poll()})")
                time.sleep(0.05)
        yield tls_port, cert
    finally:
        stop_group(process, timeout=3, kill_timeout=3)


def test_tls_to_coturn(coturn_tls: tuple[int, Path]) -> None:
    tls_port, cert = coturn_tls

    async def scenario() -> None:
        echo, peer = await echo_peer()
        context = ssl.create_default_context(cafile=str(cert))
        events: list[Event] = []
        async with create_turn_allocation(
            ("127.0.0.1", tls_port),
            USER,
            PASSWORD,
            transport="tls",
            ssl=context,
            on_event=events.append,
        ) as turn:
            echoes = await exchange(turn, peer, 5)
            assert echoes == [b"packet-%03d" % n for n in range(5)]
            assert turn.counters.channel_data_received >= 3
        assert events[-1] == AllocationClosed(confirmed=True)
        assert echo.transport is not None
        echo.transport.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_even_port_pair_with_reservation_token(coturn_factory: CoturnFactory) -> None:
    server = coturn_factory(users=[(USER, PASSWORD)])

    async def scenario() -> None:
        address = ("127.0.0.1", server.port)
        async with create_turn_allocation(address, USER, PASSWORD, even_port=True) as rtp:
            token = rtp.engine.reserved_token
            assert token is not None and rtp.relayed_address.port % 2 == 0
            async with create_turn_allocation(
                address, USER, PASSWORD, reservation_token=token
            ) as rtcp:
                assert rtcp.relayed_address.port == rtp.relayed_address.port + 1

    asyncio.run(asyncio.wait_for(scenario(), 30))


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_first_packets_ride_right_behind_the_create_permission(
    coturn_factory: CoturnFactory, transport: str
) -> None:
    # Pipelining (Allocation(pipeline_permissions=True), the default): coturn handles one
    # 5-tuple's messages in order, so Send indications that follow a CreatePermission before
    # its success came back are relayed, not dropped. This is what saves ICE a round trip.
    server = coturn_factory(users=[(USER, PASSWORD)])

    async def scenario() -> None:
        echo, peer = await echo_peer()
        async with create_turn_allocation(
            ("127.0.0.1", server.port),
            USER,
            PASSWORD,
            transport=transport,  # type: ignore[arg-type]
            channel_threshold=0,
        ) as turn:
            for number in range(3):
                await turn.send_to(b"early-%d" % number, peer)
            # All three are on the wire and the success has not been read yet.
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
            assert turn.counters.requests_sent == 3  # 401'd Allocate, Allocate, CreatePermission
        assert echo.transport is not None
        echo.transport.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))
