"""Two RTP sessions talking in virtual time: pacing, recording, DTMF, RTCP loss/jitter/RTT."""

from __future__ import annotations

import random
from array import array

import pytest

from icerelay.endpoint.audio import Recorder, ToneSource, dominant_frequency, rms
from icerelay.endpoint.g711 import decode_ulaw, encode_ulaw
from icerelay.endpoint.rtp import ReceiverReport, RtpPacket, SenderReport, decode_rtcp
from icerelay.endpoint.session import (
    PCMA,
    PCMU,
    DtmfReceived,
    MediaStarted,
    RemoteBye,
    RtpSession,
    SourceEnded,
)


def run(a: RtpSession, b: RtpSession, until: float, *, delay: float = 0.01,
        drop: set[int] | None = None, start: float = 0.0) -> tuple[list[object], list[object]]:
    """Event-driven loop: deliver with a fixed one-way delay, dropping RTP by count if asked."""
    in_flight: list[tuple[float, RtpSession, bytes, int]] = []
    events: tuple[list[object], list[object]] = ([], [])
    now = start
    sent = 0
    while now <= until:
        for session, peer in ((a, b), (b, a)):
            session.handle_timer(now)
            for out in session.datagrams_to_send(now):
                sent += 1
                if drop and session is a and sent in drop:
                    continue
                in_flight.append((now + delay, peer, out.data, out.component))
        in_flight.sort(key=lambda item: item[0])
        while in_flight and in_flight[0][0] <= now:
            _, peer, data, component = in_flight.pop(0)
            peer.receive(data, now, component)
        for index, session in enumerate((a, b)):
            while (event := session.next_event()) is not None:
                events[index].append(event)
        timers = [t for t in (a.next_timer(), b.next_timer()) if t is not None]
        timers += [in_flight[0][0]] if in_flight else []
        if not timers:
            break
        now = max(now + 1e-6, min(timers))
    return events


def test_tone_goes_both_ways_and_is_recorded() -> None:
    rec_a, rec_b = Recorder(), Recorder()
    a = RtpSession(PCMU, source=ToneSource(440), recorder=rec_a, rtcp_interval=1.0,
                   rng=random.Random(1))
    b = RtpSession(PCMU, source=ToneSource(1000), recorder=rec_b, rtcp_interval=1.0,
                   rng=random.Random(2))
    a.start(0.0)
    b.start(0.0)
    events_a, _events_b = run(a, b, until=2.0)
    assert a.packets_sent == b.packets_sent == 101  # t = 0, 0.02, ..., 2.0
    assert MediaStarted(b.ssrc, 0) in events_a
    assert dominant_frequency(rec_a.samples[:1600]) == pytest.approx(1000, abs=10)
    assert dominant_frequency(rec_b.samples[:1600]) == pytest.approx(440, abs=10)
    assert rms(rec_b.samples) > 10000
    stats = a.statistics()
    assert stats.packets_lost == 0 and stats.jitter_ms == pytest.approx(0, abs=0.01)
    assert stats.remote_reported_lost == 0
    assert stats.round_trip_ms == pytest.approx(20, abs=1)  # 10 ms each way


def test_exact_payload_bytes_arrive() -> None:
    samples = array("h", [(i * 37) % 20000 - 10000 for i in range(160 * 10)])

    class Fixed:
        def __init__(self) -> None:
            self.position = 0

        def read(self, count: int) -> array[int]:
            chunk = samples[self.position:self.position + count]
            self.position += count
            return chunk

    recorder = Recorder()
    a = RtpSession(PCMU, source=Fixed(), rng=random.Random(3))
    b = RtpSession(PCMU, recorder=recorder, send_enabled=False, rng=random.Random(4))
    a.start(0.0)
    b.start(0.0)
    events_a, _ = run(a, b, until=0.3)
    assert SourceEnded() in events_a
    expected = decode_ulaw(encode_ulaw(samples))
    assert recorder.samples[:len(expected)] == expected
    assert set(recorder.samples[len(expected):]) <= {0}


def test_loss_is_reported_by_the_receiver() -> None:
    a = RtpSession(PCMA, source=ToneSource(440), rtcp_interval=1.0, rng=random.Random(5))
    b = RtpSession(PCMA, recorder=Recorder(), send_enabled=False, rtcp_interval=1.0,
                   rng=random.Random(6))
    a.start(0.0)
    b.start(0.0)
    run(a, b, until=3.0, drop={10, 20, 30, 40})
    stats = b.statistics()
    assert stats.packets_lost == 4
    assert a.statistics().remote_reported_lost == 4


def test_rtcp_shapes_sr_and_rr() -> None:
    a = RtpSession(PCMU, source=ToneSource(440), rtcp_interval=1.0, rng=random.Random(7))
    b = RtpSession(PCMU, send_enabled=False, rtcp_interval=1.0, rng=random.Random(8))
    a.start(0.0)
    b.start(0.0)
    for t in (0.0, 0.02, 0.04):
        a.handle_timer(t)
        for out in a.datagrams_to_send(t):
            b.receive(out.data, t + 0.005, out.component)
    t = b.next_timer()
    assert t is not None
    b.handle_timer(t)
    rtcp = [o for o in b.datagrams_to_send(t)]
    assert [o.component for o in rtcp] == [2]
    report = decode_rtcp(rtcp[0].data)[0]
    assert isinstance(report, ReceiverReport) and report.reports[0].ssrc == a.ssrc
    reports = []
    while not reports:
        t = a.next_timer()
        assert t is not None
        a.handle_timer(t)
        reports = [o for o in a.datagrams_to_send(t) if o.component == 2]
    sr = decode_rtcp(reports[0].data)[0]
    assert isinstance(sr, SenderReport) and sr.packet_count >= 3 and sr.ssrc == a.ssrc


def test_dtmf_and_bye() -> None:
    a = RtpSession(PCMU, source=ToneSource(440), rtcp_mux=True, rng=random.Random(9))
    b = RtpSession(PCMU, send_enabled=False, rtcp_mux=True, rng=random.Random(10))
    a.start(0.0)
    b.start(0.0)
    a.send_dtmf("1#", duration=0.06)
    _, events = run(a, b, until=0.5)
    assert b.dtmf_received == "1#"
    a.stop(0.5)
    out = a.datagrams_to_send(0.5)
    assert [o.component for o in out] == [1]  # rtcp-mux
    b.receive(out[0].data, 0.51, 1)
    while (e := b.next_event()) is not None:
        events.append(e)
    assert DtmfReceived("1") in events and DtmfReceived("#") in events
    assert any(isinstance(e, RemoteBye) for e in events) and b.remote_bye
    assert a.next_timer() is None


def test_late_wakeup_sends_due_packets_with_their_timestamps() -> None:
    a = RtpSession(PCMU, source=ToneSource(440), rng=random.Random(11))
    a.start(10.0)
    a.handle_timer(10.1)  # woke up 100 ms late: packets for 0, 20, ..., 100 ms
    packets = [RtpPacket.decode(o.data) for o in a.datagrams_to_send(10.1) if o.component == 1]
    assert len(packets) == 6
    assert [p.timestamp - packets[0].timestamp for p in packets] == [0, 160, 320, 480, 640, 800]
    assert packets[0].marker and not packets[1].marker
    assert a.next_timer() == pytest.approx(10.12)
    a.handle_timer(30.0)  # suspended for 20 s: skip ahead instead of a burst
    assert len(a.datagrams_to_send(30.0)) <= 2


def test_garbage_is_counted_not_fatal() -> None:
    a = RtpSession(PCMU, rng=random.Random(12))
    a.receive(b"\x00\x01", 0.0)
    a.receive(b"\x80\xc8\x00\x09", 0.0, component=2)
    assert a.malformed == 2 and a.packets_received == 0


def test_hold_stops_and_resumes_with_the_clock() -> None:
    a = RtpSession(PCMU, source=ToneSource(440), rng=random.Random(13))
    a.start(0.0)
    a.handle_timer(0.0)
    first = RtpPacket.decode(a.datagrams_to_send(0.0)[0].data)
    a.set_sending(False, 0.01)
    assert a.next_timer() is not None  # RTCP still runs
    a.handle_timer(1.0)
    assert [o for o in a.datagrams_to_send(1.0) if o.component == 1] == []
    a.set_sending(True, 2.0)
    a.handle_timer(2.0)
    resumed = [RtpPacket.decode(o.data) for o in a.datagrams_to_send(2.0) if o.component == 1]
    # The timestamp kept running: 2 s later, not one packet later.
    assert (resumed[-1].timestamp - first.timestamp) % 2**32 == 16000
    assert resumed[-1].sequence == (first.sequence + 1) % 2**16
