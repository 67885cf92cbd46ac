"""RFC 3550 appendix A: sequence validation, loss (A.3) and jitter (A.8)."""

from __future__ import annotations

import pytest

from icerelay.endpoint.rtp import ReportBlock, ntp_middle, ntp_timestamp
from icerelay.endpoint.stats import ReceptionStatistics, StreamStatistics, round_trip_time


def feed(stats: ReceptionStatistics, seqs: list[int], *, start_ts: int = 1000,
         ptime: float = 0.02) -> None:
    for seq in seqs:
        stats.update(seq & 0xFFFF, start_ts + 160 * seq, 0.02 * seq, 160)


def test_probation_then_counting() -> None:
    stats = ReceptionStatistics(1, 8000)
    assert stats.update(100, 0, 0.0) is False  # first packet of a new source: on probation
    assert stats.update(101, 160, 0.02) is True
    assert stats.expected == 1 and stats.received == 1
    feed(stats, list(range(102, 200)))
    assert stats.expected == 99 and stats.lost == 0


def test_loss_and_fraction_per_interval() -> None:
    stats = ReceptionStatistics(1, 8000, probation=0)
    feed(stats, [s for s in range(0, 100) if s % 10 != 5])  # 10 lost of 100
    block = stats.report_block(now=2.0)
    assert block.cumulative_lost == 10
    assert block.fraction_lost == (10 << 8) // 100  # 25
    assert block.highest_sequence == 99
    feed(stats, list(range(100, 200)))  # nothing lost in the next interval
    block = stats.report_block(now=4.0)
    assert block.fraction_lost == 0 and block.cumulative_lost == 10


def test_duplicates_make_loss_negative_and_fraction_zero() -> None:
    stats = ReceptionStatistics(1, 8000, probation=0)
    feed(stats, [0, 1, 2, 2, 3, 3])
    assert stats.lost == -2
    assert stats.report_block(1.0).fraction_lost == 0


def test_wrap_around_counts_cycles() -> None:
    stats = ReceptionStatistics(1, 8000, probation=0)
    for seq in range(65530, 65546):
        stats.update(seq & 0xFFFF, seq * 160, seq * 0.02)
    assert stats.cycles == 1 << 16
    assert stats.extended_max == 65545
    assert stats.expected == 16 and stats.lost == 0


def test_large_jump_resyncs_after_two_packets() -> None:
    stats = ReceptionStatistics(1, 8000, probation=0)
    feed(stats, [0, 1, 2])
    assert stats.update(30000, 0, 1.0) is False  # first jump: suspicious
    assert stats.update(30001, 160, 1.02) is True  # confirmed: the source restarted
    assert stats.base_seq == 30001 and stats.expected == 1


def test_jitter_is_zero_for_perfect_timing_and_follows_a8() -> None:
    stats = ReceptionStatistics(1, 8000, probation=0)
    feed(stats, list(range(50)))
    assert stats.jitter == 0
    # Now every other packet is 10 ms late: |D| alternates 80 timestamp units.
    stats = ReceptionStatistics(1, 8000, probation=0)
    expected = 0.0
    previous = None
    for seq in range(200):
        arrival = 0.02 * seq + (0.01 if seq % 2 else 0.0)
        stats.update(seq, 160 * seq, arrival)
        transit = arrival * 8000 - 160 * seq
        if previous is not None:
            expected += (abs(transit - previous) - expected) / 16
        previous = transit
    assert stats.jitter == int(expected)
    assert stats.jitter == pytest.approx(80, abs=1)
    assert stats.jitter_seconds == pytest.approx(0.01, abs=0.0002)


def test_lsr_dlsr_and_round_trip() -> None:
    stats = ReceptionStatistics(1, 8000, probation=0)
    feed(stats, [0, 1])
    sr_ntp = ntp_timestamp(1000.0)
    stats.note_sender_report(sr_ntp, arrival=5.0)
    block = stats.report_block(now=5.25)
    assert block.last_sr == ntp_middle(sr_ntp)
    assert block.delay_since_last_sr == 65536 // 4
    # The sender gets this block 0.1 s of network later: 1000 + 0.05 + 0.25 + 0.05.
    rtt = round_trip_time(block, ntp_timestamp(1000.35))
    assert rtt == pytest.approx(0.1, abs=0.001)
    assert round_trip_time(ReportBlock(1, 0, 0, 0, 0), ntp_timestamp(1.0)) is None


def test_stream_statistics_text() -> None:
    s = StreamStatistics(10, 1600, 9, 1440, 10, 1, 2.5, 0xABC, 0, 1.0, 12.0, "12#")
    text = s.to_text()
    assert "lost:     1 of 10 expected (10.0%)" in text
    assert "round trip 12.0 ms" in text and "12#" in text
    assert s.to_dict()["packets_received"] == 9
