"""The relay service's records: what happens to a session's record between the engine and the
database, in the asyncio shell.

- :func:`open_accounting` opens the journal in the state directory and the configured target
  (a target that cannot be reached now is retried by the replayer; the default SQLite path falls
  back to the user's state directory for an ordinary user).
- :class:`RelayRecords` logs each ended session, hands it to an optional sink (tests), and
  commits it to the journal before the reply to the request that ended it leaves (group commit:
  replies wait for their records' commit while the worker goes on, so one fsync serves every
  record made meanwhile). It also checkpoints the live calls every ``checkpoint_interval``.

Records carry wall-clock times; the engine runs on the loop's monotonic clock, so each record
is shifted by :attr:`RelayRecords.wall_offset` on its way in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor

from icerelay.daemon.accounting import Accounting, PostgresTarget, SqliteTarget, open_target
from icerelay.daemon.journal import Journal
from icerelay.daemon.relay_config import (
    DEFAULT_ACCOUNTING,
    RelayServiceConfig,
    user_state_accounting,
)
from icerelay.errors import RelayError
from icerelay.relay.sessions import SessionEngine, SessionRecord

__all__ = ["RecordSink", "RelayRecords", "Reply", "open_accounting"]

logger = logging.getLogger("icerelay.relay")

#: Receives each session's accounting record when it ends (with wall-clock times).
RecordSink = Callable[[SessionRecord], None]
#: Sends a control reply (None: nothing to send).
Reply = Callable[[bytes | None], None]

# Calls snapshotted per turn of the event loop at a checkpoint (about 5 ms of work).
_CHECKPOINT_SLICE = 200


def open_accounting(
    config: RelayServiceConfig, skip: Collection[str] = ()
) -> Accounting | None:
    """The journal and the configured target (blocking); None when ``accounting`` is empty.

    A target that cannot be reached now is retried by the replayer (records wait in the
    journal). A journal that cannot be opened fails the start (ConfigError): records must not
    be silently dropped."""
    url = config.accounting
    target = open_target(url)
    if target is None:
        return None
    problem = _connect(target)
    if problem and url == DEFAULT_ACCOUNTING and not config.state_dir:
        # As an ordinary user (make run): the user's state directory instead of /var/lib.
        fallback = user_state_accounting()
        fallback_target = open_target(fallback)
        assert fallback_target is not None
        second = _connect(fallback_target)
        if not second:
            logger.info(
                "relay.accounting_fallback",
                extra={"wanted": url, "using": fallback, "reason": problem},
            )
            url, target, problem = fallback, fallback_target, ""
        else:
            problem = second
    if problem:
        logger.warning(
            "relay.accounting_unreachable",
            extra={
                "target": target.location,
                "reason": problem,
                "records": "kept in the journal and delivered when it is reachable",
            },
        )
    journal = Journal(config.state_directory(url))
    try:
        accounting = Accounting(journal, target, skip=skip)
    except Exception:
        journal.close()
        raise
    if accounting.recovered:
        logger.warning(
            "relay.calls_recovered",
            extra={"count": accounting.recovered, "journal": str(journal.path)},
        )
    return accounting


def _connect(target: SqliteTarget | PostgresTarget) -> str:
    """Connect ``target`` now; "" or why it cannot be reached."""
    try:
        target.connect()
    except RelayError as error:
        return str(error)
    return ""


class RelayRecords:
    """Session records from the engine to the journal (see the module docstring).

    :param sink: also receives each record (after the log line, before the journal commit).
    """

    def __init__(self, sink: RecordSink | None = None) -> None:
        self.sink = sink
        #: The journal and its replayer (None when ``accounting`` is empty: log only).
        self.accounting: Accounting | None = None
        #: Added to the engine's monotonic times to give Unix times.
        self.wall_offset = 0.0
        #: Journal commits and checkpoints that failed (records are kept for the next).
        self.journal_errors = 0
        # Records not yet committed: ended sessions, and the record-to-be of sessions deleted
        # with a grace period; the records of the commit under way; replies waiting for them.
        self._ended: list[SessionRecord] = []
        self._deleting: list[SessionRecord] = []
        self._committing: list[SessionRecord] = []
        self._replies: list[tuple[Reply, bytes | None]] = []
        self._commit_wake = asyncio.Event()
        # While a checkpoint is being collected (over several turns of the loop): what
        # happened to sessions meanwhile, by record_id (their deleting record, or None once
        # ended), so that the checkpoint never writes back a stale state.
        self._touched: dict[str, SessionRecord | None] | None = None
        # One thread for every journal write, so that they happen in the order they were made.
        self._executor: ThreadPoolExecutor | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self, config: RelayServiceConfig, skip: Collection[str] = ()) -> None:
        """Open the journal and the target (ConfigError if the journal cannot be opened);
        ``skip``: Call-IDs of calls a cluster peer adopted, left out of the recovery."""
        self.accounting = await asyncio.to_thread(open_accounting, config, skip)
        if self.accounting is not None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="relay-journal")

    async def close(self) -> None:
        """Finish the journal writes, make one last delivery attempt, close."""
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, True)
        accounting, self.accounting = self.accounting, None
        if accounting is not None:
            await asyncio.to_thread(accounting.close)

    @property
    def journaled(self) -> bool:
        """Whether records go to a journal (else only to the log and the sink)."""
        return self.accounting is not None and self._executor is not None

    @property
    def waiting(self) -> bool:
        """Records or replies are waiting for a commit."""
        return bool(self._ended or self._deleting or self._replies or self._committing)

    # -- from the engine ----------------------------------------------------------------------

    def wall(self, record: SessionRecord) -> SessionRecord:
        """``record`` with wall-clock times."""
        offset = self.wall_offset
        return dataclasses.replace(
            record,
            created=record.created + offset,
            answered=None if record.answered is None else record.answered + offset,
            ended=record.ended + offset,
            streams=tuple(
                stream
                if stream.stepped_aside is None
                else dataclasses.replace(stream, stepped_aside=stream.stepped_aside + offset)
                for stream in record.streams
            ),
        )

    def ended(self, record: SessionRecord) -> None:
        """A session ended (its record in engine time): log it, hand it on, queue it."""
        record = self.wall(record)
        logger.info(
            "relay.session_ended",
            extra={
                "call_id": record.call_id,
                "from_tag": record.from_tag,
                "to_tag": record.to_tag or "",
                "reason": str(record.reason),
                "duration": round(record.duration, 3),
                "packets": sum(
                    s.packets_from_caller + s.packets_from_callee for s in record.streams
                ),
            },
        )
        if self.journaled:
            self._ended.append(record)
        if self._touched is not None:
            self._touched[record.record_id] = None
        if self.sink is not None:
            try:
                self.sink(record)
            except Exception:
                logger.exception("relay.record_sink_failed")

    def deleting(self, record: SessionRecord) -> None:
        """A session was deleted with a grace period: ``record`` is what it will be recorded
        as; written down with the delete's reply, so that a crash meanwhile keeps it."""
        record = self.wall(record)
        if self.journaled:
            self._deleting.append(record)
        if self._touched is not None:
            self._touched[record.record_id] = record

    # -- commits ------------------------------------------------------------------------------

    def hand_over(
        self, reply: Reply | None, payload: bytes | None, *, after_commits: bool = False
    ) -> None:
        """Send ``payload`` now, or, when the request made records, once they are committed:
        the records of a ``delete`` are durable before the proxy hears back. ``after_commits``
        (a retransmission answered from a cache) waits for any commit under way too."""
        if after_commits and self.waiting and reply is not None:
            self._replies.append((reply, payload))
            self._commit_wake.set()
        elif self._ended or self._deleting:
            if reply is not None:
                self._replies.append((reply, payload))
            self._commit_wake.set()
        elif reply is not None:
            reply(payload)

    async def run_committer(self, after: Callable[[], None]) -> None:
        """Commit whenever :meth:`hand_over` asks, calling ``after`` after each commit."""
        while True:
            await self._commit_wake.wait()
            self._commit_wake.clear()
            await self.commit()
            after()

    async def commit(self) -> None:
        """Commit the records made since the last commit (durably; the loop keeps running),
        then send the replies that waited for them."""
        accounting, executor = self.accounting, self._executor
        replies, self._replies = self._replies, []
        if accounting is not None and executor is not None and (self._ended or self._deleting):
            ended, deleting = self._ended, self._deleting
            self._ended, self._deleting = [], []
            self._committing = ended + deleting
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(executor, accounting.journal.commit, ended, deleting)
            except Exception:
                # A full disk, say: keep them for the next commit (the checkpoint has them).
                self.journal_errors += 1
                logger.exception("relay.journal_failed", extra={"records": len(ended)})
                self._ended[:0] = ended
                self._deleting[:0] = deleting
            else:
                accounting.wake()
            finally:
                self._committing = []
        for reply, payload in replies:
            reply(payload)

    # -- checkpoints --------------------------------------------------------------------------

    async def run_checkpointer(self, engine: SessionEngine, interval: Callable[[], float]) -> None:
        """Every ``interval()`` seconds, write down each live call's record-if-we-died."""
        loop = asyncio.get_running_loop()
        last = 0
        while True:
            await asyncio.sleep(interval())
            accounting, executor = self.accounting, self._executor
            if accounting is None or executor is None:
                return
            live = await self._snapshot(engine)
            # Records made but not yet committed go in too, so that no moment exists when a
            # call is in neither table.
            live += self._committing + self._ended + self._deleting
            if not live and not last:
                continue
            try:
                last = await loop.run_in_executor(executor, accounting.journal.checkpoint, live)
            except Exception:
                self.journal_errors += 1
                logger.exception("relay.checkpoint_failed")

    async def _snapshot(self, engine: SessionEngine) -> list[SessionRecord]:
        # A slice of calls at a time, letting the loop relay packets in between: a snapshot
        # costs tens of microseconds per call. What happens to a call meanwhile is noted in
        # _touched and wins over the slice taken before; a row that is still stale is
        # harmless: the next checkpoint replaces it, and a record is stored once (record_id).
        loop = asyncio.get_running_loop()
        live: list[SessionRecord] = []
        call_ids = engine.call_ids()
        touched: dict[str, SessionRecord | None] = {}
        self._touched = touched
        try:
            for start in range(0, len(call_ids), _CHECKPOINT_SLICE):
                if start:
                    await asyncio.sleep(0)
                chunk = call_ids[start : start + _CHECKPOINT_SLICE]
                live += map(self.wall, engine.snapshot(loop.time(), chunk))
        finally:
            self._touched = None
        if not touched:
            return live
        return [
            record for record in (touched.get(r.record_id, r) for r in live) if record is not None
        ]
