"""The session engine: offer/answer, re-INVITE, hold, streams, ICE, timeouts, accounting."""

from __future__ import annotations

import random

import pytest

from icerelay.errors import RelayError
from icerelay.relay.forwarding import Forwarding, ForwardingCounters
from icerelay.relay.policy import IceMode, IcePriority
from icerelay.relay.ports import PortPool
from icerelay.relay.sessions import (
    Event,
    ForwardingInstalled,
    ForwardingRemoved,
    MediaRequest,
    RelayConfig,
    RelayOptions,
    SessionEnded,
    SessionEngine,
    StreamEnded,
    StreamEndReason,
    TerminationReason,
)
from icerelay.sdp import SessionDescription
from icerelay.stun import Address

from .samples import (
    ASTERISK,
    AUDIO_VIDEO,
    AUDIO_VIDEO_REJECTED,
    HOLD_SENDONLY,
    IPV6,
    PLAIN,
    SIPP_ANSWER,
    body,
)

RELAY = "127.0.0.1"


class Counters:
    """An in-memory counter source, standing in for a data plane's counters."""

    def __init__(self) -> None:
        self.by_key: dict[str, ForwardingCounters] = {}

    def __call__(self, key: str) -> ForwardingCounters | None:
        return self.by_key.get(key)

    def packet(self, key: str, now: float, side: str = "a", size: int = 172) -> None:
        counters = self.by_key.setdefault(key, ForwardingCounters())
        leg = counters.a if side == "a" else counters.b
        leg.packets += 1
        leg.bytes += size
        leg.last_packet = now


def make_engine(
    pool_size: int = 100, counters: Counters | None = None, **config: object
) -> SessionEngine:
    pool = PortPool(30000, 30000 + 2 * pool_size - 1, rng=random.Random(3))
    return SessionEngine(
        RelayConfig(**config),
        pool,
        rng=random.Random(4),
        counters=counters,  # type: ignore[arg-type]
    )


def drain(engine: SessionEngine) -> list[Event]:
    events = []
    while (event := engine.next_event()) is not None:
        events.append(event)
    return events


def installed(events: list[Event]) -> list[Forwarding]:
    return [event.forwarding for event in events if isinstance(event, ForwardingInstalled)]


def offer(
    engine: SessionEngine,
    sdp: bytes,
    now: float = 0.0,
    call: str = "call-1",
    tag: str = "caller",
    to: str | None = None,
    **options: object,
) -> SessionDescription:
    out = engine.offer(
        MediaRequest(call, tag, sdp, to_tag=to, options=RelayOptions(**options)),  # type: ignore[arg-type]
        now,
    )
    return SessionDescription.parse(out)


def answer(
    engine: SessionEngine,
    sdp: bytes,
    now: float = 1.0,
    call: str = "call-1",
    tag: str = "caller",
    to: str = "callee",
    **options: object,
) -> SessionDescription:
    out = engine.answer(
        MediaRequest(call, tag, sdp, to_tag=to, options=RelayOptions(**options)),  # type: ignore[arg-type]
        now,
    )
    return SessionDescription.parse(out)


def test_offer_answer_allocates_rewrites_and_installs() -> None:
    engine = make_engine()
    to_callee = offer(engine, ASTERISK, replace_origin=True)
    audio = to_callee.media[0]
    assert audio.effective_connection(to_callee).address == RELAY  # type: ignore[union-attr]
    assert to_callee.origin is not None and to_callee.origin.address == RELAY
    callee_port = audio.port
    assert callee_port % 2 == 0 and 30000 <= callee_port < 30200
    relay = [c for c in audio.candidates() if c.type == "relay"]
    assert [(c.component, c.port) for c in relay] == [(1, callee_port), (2, callee_port + 1)]
    (first,) = installed(drain(engine))
    assert first.b.local == Address(RELAY, callee_port)
    assert first.a.rtp_peer == Address("10.0.1.40", 17234)
    assert first.a.rtcp_peer == Address("10.0.1.40", 17235)
    assert first.b.rtp_peer is None  # the callee has not answered yet

    to_caller = answer(engine, SIPP_ANSWER)
    caller_port = to_caller.media[0].port
    assert caller_port not in (callee_port, 0)
    assert to_caller.connection is not None and to_caller.connection.address == RELAY
    (second,) = installed(drain(engine))
    assert second.key == first.key
    assert second.a.local == Address(RELAY, caller_port)
    assert second.b.rtp_peer == Address("127.0.0.1", 6010)
    assert second.b.rtcp_peer == Address("127.0.0.1", 6011)
    assert engine.pool.in_use == 2
    assert engine.session_count == 1 and engine.call_ids() == ["call-1"]


def test_delete_now_frees_everything_and_writes_a_record() -> None:
    counters = Counters()
    engine = make_engine(counters=counters)
    offer(engine, PLAIN)
    answer(engine, SIPP_ANSWER, now=2.0)
    key = installed(drain(engine))[0].key
    for t in range(5):
        counters.packet(key, 3.0 + t, "a", 172)
    counters.packet(key, 8.0, "b", 100)
    (summary,) = engine.delete("call-1", 10.0, from_tag="caller", delay=0)
    assert summary.streams[0].packets_from_caller == 5
    events = drain(engine)
    assert ForwardingRemoved(key) in events
    (ended,) = [e for e in events if isinstance(e, SessionEnded)]
    record = ended.record
    assert record.reason is TerminationReason.DELETED
    assert (record.call_id, record.from_tag, record.to_tag) == ("call-1", "caller", "callee")
    assert record.duration == 8.0
    (stream,) = record.streams
    assert (stream.packets_from_caller, stream.bytes_from_caller) == (5, 860)
    assert (stream.packets_from_callee, stream.bytes_from_callee) == (1, 100)
    assert stream.codec == "PCMA" and stream.media == "audio"
    assert stream.caller == Address("192.0.2.11", 6000)
    assert stream.callee == Address("127.0.0.1", 6010)
    assert engine.pool.in_use == 0 and engine.session_count == 0 and engine.call_ids() == []
    with pytest.raises(RelayError, match="unknown call"):
        engine.delete("call-1", 11.0)


def test_delete_delay_keeps_relaying_until_it_expires() -> None:
    engine = make_engine(delete_delay=30.0)
    offer(engine, PLAIN)
    answer(engine, SIPP_ANSWER)
    drain(engine)
    engine.delete("call-1", 10.0)
    assert [type(e).__name__ for e in drain(engine)] == ["SessionDeleting"]
    assert engine.next_timer() == 40.0
    engine.handle_timer(39.9)
    assert engine.session_count == 1 and not drain(engine)
    engine.handle_timer(40.0)
    (ended,) = [e for e in drain(engine) if isinstance(e, SessionEnded)]
    assert ended.record.reason is TerminationReason.DELETED
    assert engine.pool.in_use == 0


def test_repeated_initial_offer_keeps_its_ports() -> None:
    engine = make_engine()
    first = offer(engine, PLAIN)
    again = offer(engine, PLAIN, now=0.5)
    assert first.to_bytes() == again.to_bytes()
    assert engine.pool.in_use == 2 and engine.session_count == 1


def test_reinvite_from_either_side_reuses_ports() -> None:
    engine = make_engine()
    to_callee = offer(engine, PLAIN)
    to_caller = answer(engine, SIPP_ANSWER)
    # Caller re-INVITE: from-tag caller, to-tag callee.
    again = offer(engine, PLAIN.replace(b"2353687637", b"2353687638"), 5.0, to="callee")
    assert again.media[0].port == to_callee.media[0].port
    # Callee re-INVITE: From and To swap in requests the callee sends.
    from_callee = offer(engine, SIPP_ANSWER, 6.0, tag="callee", to="caller")
    assert from_callee.media[0].port == to_caller.media[0].port
    back = answer(engine, PLAIN, 6.5, tag="callee", to="caller")
    assert back.media[0].port == to_callee.media[0].port
    assert engine.pool.in_use == 2 and engine.session_count == 1


def test_hold_uses_the_hold_timeout() -> None:
    engine = make_engine(media_timeout=60.0, hold_timeout=600.0)
    offer(engine, PLAIN)
    answer(engine, SIPP_ANSWER)
    offer(engine, HOLD_SENDONLY, 10.0, to="callee")
    answer(engine, SIPP_ANSWER.replace(b"a=rtpmap", b"a=recvonly\r\na=rtpmap"), 10.5)
    drain(engine)
    engine.handle_timer(100.0)
    assert engine.session_count == 1
    assert engine.next_timer() == 610.5
    engine.handle_timer(610.5)
    (ended,) = [e for e in drain(engine) if isinstance(e, SessionEnded)]
    assert ended.record.reason is TerminationReason.HOLD_TIMEOUT


def test_no_media_timeout_follows_the_last_packet() -> None:
    counters = Counters()
    engine = make_engine(counters=counters, media_timeout=60.0)
    offer(engine, PLAIN)
    answer(engine, SIPP_ANSWER, now=1.0)
    key = installed(drain(engine))[0].key
    assert engine.next_timer() == 61.0
    counters.packet(key, 50.0)
    engine.handle_timer(61.0)
    assert engine.session_count == 1
    assert engine.next_timer() == 110.0
    engine.handle_timer(110.0)
    (ended,) = [e for e in drain(engine) if isinstance(e, SessionEnded)]
    assert ended.record.reason is TerminationReason.NO_MEDIA
    assert ended.record.streams[0].packets_from_caller == 1
    assert engine.ended_by_reason[TerminationReason.NO_MEDIA] == 1


def test_offer_without_answer_times_out() -> None:
    engine = make_engine(offer_timeout=120.0)
    offer(engine, PLAIN, now=5.0)
    engine.handle_timer(124.0)
    assert engine.session_count == 1
    engine.handle_timer(125.0)
    (ended,) = [e for e in drain(engine) if isinstance(e, SessionEnded)]
    assert ended.record.reason is TerminationReason.OFFER_TIMEOUT
    assert ended.record.duration == 0.0 and engine.pool.in_use == 0


def test_max_duration() -> None:
    counters = Counters()
    engine = make_engine(counters=counters, max_duration=1000.0)
    offer(engine, PLAIN)
    answer(engine, SIPP_ANSWER)
    key = installed(drain(engine))[0].key
    for t in range(0, 1000, 30):
        counters.packet(key, float(t))
        engine.handle_timer(float(t))
    assert engine.session_count == 1
    assert engine.next_timer() == 1000.0
    engine.handle_timer(1000.0)
    (ended,) = [e for e in drain(engine) if isinstance(e, SessionEnded)]
    assert ended.record.reason is TerminationReason.MAX_DURATION


def test_rejected_stream_frees_its_ports() -> None:
    engine = make_engine()
    to_callee = offer(engine, AUDIO_VIDEO)
    assert [m.port for m in to_callee.media].count(0) == 0
    assert engine.pool.in_use == 4
    to_caller = answer(engine, AUDIO_VIDEO_REJECTED)
    assert to_caller.media[1].port == 0
    events = drain(engine)
    assert StreamEnded("call-1", "caller", "callee", 1, StreamEndReason.REJECTED) in events
    assert engine.pool.in_use == 2
    assert engine.stream_count() == 1


def test_stream_disabled_and_added_back_in_reoffers() -> None:
    engine = make_engine()
    offer(engine, AUDIO_VIDEO)
    answer(engine, AUDIO_VIDEO.replace(b"198.51.100.2", b"198.51.100.3"))
    disabled = AUDIO_VIDEO.replace(b"m=video 10002", b"m=video 0")
    out = offer(engine, disabled, 5.0, to="callee")
    assert out.media[1].port == 0 and engine.pool.in_use == 2
    again = offer(engine, AUDIO_VIDEO, 6.0, to="callee")
    assert again.media[1].port != 0 and engine.pool.in_use == 4
    answer(engine, AUDIO_VIDEO.replace(b"198.51.100.2", b"198.51.100.3"), 6.5)
    keys = {f.key for f in installed(drain(engine))}
    assert len(keys) == 3  # audio, first video, the re-added video (a new forwarding)
    # A third stream appears in a re-offer.
    three = AUDIO_VIDEO + b"m=audio 10004 RTP/AVP 0\r\n"
    assert offer(engine, three, 7.0, to="callee").media[2].port != 0
    assert engine.pool.in_use == 6
    engine.delete("call-1", 8.0, delay=0)
    assert engine.pool.in_use == 0


def test_answer_errors() -> None:
    engine = make_engine()
    with pytest.raises(RelayError, match="unknown call"):
        answer(engine, SIPP_ANSWER)
    offer(engine, PLAIN)
    with pytest.raises(RelayError, match="media section 2"):
        answer(engine, AUDIO_VIDEO)
    with pytest.raises(RelayError, match="cannot parse the SDP"):
        offer(engine, b"v=0\r\nm=audio x RTP/AVP 0\r\n", call="bad")
    assert engine.call_ids() == ["call-1"]


def test_pool_exhaustion_is_an_error_and_rolls_back() -> None:
    engine = make_engine(pool_size=3)
    with pytest.raises(RelayError, match="in use"):
        offer(engine, AUDIO_VIDEO, call="c1")
    assert engine.pool.in_use == 0 and engine.session_count == 0
    offer(engine, PLAIN, call="c2")
    assert engine.pool.in_use == 2


def test_forks_with_via_branch() -> None:
    engine = make_engine()
    one = engine.offer(MediaRequest("c", "caller", PLAIN, via_branch="z9hG4bK1"), 0.0)
    two = engine.offer(MediaRequest("c", "caller", PLAIN, via_branch="z9hG4bK2"), 0.0)
    assert one != two and engine.session_count == 2
    engine.answer(MediaRequest("c", "caller", SIPP_ANSWER, "b2", "z9hG4bK2"), 1.0)
    (summary,) = engine.query("c", to_tag="b2")
    assert summary.to_tag == "b2"
    engine.delete("c", 2.0, via_branch="z9hG4bK1", delay=0)
    assert engine.session_count == 1
    engine.delete("c", 2.0, delay=0)
    assert engine.pool.in_use == 0


def test_ipv6_bridging() -> None:
    engine = make_engine(addresses={4: "127.0.0.1", 6: "::1"})
    out = offer(engine, PLAIN, address_family=6)
    assert out.media[0].connection is not None
    assert out.media[0].connection.address == "::1"
    (forwarding,) = installed(drain(engine))
    assert forwarding.a.local.host == "127.0.0.1" and forwarding.b.local.host == "::1"
    to_caller = answer(engine, IPV6)
    assert to_caller.connection is not None and to_caller.connection.address == "127.0.0.1"
    (forwarding,) = installed(drain(engine))
    assert forwarding.b.rtcp_mux is False  # the caller did not offer mux
    with pytest.raises(RelayError, match="no IPv6"):
        offer(make_engine(), PLAIN, address_family=6)


def test_rtcp_mux_when_both_sides_agree() -> None:
    engine = make_engine(addresses={6: "::1"})
    offer(engine, IPV6)
    answer(engine, IPV6.replace(b"2001:db8::10", b"2001:db8::20"))
    forwarding = installed(drain(engine))[-1]
    assert forwarding.a.rtcp_mux and forwarding.b.rtcp_mux
    assert forwarding.a.rtcp_peer == forwarding.a.rtp_peer == Address("2001:db8::10", 49170)
    assert forwarding.a.local_rtcp == forwarding.a.local


def test_media_address_and_sip_source_override_the_sdp() -> None:
    engine = make_engine()
    offer(engine, PLAIN, received_from="198.51.100.7", sip_source_address=True)
    (forwarding,) = installed(drain(engine))
    assert forwarding.a.rtp_peer == Address("198.51.100.7", 6000)
    offer(engine, PLAIN, call="c2", media_address="198.51.100.8")
    (forwarding,) = installed(drain(engine))
    assert forwarding.a.rtcp_peer == Address("198.51.100.8", 6001)
    offer(engine, PLAIN, call="c3", received_from="198.51.100.7")  # SDP trusted by default
    (forwarding,) = installed(drain(engine))
    assert forwarding.a.rtp_peer == Address("192.0.2.11", 6000)
    # A relay configured like rtpengine's --sip-source, and a request that trusts the SDP anyway.
    engine = make_engine(sip_source=True)
    offer(engine, PLAIN, received_from="198.51.100.7")
    (forwarding,) = installed(drain(engine))
    assert forwarding.a.rtp_peer == Address("198.51.100.7", 6000)
    offer(engine, PLAIN, call="c2", received_from="198.51.100.7", sip_source_address=False)
    (forwarding,) = installed(drain(engine))
    assert forwarding.a.rtp_peer == Address("192.0.2.11", 6000)


def test_strict_source_reaches_the_data_plane() -> None:
    engine = make_engine()
    offer(engine, PLAIN, strict_source=True)
    (forwarding,) = installed(drain(engine))
    assert forwarding.strict_source


CALLEE_ICE = body(
    [
        "v=0",
        "o=bob 1 1 IN IP4 192.168.2.30",
        "s=-",
        "c=IN IP4 192.168.2.30",
        "t=0 0",
        "m=audio 9000 RTP/AVP 0",
        "a=ice-ufrag:bobfrag1",
        "a=ice-pwd:bobpassword0123456789xx",
        "a=candidate:H1 1 UDP 2130706431 192.168.2.30 9000 typ host",
        "a=candidate:S1 1 UDP 1694498815 198.51.100.30 9000 typ srflx raddr 192.168.2.30 "
        "rport 9000",
    ]
)


def ice_reoffer(remote: str) -> bytes:
    """The caller's re-offer after ICE completed, naming the selected remote candidate."""
    return ASTERISK.replace(b"1903343929 IN", b"1903343930 IN").replace(
        b"a=sendrecv", f"a=remote-candidates:1 {remote}\r\na=sendrecv".encode()
    )


def test_ice_direct_path_frees_the_stream_and_stops_media_timeout() -> None:
    engine = make_engine(media_timeout=60.0)
    offer(engine, ASTERISK)
    to_caller = answer(engine, CALLEE_ICE)
    relay = [c for c in to_caller.media[0].candidates() if c.type == "relay"]
    assert relay, "the caller is offered the relay as a candidate"
    drain(engine)
    out = offer(engine, ice_reoffer("198.51.100.30 9000"), 3.0, to="callee")
    # The re-offer goes through untouched for that stream: the parties talk directly.
    assert out.media[0].port == 17234
    assert out.connection is not None and out.connection.address == "10.0.1.40"
    events = drain(engine)
    assert StreamEnded("call-1", "caller", "callee", 0, StreamEndReason.ICE_DIRECT) in events
    assert any(isinstance(e, ForwardingRemoved) for e in events)
    assert engine.pool.in_use == 0
    answer(engine, CALLEE_ICE, 3.5)
    engine.handle_timer(10_000.0)
    assert engine.session_count == 1, "silence after ICE went direct is not a media timeout"
    engine.delete("call-1", 10_001.0, delay=0)
    (ended,) = [e for e in drain(engine) if isinstance(e, SessionEnded)]
    assert ended.record.streams[0].end_reason is StreamEndReason.ICE_DIRECT


def test_ice_through_the_relay_keeps_relaying() -> None:
    engine = make_engine()
    offer(engine, ASTERISK)
    to_caller = answer(engine, CALLEE_ICE)
    port = to_caller.media[0].port
    out = offer(engine, ice_reoffer(f"{RELAY} {port}"), 3.0, to="callee")
    assert out.media[0].port != 17234
    assert engine.pool.in_use == 2
    assert not [e for e in drain(engine) if isinstance(e, StreamEnded)]


def test_ice_modes_per_request() -> None:
    engine = make_engine()
    removed = offer(engine, ASTERISK, ice=IceMode.REMOVE)
    assert not removed.media[0].candidates()
    high = offer(engine, ASTERISK, call="c2", ice_priority=IcePriority.HIGH)
    assert max(c.priority for c in high.media[0].candidates()) == 2130706431
    forced = offer(engine, ASTERISK, call="c3", ice=IceMode.FORCE)
    assert forced.ice_lite
    (candidate, _rtcp) = forced.media[0].candidates()
    assert candidate.type == "host" and candidate.address == RELAY
    forwarding = installed(drain(engine))[-1]
    assert forwarding.b.ice_credentials == forced.media[0].ice_credentials(forced)
    assert forwarding.a.ice_credentials is None


def test_shutdown_ends_everything() -> None:
    engine = make_engine()
    for index in range(5):
        offer(engine, PLAIN, call=f"c{index}")
    engine.shutdown(9.0)
    events = [e for e in drain(engine) if isinstance(e, SessionEnded)]
    assert {e.record.reason for e in events} == {TerminationReason.SHUTDOWN}
    assert len(events) == 5 and engine.pool.in_use == 0


def test_churn_many_sessions_no_port_leak() -> None:
    """Random offers, answers, re-offers, rejections, deletes and timeouts over many calls."""
    rng = random.Random(5)
    engine = make_engine(pool_size=400, media_timeout=20.0, offer_timeout=15.0, delete_delay=3.0)
    calls: dict[str, int] = {}  # call-id -> state (0 offered, 1 answered)
    forwardings: dict[str, Forwarding] = {}
    reasons: dict[TerminationReason, int] = {}
    now = 0.0
    bodies = [PLAIN, AUDIO_VIDEO, ASTERISK, SIPP_ANSWER]
    for step in range(4000):
        now += rng.random() * 0.05
        action = rng.random()
        try:
            if action < 0.3 or not calls:
                call = f"c{step}"
                engine.offer(MediaRequest(call, "caller", rng.choice(bodies)), now)
                calls[call] = 0
            else:
                call = rng.choice(list(calls))
                if action < 0.55:
                    sdp = AUDIO_VIDEO_REJECTED if rng.random() < 0.3 else SIPP_ANSWER
                    engine.answer(MediaRequest(call, "caller", sdp, "callee"), now)
                    calls[call] = 1
                elif action < 0.7:
                    engine.offer(MediaRequest(call, "caller", rng.choice(bodies), "callee"), now)
                elif action < 0.85:
                    engine.delete(call, now, delay=rng.choice([0.0, 3.0]))
                else:
                    engine.handle_timer(now)
        except RelayError:
            pass  # unknown calls (already timed out), mismatched answers, full pool
        for event in drain(engine):
            if isinstance(event, SessionEnded):
                calls.pop(event.record.call_id, None)
                reasons[event.record.reason] = reasons.get(event.record.reason, 0) + 1
            elif isinstance(event, ForwardingInstalled):
                forwardings[event.forwarding.key] = event.forwarding
            elif isinstance(event, ForwardingRemoved):
                assert forwardings.pop(event.key, None) is not None, "removed twice"
        assert engine.pool.in_use == 2 * engine.stream_count(), f"leak at step {step}"
        # What the data plane would hold: one forwarding per relayed stream, no port twice.
        assert len(forwardings) == engine.stream_count()
        ports = [leg.local.port for f in forwardings.values() for leg in (f.a, f.b)]
        assert len(ports) == len(set(ports)), f"a port in two forwardings at step {step}"
    engine.pool.check()
    engine.shutdown(now)
    for event in drain(engine):
        if isinstance(event, ForwardingRemoved):
            forwardings.pop(event.key)
    assert engine.pool.in_use == 0 and engine.session_count == 0 and engine.call_count == 0
    assert not forwardings
    engine.pool.check()
    # The run exercised the endings it is meant to.
    assert {
        TerminationReason.DELETED,
        TerminationReason.OFFER_TIMEOUT,
        TerminationReason.NO_MEDIA,
    } <= set(reasons), reasons


def test_ice_checks_through_the_relay_then_silence_means_a_direct_path() -> None:
    counters = Counters()
    engine = make_engine(counters=counters, media_timeout=30.0)
    offer(engine, ASTERISK)
    answer(engine, CALLEE_ICE, now=1.0)
    key = installed(drain(engine))[0].key
    # Connectivity checks crossed the relay (the relay candidate was tried); no RTP followed,
    # and the agents never re-offered (RFC 8445 agents need not).
    checks = counters.by_key.setdefault(key, ForwardingCounters())
    checks.a.checks_authenticated = checks.b.checks_authenticated = 4
    engine.handle_timer(31.0)
    events = drain(engine)
    assert StreamEnded("call-1", "caller", "callee", 0, StreamEndReason.ICE_DIRECT) in events
    assert not [e for e in events if isinstance(e, SessionEnded)]
    assert engine.session_count == 1 and engine.pool.in_use == 0


def test_forged_checks_do_not_make_silence_a_direct_path() -> None:
    # A stranger's STUN on the relay port (counted, never authenticated) must not decide how a
    # silent call ends: it is a media timeout, not "ICE went direct".
    counters = Counters()
    engine = make_engine(counters=counters, media_timeout=30.0)
    offer(engine, ASTERISK)
    answer(engine, CALLEE_ICE, now=1.0)
    key = installed(drain(engine))[0].key
    forged = counters.by_key.setdefault(key, ForwardingCounters())
    forged.a.stun_requests = forged.a.stun_nominations = 40
    engine.handle_timer(31.0)
    events = drain(engine)
    assert not [
        e for e in events if isinstance(e, StreamEnded) and e.reason is StreamEndReason.ICE_DIRECT
    ]


def test_silence_without_ice_is_a_media_timeout() -> None:
    counters = Counters()
    engine = make_engine(counters=counters, media_timeout=30.0)
    offer(engine, ASTERISK)
    answer(engine, SIPP_ANSWER, now=1.0)  # the callee does not do ICE
    key = installed(drain(engine))[0].key
    counters.by_key.setdefault(key, ForwardingCounters()).a.checks_authenticated = 4
    engine.handle_timer(31.0)
    (ended,) = [e for e in drain(engine) if isinstance(e, SessionEnded)]
    assert ended.record.reason is TerminationReason.NO_MEDIA


def test_reoffer_naming_the_relay_itself_keeps_the_party_address() -> None:
    engine = make_engine()
    offer(engine, PLAIN)
    to_caller = answer(engine, SIPP_ANSWER)
    drain(engine)
    relay_port = to_caller.media[0].port
    # After ICE through the relay the caller's selected local candidate is peer-reflexive:
    # the relay's own address. Its re-offer names it in c=/m=.
    reoffer = PLAIN.replace(b"c=IN IP4 192.0.2.11", f"c=IN IP4 {RELAY}".encode()).replace(
        b"m=audio 6000", f"m=audio {relay_port}".encode()
    )
    offer(engine, reoffer, 5.0, to="callee")
    (forwarding,) = installed(drain(engine))
    assert forwarding.a.rtp_peer == Address("192.0.2.11", 6000)


def test_ice_restart_after_a_direct_path_brings_the_relay_back() -> None:
    engine = make_engine()
    offer(engine, ASTERISK)
    answer(engine, CALLEE_ICE)
    offer(engine, ice_reoffer("198.51.100.30 9000"), 3.0, to="callee")
    answer(engine, CALLEE_ICE, 3.5)
    assert engine.pool.in_use == 0
    drain(engine)
    # The same offer again without an ICE restart: still direct, still passed through.
    same = offer(engine, ice_reoffer("198.51.100.30 9000"), 4.0, to="callee")
    assert same.media[0].port == 17234 and engine.pool.in_use == 0
    # The phone changed networks and restarts ICE (new ufrag/pwd, no remote-candidates).
    restart = ASTERISK.replace(
        b"a=ice-ufrag:0d9cc44338ad8ced48b2d92c34556f4e", b"a=ice-ufrag:restarted1"
    ).replace(b"a=ice-pwd:193c1361446d012a1e298d5278b5c4b6", b"a=ice-pwd:restartedpassword0123456")
    out = offer(engine, restart, 10.0, to="callee")
    assert out.media[0].port != 17234 and engine.pool.in_use == 2
    assert [c for c in out.media[0].candidates() if c.type == "relay" and c.address == RELAY]
    (forwarding,) = installed(drain(engine))
    assert forwarding.key.endswith("+")  # a new forwarding, not the freed one revived


def test_ice_priority_given_on_the_offer_holds_for_the_call() -> None:
    engine = make_engine(ice_priority=IcePriority.LOW)
    offer(engine, ASTERISK, ice_priority=IcePriority.HIGH)
    to_caller = answer(engine, CALLEE_ICE)  # the answer request carries no policy
    relay = [c for c in to_caller.media[0].candidates() if c.type == "relay"]
    assert relay and relay[0].priority == 2130706431
    other = offer(engine, ASTERISK, call="c2")
    assert next(c.priority for c in other.media[0].candidates() if c.type == "relay") == 16777215


def test_early_media_then_silence_without_a_nomination_is_a_direct_path() -> None:
    counters = Counters()
    engine = make_engine(counters=counters, media_timeout=30.0)
    offer(engine, ASTERISK)
    answer(engine, CALLEE_ICE, now=1.0)
    key = installed(drain(engine))[0].key
    # Media went to the default address (the relay) until ICE completed on a direct pair.
    for t in range(5):
        counters.packet(key, 1.0 + t * 0.02)
    counters.by_key[key].a.checks_authenticated = 6
    engine.handle_timer(31.2)
    assert StreamEnded("call-1", "caller", "callee", 0, StreamEndReason.ICE_DIRECT) in drain(engine)
    assert engine.session_count == 1


def test_silence_after_media_on_the_nominated_relay_pair_is_a_dead_call() -> None:
    counters = Counters()
    engine = make_engine(counters=counters, media_timeout=30.0)
    offer(engine, ASTERISK)
    answer(engine, CALLEE_ICE, now=1.0)
    key = installed(drain(engine))[0].key
    for t in range(5):
        counters.packet(key, 2.0 + t)
    leg = counters.by_key[key].a
    # ICE chose the relay; then the phones died.
    leg.checks_authenticated, leg.last_nomination = 6, 0.0
    engine.handle_timer(36.0)
    (ended,) = [e for e in drain(engine) if isinstance(e, SessionEnded)]
    assert ended.record.reason is TerminationReason.NO_MEDIA


def test_rtcp_mux_demux_and_accept_bridge_a_multiplexing_party() -> None:
    engine = make_engine(addresses={4: "127.0.0.1", 6: "::1"})
    # The caller multiplexes (a=rtcp-mux, a=rtcp on the RTP port); the callee side must not see it.
    to_callee = offer(engine, IPV6, rtcp_mux=frozenset({"demux"}))
    audio = to_callee.media[0]
    assert not audio.rtcp_mux
    assert audio.rtcp is not None and audio.rtcp.port == audio.port + 1
    # The callee answers without mux; "accept" grants the caller the mux it asked for.
    callee = IPV6.replace(b"a=rtcp-mux\r\na=rtcp:49170\r\n", b"").replace(b"::10", b"::20")
    to_caller = answer(engine, callee, rtcp_mux=frozenset({"accept"}))
    assert to_caller.media[0].rtcp_mux
    forwarding = installed(drain(engine))[-1]
    assert forwarding.a.rtcp_mux and not forwarding.b.rtcp_mux
    assert forwarding.b.rtcp_peer == Address("2001:db8::20", 49171)


def test_rtcp_mux_offer_to_a_multiplexing_callee() -> None:
    engine = make_engine()
    to_callee = offer(engine, PLAIN, rtcp_mux=frozenset({"offer"}))
    assert to_callee.media[0].rtcp_mux
    mux_answer = SIPP_ANSWER + b"a=rtcp-mux\r\n"
    to_caller = answer(engine, mux_answer)
    assert not to_caller.media[0].rtcp_mux  # the caller never asked for it
    forwarding = installed(drain(engine))[-1]
    assert not forwarding.a.rtcp_mux and forwarding.b.rtcp_mux
    assert forwarding.b.rtcp_peer == forwarding.b.rtp_peer


def test_rtcp_mux_reject() -> None:
    engine = make_engine(addresses={6: "::1"})
    to_callee = offer(engine, IPV6, rtcp_mux=frozenset({"reject"}))
    assert not to_callee.media[0].rtcp_mux
    to_caller = answer(engine, IPV6.replace(b"::10", b"::20"), rtcp_mux=frozenset({"reject"}))
    assert not to_caller.media[0].rtcp_mux
    forwarding = installed(drain(engine))[-1]
    assert not forwarding.a.rtcp_mux and not forwarding.b.rtcp_mux


def test_forwardings_carry_what_latching_needs_from_both_sdps() -> None:
    engine = make_engine()
    offer(engine, ASTERISK)
    (first,) = installed(drain(engine))
    assert first.a.payload_types == frozenset({0, 3, 8, 101}) and not first.a.opaque
    assert first.a.sdp_ice is not None
    assert first.a.sdp_ice.ufrag == "0d9cc44338ad8ced48b2d92c34556f4e"
    assert first.b.payload_types is None and first.b.sdp_ice is None  # no answer yet
    answer(engine, SIPP_ANSWER)
    (second,) = installed(drain(engine))
    assert second.b.payload_types == frozenset({8}) and second.b.sdp_ice is None
    assert second.handover_after == 0.5
