"""The daemon's log writer never stalls the caller: a stderr pipe nobody reads used to block the
event loop (and every call's media) inside the log call."""

from __future__ import annotations

import io
import logging
import os
import threading

from icerelay.daemon.logs import BackgroundWriter, KeyValueFormatter


def _logger(handler: logging.Handler) -> logging.Logger:
    log = logging.getLogger(f"icerelay.test.background.{id(handler)}")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    return log


def test_a_pipe_nobody_reads_drops_lines_instead_of_blocking() -> None:
    read_end, write_end = os.pipe()
    stream = io.TextIOWrapper(os.fdopen(write_end, "wb"), encoding="utf-8")
    handler = BackgroundWriter(stream, backlog=100)
    handler.setFormatter(KeyValueFormatter())
    log = _logger(handler)
    # A pipe holds 64 KiB: 20,000 lines of ~100 bytes fill it many times over.
    done = threading.Event()

    def flood() -> None:
        for n in range(20_000):
            log.info("test.flood", extra={"n": n, "pad": "x" * 40})
        done.set()

    threading.Thread(target=flood, daemon=True).start()
    # A blocking handler would still be stuck in the first 64 KiB; this one returns.
    assert done.wait(timeout=30), "log calls blocked on a pipe nobody reads"
    assert handler.dropped > 0
    dropped_then = handler.dropped

    # Once the reader comes back, everything queued is written, then one line says what was lost.
    received = bytearray()

    def drain() -> None:
        while chunk := os.read(read_end, 65536):
            received.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    handler.flush(timeout=10)
    log.info("test.after")
    handler.close()
    stream.close()
    reader.join(timeout=10)
    os.close(read_end)
    lines = received.decode().splitlines()
    assert lines[0].split(" event=")[1].startswith("test.flood n=0 ")
    dropped_lines = [line for line in lines if "event=logs.dropped" in line]
    assert sum(int(line.split("count=")[1].split()[0]) for line in dropped_lines) == dropped_then
    assert "event=test.after" in lines[-1]
    flood_lines = [line for line in lines if "event=test.flood" in line]
    assert len(flood_lines) + dropped_then == 20_000
    numbers = [int(line.split(" n=")[1].split()[0]) for line in flood_lines]
    assert numbers == sorted(numbers)  # written in the order they were logged


def test_lines_keep_their_order_and_close_writes_them_all() -> None:
    stream = io.StringIO()
    handler = BackgroundWriter(stream)
    handler.setFormatter(KeyValueFormatter())
    log = _logger(handler)
    for n in range(1000):
        log.info("test.ordered", extra={"n": n})
    handler.close()
    numbers = [int(line.split(" n=")[1]) for line in stream.getvalue().splitlines()]
    assert numbers == list(range(1000))
    assert handler.dropped == 0


class _CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_a_burst_of_lines_goes_out_in_one_write() -> None:
    # The writer is woken by the first line only and gathers the rest during its linger
    # (flush cuts the linger short): waking it per line cost more than formatting the line.
    stream = _CountingStream()
    handler = BackgroundWriter(stream, linger=30.0)
    handler.setFormatter(KeyValueFormatter())
    log = _logger(handler)
    for n in range(100):
        log.info("test.burst", extra={"n": n})
    handler.flush(timeout=10)
    numbers = [int(line.split(" n=")[1]) for line in stream.getvalue().splitlines()]
    assert numbers == list(range(100))
    assert stream.writes == 1
    handler.close()


def test_lines_after_a_flush_wake_the_writer_again_and_close_does_not_wait() -> None:
    stream = io.StringIO()
    handler = BackgroundWriter(stream, linger=30.0)
    handler.setFormatter(KeyValueFormatter())
    log = _logger(handler)
    log.info("test.first")
    handler.flush(timeout=10)
    assert "event=test.first" in stream.getvalue()
    log.info("test.second")
    handler.flush(timeout=10)
    assert "event=test.second" in stream.getvalue()
    log.info("test.last")
    handler.close()  # well before the 30 s linger: the thread is done and the line written
    assert not handler._thread.is_alive()
    assert stream.getvalue().splitlines()[-1].endswith("event=test.last")
