"""SQLite accounting: schema, batching, flush on close, settings."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from icerelay.daemon.accounting import SqliteAccounting, open_accounting
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
    store = SqliteAccounting(tmp_path / "sub" / "a.sqlite3")
    for index in range(50):
        store.write(record(f"c{index}", streams=2))
    store.close()
    assert store.written == 50 and store.failed == 0
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
        store = SqliteAccounting(path)
        store.write(record(f"r{index}"))
        store.close()
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT count(*) FROM streams").fetchone() == (2,)


def test_open_accounting_settings(tmp_path: Path) -> None:
    assert open_accounting("") is None
    for url in (f"sqlite://{tmp_path}/x.db", f"sqlite:{tmp_path}/y.db", str(tmp_path / "z.db")):
        store = open_accounting(url)
        assert store is not None
        store.close()
    assert {p.name for p in tmp_path.glob("*.db")} == {"x.db", "y.db", "z.db"}
    with pytest.raises(ConfigError, match="'mysql' is not supported"):
        open_accounting("mysql://localhost/icerelay")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RelayError, match="cannot open the accounting database"):
        SqliteAccounting(blocker / "db.sqlite3")
