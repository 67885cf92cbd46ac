"""What a restarting instance must not recover: its calls another instance adopted.

An instance killed with live calls finds them in its accounting journal when it starts again,
and would write an ``interrupted`` record for each. If another instance adopted those calls
meanwhile, the adopter writes their records when they end: recovering them too would count
each call twice. The adopter marks every call it takes in ``P:adopted:I``;
:func:`take_adopted` reads those marks (and removes them: they are consumed once) so that the
journal's recovery skips these calls. It runs before the relay starts, with its own short-lived
connection; an unreachable Redis yields ``None`` (recover everything: a call counted twice is
better than a call lost, and the operator is told).
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from icerelay.daemon.cluster.keys import Keys
from icerelay.daemon.cluster_config import ClusterConfig

__all__ = ["take_adopted"]

logger = logging.getLogger("icerelay.cluster")


async def take_adopted(config: ClusterConfig, timeout: float = 2.0) -> set[str] | None:
    """Call-IDs of this instance's calls that other instances adopted; the marks are removed.

    None when Redis cannot be asked (the caller then recovers everything and says so).
    """
    if not config.enabled:
        return set()
    keys = Keys(config.key_prefix)
    client = aioredis.Redis.from_url(config.redis, decode_responses=True)
    try:
        async with asyncio.timeout(timeout):
            async with client.pipeline(transaction=True) as pipe:
                pipe.hgetall(keys.adopted(config.instance))
                pipe.delete(keys.adopted(config.instance))
                marks, _ = await pipe.execute()
    except (RedisError, OSError, TimeoutError) as error:
        logger.warning(
            "cluster.adopted_unknown",
            extra={"instance": config.instance, "reason": f"{type(error).__name__}: {error}"},
        )
        return None
    finally:
        await client.aclose()
    return {str(call_id) for call_id, adopter in marks.items() if adopter != config.instance}
