"""What the TURN worker processes hold, gathered in the process that serves HTTP.

With ``workers > 1`` (the default "auto" is one per CPU) each worker process has its own engine
and allocations; the kernel spreads clients over them. ``/metrics``, the live page and
``icerelay ctl`` are served by the first process, so without this they showed only its share.

Each worker writes one JSON line per :data:`REPORT_INTERVAL` on its stdout (already the pipe
it says "ready" on): its counters, its gauges and its allocations (at most
:data:`MAX_ALLOCATIONS_REPORTED`, so a worker with many thousands does not spend its time
encoding JSON for a page nobody may be looking at). The parent keeps the latest report of each
worker and merges them with its own figures. Figures of other workers are up to one interval
old; a worker that exits drops out of the totals.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

from icerelay.aio.tasks import cancel_and_wait

__all__ = [
    "MAX_ALLOCATIONS_REPORTED",
    "REPORT_INTERVAL",
    "REPORT_LINE_LIMIT",
    "WorkerReports",
    "merge_counts",
    "publish_reports",
]

logger = logging.getLogger("icerelay.turn")

#: The parent's read limit for one report line (asyncio's default, 64 KiB, is too small).
REPORT_LINE_LIMIT = 1 << 20
#: Seconds between two reports of a worker.
REPORT_INTERVAL = 1.0
#: Allocations listed per worker report (the counts always cover all of them).
MAX_ALLOCATIONS_REPORTED = 200


def merge_counts(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum numeric fields over several status dicts; other fields keep their first value,
    except booleans, which are true when any part says so (``draining``)."""
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, bool):
                merged[key] = bool(merged.get(key)) or value
            elif isinstance(value, int | float):
                merged[key] = merged.get(key, 0) + value
            else:
                merged.setdefault(key, value)
    return merged


class WorkerReports:
    """The latest report of each worker process (parent side)."""

    def __init__(self) -> None:
        self._reports: dict[int, dict[str, Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.malformed = 0

    def follow(self, index: int, stream: asyncio.StreamReader) -> None:
        """Read worker ``index``'s reports until its stdout closes (it exited)."""
        self._tasks.append(asyncio.create_task(self._read(index, stream), name=f"turn-w{index}"))

    async def _read(self, index: int, stream: asyncio.StreamReader) -> None:
        try:
            while line := await stream.readline():
                try:
                    report = json.loads(line)
                except ValueError:
                    report = None
                if not isinstance(report, dict):
                    # Our own worker wrote it: say so, but never let it take the parent down.
                    self.malformed += 1
                    if self.malformed == 1:
                        logger.warning("turn.worker_report_malformed", extra={"worker": index})
                    continue
                self._reports[index] = report
        except (ValueError, ConnectionError):
            # A line longer than the stream's limit, or the pipe broke: stop following it.
            logger.warning("turn.worker_reports_lost", extra={"worker": index})
        finally:
            self._reports.pop(index, None)

    async def close(self) -> None:
        await cancel_and_wait(self._tasks)  # bounded: a stop never hangs on a reader
        self._tasks.clear()
        self._reports.clear()

    def status(self) -> list[dict[str, Any]]:
        """Each worker's counters and sizes (as :meth:`TurnService.status` gives its own)."""
        return [dict(report.get("status", {})) for _, report in sorted(self._reports.items())]

    def gauges(self) -> list[dict[str, int]]:
        """Each worker's allocation, permission and channel counts."""
        return [dict(report.get("gauges", {})) for _, report in sorted(self._reports.items())]

    def allocations(self) -> list[dict[str, Any]]:
        """The allocations the workers listed in their last reports."""
        views: list[dict[str, Any]] = []
        for index, report in sorted(self._reports.items()):
            for view in report.get("allocations", []):
                views.append({**view, "worker": index})
        return views


async def publish_reports(
    make_report: Callable[[], dict[str, Any]],
    out: IO[str],
    interval: float = REPORT_INTERVAL,
) -> None:
    """Worker side: write ``make_report()`` as one JSON line every ``interval`` seconds."""
    while True:
        line = json.dumps(make_report(), separators=(",", ":"), default=str)
        try:
            out.write(line + "\n")
            out.flush()
        except (BrokenPipeError, ValueError):
            return  # the parent is gone; the worker will be told to stop
        await asyncio.sleep(interval)
