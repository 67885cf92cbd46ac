"""Stopping background tasks: cancelled until they are done, within a bound.

A single ``task.cancel()`` followed by ``await task`` can wait forever: a cancellation that
lands just as an awaited operation completes may be swallowed by the code the task is running.
Python 3.11's ``asyncio.wait_for`` does exactly that (it returns the finished operation's result
instead of raising ``CancelledError``; fixed in 3.12), and redis-py wraps every command it sends
in ``wait_for`` when a socket timeout is set. The task then goes on with its loop, and the
service's stop awaits it for good while its timers keep running. So a stop cancels again until
the task is done, and gives up (logged) after a bound rather than hang the daemon's stop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

__all__ = ["cancel_and_wait"]

logger = logging.getLogger("icerelay.aio")

#: Seconds between cancellations of a task that is not done yet. Long enough for a task's own
#: cleanup (a ``finally`` that closes a socket) to finish before it is interrupted again.
RECANCEL_INTERVAL = 0.25

#: Seconds a stop waits for its tasks at most.
STOP_LIMIT = 5.0


async def cancel_and_wait(
    tasks: Iterable[asyncio.Future[Any]],
    *,
    interval: float = RECANCEL_INTERVAL,
    limit: float = STOP_LIMIT,
) -> list[asyncio.Future[Any]]:
    """Cancel ``tasks`` and wait until they are done, cancelling again every ``interval``
    seconds those that are not (their cancellation was swallowed), for ``limit`` seconds at
    most. A task that failed is logged, not raised: the stop goes on with the rest. A
    cancellation of the caller itself propagates. Returns the tasks still not done."""
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while pending:
        for task in pending:
            task.cancel()
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(interval, remaining))
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            logger.error("aio.task_failed", exc_info=task.exception())
    if pending:
        logger.warning(
            "aio.tasks_not_stopped",
            extra={"tasks": ", ".join(sorted(str(task) for task in pending))},
        )
    return list(pending)
