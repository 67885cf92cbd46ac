"""Interoperability of icerelay's ICE agent with aioice: both roles, one and two components, host
candidates on loopback and relayed candidates through a TURN server (ours and coturn).

Everything stays on 127.0.0.0/8. aioice normally skips loopback when it lists host addresses, so
its interface enumeration is pointed at loopback for the test (aioice's ICE logic is untouched).

The relay cases use a relay-only path on purpose, so that the session cannot fall back on
loopback host pairs: aioice runs with its ``TransportPolicy.RELAY`` and our agent with
``AgentConfig(relay_only=True)`` (WebRTC's "relay" transport policy), both allocating on the same
TURN server, as two WebRTC/SIP endpoints behind symmetric NATs would. Our TURN client's socket is
on 127.0.0.2 while the server and both relays are on 127.0.0.1, so even a stray host path would
meet the server's per-IP permission check. The only working path is relay to relay: our TURN
client, the server, aioice's TURN client.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from icerelay.aio.ice import Connection
from icerelay.daemon.turn_service import TurnService
from icerelay.ice import CandidateType, ConnectionState, TurnServer
from icerelay.ice.config import AgentConfig
from icerelay.ice.rtpconf import parse_rtp_conf
from icerelay.turn.server import TurnServerConfig
from tests.support.coturn import Coturn
from tests.support.ports import free_port

aioice = pytest.importorskip("aioice", reason="aioice not installed (test extra)")
aioice_ice = pytest.importorskip("aioice.ice")

pytestmark = pytest.mark.interop

TURN_USER, TURN_PASSWORD = "ice", "interop-secret"
OUR_HOST = "127.0.0.2"


@pytest.fixture(autouse=True)
def aioice_on_loopback(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(aioice_ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    yield


@dataclass
class Session:
    ours: Connection
    theirs: Any  # aioice.Connection (untyped package)


async def signal(ours: Connection, theirs: Any) -> None:
    """Exchange credentials and candidates in their SDP text form, as an offer/answer would."""
    ours.set_remote_credentials(theirs.local_username, theirs.local_password)
    theirs.remote_username = ours.local_username
    theirs.remote_password = ours.local_password
    for candidate in ours.local_candidates:
        await theirs.add_remote_candidate(aioice.Candidate.from_sdp(candidate.to_sdp().to_sdp()))
    await theirs.add_remote_candidate(None)
    for remote in theirs.local_candidates:
        ours.add_remote_candidate(remote.to_sdp())
    ours.add_remote_candidate(None)


async def exchange_media(session: Session, components: int) -> None:
    """One datagram each way on every component, checked for content and component."""
    ours, theirs = session.ours, session.theirs
    await ours.wait_for(ConnectionState.COMPLETED, timeout=5)
    for component in range(1, components + 1):
        await ours.send(b"\x80ours-%d" % component, component)
        data, got_component = await asyncio.wait_for(theirs.recvfrom(), 5)
        assert (data, got_component) == (b"\x80ours-%d" % component, component)
        await theirs.sendto(b"\x80theirs-%d" % component, component)
        assert await asyncio.wait_for(ours.recv(component), 5) == b"\x80theirs-%d" % component


def selected_types(session: Session, component: int) -> tuple[str, str, str, str]:
    """(our local, our remote, their local, their remote) candidate types of the selected pairs."""
    pair = session.ours.agent.selected_pair(component)
    assert pair is not None and pair.nominated
    # aioice has no public accessor for its selected pair; _nominated is what it sends on.
    theirs = session.theirs._nominated[component]
    return (
        pair.local.type.value,
        pair.remote.type.value,
        theirs.local_candidate.type,
        theirs.remote_candidate.type,
    )


# --- host candidates on loopback ------------------------------------------------------------


async def host_session(ours_controlling: bool, components: int) -> None:
    ours = Connection(
        controlling=ours_controlling, components=components, local_addresses=["127.0.0.1"]
    )
    theirs = aioice.Connection(
        ice_controlling=not ours_controlling, components=components, use_ipv6=False
    )
    session = Session(ours, theirs)
    try:
        await ours.gather()
        await theirs.gather_candidates()
        assert all(c.host == "127.0.0.1" for c in theirs.local_candidates)
        await signal(ours, theirs)
        await asyncio.wait_for(asyncio.gather(ours.connect(), theirs.connect()), 10)
        await exchange_media(session, components)
        for component in range(1, components + 1):
            assert selected_types(session, component) == ("host", "host", "host", "host")
            pair = ours.agent.selected_pair(component)
            assert pair is not None
            assert pair.remote.address == (
                theirs._nominated[component].local_candidate.host,
                theirs._nominated[component].local_candidate.port,
            )
    finally:
        await ours.close()
        await theirs.close()


@pytest.mark.parametrize("components", [1, 2])
@pytest.mark.parametrize(
    "ours_controlling", [True, False], ids=["ours-controlling", "ours-controlled"]
)
def test_connects_and_carries_media(ours_controlling: bool, components: int) -> None:
    asyncio.run(host_session(ours_controlling, components))


# --- through a TURN server ------------------------------------------------------------------


async def start_our_turn(relay_low: int) -> tuple[TurnService, tuple[str, int]]:
    """icerelay's TURN server on 127.0.0.1 relaying from ports relay_low..relay_low+499."""
    service = TurnService(
        TurnServerConfig(
            listen=[("127.0.0.1", free_port())],
            realm="icerelay.test",
            users={TURN_USER: TURN_PASSWORD},
            relay_port_min=relay_low,
            relay_port_max=relay_low + 499,
            allow_peers=["127.0.0.0/8"],
        )
    )
    await service.start()
    host, port = service.listen_udp[0][:2]
    return service, (str(host), int(port))


async def relay_session(
    ours_controlling: bool,
    components: int,
    server: tuple[str, int],
    their_server: tuple[str, int],
) -> Session:
    ours = Connection(
        controlling=ours_controlling,
        components=components,
        local_addresses=[OUR_HOST],
        turn_servers=[TurnServer(server, TURN_USER, TURN_PASSWORD)],
        config=AgentConfig(relay_only=True),
    )
    theirs = aioice.Connection(
        ice_controlling=not ours_controlling,
        components=components,
        use_ipv6=False,
        turn_server=their_server,
        turn_username=TURN_USER,
        turn_password=TURN_PASSWORD,
        transport_policy=aioice_ice.TransportPolicy.RELAY,
    )
    session = Session(ours, theirs)
    await asyncio.wait_for(asyncio.gather(ours.gather(), theirs.gather_candidates()), 10)
    assert {c.type for c in ours.local_candidates} == {CandidateType.RELAYED}
    assert {c.component for c in ours.local_candidates} == set(range(1, components + 1))
    assert [c.type for c in theirs.local_candidates] == ["relay"] * components
    await signal(ours, theirs)
    await asyncio.wait_for(asyncio.gather(ours.connect(), theirs.connect()), 15)
    return session


async def relay_case(
    ours_controlling: bool,
    components: int,
    server: tuple[str, int],
    their_server: tuple[str, int] | None = None,
) -> list[tuple[str, str, str, str]]:
    session = await relay_session(ours_controlling, components, server, their_server or server)
    try:
        await exchange_media(session, components)
        return [selected_types(session, c) for c in range(1, components + 1)]
    finally:
        await session.ours.close()
        await session.theirs.close()


RELAY_CASES = [(True, 1), (False, 1), (True, 2), (False, 2)]
RELAY_IDS = ["ours-controlling-1", "ours-controlled-1", "ours-controlling-2", "ours-controlled-2"]


@pytest.mark.parametrize(("ours_controlling", "components"), RELAY_CASES, ids=RELAY_IDS)
def test_relay_through_our_turn_server(ours_controlling: bool, components: int) -> None:
    async def run() -> list[tuple[str, str, str, str]]:
        # Both agents on one server: relay to relay through the same TurnService.
        service, server = await start_our_turn(random.randrange(20000, 29000, 1000))
        try:
            return await relay_case(ours_controlling, components, server)
        finally:
            await service.stop()

    types = asyncio.run(run())
    assert types == [("relay", "relay", "relay", "relay")] * components


def test_relay_through_two_of_our_turn_servers() -> None:
    """Each agent with its own TURN server (two providers): server to server."""

    async def run() -> list[tuple[str, str, str, str]]:
        # Disjoint relay ranges, so neither server's addresses look like the other's.
        relay_low = random.randrange(20000, 29000, 1000)
        ours_service, ours_server = await start_our_turn(relay_low)
        their_service, their_server = await start_our_turn(relay_low + 500)
        try:
            return await relay_case(True, 1, ours_server, their_server)
        finally:
            await ours_service.stop()
            await their_service.stop()

    assert asyncio.run(run()) == [("relay", "relay", "relay", "relay")]


@pytest.mark.parametrize(("ours_controlling", "components"), RELAY_CASES[:2], ids=RELAY_IDS[:2])
def test_relay_through_coturn(
    coturn_factory: Callable[..., Coturn], ours_controlling: bool, components: int
) -> None:
    server = coturn_factory(users=[(TURN_USER, TURN_PASSWORD)])
    types = asyncio.run(relay_case(ours_controlling, components, (server.host, server.port)))
    assert types == [("relay", "relay", "relay", "relay")] * components


# --- configured from an Asterisk rtp.conf ---------------------------------------------------


def test_agent_configured_from_rtp_conf_meets_aioice() -> None:
    """An Asterisk user's rtp.conf, read by icerelay.ice.rtpconf, drives the real agent: TURN
    server and credentials from turnaddr/turnusername/turnpassword, host addresses filtered by
    ice_deny; the session with aioice then works as any other."""

    async def run() -> None:
        service, server = await start_our_turn(random.randrange(20000, 29000, 1000))
        settings = parse_rtp_conf(
            "[general]\nicesupport=yes\n"
            f"turnaddr={server[0]}:{server[1]}\nturnusername={TURN_USER}\n"
            f"turnpassword={TURN_PASSWORD}\nice_deny=127.0.0.3\n"
        )
        assert settings.warnings == ()
        ours = Connection(
            controlling=True,
            config=settings.agent_config(),
            turn_servers=settings.turn_servers(),
            local_addresses=settings.host_addresses(["127.0.0.1", "127.0.0.3"]),
        )
        theirs = aioice.Connection(ice_controlling=False, use_ipv6=False)
        session = Session(ours, theirs)
        try:
            await asyncio.wait_for(asyncio.gather(ours.gather(), theirs.gather_candidates()), 10)
            kinds = sorted((c.type.value, c.host) for c in ours.local_candidates)
            assert kinds == [("host", "127.0.0.1"), ("relay", "127.0.0.1")]
            await signal(ours, theirs)
            await asyncio.wait_for(asyncio.gather(ours.connect(), theirs.connect()), 10)
            await exchange_media(session, 1)
            # Host to host is the best pair on loopback; the relay stays a fallback.
            assert selected_types(session, 1) == ("host", "host", "host", "host")
        finally:
            await ours.close()
            await theirs.close()
            await service.stop()

    asyncio.run(run())
