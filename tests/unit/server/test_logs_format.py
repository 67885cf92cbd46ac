"""The ``key=value`` line format: the memoised layout writes exactly what the general path
writes (quoting, field order, fields named like a leading key), and a line is pinned byte for
byte."""

from __future__ import annotations

import logging
import sys
from typing import Any

import pytest

from icerelay.daemon.logs import KeyValueFormatter, _timestamp


def _record(event: str, fields: dict[str, Any], exc_info: Any = None) -> logging.LogRecord:
    logger = logging.getLogger("icerelay.test.format")
    return logger.makeRecord(
        logger.name, logging.INFO, "(unknown file)", 0, event, (), exc_info, extra=fields
    )


CASES: list[dict[str, Any]] = [
    {},
    {"client": "127.1.0.1:40000", "transport": "udp", "lifetime": 600},
    {"reason": "bad length 3"},  # a space: quoted
    {"empty": ""},  # empty: quoted
    {"quote": 'say "hi"', "eq": "a=b", "newline": "a\nb", "tab": "a\tb"},
    {"number": 3.5, "none": None, "flag": True, "list": [1, 2]},
    {"event": "overridden"},  # a field named like a leading key takes that key's place
    {"level": "custom", "extra": "x"},
    {"{brace}": "v", "w}": "x{y}"},  # braces in names and values
    {"_private": "hidden", "shown": "yes"},
    {"unicode": "caf\u00e9", "spaced unicode": "caf\u00e9 bar"},
]


@pytest.mark.parametrize("fields", CASES)
def test_the_fast_layout_writes_what_the_general_path_writes(fields: dict[str, Any]) -> None:
    formatter = KeyValueFormatter()
    record = _record("test.event", fields)
    assert formatter.format(record) == formatter._format_general(record)
    # Again, from the memoised layout.
    assert formatter.format(record) == formatter._format_general(record)


def test_a_line_byte_for_byte() -> None:
    record = _record(
        "turn.allocation_created",
        {"client": "127.1.0.1:40000", "user": "a b", "lifetime": 600, "note": ""},
    )
    record.created, record.msecs = 1_700_000_000.25, 7.9
    assert KeyValueFormatter().format(record) == (
        "ts=2023-11-14T22:13:20.007Z level=info logger=icerelay.test.format "
        'event=turn.allocation_created client=127.1.0.1:40000 user="a b" lifetime=600 note=""'
    )


def test_milliseconds_outside_the_table_are_still_written() -> None:
    record = _record("x", {})
    record.created, record.msecs = 1_700_000_000.0, 1000.0
    assert _timestamp(record) == "2023-11-14T22:13:20.1000Z"


def test_an_exception_is_appended_quoted() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("test.failed", {"step": "one"}, exc_info=sys.exc_info())
    formatter = KeyValueFormatter()
    line = formatter.format(record)
    assert line == formatter._format_general(record)
    assert line.split(" exc=")[0].endswith("event=test.failed step=one")
    assert "ValueError: boom" in line
