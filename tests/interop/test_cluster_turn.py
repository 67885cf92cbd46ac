"""TURN users and per-user quotas in Redis, enforced across two ``icerelay serve`` instances.

The user exists only in Redis (no ``[turn] users``); its quota (one allocation) holds for the
cluster: with an allocation on A, B refuses a second one (486 Allocation Quota Reached), and
grants it once A's allocation is gone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from icerelay.aio.turn_client import AllocationError, TurnClient
from tests.support import redisd
from tests.support.ports import free_ports
from tests.support.serve import ServeProcess

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not redisd.available(), reason="needs redis-server (Debian redis-server)"),
]

HOST = "127.0.0.1"
USER, PASSWORD = "alice", "wonderland-in-redis"


def start(
    serve_factory: Callable[..., ServeProcess], redis_url: str, name: str, tmp_path: Path
) -> int:
    turn_port, ng_port = free_ports(2)
    relay_block = free_ports(102, kinds=("udp",), consecutive=True)
    relay_low = relay_block[0] + (relay_block[0] & 1)
    server_env = {
        "ICERELAY_STUN__ENABLED": "0",
        "ICERELAY_TURN__ENABLED": "1",
        "ICERELAY_TURN__LISTEN": f"{HOST}:{turn_port}",
        "ICERELAY_TURN__REALM": "cluster.test",
        "ICERELAY_TURN__RELAY_PORT_MIN": str(relay_low),
        "ICERELAY_TURN__RELAY_PORT_MAX": str(relay_low + 99),
        "ICERELAY_TURN__ALLOW_PEERS": "127.0.0.0/8",
        "ICERELAY_RELAY__ENABLED": "1",
        "ICERELAY_RELAY__NG_LISTEN": f"{HOST}:{ng_port}",
        "ICERELAY_RELAY__MEDIAPROXY_SOCKET": "",
        "ICERELAY_RELAY__ACCOUNTING": f"sqlite://{tmp_path / name}.sqlite3",
        # Each instance its own journal (the state directory is locked by one relay).
        "ICERELAY_RELAY__STATE_DIR": str(tmp_path / f"{name}-state"),
        "ICERELAY_CLUSTER__REDIS": redis_url,
        "ICERELAY_CLUSTER__INSTANCE": name,
        "ICERELAY_CLUSTER__TURN_USERS": "1",
        "ICERELAY_CLUSTER__HEARTBEAT_INTERVAL": "0.1",
        "ICERELAY_CLUSTER__HEARTBEAT_TTL": "0.5",
    }
    serve_factory([], host=HOST, port=turn_port, env=server_env)
    return turn_port


async def allocate(port: int) -> TurnClient:
    return await TurnClient.connect((HOST, port), USER, PASSWORD, timeout=3.0)


async def eventually_allocates(port: int, timeout: float) -> TurnClient:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await allocate(port)
        except AllocationError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def test_turn_user_and_quota_from_redis_hold_across_instances(
    tmp_path: Path, serve_factory: Callable[..., ServeProcess]
) -> None:
    server = redisd.RedisServer(tmp_path)
    server.start()
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        client.hset("icerelay:turn:users", USER, PASSWORD)
        client.hset("icerelay:turn:quotas", USER, 1)
        client.close()
        port_a = start(serve_factory, server.url, "turn-a", tmp_path)
        port_b = start(serve_factory, server.url, "turn-b", tmp_path)

        async def scenario() -> None:
            # A user only Redis knows: A lets it allocate (once its directory synced).
            first = await eventually_allocates(port_a, 5.0)
            # B counts A's allocation against the quota of one (after one sync interval).
            # Until B's first sync it does not know the user yet (401): that is no answer.
            deadline = time.monotonic() + 5.0
            refused: AllocationError | None = None
            while time.monotonic() < deadline:
                try:
                    extra = await allocate(port_b)
                except AllocationError as error:
                    refused = error
                    if error.code == 486:
                        break
                else:
                    await extra.close()
                await asyncio.sleep(0.1)
            assert refused is not None and refused.code == 486, refused
            await first.close()
            # A's allocation is gone: B grants one.
            second = await eventually_allocates(port_b, 5.0)
            await second.close()

        asyncio.run(scenario())
    finally:
        server.stop()
