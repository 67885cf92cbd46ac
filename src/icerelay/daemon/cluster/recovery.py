"""What a restarting instance must not recover: calls whose record another life will write.

An instance killed with live calls finds them in its accounting journal when it starts again,
and would write an ``interrupted`` record for each. Two kinds of these calls go on elsewhere,
and their one record is written when they really end:

- calls another instance adopted meanwhile (the adopter writes their records). The adopter
  marks every call it takes in ``P:adopted:I``; these marks are consumed once.
- calls still in ``P:calls:I`` (nobody adopted them: a lone instance, or a restart within the
  TTL): the restarted instance adopts them itself (the cluster service's first heartbeat), media
  goes on, and it records them when they end.

:func:`take_recovery` reads both in one transaction so that the journal's recovery skips these
calls. It runs before the relay starts, with its own short-lived connection; an unreachable
Redis yields ``None`` (recover everything, and resume nothing: a call is recorded once, as
``interrupted``, and the operator is told). Without a cluster nothing is skipped: calls live at
a kill -9 are recorded ``interrupted`` (issue 10).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from icerelay.daemon.cluster.keys import Keys
from icerelay.daemon.cluster_config import ClusterConfig

__all__ = ["Recovery", "take_adopted", "take_recovery"]

logger = logging.getLogger("icerelay.cluster")


@dataclass(frozen=True, slots=True)
class Recovery:
    """Calls of this instance's previous life that its journal must not record."""

    #: Call-IDs other instances adopted (they write the records).
    adopted_elsewhere: frozenset[str]
    #: Call-IDs this instance adopts back from Redis (it writes the records when they end).
    resumed: frozenset[str]

    @property
    def skip(self) -> set[str]:
        return set(self.adopted_elsewhere | self.resumed)


async def take_recovery(config: ClusterConfig, timeout: float = 2.0) -> Recovery | None:
    """What the journal's recovery skips; the adoption marks are removed.

    None when Redis cannot be asked (the caller then recovers everything and says so).
    """
    if not config.enabled:
        return Recovery(frozenset(), frozenset())
    keys = Keys(config.key_prefix)
    client = aioredis.Redis.from_url(config.redis, decode_responses=True)
    try:
        async with asyncio.timeout(timeout):
            async with client.pipeline(transaction=True) as pipe:
                pipe.hgetall(keys.adopted(config.instance))
                pipe.delete(keys.adopted(config.instance))
                pipe.hkeys(keys.calls(config.instance))
                marks, _, own = await pipe.execute()
    except (RedisError, OSError, TimeoutError) as error:
        logger.warning(
            "cluster.adopted_unknown",
            extra={"instance": config.instance, "reason": f"{type(error).__name__}: {error}"},
        )
        return None
    finally:
        await client.aclose()
    return Recovery(
        adopted_elsewhere=frozenset(
            str(call_id) for call_id, adopter in marks.items() if adopter != config.instance
        ),
        resumed=frozenset(str(call_id) for call_id in own),
    )


async def take_adopted(config: ClusterConfig, timeout: float = 2.0) -> set[str] | None:
    """Call-IDs of this instance's calls that other instances adopted; the marks are removed.

    None when Redis cannot be asked.
    """
    recovery = await take_recovery(config, timeout)
    return None if recovery is None else set(recovery.adopted_elsewhere)
