"""TURN users, REST API secrets and per-user allocation quotas in Redis, across instances.

Like coturn's redis-userdb, with a key layout of our own (:mod:`.keys`): an operator adds a user
with ``HSET icerelay:turn:users alice s3cret``, a secret with ``SADD icerelay:turn:secrets ...``
and a quota with ``HSET icerelay:turn:quotas alice 5``.

Every TURN worker process of every instance is a *member* of the directory, named
``instance:worker``: it has its own Redis connection (:class:`DirectorySync`), reads users,
secrets and quotas on its sync interval and hands them to its own TURN engine (which stays
synchronous: nothing waits for Redis on the packet or request path). Each member publishes how
many allocations each user holds in its engine, under a key that expires unless refreshed
(a dead instance's or worker's allocations stop counting after the TTL), and reads the other
members' numbers, so that a user's quota counts the allocations it holds anywhere in the
cluster, in any worker.

Between two syncs, two members may each grant the last allocation a quota allows: the quota
is exact per worker and exact across the cluster within one sync interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from icerelay.daemon.cluster.keys import Keys
from icerelay.turn.server.engine import TurnServerEngine

__all__ = ["DirectorySettings", "DirectorySync", "TurnDirectory"]

logger = logging.getLogger("icerelay.cluster")

_REDIS_ERRORS = (RedisError, OSError, TimeoutError)

# Seconds a worker waits for its first sync before it serves (users unknown until then: 401).
_FIRST_SYNC_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class DirectorySettings:
    """Where the directory is and how often it is read (JSON-ready: workers get a copy)."""

    redis: str
    key_prefix: str
    instance: str
    #: Seconds a member's published counts live unless refreshed.
    ttl: float
    #: Seconds between two syncs.
    interval: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DirectorySettings:
        return cls(
            redis=str(data["redis"]),
            key_prefix=str(data["key_prefix"]),
            instance=str(data["instance"]),
            ttl=float(data["ttl"]),
            interval=float(data["interval"]),
        )


class TurnDirectory:
    """Keeps one TURN engine's users, secrets and cluster-wide quota counts in step.

    :param member: this engine's name in the directory (instance and worker).
    """

    def __init__(self, keys: Keys, member: str, *, ttl: float) -> None:
        self.keys = keys
        self.member = member
        self.ttl = ttl
        self._published: dict[str, int] | None = None
        self.users = 0
        self.secrets = 0

    async def sync(self, redis: aioredis.Redis, engine: TurnServerEngine) -> None:
        """Read users, secrets and quotas; publish this member's per-user counts; read the
        other members' counts (two round trips)."""
        keys = self.keys
        mine = dict(engine.state.per_user)
        own = keys.turn_allocations(self.member)
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(keys.turn_users)
            pipe.smembers(keys.turn_secrets)
            pipe.hgetall(keys.turn_quotas)
            if mine != self._published:
                pipe.delete(own)
                if mine:
                    pipe.hset(own, mapping=_mapping(mine))
            pipe.pexpire(own, int(self.ttl * 1000))
            pipe.set(keys.turn_alive(self.member), "1", px=int(self.ttl * 1000))
            # Every time: a Redis that restarted empty may not have said so.
            pipe.sadd(keys.turn_members, self.member)
            pipe.smembers(keys.turn_members)
            results = await pipe.execute()
        self._published = mine
        others = sorted(_text(name) for name in results[-1] if _text(name) != self.member)
        elsewhere: dict[str, int] = {}
        if others:
            async with redis.pipeline(transaction=False) as pipe:
                for name in others:
                    pipe.hgetall(keys.turn_allocations(name))
                    pipe.exists(keys.turn_alive(name))
                answers = await pipe.execute()
            gone = []
            for name, values, alive in zip(others, answers[::2], answers[1::2], strict=True):
                if not values and not alive:
                    # A member that stopped syncing (killed: a clean stop leaves by itself)
                    # and holds nothing: dropped, or every sync would ask for it forever.
                    # One that still has counts (or an older version, which sets no alive
                    # key) stays until they expire.
                    gone.append(name)
                for user, count in _counts(values).items():
                    elsewhere[user] = elsewhere.get(user, 0) + count
            if gone:
                await redis.srem(keys.turn_members, *gone)
        users = {_text(k): _text(v) for k, v in results[0].items()}
        secrets = sorted(_text(secret) for secret in results[1])
        engine.auth.update_users(users, secrets)
        engine.state.elsewhere = elsewhere
        engine.state.user_quotas = _counts(results[2])
        self.users, self.secrets = len(users), len(secrets)

    async def leave(self, redis: aioredis.Redis) -> None:
        """Withdraw this member's counts (a clean stop: its allocations are gone)."""
        async with redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.turn_allocations(self.member))
            pipe.delete(self.keys.turn_alive(self.member))
            pipe.srem(self.keys.turn_members, self.member)
            await pipe.execute()


class DirectorySync:
    """One TURN worker's Redis connection and sync task (each worker process has its own:
    the kernel spreads clients over the workers, so each must know every user).

    An unreachable Redis is not fatal: the engine keeps the users it last read; the outage is
    logged once, and its end too.
    """

    def __init__(self, settings: DirectorySettings, engine: TurnServerEngine, worker: int) -> None:
        self.settings = settings
        self.engine = engine
        self.worker = worker
        self.directory = TurnDirectory(
            Keys(settings.key_prefix), f"{settings.instance}:{worker}", ttl=settings.ttl
        )
        self._redis: aioredis.Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self.failing = False

    @classmethod
    def from_json(
        cls, settings: dict[str, Any], engine: TurnServerEngine, worker: int
    ) -> DirectorySync:
        """From :meth:`DirectorySettings.to_json` (what a worker process is handed)."""
        return cls(DirectorySettings.from_json(settings), engine, worker)

    async def start(self) -> None:
        """Connect and sync once (bounded: the users are known before the first request, if
        Redis answers), then sync every interval."""
        interval = self.settings.interval
        self._redis = aioredis.Redis.from_url(
            self.settings.redis,
            decode_responses=True,
            socket_timeout=max(interval, 0.25),
            socket_connect_timeout=max(interval, 0.25),
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_FIRST_SYNC_TIMEOUT):
                await self.sync()
        self._task = asyncio.create_task(self._run(), name=f"turn-directory-{self.worker}")

    async def sync(self) -> None:
        redis = self._redis
        if redis is None:
            return
        try:
            await self.directory.sync(redis, self.engine)
        except _REDIS_ERRORS as error:
            if not self.failing:
                self.failing = True
                logger.warning(
                    "cluster.turn_directory_unreachable",
                    extra={
                        "member": self.directory.member,
                        "reason": f"{type(error).__name__}: {error}",
                    },
                )
            return
        if self.failing:
            self.failing = False
            logger.info("cluster.turn_directory_back", extra={"member": self.directory.member})

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.interval)
            try:
                await self.sync()
            except Exception:
                # A bug here must not stop the syncs for good; it is logged loudly.
                logger.exception("cluster.turn_directory_failed")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        redis, self._redis = self._redis, None
        if redis is None:
            return
        with contextlib.suppress(*_REDIS_ERRORS):
            async with asyncio.timeout(1.0):
                await self.directory.leave(redis)
        with contextlib.suppress(*_REDIS_ERRORS):
            await redis.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _counts(values: dict[Any, Any]) -> dict[str, int]:
    """Numbers from a hash; a value that is not a number is skipped (Redis is input too)."""
    out: dict[str, int] = {}
    for key, value in values.items():
        try:
            out[_text(key)] = max(0, int(_text(value)))
        except ValueError:
            continue
    return out


def _mapping(values: dict[str, int]) -> dict[Any, Any]:
    return dict(values)
