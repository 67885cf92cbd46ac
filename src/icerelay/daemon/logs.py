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
import threading
import time
from collections import deque
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


def log_event(logger: logging.Logger, level: int, event: str, fields: dict[str, Any]) -> None:
    """``logger.log(level, event, extra=fields)`` with less work per line, for events logged
    at a high rate (a TURN server's line per allocation): the record is made without extras
    and *fields* are put on it at once instead of one by one, and without the frames of
    ``Logger.log``. The record is the same, and goes through the logger's filters and
    handlers as any other.

    When something collects the caller's file and line for each record (``configure_logging``
    turns that off), this is ``logger.log`` itself, so that they still name the caller.
    """
    if not logger.isEnabledFor(level):
        return
    if logging._srcfile is not None:
        logger.log(level, event, extra=fields, stacklevel=2)
        return
    record = logger.makeRecord(
        logger.name, level, "(unknown file)", 0, event, (), None, "(unknown function)"
    )
    attributes = record.__dict__
    if "message" in fields or "asctime" in fields or not attributes.keys().isdisjoint(fields):
        # As Logger.makeRecord refuses them.
        clash = [k for k in fields if k in ("message", "asctime") or k in attributes]
        raise KeyError(f"Attempt to overwrite {clash[0]!r} in LogRecord")
    attributes.update(fields)
    logger.handle(record)


@lru_cache(maxsize=4)
def _seconds(unix_seconds: int) -> str:
    # Memoised: a busy server logs many lines per second, and strftime is the dear part.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(unix_seconds))


#: Milliseconds as the timestamp writes them ("007"): a lookup instead of formatting.
_MILLISECONDS = tuple(f"{ms:03d}" for ms in range(1000))


def _timestamp(record: logging.LogRecord) -> str:
    seconds = _seconds(int(record.created))
    ms = int(record.msecs)
    if 0 <= ms < 1000:
        return seconds + "." + _MILLISECONDS[ms] + "Z"
    return f"{seconds}.{ms:03d}Z"


#: A value with one of these is written JSON-quoted.
_NEEDS_QUOTES = re.compile('[ ="\n\t]')
_needs_quotes = _NEEDS_QUOTES.search
#: The keys every ``key=value`` line starts with.
_LEADING = ("ts", "level", "logger", "event")


def _kv_value(value: Any) -> str:
    text = value if value.__class__ is str else str(value)
    if not text or _needs_quotes(text) is not None:
        return json.dumps(text)
    return text


@lru_cache(maxsize=256)
def _kv_layout(names: tuple[str, ...]) -> tuple[tuple[str, ...], str] | None:
    """For a record with these attributes (in order): its fields' names and the line's
    template with a ``{}`` per value; None when a field is named like a leading key (the
    general path then writes it in that key's place).

    Memoised: the records of one log call site have the same attributes, so a line costs
    a lookup instead of a pass over every attribute of the record."""
    fields = tuple(name for name in names if name not in _STANDARD and not name.startswith("_"))
    if any(name in _LEADING for name in fields):
        return None
    escaped = [name.replace("{", "{{").replace("}", "}}") for name in _LEADING + fields]
    return fields, " ".join([name + "={}" for name in escaped])


class KeyValueFormatter(logging.Formatter):
    """``key=value`` lines; values with spaces or quotes are JSON-quoted."""

    def format(self, record: logging.LogRecord) -> str:
        attributes = record.__dict__
        layout = _kv_layout(tuple(attributes))
        if layout is None:
            return self._format_general(record)
        fields, template = layout
        texts = [_timestamp(record), record.levelname.lower(), record.name, record.getMessage()]
        for name in fields:
            value = attributes[name]
            texts.append(value if value.__class__ is str else str(value))
        # One search over every value at once (the pattern is a character class): a value
        # is quoted only when this finds something, or one is empty.
        if _needs_quotes("".join(texts)) is not None or "" in texts:
            texts = [_kv_value(text) for text in texts]
        line = template.format(*texts)
        if record.exc_info:
            line += " exc=" + json.dumps(self.formatException(record.exc_info))
        return line

    def _format_general(self, record: logging.LogRecord) -> str:
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


#: Lines a :class:`BackgroundWriter` holds while its stream is slow; beyond, lines are dropped
#: (and counted) rather than stalling the daemon.
DEFAULT_BACKLOG = 10_000
#: Seconds a :class:`BackgroundWriter` gathers lines after the first one of a quiet spell.
LINGER = 0.01


class BackgroundWriter(logging.Handler):
    """Formats each record in the logging thread and writes the lines from a thread of its own.

    Why: a plain StreamHandler writes to stderr inside the log call. When stderr is a pipe that
    nobody drains (a supervisor that stopped reading, a terminal on hold) the write blocks, and
    with it the event loop and every call's media. Here a full backlog drops lines instead; the
    writer says how many with one ``logs.dropped`` line once the stream moves again.

    The writer is woken by the first line after a quiet spell only, and waits ``linger``
    seconds before writing: what is logged meanwhile goes out in the same write, without
    waking it again. Waking a thread per line cost the logging thread several times what
    formatting the line does (a TURN server logs a line per allocation: about 60 us of CPU
    per line against 10 us, at a few thousand allocations/s).
    :meth:`flush` and :meth:`close` do not wait for the linger.
    """

    def __init__(
        self, stream: TextIO, backlog: int = DEFAULT_BACKLOG, linger: float = LINGER
    ) -> None:
        super().__init__()
        self._stream = stream
        self._backlog = backlog
        self._linger = linger
        #: Formatted lines not yet taken by the writer (appended and popped under the GIL).
        self._lines: deque[str] = deque()
        #: Set when there is something to write; ``_signalled`` says it was set (or is being
        #: handled), so the next lines need not set it again.
        self._wake = threading.Event()
        self._signalled = False
        #: Set by flush() and close(): write now, without lingering.
        self._urgent = threading.Event()
        self._closing = False
        #: Lines accepted by emit(), and lines the writer is done with (for flush()).
        self._queued = 0
        self._done = 0
        self._progress = threading.Condition()
        self._dropped_lock = threading.Lock()
        self.dropped = 0
        self._reported = 0
        self._thread = threading.Thread(target=self._run, name="icerelay-log-writer", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        # logging.Handler.handle holds the handler's lock here: one emit() at a time.
        try:
            line = self.format(record)
        except Exception:  # as logging.StreamHandler does: report it, never raise into the caller
            self.handleError(record)
            return
        lines = self._lines
        if len(lines) >= self._backlog:
            with self._dropped_lock:
                self.dropped += 1
            return
        lines.append(line)
        self._queued += 1
        if not self._signalled:
            self._signalled = True
            self._wake.set()

    def _run(self) -> None:
        lines = self._lines
        while True:
            self._wake.wait()
            if self._linger > 0:
                self._urgent.wait(self._linger)
            # Cleared before the lines are taken: a line appended from now on either is taken
            # below or sets _wake again.
            self._wake.clear()
            self._urgent.clear()
            self._signalled = False
            closing = self._closing
            while True:
                chunk = [lines.popleft() for _ in range(min(len(lines), 512))]
                with self._dropped_lock:
                    missed, self._reported = self.dropped - self._reported, self.dropped
                if missed:
                    chunk.append(self.format(_dropped_record(missed)))
                if not chunk:
                    break
                try:
                    self._stream.write("\n".join(chunk) + "\n")
                    self._stream.flush()
                except (OSError, ValueError):
                    pass  # the stream is gone (closed pipe, closed file): nowhere left to say so
                with self._progress:
                    self._done += len(chunk) - (1 if missed else 0)
                    self._progress.notify_all()
            if closing:
                return

    def flush(self, timeout: float = 2.0) -> None:
        """Wait (at most ``timeout`` seconds) until every queued line is written."""
        target = self._queued
        self._urgent.set()
        self._wake.set()
        with self._progress:
            self._progress.wait_for(lambda: self._done >= target, timeout)

    def close(self) -> None:
        # Called by logging.shutdown() at exit: the stop lines with their counters must get out.
        if self._thread.is_alive():
            self._closing = True
            self._urgent.set()
            self._wake.set()
            self._thread.join(timeout=2.0)
        super().close()


def _dropped_record(count: int) -> logging.LogRecord:
    return logging.makeLogRecord(
        {
            "name": "icerelay.logs",
            "levelno": logging.WARNING,
            "levelname": "WARNING",
            "msg": "logs.dropped",
            "count": count,
            "reason": "log stream too slow",
        }
    )


def configure_logging(
    level: str = "info",
    fmt: str = "kv",
    stream: TextIO | None = None,
    *,
    backlog: int = DEFAULT_BACKLOG,
) -> None:
    """Send icerelay's logs to ``stream`` (stderr) in the chosen format; replaces earlier setup.

    Lines are written by a :class:`BackgroundWriter` (``backlog`` lines at most in flight);
    ``backlog=0`` writes in the caller instead, for tools where a lost line matters more than
    a stalled loop."""
    target = stream or sys.stderr
    handler: logging.Handler = (
        BackgroundWriter(target, backlog) if backlog > 0 else logging.StreamHandler(target)
    )
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger("icerelay")
    for old in list(root.handlers):
        root.removeHandler(old)
        if isinstance(old, BackgroundWriter):
            old.close()  # its lines first: a reload must not reorder or lose them
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
