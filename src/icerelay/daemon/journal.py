"""The relay's durable local journal: an SQLite file in the state directory.

Every session record is committed here before the relay acknowledges the ``delete`` that ended
it, and live calls are checkpointed here every few seconds; :class:`~.accounting.Accounting`
moves committed records on into the configured database when it is reachable. So a database
outage, a restart or a ``kill -9`` loses no record:

- ``records``: records not yet delivered to the database, in order (``seq``), each with its
  ``record_id`` (unique: the same session is never queued twice).
- ``live``: the record each live call would get if the relay died now (reason ``interrupted``,
  or ``deleted`` for a call deleted during its grace period), replaced at every checkpoint. On the
  next start :meth:`Journal.recover` moves these rows into ``records`` as they are.
- ``meta``: ``delivered``, the ``seq`` of the last record the database has (the journal
  position other components, a cluster peer say, can read with :meth:`Journal.position`).

Durability: WAL with ``synchronous=FULL``: each commit is fsynced to the WAL, so an acknowledged
record survives a kill -9 and also a power cut. NORMAL would survive a kill -9 (the WAL is in
the page cache) but not a power cut, and a record is money; FULL costs one fsync per commit,
and a commit carries every record of one control request (or one timer tick), which is well
within what one worker serving control requests in order can use.

The journal belongs to one relay at a time: an exclusive ``flock`` on ``journal.lock`` makes a
second relay on the same state directory fail at start instead of recovering (and so
recording twice) the first one's live calls. The directory is created 0700 and the files 0600:
records name who called whom.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from icerelay.errors import ConfigError
from icerelay.relay.records import (
    SessionRecord,
    StreamEndReason,
    StreamRecord,
    TerminationReason,
)
from icerelay.stun import Address

__all__ = [
    "JOURNAL_NAME",
    "Journal",
    "JournalPosition",
    "journaled",
    "make_private_directory",
    "make_private_file",
    "record_from_json",
    "record_to_json",
]

JOURNAL_NAME = "journal.sqlite3"
_LOCK_NAME = "journal.lock"
#: Committed records kept decoded for the replayer (see ``Journal._committed``).
_COMMITTED_KEPT = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS live (
    record_id TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('delivered', 0);
"""


@dataclass(frozen=True, slots=True)
class JournalPosition:
    """Where the journal stands: the last ``seq`` committed and the last delivered, records
    waiting for the database, and live calls in the last checkpoint."""

    appended: int
    delivered: int
    pending: int
    live: int


def make_private_directory(path: Path) -> None:
    """Create ``path`` (and parents) if missing; a directory we create is 0700."""
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        # mkdir's mode is filtered by the umask; what we created must be ours alone.
        os.chmod(path, 0o700)


def make_private_file(path: Path) -> None:
    """Create ``path`` 0600 if missing (before SQLite opens it, so that it never exists with
    the umask's wider mode); tighten an existing file that others may read."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


class Journal:
    """The journal file (see the module docstring); thread-safe, blocking.

    Methods that write for the relay (:meth:`commit`, :meth:`checkpoint`, :meth:`recover`)
    share one connection; :meth:`pending` and :meth:`delivered` (the replayer's) another, so a
    slow database never holds the relay's commits.
    """

    def __init__(self, state_dir: str | Path) -> None:
        self.directory = Path(state_dir)
        self.path = self.directory / JOURNAL_NAME
        self._lock_file: int | None = None
        try:
            make_private_directory(self.directory)
            self._lock_file = os.open(self.directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(
                    f"the state directory {self.directory} is in use by another relay"
                    " (set relay.state_dir to a directory of its own)"
                ) from None
            make_private_file(self.path)
            self._writer = self._connect()
            self._writer.executescript(_SCHEMA)
            self._reader = self._connect()
        except (OSError, sqlite3.Error) as error:
            self._unlock()
            raise ConfigError(
                f"cannot open the journal {self.path}: {error} (set relay.state_dir to a"
                " writable directory)"
            ) from None
        except ConfigError:
            self._unlock()
            raise
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        # The records this process committed, by seq, as :meth:`pending` would decode them:
        # the replayer takes them from here instead of parsing their JSON again. Bounded (a
        # database down for long lets records pile up); beyond, and after a restart, the
        # rows are decoded as always.
        self._committed: dict[int, SessionRecord] = {}
        self._committed_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=30.0
        )
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        return connection

    def _unlock(self) -> None:
        if self._lock_file is not None:
            os.close(self._lock_file)
            self._lock_file = None

    # -- the relay's side ---------------------------------------------------------------------

    def commit(
        self, ended: Sequence[SessionRecord], deleting: Sequence[SessionRecord] = ()
    ) -> None:
        """Commit ended sessions' records (their live rows go) and the record-to-be of calls
        deleted with a grace period, in one durable transaction."""
        if not ended and not deleting:
            return
        added: list[tuple[int, SessionRecord]] = []
        with self._write_lock:
            with _transaction(self._writer) as cursor:
                for record in deleting:
                    cursor.execute(
                        "INSERT OR REPLACE INTO live (record_id, body) VALUES (?, ?)",
                        (_record_id(record), record_to_json(record)),
                    )
                for record in ended:
                    record_id = _record_id(record)
                    stored = _with_id(record, record_id)
                    cursor.execute(
                        "INSERT OR IGNORE INTO records (record_id, body) VALUES (?, ?)",
                        (record_id, record_to_json(stored)),
                    )
                    if cursor.rowcount == 1 and cursor.lastrowid is not None:
                        added.append((cursor.lastrowid, stored))
                    cursor.execute("DELETE FROM live WHERE record_id = ?", (record_id,))
            # Committed: the replayer may take them as they are (still under the write lock,
            # so that they go in in seq order).
            with self._committed_lock:
                committed = self._committed
                for seq, record in added:
                    if len(committed) >= _COMMITTED_KEPT:
                        break
                    committed[seq] = journaled(record)

    def checkpoint(self, live: Iterable[SessionRecord]) -> int:
        """Replace the live calls' rows with ``live`` (their records if the relay died now)."""
        rows = [(_record_id(record), record_to_json(record)) for record in live]
        with self._write_lock, _transaction(self._writer) as cursor:
            cursor.execute("DELETE FROM live")
            cursor.executemany("INSERT OR REPLACE INTO live (record_id, body) VALUES (?, ?)", rows)
        return len(rows)

    def recover(self, skip: Collection[str] = ()) -> int:
        """Turn the live rows a dead relay left into records (as checkpointed: ``interrupted``
        with their last counters, or ``deleted``); returns how many. Run once at start.

        ``skip``: Call-IDs whose rows are dropped instead (another cluster instance adopted
        those calls and writes their records: one record per call).
        """
        with self._write_lock, _transaction(self._writer) as cursor:
            rows = cursor.execute("SELECT record_id, body FROM live ORDER BY rowid").fetchall()
            if skip:
                rows = [row for row in rows if record_from_json(row[1]).call_id not in skip]
            cursor.executemany(
                "INSERT OR IGNORE INTO records (record_id, body) VALUES (?, ?)", rows
            )
            cursor.execute("DELETE FROM live")
        return len(rows)

    # -- the replayer's side ------------------------------------------------------------------

    def pending(self, limit: int) -> list[tuple[int, SessionRecord]]:
        """The oldest ``limit`` records not yet delivered, with their ``seq``."""
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT seq, body FROM records ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        with self._committed_lock:
            known = [self._committed.get(seq) for seq, _ in rows]
        return [
            (seq, record_from_json(body) if record is None else record)
            for (seq, body), record in zip(rows, known, strict=True)
        ]

    def delivered(self, seq: int) -> None:
        """The database has every record up to ``seq``: drop them from the journal."""
        with self._read_lock, _transaction(self._reader) as cursor:
            cursor.execute("DELETE FROM records WHERE seq <= ?", (seq,))
            cursor.execute(
                "UPDATE meta SET value = max(value, ?) WHERE key = 'delivered'", (seq,)
            )
        with self._committed_lock:
            committed = self._committed
            # In seq order (commits insert in order): drop from the front.
            while committed:
                first = next(iter(committed))
                if first > seq:
                    break
                del committed[first]

    def position(self) -> JournalPosition:
        """Where the journal stands (any thread)."""
        with self._read_lock:
            reader = self._reader
            (delivered,) = reader.execute(
                "SELECT value FROM meta WHERE key = 'delivered'"
            ).fetchone()
            (pending,) = reader.execute("SELECT count(*) FROM records").fetchone()
            (live,) = reader.execute("SELECT count(*) FROM live").fetchone()
            row = reader.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'records'"
            ).fetchone()
        return JournalPosition(
            appended=row[0] if row else 0, delivered=delivered, pending=pending, live=live
        )

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` ("ok" when the file is sound)."""
        with self._read_lock:
            (result,) = self._reader.execute("PRAGMA integrity_check").fetchone()
        return str(result)

    def close(self) -> None:
        """Close the connections and release the directory."""
        with contextlib.suppress(sqlite3.Error):
            self._writer.close()
        with contextlib.suppress(sqlite3.Error):
            self._reader.close()
        self._unlock()


@contextlib.contextmanager
def _transaction(connection: sqlite3.Connection) -> Any:
    cursor = connection.cursor()
    # IMMEDIATE: take the write lock up front, so two connections never deadlock upgrading.
    cursor.execute("BEGIN IMMEDIATE")
    try:
        yield cursor
    except BaseException:
        cursor.execute("ROLLBACK")
        raise
    cursor.execute("COMMIT")


def journaled(record: SessionRecord) -> SessionRecord:
    """``record`` as :func:`record_from_json` gives it back from its row: the JSON form leaves
    out the step-aside details (a stream's paths and when the relay stepped aside)."""
    default = _DEFAULT_PATHS
    if all(
        (s.path_from_caller, s.path_from_callee, s.stepped_aside) == default
        for s in record.streams
    ):
        return record
    streams = tuple(
        replace(s, path_from_caller="none", path_from_callee="none", stepped_aside=None)
        for s in record.streams
    )
    return replace(record, streams=streams)


_DEFAULT_PATHS = ("none", "none", None)


def _record_id(record: SessionRecord) -> str:
    # Every engine record has one; a record made elsewhere gets a fresh one (never merged).
    return record.record_id or uuid.uuid4().hex


def _with_id(record: SessionRecord, record_id: str) -> SessionRecord:
    if record.record_id == record_id:
        return record
    return replace(record, record_id=record_id)


# -- the record's JSON form -------------------------------------------------------------------


def _address(value: Address | None) -> list[object] | None:
    return None if value is None else [value.host, value.port]


def _from_address(value: Any) -> Address | None:
    return None if value is None else Address(str(value[0]), int(value[1]))


#: json.dumps(..., separators=...) builds an encoder per call; one shared (it keeps no state
#: between calls) writes the same text in half the time.
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def record_to_json(record: SessionRecord) -> str:
    """``record`` as one JSON object (the journal's row body)."""
    return _COMPACT.encode(
        {
            "record_id": record.record_id,
            "call_id": record.call_id,
            "from_tag": record.from_tag,
            "to_tag": record.to_tag,
            "via_branch": record.via_branch,
            "created": record.created,
            "answered": record.answered,
            "ended": record.ended,
            "reason": str(record.reason),
            "caller_user_agent": record.caller_user_agent,
            "callee_user_agent": record.callee_user_agent,
            "metadata": [list(item) for item in record.metadata],
            "streams": [
                {
                    "index": s.index,
                    "media": s.media,
                    "codec": s.codec,
                    "caller": _address(s.caller),
                    "callee": _address(s.callee),
                    "caller_latched": _address(s.caller_latched),
                    "callee_latched": _address(s.callee_latched),
                    "packets_from_caller": s.packets_from_caller,
                    "bytes_from_caller": s.bytes_from_caller,
                    "packets_from_callee": s.packets_from_callee,
                    "bytes_from_callee": s.bytes_from_callee,
                    "relay_ports": list(s.relay_ports),
                    "end_reason": None if s.end_reason is None else str(s.end_reason),
                    "rtcp_packets_from_caller": s.rtcp_packets_from_caller,
                    "rtcp_packets_from_callee": s.rtcp_packets_from_callee,
                }
                for s in record.streams
            ],
        },
    )


def record_from_json(body: str) -> SessionRecord:
    """The :class:`SessionRecord` :func:`record_to_json` wrote."""
    data = json.loads(body)
    return SessionRecord(
        call_id=data["call_id"],
        from_tag=data["from_tag"],
        to_tag=data["to_tag"],
        via_branch=data["via_branch"],
        created=data["created"],
        answered=data["answered"],
        ended=data["ended"],
        reason=TerminationReason(data["reason"]),
        streams=tuple(
            StreamRecord(
                index=s["index"],
                media=s["media"],
                codec=s["codec"],
                caller=_from_address(s["caller"]),
                callee=_from_address(s["callee"]),
                caller_latched=_from_address(s["caller_latched"]),
                callee_latched=_from_address(s["callee_latched"]),
                packets_from_caller=s["packets_from_caller"],
                bytes_from_caller=s["bytes_from_caller"],
                packets_from_callee=s["packets_from_callee"],
                bytes_from_callee=s["bytes_from_callee"],
                relay_ports=(s["relay_ports"][0], s["relay_ports"][1]),
                end_reason=None if s["end_reason"] is None else StreamEndReason(s["end_reason"]),
                rtcp_packets_from_caller=s["rtcp_packets_from_caller"],
                rtcp_packets_from_callee=s["rtcp_packets_from_callee"],
            )
            for s in data["streams"]
        ),
        caller_user_agent=data["caller_user_agent"],
        callee_user_agent=data["callee_user_agent"],
        metadata=tuple((str(k), str(v)) for k, v in data["metadata"]),
        record_id=data["record_id"],
    )
