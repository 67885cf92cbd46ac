"""The aioice-compatible surface (icerelay.aio.aioice): aioice code runs unchanged on it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from icerelay.aio import aioice as compat
from icerelay.errors import IceError


async def aioice_style_session(module_a: Any, module_b: Any, **extra_b: Any) -> None:
    """The exact calls an aioice application makes, for any two Connection classes."""
    a = module_a.Connection(ice_controlling=True, components=2, local_addresses=["127.0.0.1"])
    b = module_b.Connection(ice_controlling=False, components=2, **extra_b)
    await a.gather_candidates()
    await b.gather_candidates()
    assert a.get_default_candidate(1) is not None
    a.remote_username, a.remote_password = b.local_username, b.local_password
    b.remote_username, b.remote_password = a.local_username, a.local_password
    for candidate in b.local_candidates:
        await a.add_remote_candidate(module_a.Candidate.from_sdp(candidate.to_sdp()))
    await a.add_remote_candidate(None)
    for candidate in a.local_candidates:
        await b.add_remote_candidate(module_b.Candidate.from_sdp(candidate.to_sdp()))
    await b.add_remote_candidate(None)
    await asyncio.wait_for(asyncio.gather(a.connect(), b.connect()), 10)
    await a.sendto(b"\x80rtcp", 2)
    assert await asyncio.wait_for(b.recvfrom(), 5) == (b"\x80rtcp", 2)
    await b.send(b"\x80rtp")
    assert await asyncio.wait_for(a.recv(), 5) == b"\x80rtp"
    await a.close()
    await b.close()
    assert isinstance(await a.get_event(), compat.ConnectionClosed)


def test_two_compat_connections() -> None:
    asyncio.run(aioice_style_session(compat, compat, local_addresses=["127.0.0.1"]))


@pytest.mark.interop
def test_compat_against_aioice(monkeypatch: pytest.MonkeyPatch) -> None:
    aioice = pytest.importorskip("aioice")
    aioice_ice = pytest.importorskip("aioice.ice")
    # aioice skips loopback when listing host addresses; keep the test on 127.0.0.1.
    monkeypatch.setattr(aioice_ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    asyncio.run(aioice_style_session(compat, aioice, use_ipv6=False))


def test_candidate_round_trip_and_aioice_shape() -> None:
    line = "f957a2332b 1 udp 1694498815 203.0.113.7 40000 typ srflx raddr 10.0.0.2 rport 5000"
    candidate = compat.Candidate.from_sdp(line + " generation 0")
    assert (candidate.host, candidate.port, candidate.type) == ("203.0.113.7", 40000, "srflx")
    assert candidate.related_port == 5000 and candidate.generation == 0
    assert candidate.to_sdp() == line + " generation 0"
    with pytest.raises(ValueError):
        compat.Candidate.from_sdp("nonsense")


class FakePolicy:
    name = "NOHOST"


def test_unsupported_options_are_refused() -> None:
    with pytest.raises(IceError):
        compat.Connection(
            ice_controlling=True, turn_server=("192.0.2.1", 3478), turn_transport="sctp"
        )
    with pytest.raises(IceError):
        compat.Connection(ice_controlling=True, transport_policy=FakePolicy())


def test_connect_needs_remote_credentials() -> None:
    async def run() -> None:
        connection = compat.Connection(ice_controlling=True, local_addresses=["127.0.0.1"])
        await connection.gather_candidates()
        with pytest.raises(ValueError):
            await connection.connect()
        await connection.close()

    asyncio.run(run())
