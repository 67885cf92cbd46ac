"""The asyncio driver: two of our agents on 127.0.0.1 with real UDP sockets."""

from __future__ import annotations

import asyncio

import pytest

from icerelay.aio.ice import Connection
from icerelay.errors import IceError
from icerelay.ice import CandidateGathered, ConnectionState, Event


async def pair(components: int = 1) -> tuple[Connection, Connection]:
    trickled: list[Event] = []
    offerer = Connection(
        controlling=True,
        components=components,
        local_addresses=["127.0.0.1"],
        on_event=trickled.append,
    )
    answerer = Connection(controlling=False, components=components, local_addresses=["127.0.0.1"])
    await offerer.gather()
    await answerer.gather()
    assert any(isinstance(event, CandidateGathered) for event in trickled)
    answerer.set_remote_credentials(offerer.local_username, offerer.local_password)
    offerer.set_remote_credentials(answerer.local_username, answerer.local_password)
    for candidate in offerer.local_candidates:
        answerer.add_remote_candidate(candidate.to_attribute())  # SDP text works too
    for candidate in answerer.local_candidates:
        offerer.add_remote_candidate(candidate)
    offerer.add_remote_candidate(None)
    answerer.add_remote_candidate(None)
    await asyncio.gather(offerer.connect(5), answerer.connect(5))
    return offerer, answerer


async def exchange(components: int) -> None:
    offerer, answerer = await pair(components)
    try:
        for component in range(1, components + 1):
            await offerer.send(b"\x80ping", component)
            assert await asyncio.wait_for(answerer.recv(component), 5) == b"\x80ping"
            await answerer.send(b"\x80pong", component)
            data, source = await asyncio.wait_for(offerer.recvfrom(component), 5)
            assert data == b"\x80pong" and source[0] == "127.0.0.1"
        await offerer.wait_for(ConnectionState.COMPLETED, timeout=5)
        await answerer.wait_for(ConnectionState.COMPLETED, timeout=5)
        # Loopback, one host pair per component: a check, maybe a triggered re-check when the
        # peer's check crossed ours (RFC 8445 section 7.3.1.4), and a nomination; no storm.
        assert offerer.agent.checks_sent <= 3 * components
    finally:
        await offerer.close()
        await answerer.close()
    assert offerer.state is ConnectionState.CLOSED


@pytest.mark.parametrize("components", [1, 2])
def test_two_agents_over_loopback(components: int) -> None:
    asyncio.run(exchange(components))


def test_connect_fails_when_nothing_answers() -> None:
    async def run() -> None:
        lonely = Connection(
            controlling=True,
            local_addresses=["127.0.0.1"],
        )
        await lonely.gather()
        lonely.set_remote_credentials("peer", "peerpasswordpeerpassword")
        lonely.add_remote_candidate("candidate:1 1 UDP 2130706431 127.0.0.1 9 typ host")
        lonely.add_remote_candidate(None)
        # Nobody listens on port 9: the check goes unanswered and connect() keeps waiting.
        with pytest.raises(TimeoutError):
            await lonely.connect(timeout=0.3)
        assert lonely.state is ConnectionState.CHECKING
        await lonely.close()

    asyncio.run(run())


def test_connect_raises_once_ice_failed() -> None:
    async def run() -> None:
        connection = Connection(controlling=True, local_addresses=["127.0.0.1"])
        await connection.gather()
        await connection.close()
        with pytest.raises(IceError):
            await connection.connect(timeout=1)

    asyncio.run(run())


def test_interface_addresses_are_usable_unicast() -> None:
    import ipaddress

    from icerelay.aio.ice import default_local_addresses, interface_addresses

    for address in interface_addresses():
        ip = ipaddress.ip_address(address)
        assert not (ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified)
    assert all(ipaddress.ip_address(a).version == 4 for a in default_local_addresses())
    assert all(
        ipaddress.ip_address(a).version == 6 for a in default_local_addresses(ipv4=False, ipv6=True)
    )


async def never_nominated() -> None:
    """The controlling agent has a wrong password for us: our checks to it succeed (we are
    CONNECTED), its checks to us never authenticate, so it never nominates (issue 11)."""
    from icerelay.ice import AgentConfig

    controlling = Connection(controlling=True, local_addresses=["127.0.0.1"])
    controlled = Connection(
        controlling=False,
        local_addresses=["127.0.0.1"],
        config=AgentConfig(nomination_timeout=0.5),
    )
    await controlling.gather()
    await controlled.gather()
    controlled.set_remote_credentials(controlling.local_username, controlling.local_password)
    controlling.set_remote_credentials(controlled.local_username, "a-wrong-password-0123456789")
    for candidate in controlling.local_candidates:
        controlled.add_remote_candidate(candidate)
    for candidate in controlled.local_candidates:
        controlling.add_remote_candidate(candidate)
    controlled.add_remote_candidate(None)
    controlling.add_remote_candidate(None)
    try:
        with pytest.raises(IceError, match="nominated no pair"):
            await controlled.connect(5)
        assert controlled.state is ConnectionState.CONNECTED
        # Asked explicitly not to wait for the nomination, connected is enough.
        await controlled.connect(5, nominated=False)
    finally:
        await controlling.close()
        await controlled.close()


def test_a_controlled_connect_waits_for_the_nomination() -> None:
    asyncio.run(never_nominated())


def test_a_controlled_connect_returns_completed() -> None:
    async def run() -> None:
        offerer, answerer = await pair()
        try:
            assert answerer.state is ConnectionState.COMPLETED
        finally:
            await offerer.close()
            await answerer.close()

    asyncio.run(run())
