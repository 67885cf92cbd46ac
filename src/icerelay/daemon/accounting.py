"""Accounting: one durable record per ended session, in SQLite (default) or PostgreSQL (by URL).

Records are handed over by the event loop (``write`` never blocks) and written by one background
thread, each batch in one transaction, so a burst of hang-ups costs one commit. ``close`` writes
whatever is still queued before returning: a graceful stop or restart loses nothing. A batch the
database refuses (PostgreSQL restarting, say) is kept and retried with the next one.

Schema (``sessions`` one row per session, ``streams`` one row per media stream)::

    sessions(id, call_id, from_tag, to_tag, via_branch, from_uri, to_uri, caller_user_agent,
             callee_user_agent, created, answered, ended, duration, reason, metadata)
    streams(session_id, stream_index, media, codec, caller_address, callee_address,
            caller_latched, callee_latched, packets_from_caller, bytes_from_caller,
            packets_from_callee, bytes_from_callee, relay_port_caller, relay_port_callee,
            end_reason)

Times are Unix seconds (REAL / DOUBLE PRECISION); ``metadata`` is a JSON object of the remaining
call facts.
"""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
from pathlib import Path
from typing import Any

from icerelay.errors import ConfigError, RelayError
from icerelay.relay.sessions import SessionRecord

__all__ = ["AccountingStore", "PostgresAccounting", "SqliteAccounting", "open_accounting"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,
    call_id TEXT NOT NULL,
    from_tag TEXT NOT NULL,
    to_tag TEXT,
    via_branch TEXT,
    from_uri TEXT,
    to_uri TEXT,
    caller_user_agent TEXT,
    callee_user_agent TEXT,
    created REAL NOT NULL,
    answered REAL,
    ended REAL NOT NULL,
    duration REAL NOT NULL,
    reason TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS sessions_call_id ON sessions (call_id);
CREATE INDEX IF NOT EXISTS sessions_ended ON sessions (ended);
CREATE TABLE IF NOT EXISTS streams (
    session_id INTEGER NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    stream_index INTEGER NOT NULL,
    media TEXT NOT NULL,
    codec TEXT,
    caller_address TEXT,
    callee_address TEXT,
    caller_latched TEXT,
    callee_latched TEXT,
    packets_from_caller INTEGER NOT NULL,
    bytes_from_caller INTEGER NOT NULL,
    packets_from_callee INTEGER NOT NULL,
    bytes_from_callee INTEGER NOT NULL,
    relay_port_caller INTEGER,
    relay_port_callee INTEGER,
    end_reason TEXT,
    PRIMARY KEY (session_id, stream_index)
);
"""

_POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id BIGSERIAL PRIMARY KEY,
    call_id TEXT NOT NULL,
    from_tag TEXT NOT NULL,
    to_tag TEXT,
    via_branch TEXT,
    from_uri TEXT,
    to_uri TEXT,
    caller_user_agent TEXT,
    callee_user_agent TEXT,
    created DOUBLE PRECISION NOT NULL,
    answered DOUBLE PRECISION,
    ended DOUBLE PRECISION NOT NULL,
    duration DOUBLE PRECISION NOT NULL,
    reason TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS sessions_call_id ON sessions (call_id);
CREATE INDEX IF NOT EXISTS sessions_ended ON sessions (ended);
CREATE TABLE IF NOT EXISTS streams (
    session_id BIGINT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    stream_index INTEGER NOT NULL,
    media TEXT NOT NULL,
    codec TEXT,
    caller_address TEXT,
    callee_address TEXT,
    caller_latched TEXT,
    callee_latched TEXT,
    packets_from_caller BIGINT NOT NULL,
    bytes_from_caller BIGINT NOT NULL,
    packets_from_callee BIGINT NOT NULL,
    bytes_from_callee BIGINT NOT NULL,
    relay_port_caller INTEGER,
    relay_port_callee INTEGER,
    end_reason TEXT,
    PRIMARY KEY (session_id, stream_index)
);
"""

# Records kept while the database refuses them; beyond this the oldest are dropped (counted).
MAX_PENDING = 10_000

# Sentinel telling the writer thread to finish.
_STOP = object()


class _BatchWriter:
    """The writer thread and queue shared by the stores; subclasses store one batch."""

    def __init__(self, name: str) -> None:
        self.written = 0
        self.failed = 0
        self._pending: list[SessionRecord] = []
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def write(self, record: SessionRecord) -> None:
        """Queue ``record`` for writing (returns at once)."""
        self._queue.put(record)

    def close(self) -> None:
        """Write everything still queued, then close the database."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        self._disconnect()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            stop = item is _STOP
            if isinstance(item, SessionRecord):
                self._pending.append(item)
            # Take whatever else is waiting: one transaction for the lot.
            while not stop:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                elif isinstance(item, SessionRecord):
                    self._pending.append(item)
            if self._pending:
                try:
                    self._store(self._pending)
                except Exception:
                    # Kept for the next batch; on close what still fails is counted as lost,
                    # and a database that stays away cannot make the relay hoard records.
                    if stop:
                        self.failed += len(self._pending)
                        self._pending = []
                    elif len(self._pending) > MAX_PENDING:
                        dropped = len(self._pending) - MAX_PENDING
                        self.failed += dropped
                        del self._pending[:dropped]
                else:
                    self.written += len(self._pending)
                    self._pending = []
            if stop:
                return

    def _store(self, batch: list[SessionRecord]) -> None:
        raise NotImplementedError

    def _disconnect(self) -> None:
        raise NotImplementedError


class SqliteAccounting(_BatchWriter):
    """Writes :class:`SessionRecord` s to an SQLite database (created if missing).

    :param path: the database file; its directory is created if needed.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__("relay-accounting")
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, check_same_thread=False)
            # WAL lets readers (reports, `sqlite3` in a shell) query while the relay writes;
            # synchronous=FULL makes each committed batch survive a power cut.
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA foreign_keys=ON")
            connection.executescript(_SCHEMA)
            connection.commit()
        except (OSError, sqlite3.Error) as error:
            raise RelayError(f"cannot open the accounting database {self.path}: {error}") from None
        self._connection = connection
        self._thread.start()

    @property
    def location(self) -> str:
        """Where the records go (for logs)."""
        return str(self.path)

    def _store(self, batch: list[SessionRecord]) -> None:
        with self._connection:
            for record in batch:
                _insert(self._connection, record)

    def _disconnect(self) -> None:
        self._connection.close()


class PostgresAccounting(_BatchWriter):
    """Writes :class:`SessionRecord` s to PostgreSQL (tables created if missing).

    :param url: a libpq connection URL, ``postgresql://user:password@host:port/database``.
    """

    def __init__(self, url: str) -> None:
        super().__init__("relay-accounting")
        try:
            import psycopg
        except ImportError:
            raise ConfigError(
                "PostgreSQL accounting needs psycopg: pip install 'icerelay[postgres]'"
            ) from None
        self._psycopg = psycopg
        self.url = url
        try:
            self._connection = psycopg.connect(url)
            with self._connection.transaction():
                self._connection.execute(_POSTGRES_SCHEMA)
        except psycopg.Error as error:
            raise RelayError(f"cannot open the accounting database: {error}") from None
        self._thread.start()

    @property
    def location(self) -> str:
        """Where the records go, without the password (for logs)."""
        info = self._connection.info
        return f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}"

    def _store(self, batch: list[SessionRecord]) -> None:
        if self._connection.closed:
            self._connection = self._psycopg.connect(self.url)
        try:
            with self._connection.transaction():
                for record in batch:
                    _insert_postgres(self._connection, record)
        except self._psycopg.OperationalError:
            # The server went away: reconnect next time, and let the batch be retried.
            self._connection.close()
            raise

    def _disconnect(self) -> None:
        self._connection.close()


_SESSION_COLUMNS = (
    "call_id, from_tag, to_tag, via_branch, from_uri, to_uri, caller_user_agent,"
    " callee_user_agent, created, answered, ended, duration, reason, metadata"
)
_STREAM_COLUMNS = (
    "session_id, stream_index, media, codec, caller_address, callee_address, caller_latched,"
    " callee_latched, packets_from_caller, bytes_from_caller, packets_from_callee,"
    " bytes_from_callee, relay_port_caller, relay_port_callee, end_reason"
)


def _session_row(record: SessionRecord) -> tuple[object, ...]:
    metadata = dict(record.metadata)
    from_uri = metadata.pop("from_uri", None)
    to_uri = metadata.pop("to_uri", None)
    return (
        record.call_id,
        record.from_tag,
        record.to_tag,
        record.via_branch,
        from_uri,
        to_uri,
        record.caller_user_agent,
        record.callee_user_agent,
        record.created,
        record.answered,
        record.ended,
        record.duration,
        str(record.reason),
        json.dumps(metadata, sort_keys=True),
    )


def _stream_rows(session_id: object, record: SessionRecord) -> list[tuple[object, ...]]:
    return [
        (
            session_id,
            stream.index,
            stream.media,
            stream.codec,
            _text(stream.caller),
            _text(stream.callee),
            _text(stream.caller_latched),
            _text(stream.callee_latched),
            stream.packets_from_caller,
            stream.bytes_from_caller,
            stream.packets_from_callee,
            stream.bytes_from_callee,
            stream.relay_ports[0],
            stream.relay_ports[1],
            None if stream.end_reason is None else str(stream.end_reason),
        )
        for stream in record.streams
    ]


def _insert(connection: sqlite3.Connection, record: SessionRecord) -> None:
    cursor = connection.execute(
        f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES ({', '.join('?' * 14)})",
        _session_row(record),
    )
    connection.executemany(
        f"INSERT INTO streams ({_STREAM_COLUMNS}) VALUES ({', '.join('?' * 15)})",
        _stream_rows(cursor.lastrowid, record),
    )


def _insert_postgres(connection: Any, record: SessionRecord) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES ({', '.join(['%s'] * 14)})"
            " RETURNING id",
            _session_row(record),
        )
        (session_id,) = cursor.fetchone()
        cursor.executemany(
            f"INSERT INTO streams ({_STREAM_COLUMNS}) VALUES ({', '.join(['%s'] * 15)})",
            _stream_rows(session_id, record),
        )


def _text(value: object) -> str | None:
    return None if value is None else str(value)


#: Either store; both have ``write``, ``close``, ``location``, ``written`` and ``failed``.
AccountingStore = SqliteAccounting | PostgresAccounting


def open_accounting(url: str) -> AccountingStore | None:
    """The store an ``accounting`` setting names: ``sqlite:///abs/path``, ``sqlite:rel/path`` or
    a plain path for SQLite, ``postgresql://...`` (or ``postgres://``) for PostgreSQL; empty means
    none. Raises ConfigError for anything else, RelayError when the database cannot be opened."""
    if not url:
        return None
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresAccounting(url)
    if url.startswith("sqlite:///"):
        return SqliteAccounting("/" + url[len("sqlite:///") :])
    if url.startswith("sqlite:"):
        return SqliteAccounting(url[len("sqlite:") :])
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise ConfigError(
            f"accounting store {scheme!r} is not supported (sqlite:///PATH or postgresql://...)"
        )
    return SqliteAccounting(url)
