"""Exact records: one per call, the right reason, and a duration that is talk time only
(answer to the delete or to the last media, never the delete's grace period or a timeout)."""

from __future__ import annotations

from icerelay.relay.sessions import (
    SessionDeleting,
    SessionEnded,
    SessionRecord,
    TerminationReason,
)

from .samples import PLAIN, SIPP_ANSWER
from .test_sessions import Counters, answer, drain, installed, make_engine, offer


def ended(events: list[object]) -> list[SessionRecord]:
    return [event.record for event in events if isinstance(event, SessionEnded)]


def test_duration_excludes_the_delete_delay() -> None:
    engine = make_engine(delete_delay=30.0)
    offer(engine, PLAIN, now=0.0)
    answer(engine, SIPP_ANSWER, now=1.0)
    drain(engine)
    engine.delete("call-1", 1.01)
    (deleting,) = [e for e in drain(engine) if isinstance(e, SessionDeleting)]
    assert deleting.record.reason is TerminationReason.DELETED
    engine.handle_timer(31.01)
    (record,) = ended(drain(engine))
    assert record.reason is TerminationReason.DELETED
    assert record.ended == 1.01
    assert abs(record.duration - 0.01) < 1e-9
    assert deleting.record.record_id == record.record_id


def test_shutdown_during_the_delete_delay_is_recorded_as_deleted() -> None:
    engine = make_engine(delete_delay=30.0)
    offer(engine, PLAIN)
    answer(engine, SIPP_ANSWER, now=2.0)
    drain(engine)
    engine.delete("call-1", 12.0)
    engine.shutdown(20.0)
    (record,) = ended(drain(engine))
    assert record.reason is TerminationReason.DELETED
    assert record.duration == 10.0
    assert engine.ended_by_reason[TerminationReason.SHUTDOWN] == 0


def test_query_after_delete_says_deleting() -> None:
    engine = make_engine(delete_delay=30.0)
    offer(engine, PLAIN)
    answer(engine, SIPP_ANSWER)
    (before,) = engine.query("call-1")
    assert not before.deleting
    engine.delete("call-1", 5.0)
    (after,) = engine.query("call-1")
    assert after.deleting


def test_a_second_delete_keeps_the_first_end() -> None:
    engine = make_engine(delete_delay=30.0)
    offer(engine, PLAIN)
    answer(engine, SIPP_ANSWER, now=1.0)
    engine.delete("call-1", 5.0)
    engine.delete("call-1", 9.0, delay=0)
    (record,) = ended(drain(engine))
    assert (record.reason, record.ended) == (TerminationReason.DELETED, 5.0)


def test_no_media_duration_ends_with_the_last_packet() -> None:
    counters = Counters()
    engine = make_engine(counters=counters, media_timeout=60.0)
    offer(engine, PLAIN)
    answer(engine, SIPP_ANSWER, now=1.0)
    key = installed(drain(engine))[0].key
    counters.packet(key, 50.0)
    engine.handle_timer(110.0)
    (record,) = ended(drain(engine))
    assert record.reason is TerminationReason.NO_MEDIA
    assert (record.ended, record.duration) == (50.0, 49.0)


def test_snapshot_is_what_a_crash_would_record() -> None:
    counters = Counters()
    engine = make_engine(counters=counters, delete_delay=30.0)
    engine.record_prefix = "boot-"
    offer(engine, PLAIN)
    answer(engine, SIPP_ANSWER, now=1.0)
    key = installed(drain(engine))[0].key
    counters.packet(key, 3.0)
    offer(engine, PLAIN, now=2.0, call="call-2")
    (first, second) = engine.snapshot(4.0)
    assert first.reason is TerminationReason.INTERRUPTED and first.ended == 4.0
    assert first.streams[0].packets_from_caller == 1
    assert first.record_id == "boot-1" and second.record_id == "boot-2"
    engine.delete("call-1", 5.0)
    deleted = engine.snapshot(6.0)[0]
    assert (deleted.reason, deleted.ended) == (TerminationReason.DELETED, 5.0)
    assert engine.session_count == 2 and not ended(drain(engine))


def test_discarded_attempts_are_recorded_once() -> None:
    engine = make_engine()
    held = []
    for attempt in range(3):
        offer(engine, PLAIN, now=float(attempt))
        held = engine.discard("call-1", float(attempt), TerminationReason.RELAY_FAILURE)
        assert not ended(drain(engine))
    engine.account(held[-1])
    (record,) = ended(drain(engine))
    assert record.reason is TerminationReason.RELAY_FAILURE
    assert engine.ended_by_reason[TerminationReason.RELAY_FAILURE] == 1
    assert engine.pool.in_use == 0 and engine.session_count == 0
