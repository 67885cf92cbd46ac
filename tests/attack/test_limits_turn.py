"""Issue 10: TURN allocations were capped per user and in total, not per source address. One
host with many credentials (REST API users are cheap) could take every relay port. Now a client
IP address holds at most ``turn.quotas.allocations_per_source`` (486 Allocation Quota Reached)."""

from __future__ import annotations

import asyncio

import pytest

from icerelay.daemon.turn_service import TurnService
from icerelay.turn.credentials import rest_api_credentials
from tests.unit.turn.server_helpers import Client, error_code, make_engine
from tests.unit.turn.test_server_service import _allocate_blocking, _config, _error


def rest_client(engine: object, user: str, address: tuple[str, int]) -> Client:
    username, password = rest_api_credentials("north", user, ttl=600, now=1000.0)
    return Client(engine, username=username, password=password, address=address)  # type: ignore[arg-type]


def test_one_source_with_many_users_is_capped(caplog: pytest.LogCaptureFixture) -> None:
    engine, binder = make_engine(quotas={"allocations_per_source": 5, "allocations_per_user": 3})
    attacker = [rest_client(engine, f"user{n}", ("203.0.113.66", 1000 + n)) for n in range(40)]
    answers = [client.allocate() for client in attacker]
    pairs = zip(attacker, answers, strict=True)
    granted = [client for client, answer in pairs if not error_code(answer)]
    assert len(granted) == 5
    assert {error_code(answer) for answer in answers[5:]} == {486}
    assert engine.counters["refused_source_quota"] == 35
    assert len(binder.bound) == 5
    # Logged, but not once per refusal.
    assert len([r for r in caplog.records if "turn.source_quota" in r.getMessage()]) == 1
    # Another host is served.
    other = rest_client(engine, "carol", ("198.51.100.9", 5000))
    assert error_code(other.allocate()) is None
    # Giving one back frees one slot for that source.
    granted[0].refresh(0)
    assert error_code(attacker[10].allocate()) is None
    assert error_code(attacker[11].allocate()) == 486


def test_source_quota_zero_means_unlimited() -> None:
    engine, _ = make_engine(quotas={"allocations_per_source": 0})
    clients = [rest_client(engine, f"u{n}", ("203.0.113.66", 2000 + n)) for n in range(20)]
    assert all(error_code(client.allocate()) is None for client in clients)


def test_source_quota_on_a_real_turn_service() -> None:
    """The same attack over UDP on loopback: the service passes the real source address."""

    async def scenario() -> None:
        service = TurnService(
            _config(quotas={"allocations_per_source": 3, "allocations_per_user": 50})
        )
        await service.start()
        sockets = []
        try:
            server = service.listen_udp[0]
            codes = []
            for _ in range(6):
                sock, response, _ = await asyncio.to_thread(_allocate_blocking, server)
                sockets.append(sock)
                codes.append(_error(response))
            assert codes == [None, None, None, 486, 486, 486]
        finally:
            for sock in sockets:
                sock.close()
            await service.stop()

    asyncio.run(asyncio.wait_for(scenario(), 20))
