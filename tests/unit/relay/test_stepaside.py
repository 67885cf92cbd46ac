"""Step-aside from what the relay saw (issue 11): the pure decision and the engine around it."""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any
from unittest.mock import ANY

import pytest

from icerelay.control.mediaproxy import MediaproxyHandler
from icerelay.control.ng.commands import Query
from icerelay.control.ng.handler import NgHandler
from icerelay.daemon.relay_service import RelayService
from icerelay.relay import stepaside
from icerelay.relay.forwarding import ForwardingCounters, LegCounters
from icerelay.relay.ports import PortPair, PortPool
from icerelay.relay.sessions import (
    ForwardingInstalled,
    ForwardingRemoved,
    MediaRequest,
    RelayConfig,
    SessionEnded,
    SessionEngine,
    StreamEnded,
    StreamEndReason,
)
from icerelay.relay.stepaside import Path
from icerelay.sdp import SessionDescription
from icerelay.stun import Address, AttributeType, MessageClass, Method
from icerelay.stun.credentials import short_term_key
from icerelay.stun.message import Message, decode_message

from .samples import ASTERISK, SIPP_ANSWER
from .test_service import NgClient, Phone, config
from .test_sessions import CALLEE_ICE, RELAY, answer, drain, ice_reoffer, installed, offer


def leg(
    checks: int = 0,
    check: float | None = None,
    nomination: float | None = None,
    media: float | None = None,
    packets: int = 0,
) -> LegCounters:
    return LegCounters(
        packets=packets or (1 if media is not None else 0),
        checks_authenticated=checks,
        last_check=check,
        last_nomination=nomination,
        last_media=media,
        last_packet=media,
    )


# -- the pure decision -----------------------------------------------------------------------


def test_no_checks_no_decision() -> None:
    silent = ForwardingCounters()
    assert not stepaside.should_step_aside(silent, 100.0, 3.0)
    assert not stepaside.should_step_aside(None, 100.0, 3.0)
    assert stepaside.relay_in_use(silent, 100.0, 3.0) is None
    # Media alone (no ICE checks through the relay) never makes the relay step aside.
    media_only = ForwardingCounters(leg(media=1.0), leg(media=1.0))
    assert not stepaside.should_step_aside(media_only, 100.0, 3.0)
    assert stepaside.next_check(media_only, 100.0, 3.0) == 103.0


def test_checks_then_silence_for_the_settle_time() -> None:
    counters = ForwardingCounters(leg(4, check=10.0), leg(3, check=10.2))
    assert not stepaside.should_step_aside(counters, 13.1, 3.0)
    assert stepaside.next_check(counters, 13.1, 3.0) == pytest.approx(13.2)
    assert stepaside.should_step_aside(counters, 13.2, 3.0)


def test_media_through_the_relay_keeps_it() -> None:
    # Early media to the default address (the relay) ended when ICE completed on another pair.
    early = ForwardingCounters(leg(4, check=10.0, media=10.5), leg(3, check=10.1, media=10.4))
    assert stepaside.should_step_aside(early, 13.5, 3.0)
    # Media on the relay pair goes on: the relay is in use.
    flowing = ForwardingCounters(leg(4, check=10.0, nomination=10.0, media=30.0), leg(3))
    assert not stepaside.should_step_aside(flowing, 31.0, 3.0)
    # Selected (nominated, media for seconds since): looked at again only now and then.
    assert stepaside.next_check(flowing, 31.0, 3.0) == 61.0


def test_consent_checks_alone_keep_a_held_stream() -> None:
    # On hold both ways: the selected relay pair carries consent checks every 4-6 s only.
    consent = ForwardingCounters(leg(9, check=20.0, nomination=5.0), leg(9, check=19.0))
    assert stepaside.should_step_aside(consent, 24.5, 3.0)  # not held: 4.5 s of silence
    assert not stepaside.should_step_aside(consent, 24.5, 3.0, held=True)
    assert stepaside.should_step_aside(consent, 26.0, 3.0, held=True)


def test_a_two_component_stream_heard_on_one_port_waits_longer() -> None:
    """baresip checks component 1's pairs, then component 2's, one at a time: its checks on the
    relay's RTP port can be 4-5 s before those on the RTCP port (seen in the interop test)."""
    rtp_only = ForwardingCounters(leg(2, check=5.0), leg(2, check=5.0))
    rtp_only.a.latched_rtp = Address("198.51.100.1", 2450)
    assert stepaside.should_step_aside(rtp_only, 8.0, 3.0, components=1)
    assert not stepaside.should_step_aside(rtp_only, 9.5, 3.0, components=2)
    assert stepaside.next_check(rtp_only, 9.5, 3.0, components=2) == 15.0
    assert stepaside.should_step_aside(rtp_only, 15.0, 3.0, components=2)
    both = ForwardingCounters(leg(2, check=9.5), leg(2, check=9.5))
    both.a.latched_rtp, both.b.latched_rtcp = Address("198.51.100.1", 2450), Address("x", 1)
    assert stepaside.should_step_aside(both, 12.5, 3.0, components=2)


def test_silence_on_the_selected_relay_pair_is_not_a_direct_path() -> None:
    """Nominated through the relay, then media through it for seconds: the relay pair is the
    selected one. A muted phone (silence suppression) must not make the relay step aside."""
    selected = ForwardingCounters(
        leg(4, check=1.0, nomination=1.2, media=20.0), leg(4, check=1.1, media=20.0)
    )
    assert stepaside.relay_selected(selected, 3.0)
    assert not stepaside.should_step_aside(selected, 40.0, 3.0)
    assert stepaside.next_check(selected, 40.0, 3.0) == 70.0
    # Media only until just after the nomination (early media, then ICE went elsewhere).
    early = ForwardingCounters(leg(4, check=1.0, nomination=1.2, media=1.5), leg(4, check=1.1))
    assert not stepaside.relay_selected(early, 3.0)
    assert stepaside.should_step_aside(early, 4.5, 3.0)


def test_relay_in_use_needs_a_nomination_and_recent_use() -> None:
    never_nominated = ForwardingCounters(leg(4, check=10.0, media=10.0), leg(4, check=10.0))
    assert stepaside.relay_in_use(never_nominated, 10.5, 3.0) is False
    nominated = ForwardingCounters(leg(4, check=10.0, nomination=10.0, media=12.0), leg(2))
    assert stepaside.relay_in_use(nominated, 12.5, 3.0) is True
    assert stepaside.relay_in_use(nominated, 16.0, 3.0) is False


def test_paths_per_direction() -> None:
    # The caller's media crossed the relay to the end; the callee's checks did, its media not.
    one_way = ForwardingCounters(leg(4, check=1.0, media=60.0), leg(4, check=1.0))
    assert stepaside.paths(one_way, 3.0, stepped_aside=False) == (Path.RELAYED, Path.DIRECT)
    both = ForwardingCounters(leg(4, check=1.0, media=60.0), leg(4, check=1.0, media=59.9))
    assert stepaside.paths(both, 3.0, stepped_aside=False) == (Path.RELAYED, Path.RELAYED)
    assert stepaside.paths(both, 3.0, stepped_aside=True) == (Path.DIRECT, Path.DIRECT)
    # No ICE: media counted without times is relayed; nothing at all is none.
    plain = ForwardingCounters(LegCounters(packets=5), LegCounters())
    assert stepaside.paths(plain, 3.0, stepped_aside=False) == (Path.RELAYED, Path.NONE)


# -- ports: quarantine -----------------------------------------------------------------------


def test_quarantined_ports_come_back_only_when_due() -> None:
    pool = PortPool(30000, 30003, rng=random.Random(1))
    first, second = pool.allocate(), pool.allocate()
    pool.release(first, until=60.0)
    pool.release(second)
    assert pool.quarantined == 1 and pool.available == 1 and pool.next_expiry() == 60.0
    assert pool.allocate() == second  # the only free pair; the quarantined one is not handed out
    pool.check()
    assert pool.expire(59.9) == 0 and pool.available == 0
    assert pool.expire(60.0) == 1 and pool.allocate() == first
    assert pool.next_expiry() is None
    pool.check()


def test_a_quarantined_pair_can_be_reserved_by_name() -> None:
    pool = PortPool(30000, 30003, rng=random.Random(1))
    pair = pool.allocate()
    pool.release(pair, until=60.0)
    pool.reserve(pair)
    assert pool.is_allocated(pair) and pool.quarantined == 0
    pool.expire(100.0)  # the stale quarantine entry is ignored
    assert pool.is_allocated(pair)
    pool.release(pair)
    pool.check()


# -- the engine ------------------------------------------------------------------------------


class Counters:
    def __init__(self) -> None:
        self.by_key: dict[str, ForwardingCounters] = {}

    def __call__(self, key: str) -> ForwardingCounters | None:
        return self.by_key.get(key)


def make(counters: Counters, **config: object) -> SessionEngine:
    return SessionEngine(
        RelayConfig(**config),  # type: ignore[arg-type]
        PortPool(30000, 30199, rng=random.Random(3)),
        rng=random.Random(4),
        counters=counters,
    )


def ice_call(counters: Counters, **config: object) -> tuple[SessionEngine, str]:
    engine = make(counters, media_timeout=60.0, **config)
    offer(engine, ASTERISK, now=0.0)
    answer(engine, CALLEE_ICE, now=1.0)
    key = installed(drain(engine))[0].key
    counters.by_key[key] = ForwardingCounters()
    return engine, key


def run_until(engine: SessionEngine, end: float) -> None:
    """Fire the engine's timers in order up to ``end``, as the daemon's timer task does."""
    while (deadline := engine.next_timer()) is not None and deadline <= end:
        engine.handle_timer(deadline)


def test_timer_steps_aside_settle_seconds_after_the_last_check() -> None:
    counters = Counters()
    engine, key = ice_call(counters)
    c = counters.by_key[key]
    # Checks crossed the relay 15 ms after the answer; then ICE completed on a direct pair.
    c.a.checks_authenticated, c.a.last_check = 3, 1.015
    c.b.checks_authenticated, c.b.last_check = 3, 1.030
    run_until(engine, 4.0)
    assert engine.pool.in_use == 2, "not before the settle time"
    run_until(engine, 5.0)
    events = drain(engine)
    (ended,) = [e for e in events if isinstance(e, StreamEnded)]
    assert ended == StreamEnded("call-1", "caller", "callee", 0, StreamEndReason.ICE_DIRECT, ANY)
    # How long the relay pair had been unused when the ports went: the settle time, give or
    # take the timer's poll (the daemon logs it, the interop tests measure it).
    assert ended.idle is not None and 3.0 <= ended.idle <= 3.0 + 1.0
    assert ForwardingRemoved(key) in events
    assert engine.pool.in_use == 0 and engine.pool.quarantined == 2
    assert engine.stepped_aside == 1
    (summary,) = engine.query("call-1")
    (stream,) = summary.streams
    assert stream.end_reason is StreamEndReason.ICE_DIRECT
    # Stepped aside when the timer found 3 s of silence, within the poll of the settle time.
    assert stream.stepped_aside is not None and 4.03 <= stream.stepped_aside <= 5.0
    assert (stream.path_from_caller, stream.path_from_callee) == ("direct", "direct")
    # The call goes on without the relay: no media timeout.
    run_until(engine, 1000.0)
    assert engine.session_count == 1
    engine.delete("call-1", 1000.0, delay=0)
    (ended,) = [e for e in drain(engine) if isinstance(e, SessionEnded)]
    assert ended.record.streams[0].end_reason is StreamEndReason.ICE_DIRECT
    assert ended.record.streams[0].stepped_aside == stream.stepped_aside


def test_the_first_timer_after_checks_is_exact() -> None:
    counters = Counters()
    engine, key = ice_call(counters, ice_settle=3.0)
    c = counters.by_key[key]
    c.a.checks_authenticated, c.a.last_check = 2, 1.2
    # The daemon re-arms after a timer; the engine looks again at the end of the window.
    engine.handle_timer(4.0)  # the poll while no check had crossed yet saw them now
    assert engine.next_timer() == pytest.approx(4.2)
    engine.handle_timer(4.2)
    assert engine.pool.in_use == 0


def test_media_on_the_relay_pair_keeps_the_relay() -> None:
    counters = Counters()
    engine, key = ice_call(counters)
    c = counters.by_key[key]
    c.a.checks_authenticated, c.a.last_check, c.a.last_nomination = 4, 1.1, 1.1
    c.b.checks_authenticated, c.b.last_check = 4, 1.1
    for now in range(2, 40):
        c.a.last_media = c.b.last_media = float(now)
        c.a.packets = c.b.packets = now * 50
        run_until(engine, float(now))
    assert engine.pool.in_use == 2 and not engine.stepped_aside
    (summary,) = engine.query("call-1")
    assert (summary.streams[0].path_from_caller, summary.streams[0].path_from_callee) == (
        "relayed",
        "relayed",
    )


def test_one_way_relayed_is_said_in_query_and_record() -> None:
    counters = Counters()
    engine, key = ice_call(counters)
    c = counters.by_key[key]
    c.a.checks_authenticated, c.a.last_check = 4, 1.1
    c.b.checks_authenticated, c.b.last_check = 4, 1.1
    for now in range(2, 20):  # only the caller's media comes through the relay
        c.a.last_media, c.a.packets = float(now), now * 50
        run_until(engine, float(now))
    assert engine.pool.in_use == 2, "media still crosses the relay one way: keep it"
    reply: Any = NgHandler(engine).handle(Query("call-1"), 20.0)
    medias = {tag: value["medias"][0] for tag, value in reply["tags"].items()}
    assert medias["caller"]["path"] == "relayed" and medias["callee"]["path"] == "direct"
    assert medias["caller"]["state"] == "relaying"
    engine.delete("call-1", 20.0, delay=0)
    (ended,) = [e for e in drain(engine) if isinstance(e, SessionEnded)]
    record = ended.record.streams[0]
    assert (record.path_from_caller, record.path_from_callee) == ("relayed", "direct")


def test_parties_without_ice_are_not_watched() -> None:
    counters = Counters()
    engine = make(counters, media_timeout=60.0)
    offer(engine, ASTERISK)
    answer(engine, SIPP_ANSWER, now=1.0)
    key = installed(drain(engine))[0].key
    counters.by_key[key] = ForwardingCounters(leg(3, check=1.0), leg())
    run_until(engine, 30.0)
    assert engine.pool.in_use == 2 and engine.next_timer() == pytest.approx(61.0)


def test_later_reinvites_of_a_stepped_aside_stream_are_not_rewritten() -> None:
    counters = Counters()
    engine, key = ice_call(counters)
    counters.by_key[key].a.checks_authenticated = 2
    counters.by_key[key].a.last_check = 1.1
    run_until(engine, 5.0)
    assert engine.pool.in_use == 0
    drain(engine)
    # baresip's re-INVITE listing every remote candidate, the relay's among them.
    relayed = ice_reoffer(f"{RELAY} 30000 1 198.51.100.30 9000")
    out = offer(engine, relayed, 6.0, to="callee")
    assert out.media[0].port == 17234 and out.connection is not None
    assert out.connection.address == "10.0.1.40"
    back = answer(engine, CALLEE_ICE, 6.1)
    assert back.media[0].port == 9000
    assert engine.pool.in_use == 0 and not installed(drain(engine))


def test_several_remote_candidates_and_the_relay_not_in_use_is_direct() -> None:
    counters = Counters()
    engine, key = ice_call(counters)
    c = counters.by_key[key]
    # Checks crossed, no nomination did: ICE nominated another pair.
    c.a.checks_authenticated, c.a.last_check, c.a.last_media = 4, 1.1, 1.3
    c.b.checks_authenticated, c.b.last_check = 4, 1.1
    port = engine.query("call-1")[0].streams[0].relay_ports[0]
    listed = f"{RELAY} {port} 1 198.51.100.30 9000 1 192.168.2.30 9000"
    out = offer(engine, ice_reoffer(listed), 1.5, to="callee")
    assert out.media[0].port == 17234, "not rewritten: the relay steps aside"
    assert engine.pool.in_use == 0
    assert StreamEnded("call-1", "caller", "callee", 0, StreamEndReason.ICE_DIRECT, ANY) in drain(
        engine
    )


def test_several_remote_candidates_and_the_relay_in_use_keeps_it() -> None:
    counters = Counters()
    engine, key = ice_call(counters)
    c = counters.by_key[key]
    c.a.checks_authenticated, c.a.last_check, c.a.last_nomination = 4, 1.1, 1.1
    c.a.last_media, c.b.last_media = 1.4, 1.4
    c.b.checks_authenticated, c.b.last_check = 4, 1.1
    port = engine.query("call-1")[0].streams[0].relay_ports[0]
    listed = f"{RELAY} {port} 1 198.51.100.30 9000"
    out = offer(engine, ice_reoffer(listed), 1.5, to="callee")
    assert out.media[0].port != 17234 and engine.pool.in_use == 2


def test_mediaproxy_ice_yes_steps_aside_the_same_way() -> None:
    counters = Counters()
    engine = make(counters, addresses={4: "192.0.2.1"})
    handler = MediaproxyHandler(engine)
    common = (
        "type: {kind}\r\ndialog_id: 1:2\r\ncall_id: mp-1\r\ncseq: 1 INVITE\r\n"
        "from_uri: sip:a@example.com\r\nto_uri: sip:b@example.com\r\nfrom_tag: at\r\n"
        "to_tag: {to}\r\nuser_agent: baresip\r\nmedia: {media}\r\nsignaling_ip: 203.0.113.5\r\n"
        "media_relay: \r\n"
    )
    handler.handle(
        (
            "update\r\n"
            + common.format(kind="request", to="", media="audio:10.0.0.5:5000:sendrecv:ice=yes")
        ).encode(),
        0.0,
    )
    handler.handle(
        (
            "update\r\n"
            + common.format(kind="reply", to="bt", media="audio:198.51.100.9:7000:sendrecv:ice=yes")
        ).encode(),
        0.5,
    )
    (key,) = {e.forwarding.key for e in drain(engine) if isinstance(e, ForwardingInstalled)}
    counters.by_key[key] = ForwardingCounters(leg(2, check=0.6), leg(2, check=0.6))
    run_until(engine, 3.5)
    assert engine.pool.in_use == 2
    run_until(engine, 4.0)
    assert StreamEnded("mp-1", "at", "bt", 0, StreamEndReason.ICE_DIRECT, 3.0) in drain(engine)
    assert engine.pool.in_use == 0 and engine.session_count == 1


def test_quarantine_expires_for_new_calls() -> None:
    counters = Counters()
    engine, key = ice_call(counters, port_quarantine=30.0)
    counters.by_key[key].a.checks_authenticated = 1
    counters.by_key[key].a.last_check = 1.0
    run_until(engine, 5.0)
    freed = {PortPair(p) for p in engine.query("call-1")[0].streams[0].relay_ports if p}
    assert engine.pool.quarantined == 2
    offer(engine, ASTERISK, now=20.0, call="call-2")
    assert engine.pool.quarantined == 2
    taken = {PortPair(p) for p in engine.query("call-2")[0].streams[0].relay_ports if p}
    assert not taken & freed
    offer(engine, ASTERISK, now=40.0, call="call-3")
    assert engine.pool.quarantined == 0


def test_request_body_is_valid_sdp() -> None:
    # The helper bodies of this module parse (a guard for the tests above).
    assert SessionDescription.parse(ice_reoffer("127.0.0.1 30000")).media[0].remote_candidates
    assert MediaRequest("c", "t", ASTERISK).dialog.call_id == "c"


# -- the daemon: counters from the real (userspace) data plane, the engine's timer ------------


def ice_sdp(port: int, ufrag: str, pwd: str) -> bytes:
    return (
        f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=rtcp-mux\r\n"
        f"a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n"
        f"a=candidate:1 1 UDP 2130706431 127.0.0.1 {port} typ host\r\n"
    ).encode()


def test_the_daemon_steps_aside_after_checks_and_silence() -> None:
    """Checks that authenticate with the two SDPs' credentials cross the relay (as ICE tries the
    relay pair), then nothing: the daemon frees the ports after the settle time, ng query says
    ice-direct-path and statistics count it."""
    alice_ice = ("alicefrag", "alicepassword0123456789x")
    bob_ice = ("bobfrag1", "bobpassword0123456789xyz")

    async def main() -> None:
        service = RelayService(config(ice_settle=0.3, port_quarantine=30.0))
        await service.start()
        alice, bob = Phone(), Phone()
        client = NgClient(service.ng_address)
        loop = asyncio.get_running_loop()
        try:
            offered = await client.request({
                "command": "offer", "call-id": "ice@test", "from-tag": "alice",
                "sdp": ice_sdp(alice.port, *alice_ice),
            })  # fmt: skip
            to_bob = SessionDescription.parse(offered[b"sdp"])  # type: ignore[arg-type]
            answered = await client.request({
                "command": "answer", "call-id": "ice@test", "from-tag": "alice",
                "to-tag": "bob", "sdp": ice_sdp(bob.port, *bob_ice),
            })  # fmt: skip
            to_alice = SessionDescription.parse(answered[b"sdp"])  # type: ignore[arg-type]
            assert service.pool.in_use == 2
            # Alice checks the relay pair towards Bob: USERNAME bob:alice, Bob's password.
            request = Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12))
            request.add(AttributeType.USERNAME, f"{bob_ice[0]}:{alice_ice[0]}")
            request.add(AttributeType.PRIORITY, 1853824767)
            request.add(AttributeType.ICE_CONTROLLING, 7)
            key = short_term_key(bob_ice[1])
            await loop.sock_sendto(
                alice.sock, request.encode(integrity_key=key, fingerprint=True),
                ("127.0.0.1", to_alice.media[0].port),
            )  # fmt: skip
            data, _ = await bob.receive()
            response = decode_message(data).response()
            response.add(AttributeType.XOR_MAPPED_ADDRESS, Address("127.0.0.1", alice.port))
            await loop.sock_sendto(
                bob.sock, response.encode(integrity_key=key, fingerprint=True),
                ("127.0.0.1", to_bob.media[0].port),
            )  # fmt: skip
            await alice.receive()
            for _ in range(60):  # the settle time is 0.3 s
                if service.pool.in_use == 0:
                    break
                await asyncio.sleep(0.05)
            assert service.pool.in_use == 0 and service.pool.quarantined == 2
            query: Any = await client.request({"command": "query", "call-id": "ice@test"})
            medias = [tag[b"medias"][0] for tag in query[b"tags"].values()]
            assert {m[b"state"] for m in medias} == {b"ice-direct-path"}
            assert {m[b"path"] for m in medias} == {b"direct"}
            stats: Any = await client.request({"command": "statistics"})
            assert stats[b"statistics"][b"service"][b"streams_stepped_aside"] == 1
        finally:
            await service.stop()
            alice.sock.close()
            bob.sock.close()
            client.sock.close()

    asyncio.run(asyncio.wait_for(main(), 20))
