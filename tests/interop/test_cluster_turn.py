"""TURN users and per-user quotas in Redis, enforced across ``icerelay serve`` instances and
across the TURN worker processes of each.

The users exist only in Redis (no ``[turn] users``). Every worker process reads them itself
before it serves, so any worker the kernel hands a client to lets it in (no 401), and each
publishes its allocation counts, so that a quota holds for the cluster: with an allocation on
A, B refuses a second one (486 Allocation Quota Reached) and grants it once A's allocation is
gone; within one instance, allocations held by one worker count in the others.
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
# Generous: the machine running the tests is shared (a slow answer is not what is tested).
ALLOCATE_TIMEOUT = 10.0
SYNC_INTERVAL = 0.1


def start(
    serve_factory: Callable[..., ServeProcess],
    redis_url: str,
    name: str,
    tmp_path: Path,
    workers: int,
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
        # Several processes on one port: the kernel spreads the clients over them.
        "ICERELAY_TURN__WORKERS": str(workers),
        "ICERELAY_RELAY__ENABLED": "1",
        "ICERELAY_RELAY__NG_LISTEN": f"{HOST}:{ng_port}",
        "ICERELAY_RELAY__MEDIAPROXY_SOCKET": "",
        "ICERELAY_RELAY__ACCOUNTING": f"sqlite://{tmp_path / name}.sqlite3",
        # Each instance its own journal (the state directory is locked by one relay).
        "ICERELAY_RELAY__STATE_DIR": str(tmp_path / f"{name}-state"),
        "ICERELAY_CLUSTER__REDIS": redis_url,
        "ICERELAY_CLUSTER__INSTANCE": name,
        "ICERELAY_CLUSTER__TURN_USERS": "1",
        "ICERELAY_CLUSTER__HEARTBEAT_INTERVAL": str(SYNC_INTERVAL),
        "ICERELAY_CLUSTER__HEARTBEAT_TTL": "0.5",
    }
    serve_factory([], host=HOST, port=turn_port, env=server_env, ready_timeout=30.0)
    return turn_port


async def allocate(port: int, user: str = USER, password: str = PASSWORD) -> TurnClient:
    return await TurnClient.connect((HOST, port), user, password, timeout=ALLOCATE_TIMEOUT)


async def allocate_once_quota_allows(port: int, timeout: float) -> TurnClient:
    """Allocate, accepting only 486 (quota reached, until the counts are synced) as a refusal."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await allocate(port)
        except AllocationError as error:
            assert error.code == 486, error
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(SYNC_INTERVAL)


def directory(url: str, users: dict[str, str], quotas: dict[str, int]) -> None:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        client.hset("icerelay:turn:users", mapping=users)
        client.hset("icerelay:turn:quotas", mapping=quotas)
    finally:
        client.close()


def test_turn_user_and_quota_from_redis_hold_across_instances(
    tmp_path: Path, serve_factory: Callable[..., ServeProcess]
) -> None:
    server = redisd.RedisServer(tmp_path)
    server.start()
    try:
        directory(server.url, {USER: PASSWORD}, {USER: 1})
        port_a = start(serve_factory, server.url, "turn-a", tmp_path, workers=2)
        port_b = start(serve_factory, server.url, "turn-b", tmp_path, workers=2)

        async def scenario() -> None:
            # A user only Redis knows: any worker of A knows it once A is ready.
            first = await allocate(port_a)
            # B counts A's allocation against the quota of one once the counts are synced
            # (a sync interval or two); until then it may grant one, closed again here.
            deadline = time.monotonic() + 5.0
            refused: AllocationError | None = None
            while refused is None:
                try:
                    extra = await allocate(port_b)
                except AllocationError as error:
                    assert error.code == 486, error  # never 401: B's workers know the user
                    refused = error
                else:
                    await extra.close()
                    assert time.monotonic() < deadline, "B never counted A's allocation"
                    await asyncio.sleep(SYNC_INTERVAL)
            await first.close()
            # A's allocation is gone: B grants one.
            second = await allocate_once_quota_allows(port_b, 5.0)
            await second.close()

        asyncio.run(scenario())
    finally:
        server.stop()


def test_every_worker_knows_the_users_and_counts_the_others_allocations(
    tmp_path: Path, serve_factory: Callable[..., ServeProcess]
) -> None:
    """Three TURN workers on one port: clients from many source ports land on all of them;
    each lets the Redis user in, and once the quota is used up in some workers, every worker
    refuses (486)."""
    quota = 4
    server = redisd.RedisServer(tmp_path)
    server.start()
    try:
        directory(server.url, {USER: PASSWORD}, {USER: quota})
        port = start(serve_factory, server.url, "turn-w", tmp_path, workers=3)

        async def scenario() -> None:
            held = [await allocate(port) for _ in range(quota)]
            # Every worker has read the others' counts after a few sync intervals.
            await asyncio.sleep(5 * SYNC_INTERVAL)
            for _ in range(8):
                with pytest.raises(AllocationError) as refused:
                    extra = await allocate(port)
                    await extra.close()
                assert refused.value.code == 486, refused.value
            for client in held:
                await client.close()
            again = await allocate_once_quota_allows(port, 5.0)
            await again.close()

        asyncio.run(scenario())
    finally:
        server.stop()


def test_a_member_that_stopped_syncing_is_dropped_from_the_directory(tmp_path: Path) -> None:
    """A TURN worker killed without leaving (kill -9) stops refreshing its alive key; once that
    and its counts have expired, the next sync of another member drops its name, so the set of
    members does not grow with every killed worker. A member that still holds allocations, or a
    live one, stays."""
    import redis.asyncio as aioredis

    from icerelay.daemon.cluster.keys import Keys
    from icerelay.daemon.cluster.turn_users import TurnDirectory
    from tests.unit.turn.server_helpers import make_engine

    server = redisd.RedisServer(tmp_path)
    server.start()
    try:

        async def scenario() -> tuple[set[str], set[str]]:
            client = aioredis.Redis.from_url(server.url, decode_responses=True)
            keys = Keys("icerelay")
            engine, _ = make_engine()
            ttl = 0.3
            dead = TurnDirectory(keys, "a:1", ttl=ttl)
            holder = TurnDirectory(keys, "a:2", ttl=ttl)
            live = TurnDirectory(keys, "b:1", ttl=ttl)
            for member in (dead, holder, live):
                await member.sync(client, engine)
            # "a:2" holds allocations (written as an older member would: no alive key).
            await client.hset(keys.turn_allocations("a:2"), mapping={"alice": 1})
            await client.delete(keys.turn_alive("a:2"))
            await asyncio.sleep(ttl + 0.2)  # "a:1" and "a:2" sync no more
            await live.sync(client, engine)
            after = set(await client.smembers(keys.turn_members))
            await client.delete(keys.turn_allocations("a:2"))
            await live.sync(client, engine)
            final = set(await client.smembers(keys.turn_members))
            await client.aclose()
            return after, final

        after, final = asyncio.run(scenario())
        assert after == {"a:2", "b:1"}  # the dead member without counts is gone
        assert final == {"b:1"}  # the other one too, once its counts are gone
    finally:
        server.stop()
