"""Accounting: one record per ended session, in SQLite (default) or PostgreSQL (by URL).

Records never go straight to the database: the relay commits them to its local
:class:`~.journal.Journal` first (before it acknowledges the ``delete``), and
:class:`Accounting`'s replayer thread moves them on into the configured target whenever it is
reachable. While it is not (PostgreSQL restarting, a full disk, a wrong password, a target
that could not be opened at start) the records wait in the journal and the replayer retries
with a growing delay (0.25 s doubling to 30 s): accounting is never off for the life of the
process, and what is still queued at exit is delivered by the next start.

Delivery is exactly once: each record carries a ``record_id`` unique across restarts, and the
targets insert with ``ON CONFLICT (record_id) DO NOTHING``, so a batch delivered again (the
relay died between the database's commit and the journal's) is stored once.

Schema (``sessions`` one row per session, ``streams`` one row per media stream)::

    sessions(id, record_id, call_id, from_tag, to_tag, via_branch, from_uri, to_uri,
             caller_user_agent, callee_user_agent, created, answered, ended, duration,
             reason, metadata)
    streams(session_id, stream_index, media, codec, caller_address, callee_address,
            caller_latched, callee_latched, packets_from_caller, bytes_from_caller,
            packets_from_callee, bytes_from_callee, relay_port_caller, relay_port_callee,
            end_reason)

Times are Unix seconds (REAL / DOUBLE PRECISION); ``duration`` is talk time (answer to
delete or last media); ``metadata`` is a JSON object of the remaining call facts. A database
made by an older relay gets the ``record_id`` column added.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Protocol

from icerelay.daemon.journal import Journal, make_private_directory, make_private_file
from icerelay.errors import ConfigError, RelayError
from icerelay.relay.records import SessionRecord

__all__ = [
    "Accounting",
    "AccountingTarget",
    "PostgresTarget",
    "SqliteTarget",
    "open_target",
]

logger = logging.getLogger("icerelay.accounting")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,
    record_id TEXT,
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
    record_id TEXT,
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
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS record_id TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS sessions_record_id ON sessions (record_id);
"""


# Migration of a database an older relay made (no record_id): SQLite has no ADD COLUMN IF NOT
# EXISTS, so the column is looked up first.
_SQLITE_RECORD_ID_INDEX = (
    "CREATE UNIQUE INDEX IF NOT EXISTS sessions_record_id ON sessions (record_id)"
)

_SESSION_COLUMNS = (
    "record_id, call_id, from_tag, to_tag, via_branch, from_uri, to_uri, caller_user_agent,"
    " callee_user_agent, created, answered, ended, duration, reason, metadata"
)
_STREAM_COLUMNS = (
    "session_id, stream_index, media, codec, caller_address, callee_address, caller_latched,"
    " callee_latched, packets_from_caller, bytes_from_caller, packets_from_callee,"
    " bytes_from_callee, relay_port_caller, relay_port_callee, end_reason"
)

# Seconds a PostgreSQL connection attempt may take: the replayer must notice an outage soon.
_CONNECT_TIMEOUT = 3


class AccountingTarget(Protocol):
    """A database records are delivered to (blocking; used by one thread)."""

    @property
    def location(self) -> str:
        """Where the records go, without secrets (for logs)."""

    def insert(self, records: Sequence[SessionRecord]) -> int:
        """Store ``records`` in one transaction (connecting first if needed); a record whose
        ``record_id`` is already there is skipped. Returns how many were new. Raises when the
        database cannot take them (nothing is stored then)."""

    def disconnect(self) -> None:
        """Drop the connection (the next :meth:`insert` reconnects); never raises."""


# The statements, built once (not per record).
_SQLITE_INSERT_SESSION = (
    f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES ({', '.join('?' * 15)})"
    " ON CONFLICT (record_id) DO NOTHING"
)
_SQLITE_INSERT_STREAM = f"INSERT INTO streams ({_STREAM_COLUMNS}) VALUES ({', '.join('?' * 15)})"


class SqliteTarget:
    """Records in an SQLite database file (created 0600, its directory 0700, if missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._connection: sqlite3.Connection | None = None

    @property
    def location(self) -> str:
        return str(self.path)

    def connect(self) -> None:
        """Open (and create) the database now; RelayError if it cannot be."""
        if self._connection is not None:
            return
        try:
            make_private_directory(self.path.parent)
            make_private_file(self.path)
            connection = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0)
            # WAL lets readers (reports, `sqlite3` in a shell) query while the relay writes;
            # synchronous=FULL makes each delivered batch survive a power cut.
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA foreign_keys=ON")
            connection.executescript(_SCHEMA)
            columns = {row[1] for row in connection.execute("PRAGMA table_info(sessions)")}
            if "record_id" not in columns:
                connection.execute("ALTER TABLE sessions ADD COLUMN record_id TEXT")
            connection.execute(_SQLITE_RECORD_ID_INDEX)
            connection.commit()
        except (OSError, sqlite3.Error) as error:
            raise RelayError(f"cannot open the accounting database {self.path}: {error}") from None
        self._connection = connection

    def insert(self, records: Sequence[SessionRecord]) -> int:
        self.connect()
        connection = self._connection
        assert connection is not None
        new = 0
        with connection:
            for record in records:
                cursor = connection.execute(_SQLITE_INSERT_SESSION, _session_row(record))
                if cursor.rowcount == 1:
                    new += 1
                    connection.executemany(
                        _SQLITE_INSERT_STREAM, _stream_rows(cursor.lastrowid, record)
                    )
        return new

    def disconnect(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(sqlite3.Error):
                self._connection.close()
            self._connection = None


class PostgresTarget:
    """Records in PostgreSQL (tables created if missing).

    :param url: a libpq connection URL, ``postgresql://user:password@host:port/database``.
    """

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError:
            raise ConfigError(
                "PostgreSQL accounting needs psycopg: pip install 'icerelay[postgres]'"
            ) from None
        self._psycopg = psycopg
        self.url = url
        self._connection: Any = None
        self._location = _redacted(url)

    @property
    def location(self) -> str:
        return self._location

    def connect(self) -> None:
        """Connect (and create the tables) now; RelayError if the server cannot be reached."""
        if self._connection is not None and not self._connection.closed:
            return
        psycopg = self._psycopg
        try:
            # Keepalives and a TCP user timeout: a server that vanishes without a FIN (a
            # host down, a partition) must fail the replayer's insert within a minute instead
            # of leaving it waiting forever while records pile up in the journal.
            connection = psycopg.connect(
                self.url,
                connect_timeout=_CONNECT_TIMEOUT,
                keepalives=1,
                keepalives_idle=15,
                keepalives_interval=5,
                keepalives_count=3,
                tcp_user_timeout=30_000,
            )
            with connection.transaction():
                connection.execute(_POSTGRES_SCHEMA)
        except psycopg.Error as error:
            raise RelayError(f"cannot open the accounting database: {error}") from None
        info = connection.info
        self._location = f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}"
        self._connection = connection

    def insert(self, records: Sequence[SessionRecord]) -> int:
        self.connect()
        connection = self._connection
        new = 0
        try:
            with connection.transaction(), connection.cursor() as cursor:
                for record in records:
                    cursor.execute(
                        f"INSERT INTO sessions ({_SESSION_COLUMNS})"
                        f" VALUES ({', '.join(['%s'] * 15)})"
                        " ON CONFLICT (record_id) DO NOTHING RETURNING id",
                        _session_row(record),
                    )
                    row = cursor.fetchone()
                    if row is None:
                        continue
                    new += 1
                    cursor.executemany(
                        f"INSERT INTO streams ({_STREAM_COLUMNS})"
                        f" VALUES ({', '.join(['%s'] * 15)})",
                        _stream_rows(row[0], record),
                    )
        except self._psycopg.Error:
            # The server went away (or refused): reconnect next time.
            self.disconnect()
            raise
        return new

    def disconnect(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None


def _redacted(url: str) -> str:
    """``url`` without its password (for logs before the first connection)."""
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at:
        return url.split("?", 1)[0]
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}@{host}".split("?", 1)[0]


def open_target(url: str) -> SqliteTarget | PostgresTarget | None:
    """The target an ``accounting`` setting names: ``sqlite:///abs/path``, ``sqlite:rel/path``
    or a plain path for SQLite, ``postgresql://...`` (or ``postgres://``) for PostgreSQL; empty
    means none. Nothing is opened yet. ConfigError for anything else."""
    if not url:
        return None
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresTarget(url)
    if url.startswith("sqlite:///"):
        return SqliteTarget("/" + url[len("sqlite:///") :])
    if url.startswith("sqlite:"):
        return SqliteTarget(url[len("sqlite:") :])
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise ConfigError(
            f"accounting store {scheme!r} is not supported (sqlite:///PATH or postgresql://...)"
        )
    return SqliteTarget(url)


# Replayer timing: records per database transaction, and the retry delays after a failure.
_BATCH = 500
_FIRST_RETRY = 0.25
_LAST_RETRY = 30.0
# Seconds the replayer lets records gather after a wake-up before it delivers them. Delivery is
# not on the path of any reply (records are durable in the journal before the delete is
# answered), so this only delays when the database sees a record; it turns a busy relay's one
# database transaction (and fsync) per journal commit into one per tenth of a second.
_LINGER = 0.1


class Accounting:
    """The journal and the replayer that moves its records into the target.

    The relay commits to :attr:`journal` (blocking; from one thread of its own) and calls
    :meth:`wake` after each commit. The replayer thread delivers batches of up to 500 records,
    retrying with a growing delay while the target refuses them; :meth:`set_target` switches the
    target (SIGHUP) without losing a record. :meth:`close` makes one last delivery attempt:
    what the target still does not have stays in the journal for the next start.
    """

    def __init__(
        self,
        journal: Journal,
        target: SqliteTarget | PostgresTarget | None,
        *,
        skip: Collection[str] = (),
    ) -> None:
        self.journal = journal
        self._target = target
        self._next_target: SqliteTarget | PostgresTarget | None = target
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()
        #: Records the target took (new ones; a duplicate is not counted).
        self.delivered = 0
        #: Delivery attempts that failed (each is retried).
        self.failures = 0
        #: The last failure's text ("" while deliveries succeed).
        self.last_error = ""
        #: Calls found live in the journal at start and recorded as interrupted (or deleted);
        #: ``skip``: Call-IDs another cluster instance adopted (it records them).
        self.recovered = journal.recover(skip)
        self._thread = threading.Thread(target=self._run, name="relay-accounting", daemon=True)
        self._thread.start()

    @property
    def location(self) -> str:
        """Where the records go ("" for the journal only)."""
        target = self._next_target
        return target.location if target is not None else ""

    def wake(self) -> None:
        """New records are in the journal: deliver them now (any thread)."""
        self._wake.set()

    def set_target(self, target: SqliteTarget | PostgresTarget | None) -> None:
        """Deliver to ``target`` from the next batch on (the old one is disconnected)."""
        with self._lock:
            self._next_target = target
        self._wake.set()

    def close(self, timeout: float = 5.0) -> None:
        """One last delivery attempt (at most ``timeout`` seconds), then close everything."""
        self._stopping = True
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            if self._target is not None:
                self._target.disconnect()
            self.journal.close()
        else:
            # A database that hangs: the thread dies with the process; the records it was
            # delivering are still in the journal (deleted only after the target committed).
            logger.warning("accounting.close_timeout", extra={"timeout": timeout})

    def _run(self) -> None:
        delay = 0.0
        retry_at: float | None = None
        while True:
            wait = 1.0 if retry_at is None else max(0.0, retry_at - time.monotonic())
            woken = self._wake.wait(wait)
            if woken and retry_at is None and not self._stopping:
                self._stop.wait(_LINGER)
            self._wake.clear()
            stopping = self._stopping
            with self._lock:
                if self._next_target is not self._target:
                    if self._target is not None:
                        self._target.disconnect()
                    self._target = self._next_target
                    retry_at = None
            target = self._target
            # During a back-off a wake-up (a new record) only re-arms the wait.
            due = retry_at is None or time.monotonic() >= retry_at or stopping
            if target is not None and due:
                try:
                    self._deliver(target)
                except Exception as error:  # any failure is retried later
                    self.failures += 1
                    target.disconnect()
                    if not self.last_error:
                        # Once per outage (not per retry); the recovery is logged too.
                        logger.warning(
                            "accounting.target_unreachable",
                            extra={"target": target.location, "reason": str(error)},
                        )
                    self.last_error = str(error) or type(error).__name__
                    delay = min(_LAST_RETRY, max(_FIRST_RETRY, delay * 2))
                    retry_at = time.monotonic() + delay
                else:
                    if self.last_error:
                        logger.info("accounting.target_back", extra={"target": target.location})
                    self.last_error = ""
                    delay, retry_at = 0.0, None
            if stopping:
                return

    def _deliver(self, target: SqliteTarget | PostgresTarget) -> None:
        while batch := self.journal.pending(_BATCH):
            self.delivered += target.insert([record for _, record in batch])
            self.journal.delivered(batch[-1][0])
            if len(batch) < _BATCH:
                return


#: As json.dumps(..., sort_keys=True), without building an encoder per record.
_SORTED_JSON = json.JSONEncoder(sort_keys=True)


def _session_row(record: SessionRecord) -> tuple[object, ...]:
    metadata = dict(record.metadata)
    from_uri = metadata.pop("from_uri", None)
    to_uri = metadata.pop("to_uri", None)
    return (
        record.record_id or None,
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
        _SORTED_JSON.encode(metadata),
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


def _text(value: object) -> str | None:
    return None if value is None else str(value)
