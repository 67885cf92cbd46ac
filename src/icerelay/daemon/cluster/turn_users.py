"""TURN users, REST API secrets and per-user allocation quotas in Redis, across instances.

Like coturn's redis-userdb, with a key layout of our own (:mod:`.keys`): an operator adds a user
with ``HSET icerelay:turn:users alice s3cret``, a secret with ``SADD icerelay:turn:secrets ...``
and a quota with ``HSET icerelay:turn:quotas alice 5``. Every instance reads them on its sync
interval and hands them to its TURN engine (which stays synchronous: nothing waits for Redis on
the packet or request path). Each instance also publishes how many allocations each user holds
on it, with a TTL, and reads the other live instances' numbers, so that a user's quota counts
the allocations it holds anywhere in the cluster.

Between two syncs, two instances may each grant the last allocation a quota allows: the quota
is exact per instance and exact across the cluster within one sync interval.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis

from icerelay.daemon.cluster.keys import Keys
from icerelay.turn.server.engine import TurnServerEngine

__all__ = ["TurnDirectory"]


class TurnDirectory:
    """Keeps one TURN engine's users, secrets and cluster-wide quota counts in step."""

    def __init__(self, keys: Keys, instance: str, *, ttl: float) -> None:
        self.keys = keys
        self.instance = instance
        self.ttl = ttl
        self._published: dict[str, int] | None = None
        self.users = 0
        self.secrets = 0

    async def sync(
        self, redis: aioredis.Redis, engine: TurnServerEngine, others: Iterable[str]
    ) -> None:
        """Read users, secrets and quotas; publish this instance's per-user counts; read the
        counts of the ``others`` (live instances)."""
        keys = self.keys
        others = [name for name in others if name != self.instance]
        mine = dict(engine.state.per_user)
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.turn_users)
            pipe.smembers(keys.turn_secrets)
            pipe.hgetall(keys.turn_quotas)
            for name in others:
                pipe.hgetall(keys.turn_allocations(name))
            own = keys.turn_allocations(self.instance)
            if mine != self._published:
                pipe.delete(own)
                if mine:
                    pipe.hset(own, mapping=_mapping(mine))
            pipe.pexpire(own, int(self.ttl * 1000))
            results = await pipe.execute()
        self._published = mine
        users = {_text(k): _text(v) for k, v in results[0].items()}
        secrets = sorted(_text(secret) for secret in results[1])
        quotas = _counts(results[2])
        elsewhere: dict[str, int] = {}
        for counts in results[3 : 3 + len(others)]:
            for user, count in _counts(counts).items():
                elsewhere[user] = elsewhere.get(user, 0) + count
        engine.auth.update_users(users, secrets)
        engine.state.elsewhere = elsewhere
        engine.state.user_quotas = quotas
        self.users, self.secrets = len(users), len(secrets)


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
