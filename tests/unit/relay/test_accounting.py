"""Accounting: the SQLite target, the journal, and the replayer between them (exactly once,
retried while the target is away, recovery of live calls after a crash, file modes)."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from icerelay.daemon.accounting import Accounting, SqliteTarget, open_target
from icerelay.daemon.journal import Journal, journaled, record_from_json, record_to_json
from icerelay.errors import ConfigError, RelayError
from icerelay.relay.sessions import (
    SessionRecord,
    StreamEndReason,
    StreamRecord,
    TerminationReason,
)
from icerelay.stun import Address


def record(call_id: str, streams: int = 1) -> SessionRecord:
    return SessionRecord(
        record_id=f"boot-{call_id}",
        call_id=call_id,
        from_tag="a",
        to_tag="b",
        via_branch=None,
        created=1_700_000_000.0,
        answered=1_700_000_002.0,
        ended=1_700_000_062.5,
        reason=TerminationReason.NO_MEDIA,
        streams=tuple(
            StreamRecord(
                index=index,
                media="audio",
                codec="PCMA",
                caller=Address("192.0.2.1", 4000),
                callee=Address("2001:db8::2", 5000),
                caller_latched=Address("198.51.100.1", 61000),
                callee_latched=None,
                packets_from_caller=3000,
                bytes_from_caller=516000,
                packets_from_callee=2990,
                bytes_from_callee=514280,
                relay_ports=(30000, 30002),
                end_reason=StreamEndReason.ICE_DIRECT if index else None,
            )
            for index in range(streams)
        ),
        caller_user_agent="Blink",
        callee_user_agent=None,
        metadata=(("dialog_id", "1:2"), ("from_uri", "alice@example.com")),
    )


def test_records_round_trip(tmp_path: Path) -> None:
    store = SqliteTarget(tmp_path / "sub" / "a.sqlite3")
    assert store.insert([record(f"c{index}", streams=2) for index in range(50)]) == 50
    store.disconnect()
    with sqlite3.connect(tmp_path / "sub" / "a.sqlite3") as connection:
        (count,) = connection.execute("SELECT count(*) FROM sessions").fetchone()
        assert count == 50
        row = connection.execute(
            "SELECT from_uri, to_uri, caller_user_agent, duration, reason, metadata FROM sessions"
            " WHERE call_id = 'c7'"
        ).fetchone()
        assert row[:5] == ("alice@example.com", None, "Blink", 60.5, "no-media")
        assert json.loads(row[5]) == {"dialog_id": "1:2"}
        streams = connection.execute(
            "SELECT stream_index, caller_address, callee_address, caller_latched, callee_latched,"
            " packets_from_callee, end_reason FROM streams JOIN sessions ON id = session_id"
            " WHERE call_id = 'c7' ORDER BY stream_index"
        ).fetchall()
        assert streams == [
            (0, "192.0.2.1:4000", "[2001:db8::2]:5000", "198.51.100.1:61000", None, 2990, None),
            (
                1,
                "192.0.2.1:4000",
                "[2001:db8::2]:5000",
                "198.51.100.1:61000",
                None,
                2990,
                "ice-direct-path",
            ),
        ]


def test_reopening_appends(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    for index in range(2):
        store = SqliteTarget(path)
        store.insert([record(f"r{index}")])
        store.disconnect()
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT count(*) FROM streams").fetchone() == (2,)


def test_open_target_settings(tmp_path: Path) -> None:
    assert open_target("") is None
    for url in (f"sqlite://{tmp_path}/x.db", f"sqlite:{tmp_path}/y.db", str(tmp_path / "z.db")):
        store = open_target(url)
        assert isinstance(store, SqliteTarget)
        store.connect()
        store.disconnect()
    assert {p.name for p in tmp_path.glob("*.db")} == {"x.db", "y.db", "z.db"}
    with pytest.raises(ConfigError, match="'mysql' is not supported"):
        open_target("mysql://localhost/icerelay")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RelayError, match="cannot open the accounting database"):
        SqliteTarget(blocker / "db.sqlite3").connect()


def test_a_record_delivered_twice_is_stored_once(tmp_path: Path) -> None:
    store = SqliteTarget(tmp_path / "a.sqlite3")
    assert store.insert([record("x"), record("y")]) == 2
    assert store.insert([record("y"), record("z")]) == 1
    with sqlite3.connect(tmp_path / "a.sqlite3") as connection:
        assert connection.execute("SELECT count(*) FROM sessions").fetchone() == (3,)
        assert connection.execute("SELECT count(*) FROM streams").fetchone() == (3,)


def test_an_old_database_gets_the_record_id_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TABLE sessions (id INTEGER PRIMARY KEY, call_id TEXT NOT NULL,"
            " from_tag TEXT NOT NULL, to_tag TEXT, via_branch TEXT, from_uri TEXT, to_uri TEXT,"
            " caller_user_agent TEXT, callee_user_agent TEXT, created REAL NOT NULL,"
            " answered REAL, ended REAL NOT NULL, duration REAL NOT NULL, reason TEXT NOT NULL,"
            " metadata TEXT NOT NULL DEFAULT '{}')"
        )
    store = SqliteTarget(path)
    assert store.insert([record("a"), record("a")]) == 1


def test_files_are_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    journal = Journal(state)
    store = SqliteTarget(tmp_path / "db" / "sessions.sqlite3")
    store.connect()
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "db").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(state / "journal.sqlite3").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "db" / "sessions.sqlite3").st_mode) == 0o600
    journal.close()


def test_one_relay_per_state_directory(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    with pytest.raises(ConfigError, match="in use by another relay"):
        Journal(tmp_path)
    journal.close()
    Journal(tmp_path).close()


def test_json_round_trip() -> None:
    original = record("j", streams=2)
    assert record_from_json(record_to_json(original)) == original


def test_the_replayer_gets_committed_records_as_their_rows_decode(tmp_path: Path) -> None:
    # pending() hands over this process's committed records without parsing their JSON:
    # they must be what the rows decode to (the JSON leaves the step-aside details out), a
    # record without an id gets the id of its row, and a reopened journal decodes the rows.
    stepped = dataclasses.replace(
        record("stepped", streams=2),
        streams=tuple(
            dataclasses.replace(
                s, path_from_caller="relayed", path_from_callee="direct", stepped_aside=5.0
            )
            for s in record("stepped", streams=2).streams
        ),
    )
    anonymous = dataclasses.replace(record("anonymous"), record_id="")
    journal = Journal(tmp_path)
    journal.commit([record("plain", streams=3), stepped, anonymous])
    journal.commit([record("plain")])  # already there: ignored, one row
    rows = journal._reader.execute("SELECT seq, body FROM records ORDER BY seq").fetchall()
    decoded = [(seq, record_from_json(body)) for seq, body in rows]
    assert len(decoded) == 3
    assert journal.pending(10) == decoded
    assert decoded[1][1] == journaled(stepped) != stepped
    assert decoded[2][1].record_id and decoded[2][1] == dataclasses.replace(
        anonymous, record_id=decoded[2][1].record_id
    )
    journal.delivered(decoded[0][0])
    assert journal.pending(10) == decoded[1:]
    assert list(journal._committed) == [seq for seq, _ in decoded[1:]]
    journal.close()
    journal = Journal(tmp_path)
    assert journal.pending(10) == decoded[1:]
    journal.delivered(decoded[-1][0])
    assert journal.pending(10) == [] and not journal._committed
    journal.close()


def test_journal_recovers_live_calls_as_checkpointed(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    live = dataclasses.replace(record("live"), reason=TerminationReason.INTERRUPTED)
    deleting = dataclasses.replace(record("deleting"), reason=TerminationReason.DELETED)
    gone = record("gone")
    journal.checkpoint([live, gone])
    journal.commit([gone], deleting=[deleting])
    journal.close()  # as after kill -9: nothing else happens
    journal = Journal(tmp_path)
    assert journal.recover() == 2
    assert journal.recover() == 0
    pending = [r for _, r in journal.pending(10)]
    assert [(r.call_id, r.reason) for r in pending] == [
        ("gone", TerminationReason.NO_MEDIA),
        ("live", TerminationReason.INTERRUPTED),
        ("deleting", TerminationReason.DELETED),
    ]
    assert journal.integrity_check() == "ok"
    journal.close()


def test_journal_recovery_leaves_out_calls_a_cluster_peer_adopted(tmp_path: Path) -> None:
    # The peer that adopted "adopted" after this instance died writes its record: recovering
    # it here too would give that call two records.
    journal = Journal(tmp_path)
    journal.checkpoint([record("adopted"), record("mine")])
    journal.close()
    journal = Journal(tmp_path)
    assert journal.recover(skip={"adopted"}) == 1
    assert [r.call_id for _, r in journal.pending(10)] == ["mine"]
    assert journal.recover() == 0  # the skipped row is gone, not left for the next start
    journal.close()


def wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_replayer_delivers_each_record_once(tmp_path: Path) -> None:
    target = SqliteTarget(tmp_path / "db.sqlite3")
    accounting = Accounting(Journal(tmp_path / "state"), target)
    accounting.journal.commit([record(f"r{index}") for index in range(1200)])
    accounting.wake()
    # (the journal drops a batch just after the target took it: wait for both.)
    wait_for(lambda: accounting.delivered == 1200 and accounting.journal.position().pending == 0)
    position = accounting.journal.position()
    assert (position.pending, position.appended, position.delivered) == (0, 1200, 1200)
    accounting.close()
    with sqlite3.connect(tmp_path / "db.sqlite3") as connection:
        assert connection.execute("SELECT count(DISTINCT call_id) FROM sessions").fetchone() == (
            1200,
        )


def test_records_wait_while_the_target_is_away(tmp_path: Path) -> None:
    # A target whose directory is a file cannot be opened; the records wait in the journal.
    blocker = tmp_path / "db"
    blocker.write_text("")
    accounting = Accounting(Journal(tmp_path / "state"), SqliteTarget(blocker / "a.sqlite3"))
    accounting.journal.commit([record("w1"), record("w2")])
    accounting.wake()
    wait_for(lambda: accounting.failures >= 2)
    assert accounting.delivered == 0 and "cannot open" in accounting.last_error
    blocker.unlink()  # the target comes back: delivered after the back-off, nothing lost
    # (last_error is cleared just after the batch is counted: wait for both.)
    wait_for(lambda: accounting.delivered == 2 and accounting.last_error == "")
    accounting.close()


def test_set_target_switches_without_loss(tmp_path: Path) -> None:
    accounting = Accounting(Journal(tmp_path / "state"), None)
    accounting.journal.commit([record("s1")])
    accounting.set_target(SqliteTarget(tmp_path / "new.sqlite3"))
    wait_for(lambda: accounting.delivered == 1)
    accounting.close()
    with sqlite3.connect(tmp_path / "new.sqlite3") as connection:
        assert connection.execute("SELECT call_id FROM sessions").fetchall() == [("s1",)]
