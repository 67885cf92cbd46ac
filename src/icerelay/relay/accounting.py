"""Accounting: one durable record per ended session, in SQLite.

Records are handed over by the event loop (:meth:`SqliteAccounting.write` never blocks) and
written by one background thread, each batch in one transaction, so a burst of hang-ups costs one
``fsync``. :meth:`SqliteAccounting.close` writes whatever is still queued before returning: a
graceful stop or restart loses nothing.

Schema (``sessions`` one row per session, ``streams`` one row per media stream)::

    sessions(id, call_id, from_tag, to_tag, via_branch, from_uri, to_uri, caller_user_agent,
             callee_user_agent, created, answered, ended, duration, reason, metadata)
    streams(session_id, stream_index, media, codec, caller_address, callee_address,
            caller_latched, callee_latched, packets_from_caller, bytes_from_caller,
            packets_from_callee, bytes_from_callee, relay_port_caller, relay_port_callee,
            end_reason)

Times are Unix seconds (REAL); ``metadata`` is a JSON object of the remaining call facts.
"""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
from pathlib import Path

from icerelay.errors import ConfigError, RelayError
from icerelay.relay.sessions import SessionRecord

__all__ = ["SqliteAccounting", "open_accounting"]

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

# Sentinel telling the writer thread to finish.
_STOP = object()


class SqliteAccounting:
    """Writes :class:`SessionRecord` s to an SQLite database (created if missing).

    :param path: the database file; its directory is created if needed.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.written = 0
        self.failed = 0
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
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="relay-accounting", daemon=True)
        self._thread.start()

    def write(self, record: SessionRecord) -> None:
        """Queue ``record`` for writing (returns at once)."""
        self._queue.put(record)

    def close(self) -> None:
        """Write everything still queued, then close the database."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        self._connection.close()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch: list[SessionRecord] = []
            stop = item is _STOP
            if isinstance(item, SessionRecord):
                batch.append(item)
            # Take whatever else is waiting: one transaction, one fsync for the lot.
            while not stop:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                elif isinstance(item, SessionRecord):
                    batch.append(item)
            if batch:
                self._store(batch)
            if stop:
                return

    def _store(self, batch: list[SessionRecord]) -> None:
        try:
            with self._connection:
                for record in batch:
                    _insert(self._connection, record)
        except sqlite3.Error:
            # Counted (and visible in statistics); the relay keeps relaying.
            self.failed += len(batch)
        else:
            self.written += len(batch)


def _insert(connection: sqlite3.Connection, record: SessionRecord) -> None:
    metadata = dict(record.metadata)
    from_uri = metadata.pop("from_uri", None)
    to_uri = metadata.pop("to_uri", None)
    cursor = connection.execute(
        "INSERT INTO sessions (call_id, from_tag, to_tag, via_branch, from_uri, to_uri,"
        " caller_user_agent, callee_user_agent, created, answered, ended, duration, reason,"
        " metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
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
        ),
    )
    session_id = cursor.lastrowid
    connection.executemany(
        "INSERT INTO streams (session_id, stream_index, media, codec, caller_address,"
        " callee_address, caller_latched, callee_latched, packets_from_caller, bytes_from_caller,"
        " packets_from_callee, bytes_from_callee, relay_port_caller, relay_port_callee,"
        " end_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
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
        ],
    )


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def open_accounting(url: str) -> SqliteAccounting | None:
    """The store an ``accounting`` setting names: ``sqlite:///abs/path``, ``sqlite:rel/path`` or
    a plain path; empty means none. Raises ConfigError for anything else."""
    if not url:
        return None
    if url.startswith("sqlite:///"):
        return SqliteAccounting("/" + url[len("sqlite:///") :])
    if url.startswith("sqlite:"):
        return SqliteAccounting(url[len("sqlite:") :])
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise ConfigError(f"accounting store {scheme!r} is not supported (use sqlite:///PATH)")
    return SqliteAccounting(url)
