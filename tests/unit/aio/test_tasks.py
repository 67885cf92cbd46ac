"""cancel_and_wait (icerelay.aio.tasks), how services stop their background tasks: a
cancellation swallowed by the task's code (Python 3.11's wait_for, as redis-py uses it) is
repeated, a task that never stops is given up after the bound, a failed task is logged."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest

from icerelay.aio.tasks import cancel_and_wait


def test_a_cancellation_swallowed_by_wait_for_is_repeated() -> None:
    """The cluster service's hang at stop, made deterministic: its periodic job loops over
    Redis commands, each sent under ``wait_for``; the stop's cancel lands when the send has
    completed but the task has not resumed yet. On 3.11 wait_for returns the result and the
    cancellation is lost: ``task.cancel(); await task`` waits forever."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        operations: list[asyncio.Future[None]] = []
        rounds = 0

        async def periodic_job() -> None:
            nonlocal rounds
            while True:
                operation: asyncio.Future[None] = loop.create_future()
                operations.append(operation)
                await asyncio.wait_for(operation, 10)
                rounds += 1

        task = asyncio.create_task(periodic_job())
        await asyncio.sleep(0)  # the task waits for its first operation
        operations[-1].set_result(None)  # done; wait_for's waiter is released next turn
        await asyncio.sleep(0)  # the waiter is done, the task not resumed yet
        task.cancel()
        for _ in range(3):
            await asyncio.sleep(0)
        if sys.version_info < (3, 12):
            # Swallowed: the job went on to its next round, as if never cancelled.
            assert not task.done() and rounds == 1 and len(operations) == 2
        assert await cancel_and_wait([task], interval=0.01, limit=5) == []
        assert task.cancelled()

    asyncio.run(scenario())


def test_a_task_that_never_stops_is_given_up_after_the_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        released = asyncio.Event()
        cancellations = 0

        async def stubborn() -> None:
            nonlocal cancellations
            while not released.is_set():
                try:
                    await asyncio.sleep(10)
                except asyncio.CancelledError:
                    cancellations += 1

        task = asyncio.create_task(stubborn())
        await asyncio.sleep(0)
        left = await cancel_and_wait([task], interval=0.01, limit=0.1)
        assert left == [task] and not task.done()
        assert cancellations > 1  # cancelled again, not only once
        released.set()
        task.cancel()
        await task

    with caplog.at_level(logging.WARNING, logger="icerelay.aio"):
        asyncio.run(scenario())
    assert [r.getMessage() for r in caplog.records] == ["aio.tasks_not_stopped"]


def test_a_failed_task_is_logged_and_the_others_are_stopped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> tuple[asyncio.Task[None], asyncio.Task[None]]:
        async def fails() -> None:
            raise RuntimeError("bug")

        async def sleeps() -> None:
            await asyncio.sleep(10)

        failed, sleeping = asyncio.create_task(fails()), asyncio.create_task(sleeps())
        await asyncio.sleep(0)
        assert await cancel_and_wait([failed, sleeping]) == []
        return failed, sleeping

    with caplog.at_level(logging.ERROR, logger="icerelay.aio"):
        failed, sleeping = asyncio.run(scenario())
    assert sleeping.cancelled() and isinstance(failed.exception(), RuntimeError)
    assert [r.getMessage() for r in caplog.records] == ["aio.task_failed"]
