"""Session snapshots: export, JSON round trip, restore into another engine (cluster failover)."""

from __future__ import annotations

import json

import pytest

from icerelay.errors import RelayError
from icerelay.relay.policy import IceMode
from icerelay.relay.sessions import SessionEnded, StreamEndReason, TerminationReason
from icerelay.relay.snapshot import VERSION, export_session, restore_session
from icerelay.stun import Address

from .samples import ASTERISK, AUDIO_VIDEO, AUDIO_VIDEO_REJECTED, SIPP_ANSWER
from .test_sessions import Counters, answer, drain, installed, make_engine, offer

# The old process's clock and the new one's differ: Unix time = clock + offset.
OLD_OFFSET, NEW_OFFSET = 1_700_000_000.0, 1_700_000_500.0


def snapshots(engine: object, counters: Counters) -> list[dict[str, object]]:
    from icerelay.relay.sessions import SessionEngine

    assert isinstance(engine, SessionEngine)
    out = []
    for session in engine.live_sessions():
        data = export_session(
            session, {s.key: counters(s.key) for s in session.streams}, wall_offset=OLD_OFFSET
        )
        # Through JSON, as Redis carries it.
        out.append(json.loads(json.dumps(data)))
    return out


def test_round_trip_keeps_ports_tags_latches_and_counters() -> None:
    counters = Counters()
    engine = make_engine(counters=counters)
    offer(engine, ASTERISK, now=10.0, ice=IceMode.FORCE)
    answer(engine, SIPP_ANSWER, now=11.0)
    before = installed(drain(engine))[-1]
    key = before.key
    counters.packet(key, 12.0, "a")
    counters.packet(key, 12.5, "b")
    counters.by_key[key].a.latched_rtp = Address("198.51.100.7", 40000)
    (data,) = snapshots(engine, counters)
    assert data["version"] == VERSION
    assert data["created"] == 10.0 + OLD_OFFSET

    # Another process: another clock, another pool object over the same range.
    adopter_counters = Counters()
    adopter = make_engine(counters=adopter_counters)
    session, restored_counters = restore_session(data, wall_offset=NEW_OFFSET)
    assert session.created == 10.0 + OLD_OFFSET - NEW_OFFSET
    adopter.restore(session, now=0.0)
    (after,) = installed(drain(adopter))
    # The same relay ports, the same relay ICE credentials; the party's latched address is
    # where the adopter sends until the party speaks again.
    assert after.a.local == before.a.local and after.b.local == before.b.local
    assert after.a.ice_credentials == before.a.ice_credentials
    assert after.a.rtp_peer == Address("198.51.100.7", 40000)
    assert after.b.rtp_peer == before.b.rtp_peer
    assert restored_counters[0].a.packets == 1 and restored_counters[0].b.bytes == 172
    for pair in (p for s in session.streams for p in s.ports if p is not None):
        assert adopter.pool.is_allocated(pair)
    summary = adopter.query("call-1")[0]
    assert (summary.from_tag, summary.to_tag) == ("caller", "callee")

    # The adopted call ends normally, with one record, and gives its ports back.
    adopter.delete("call-1", now=30.0, delay=0)
    events = drain(adopter)
    ended = [event for event in events if isinstance(event, SessionEnded)]
    assert len(ended) == 1 and ended[0].record.reason is TerminationReason.DELETED
    assert adopter.pool.in_use == 0


def test_reoffer_after_restore_reuses_the_ports() -> None:
    counters = Counters()
    engine = make_engine(counters=counters)
    offer(engine, ASTERISK, now=1.0)
    answer(engine, SIPP_ANSWER, now=2.0)
    first = installed(drain(engine))[-1]
    (data,) = snapshots(engine, counters)
    adopter = make_engine(counters=Counters())
    session, _ = restore_session(data, wall_offset=OLD_OFFSET)
    adopter.restore(session, now=3.0)
    drain(adopter)
    sdp = offer(adopter, ASTERISK, now=4.0, to="callee")
    assert sdp.media[0].port == first.b.local.port
    assert adopter.pool.in_use == 2


def test_ended_streams_stay_ended_and_hold_no_ports() -> None:
    counters = Counters()
    engine = make_engine(counters=counters)
    offer(engine, AUDIO_VIDEO, now=1.0)
    answer(engine, AUDIO_VIDEO_REJECTED, now=2.0)
    drain(engine)
    (data,) = snapshots(engine, counters)
    adopter = make_engine(counters=Counters())
    session, _ = restore_session(data, wall_offset=OLD_OFFSET)
    adopter.restore(session, now=3.0)
    assert [s.ended for s in session.streams] == [None, StreamEndReason.REJECTED]
    assert len(installed(drain(adopter))) == 1
    assert adopter.pool.in_use == 2


def test_restore_refuses_taken_ports_and_changes_nothing() -> None:
    counters = Counters()
    engine = make_engine(counters=counters)
    offer(engine, ASTERISK, now=1.0)
    drain(engine)
    (data,) = snapshots(engine, counters)
    session, _ = restore_session(data, wall_offset=OLD_OFFSET)
    # The original engine still holds the ports: restoring into it must fail cleanly.
    with pytest.raises(RelayError):
        engine.restore(session, now=2.0)
    assert engine.session_count == 1 and engine.pool.in_use == 2


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.update(version=99),
        lambda d: d.pop("tags"),
        lambda d: d.update(tags=["only-one"]),
        lambda d: d["streams"][0].update(ports=[30001, None]),
        lambda d: d["streams"][0].update(family=[5, 4]),
        lambda d: d.update(created="yesterday"),
        lambda d: d["streams"][0]["offers"][0].update(direction="sideways"),
        lambda d: d["streams"][0]["offers"][0].update(candidates=["garbage"]),
        lambda d: d.update(streams=[None]),
    ],
)
def test_malformed_snapshots_are_a_relay_error(damage: object) -> None:
    counters = Counters()
    engine = make_engine(counters=counters)
    offer(engine, ASTERISK, now=1.0)
    (data,) = snapshots(engine, counters)
    damage(data)  # type: ignore[operator]
    with pytest.raises(RelayError, match="snapshot"):
        restore_session(data, wall_offset=0.0)


def _ended_records(engine: object) -> list[object]:
    from icerelay.relay.sessions import SessionEngine

    assert isinstance(engine, SessionEngine)
    return [event.record for event in drain(engine) if isinstance(event, SessionEnded)]


def test_restored_session_keeps_the_record_id_its_first_engine_chose() -> None:
    # The owner ends the call and records it, but dies before Redis forgets it: the adopter's
    # record of the same call must carry the same id, so that the shared accounting database
    # (ON CONFLICT (record_id) DO NOTHING) keeps one of the two.
    counters = Counters()
    owner = make_engine(counters=counters)
    owner.record_prefix = "owner-"
    offer(owner, ASTERISK, now=1.0)
    answer(owner, SIPP_ANSWER, now=2.0)
    (data,) = snapshots(owner, counters)
    assert data["record_id"] == "owner-1"
    assert [r.record_id for r in owner.snapshot(3.0)] == ["owner-1"]
    owner.delete("call-1", now=3.0, delay=0)
    (owner_record,) = _ended_records(owner)

    adopter = make_engine(counters=Counters())
    adopter.record_prefix = "adopter-"
    session, _ = restore_session(data, wall_offset=OLD_OFFSET)
    assert session.record_id == "owner-1"
    adopter.restore(session, now=4.0)
    # A call the adopter opens itself gets an id of its own.
    offer(adopter, ASTERISK, now=4.5, call="own-call")
    assert {r.call_id: r.record_id for r in adopter.snapshot(5.0)} == {
        "call-1": "owner-1",
        "own-call": "adopter-2",
    }
    adopter.delete("call-1", now=6.0, delay=0)
    (adopter_record,) = _ended_records(adopter)
    assert adopter_record.record_id == owner_record.record_id == "owner-1"  # type: ignore[attr-defined]

    # The adopter's own snapshot of the call (for the next adopter) still names the owner's id.
    again = make_engine(counters=Counters())
    again.restore(restore_session(data, wall_offset=OLD_OFFSET)[0], now=7.0)
    (data_again,) = snapshots(again, Counters())
    assert data_again["record_id"] == "owner-1"


def test_snapshot_without_a_record_id_restores_with_a_fresh_one() -> None:
    # Written by a relay from before record ids were carried: the adopter names the record.
    counters = Counters()
    owner = make_engine(counters=counters)
    owner.record_prefix = "owner-"
    offer(owner, ASTERISK, now=1.0)
    (data,) = snapshots(owner, counters)
    del data["record_id"]
    session, _ = restore_session(data, wall_offset=OLD_OFFSET)
    assert session.record_id == ""
    adopter = make_engine(counters=Counters())
    adopter.record_prefix = "adopter-"
    adopter.restore(session, now=2.0)
    assert session.record_id == f"adopter-{session.id}"
    adopter.delete("call-1", now=3.0, delay=0)
    (record,) = _ended_records(adopter)
    assert record.record_id == f"adopter-{session.id}"  # type: ignore[attr-defined]
