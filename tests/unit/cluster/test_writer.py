"""The cluster's call writer: what goes to Redis, and only when it changed."""

from __future__ import annotations

import json

from tests.unit.relay.samples import ASTERISK, SIPP_ANSWER
from tests.unit.relay.test_sessions import Counters, answer, drain, make_engine, offer

from icerelay.daemon.cluster.writer import CallWriter, EngineView
from icerelay.relay.forwarding import ForwardingCounters
from icerelay.stun import Address


def setup() -> tuple[CallWriter, EngineView, Counters]:
    counters = Counters()
    engine = make_engine(counters=counters)
    writer = CallWriter("relay-a", counters_interval=10.0, journal_position=lambda call: 7)
    return writer, EngineView("relay-a", engine), counters


def test_new_calls_are_written_once_until_they_change() -> None:
    writer, view, counters = setup()
    offer(view.engine, ASTERISK, now=1.0)
    changes = writer.changes([view], now=100.0, wall_offset=0.0)
    document = json.loads(changes.write["call-1"])
    assert document["origin"] == "relay-a" and document["journal"] == 7
    assert document["sessions"][0]["tags"] == ["caller", None]
    writer.confirm(changes, 100.0)
    assert writer.changes([view], now=101.0, wall_offset=0.0).write == {}

    # Signalling changes the call: written again.
    answer(view.engine, SIPP_ANSWER, now=2.0)
    changes = writer.changes([view], now=102.0, wall_offset=0.0)
    assert list(changes.write) == ["call-1"]
    writer.confirm(changes, 102.0)

    # So does a party latching (a NAT mapping the adopter must know).
    key = view.engine.live_sessions()[0].streams[0].key
    counters.by_key[key] = ForwardingCounters()
    counters.by_key[key].a.latched_rtp = Address("198.51.100.1", 5000)
    changes = writer.changes([view], now=103.0, wall_offset=0.0)
    assert list(changes.write) == ["call-1"]
    writer.confirm(changes, 103.0)

    # Packets alone do not, until the counters interval passed.
    counters.packet(key, 3.0)
    assert writer.changes([view], now=104.0, wall_offset=0.0).write == {}
    assert list(writer.changes([view], now=114.0, wall_offset=0.0).write) == ["call-1"]


def test_ended_calls_are_gone_and_forget_rewrites_everything() -> None:
    writer, view, _ = setup()
    offer(view.engine, ASTERISK, now=1.0)
    offer(view.engine, ASTERISK, now=1.0, call="call-2")
    changes = writer.changes([view], now=100.0, wall_offset=0.0)
    writer.confirm(changes, 100.0)
    assert writer.written == 2
    view.engine.delete("call-1", 5.0, delay=0)
    drain(view.engine)
    changes = writer.changes([view], now=101.0, wall_offset=0.0)
    assert changes.gone == ["call-1"] and changes.write == {}
    writer.confirm(changes, 101.0)
    writer.forget()
    assert list(writer.changes([view], now=102.0, wall_offset=0.0).write) == ["call-2"]


def test_unconfirmed_changes_are_offered_again() -> None:
    writer, view, _ = setup()
    offer(view.engine, ASTERISK, now=1.0)
    writer.changes([view], now=100.0, wall_offset=0.0)  # Redis failed: never confirmed
    assert list(writer.changes([view], now=101.0, wall_offset=0.0).write) == ["call-1"]


def test_counter_refreshes_are_spread_by_the_budget() -> None:
    writer, view, _ = setup()
    for number in range(5):
        offer(view.engine, ASTERISK, now=1.0, call=f"call-{number}")
    writer.confirm(writer.changes([view], now=100.0, wall_offset=0.0), 100.0)
    # All five are due for fresh counters; two per round.
    first = writer.changes([view], now=111.0, wall_offset=0.0, refresh_budget=2)
    assert len(first.write) == 2
    writer.confirm(first, 111.0)
    second = writer.changes([view], now=111.2, wall_offset=0.0, refresh_budget=2)
    assert len(second.write) == 2 and not set(second.write) & set(first.write)
