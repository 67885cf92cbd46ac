"""Structured logging on top of the standard library.

Log calls name an event and pass fields through ``extra``::

    logger.info("stun.listening", extra={"transport": "udp", "address": "127.0.0.1:3478"})

and come out as ``ts=... level=info logger=icerelay.server event=stun.listening transport=udp
address=127.0.0.1:3478`` (``kv``) or one JSON object per line (``json``).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from functools import lru_cache
from typing import Any, TextIO

# Attributes every LogRecord has; anything else on a record came from ``extra`` and is a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of a record (what was passed through ``extra``)."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


@lru_cache(maxsize=4)
def _seconds(unix_seconds: int) -> str:
    # Memoised: a busy server logs many lines per second, and strftime is the dear part.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(unix_seconds))


def _timestamp(record: logging.LogRecord) -> str:
    return f"{_seconds(int(record.created))}.{int(record.msecs):03d}Z"


#: A value with one of these is written JSON-quoted.
_NEEDS_QUOTES = re.compile('[ ="\n\t]')


def _kv_value(value: Any) -> str:
    text = value if value.__class__ is str else str(value)
    if not text or _NEEDS_QUOTES.search(text) is not None:
        return json.dumps(text)
    return text


class KeyValueFormatter(logging.Formatter):
    """``key=value`` lines; values with spaces or quotes are JSON-quoted."""

    def format(self, record: logging.LogRecord) -> str:
        parts = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **record_fields(record),
        }
        line = " ".join([f"{k}={_kv_value(v)}" for k, v in parts.items()])
        if record.exc_info:
            line += " exc=" + json.dumps(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        data.update(record_fields(record))
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def configure_logging(level: str = "info", fmt: str = "kv", stream: TextIO | None = None) -> None:
    """Send icerelay's logs to ``stream`` (stderr) in the chosen format; replaces earlier setup."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger("icerelay")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Neither format writes the caller, thread or process: don't collect them for every record
    # (the logging HOWTO's "Optimization" table; about 15% of a line's cost, and a TURN server
    # logs a line per allocation).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Our handler is the one place icerelay logs go; don't print them twice via the root logger.
    root.propagate = False
