"""Interoperability of icerelay's ICE agent with aioice, both roles, one and two components.

Everything stays on 127.0.0.1: aioice normally skips loopback when it lists host addresses, so
its interface enumeration is pointed at loopback for the test (aioice's ICE logic is untouched).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from icerelay.ice import ConnectionState
from icerelay.ice.aio import Connection

aioice = pytest.importorskip("aioice")
aioice_ice = pytest.importorskip("aioice.ice")

pytestmark = pytest.mark.interop


@pytest.fixture(autouse=True)
def aioice_on_loopback(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(aioice_ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    yield


async def session(ours_controlling: bool, components: int) -> tuple[Connection, object]:
    ours = Connection(
        controlling=ours_controlling, components=components, local_addresses=["127.0.0.1"]
    )
    theirs = aioice.Connection(
        ice_controlling=not ours_controlling, components=components, use_ipv6=False
    )
    await ours.gather()
    await theirs.gather_candidates()
    assert all(c.host == "127.0.0.1" for c in theirs.local_candidates)
    # Signalling: credentials and candidates in their SDP text form, as in an offer/answer.
    ours.set_remote_credentials(theirs.local_username, theirs.local_password)
    theirs.remote_username = ours.local_username
    theirs.remote_password = ours.local_password
    for candidate in ours.local_candidates:
        await theirs.add_remote_candidate(aioice.Candidate.from_sdp(candidate.to_sdp().to_sdp()))
    await theirs.add_remote_candidate(None)
    for remote in theirs.local_candidates:
        ours.add_remote_candidate(remote.to_sdp())
    ours.add_remote_candidate(None)
    await asyncio.wait_for(asyncio.gather(ours.connect(), theirs.connect()), 10)
    return ours, theirs


@pytest.mark.parametrize("components", [1, 2])
@pytest.mark.parametrize(
    "ours_controlling", [True, False], ids=["ours-controlling", "ours-controlled"]
)
def test_connects_and_carries_media(ours_controlling: bool, components: int) -> None:
    asyncio.run(exchange(ours_controlling, components))


async def exchange(ours_controlling: bool, components: int) -> None:
    ours, theirs = await session(ours_controlling, components)
    try:
        await ours.wait_for(ConnectionState.COMPLETED, timeout=5)
        for component in range(1, components + 1):
            await ours.send(b"\x80ours-%d" % component, component)
            data, got_component = await asyncio.wait_for(theirs.recvfrom(), 5)  # type: ignore[attr-defined]
            assert (data, got_component) == (b"\x80ours-%d" % component, component)
            await theirs.sendto(b"\x80theirs-%d" % component, component)  # type: ignore[attr-defined]
            assert await asyncio.wait_for(ours.recv(component), 5) == b"\x80theirs-%d" % component
        pair = ours.agent.selected_pair(1)
        assert pair is not None and pair.nominated
    finally:
        await ours.close()
        await theirs.close()  # type: ignore[attr-defined]
