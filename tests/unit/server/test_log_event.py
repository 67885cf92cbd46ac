"""log_event is logger.log(level, event, extra=fields) with less work: the same record reaches
the same handlers; the TURN service's allocation lines are built with it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from icerelay.daemon.logs import KeyValueFormatter, log_event, record_fields
from icerelay.daemon.turn_log import format_addresses, log_created, log_deleted
from icerelay.turn.server.events import AllocationCreated, AllocationDeleted


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(params=[None, "collect"], ids=["no-caller", "caller"])
def kept(request: pytest.FixtureRequest) -> Iterator[tuple[logging.Logger, _Keep]]:
    """A logger with a handler that keeps its records; with and without the caller's file and
    line collected (configure_logging turns that off)."""
    saved = logging._srcfile
    logging._srcfile = None if request.param is None else saved or logging.__file__
    logger = logging.getLogger(f"icerelay.test.log_event.{request.param}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = _Keep()
    logger.addHandler(handler)
    try:
        yield logger, handler
    finally:
        logger.removeHandler(handler)
        logging._srcfile = saved


FIELDS: dict[str, Any] = {"client": "127.0.0.1:5000", "user": "a b", "lifetime": 600}


def _without_times(record: logging.LogRecord) -> dict[str, Any]:
    skip = {"created", "msecs", "relativeCreated", "lineno", "pathname", "filename", "module"}
    return {k: v for k, v in vars(record).items() if k not in skip | {"funcName"}}


def test_the_record_is_the_one_logger_info_makes(kept: tuple[logging.Logger, _Keep]) -> None:
    logger, handler = kept
    logger.info("test.event", extra=FIELDS)
    log_event(logger, logging.INFO, "test.event", dict(FIELDS))
    made, ours = handler.records
    assert list(vars(ours)) == list(vars(made))  # the same attributes, in the same order
    assert _without_times(ours) == _without_times(made)
    assert record_fields(ours) == FIELDS
    formatter = KeyValueFormatter()
    assert formatter.format(ours).split(" ", 1)[1] == formatter.format(made).split(" ", 1)[1]
    if logging._srcfile is None:
        assert (ours.pathname, ours.lineno, ours.funcName) == (
            made.pathname,
            made.lineno,
            made.funcName,
        )
    else:  # the caller is named, as logger.info names it
        assert ours.funcName == "test_the_record_is_the_one_logger_info_makes"


def test_below_the_level_nothing_is_made(kept: tuple[logging.Logger, _Keep]) -> None:
    logger, handler = kept
    log_event(logger, logging.DEBUG, "test.hidden", dict(FIELDS))
    assert handler.records == []


@pytest.mark.parametrize("name", ["message", "asctime", "levelname", "msg"])
def test_a_field_named_like_a_record_attribute_is_refused(
    kept: tuple[logging.Logger, _Keep], name: str
) -> None:
    logger, handler = kept
    with pytest.raises(KeyError):
        logger.info("test.clash", extra={name: 1})
    with pytest.raises(KeyError):
        log_event(logger, logging.INFO, "test.clash", {name: 1})
    assert handler.records == []


def test_allocation_lines(kept: tuple[logging.Logger, _Keep]) -> None:
    logger, handler = kept
    five_tuple = ("udp", ("2001:db8::1", 5000), ("192.0.2.1", 3478))
    log_created(logger, AllocationCreated(five_tuple, "alice", (("192.0.2.1", 50000),), 600))
    log_deleted(
        logger,
        AllocationDeleted(
            five_tuple,
            "alice",
            (("192.0.2.1", 50000), ("2001:db8::9", 50002)),
            "refresh",
            3,
            4,
            300,
            400,
            12.6,
        ),
    )
    created, deleted = (record_fields(r) for r in handler.records)
    assert [r.getMessage() for r in handler.records] == [
        "turn.allocation_created",
        "turn.allocation_deleted",
    ]
    assert created == {
        "client": "[2001:db8::1]:5000",
        "transport": "udp",
        "user": "alice",
        "relayed": "192.0.2.1:50000",
        "lifetime": 600,
    }
    assert deleted == {
        "client": "[2001:db8::1]:5000",
        "user": "alice",
        "relayed": "192.0.2.1:50000,[2001:db8::9]:50002",
        "reason": "refresh",
        "duration": 13,
        "packets_to_peers": 3,
        "packets_to_client": 4,
        "bytes_to_peers": 300,
        "bytes_to_client": 400,
    }
    assert all(r.levelno == logging.INFO for r in handler.records)


def test_no_address_is_a_dash() -> None:
    assert format_addresses([]) == "-"
