"""Reception statistics of one RTP source, as RFC 3550 appendix A computes them.

- A.1: sequence number validation (probation for a new source, MAX_DROPOUT / MAX_MISORDER, the
  extended highest sequence number with wrap-around cycles, re-synchronisation after a jump);
- A.3: expected, lost (cumulative), and the fraction lost in the interval since the last report;
- A.8: interarrival jitter, from the difference of transit times, smoothed by 1/16.

Everything is in integers where the RFC uses integers so a report block is exact and testable.
"""

from __future__ import annotations

from dataclasses import dataclass

from icerelay.endpoint.rtp import ReportBlock

RTP_SEQ_MOD = 1 << 16
MAX_DROPOUT = 3000
MAX_MISORDER = 100
MIN_SEQUENTIAL = 2


class ReceptionStatistics:
    """What we know about packets received from one SSRC (the ``source`` struct of A.1)."""

    def __init__(self, ssrc: int, clock_rate: int, *, probation: int = MIN_SEQUENTIAL) -> None:
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self.max_seq = 0
        self.cycles = 0
        self.base_seq = 0
        self.bad_seq = RTP_SEQ_MOD + 1  # "so seq == bad_seq is false"
        self.probation = probation
        self._probation_length = probation
        self.received = 0
        self.received_prior = 0
        self.expected_prior = 0
        self.duplicates_or_late = 0
        self.octets = 0
        self._transit: float | None = None
        self._jitter = 0.0  # in timestamp units, the running estimate J of A.8
        self.last_sr = 0
        self.last_sr_arrival: float | None = None
        self.initialised = False

    def _init_seq(self, seq: int) -> None:
        self.base_seq = seq
        self.max_seq = seq
        self.bad_seq = RTP_SEQ_MOD + 1
        self.cycles = 0
        self.received = 0
        self.received_prior = 0
        self.expected_prior = 0
        self.initialised = True

    def update(self, seq: int, rtp_timestamp: int, arrival: float, octets: int = 0) -> bool:
        """Account for one packet; False if A.1 says it is not (yet) valid.

        ``arrival`` is the local receive time in seconds; it is converted to timestamp units to
        compute the transit time of A.8.
        """
        if not self.initialised:
            self._init_seq(seq)
            self.max_seq = (seq - 1) % RTP_SEQ_MOD if self.probation else seq
        udelta = (seq - self.max_seq) % RTP_SEQ_MOD
        if self.probation:
            # A new source is valid after MIN_SEQUENTIAL packets in sequence.
            if seq == (self.max_seq + 1) % RTP_SEQ_MOD:
                self.probation -= 1
                self.max_seq = seq
                if self.probation == 0:
                    self._init_seq(seq)
                    self._count(seq, rtp_timestamp, arrival, octets)
                    return True
            else:
                self.probation = self._probation_length - 1
                self.max_seq = seq
            return False
        if udelta < MAX_DROPOUT:
            if seq < self.max_seq:
                self.cycles += RTP_SEQ_MOD  # sequence number wrapped
            self.max_seq = seq
        elif udelta <= RTP_SEQ_MOD - MAX_MISORDER:
            # A very large jump: if two packets in a row agree, the source restarted.
            if seq == self.bad_seq:
                self._init_seq(seq)
            else:
                self.bad_seq = (seq + 1) % RTP_SEQ_MOD
                return False
        else:
            self.duplicates_or_late += 1  # duplicate or reordered: counted, still valid
        self._count(seq, rtp_timestamp, arrival, octets)
        return True

    def _count(self, seq: int, rtp_timestamp: int, arrival: float, octets: int) -> None:
        self.received += 1
        self.octets += octets
        arrival_units = arrival * self.clock_rate
        transit = arrival_units - rtp_timestamp
        if self._transit is not None:
            d = abs(transit - self._transit)
            self._jitter += (d - self._jitter) / 16.0
        self._transit = transit

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        """Packets expected: extended highest minus the first sequence number, plus one."""
        if not self.initialised or self.probation:
            return 0
        return self.extended_max - self.base_seq + 1

    @property
    def lost(self) -> int:
        """Cumulative packets lost (negative when duplicates arrived), clamped to 24 bits."""
        return max(-0x800000, min(0x7FFFFF, self.expected - self.received))

    @property
    def jitter(self) -> int:
        """Interarrival jitter in timestamp units, as a report block carries it (A.8)."""
        return int(self._jitter)

    @property
    def jitter_seconds(self) -> float:
        return self._jitter / self.clock_rate

    def note_sender_report(self, ntp: int, arrival: float) -> None:
        """Remember an SR from this source for the LSR/DLSR fields (section 6.4.1)."""
        self.last_sr = (ntp >> 16) & 0xFFFFFFFF
        self.last_sr_arrival = arrival

    def report_block(self, now: float) -> ReportBlock:
        """A report block for the interval since the previous call (A.3), and start a new one."""
        expected = self.expected
        expected_interval = expected - self.expected_prior
        self.expected_prior = expected
        received_interval = self.received - self.received_prior
        self.received_prior = self.received
        lost_interval = expected_interval - received_interval
        if expected_interval == 0 or lost_interval <= 0:
            fraction = 0
        else:
            fraction = (lost_interval << 8) // expected_interval
        dlsr = 0
        if self.last_sr_arrival is not None:
            dlsr = int((now - self.last_sr_arrival) * 65536) & 0xFFFFFFFF
        return ReportBlock(ssrc=self.ssrc, fraction_lost=min(fraction, 255),
                           cumulative_lost=self.lost, highest_sequence=self.extended_max,
                           jitter=self.jitter, last_sr=self.last_sr, delay_since_last_sr=dlsr)


def round_trip_time(block: ReportBlock, arrival_ntp: int) -> float | None:
    """RTT from a report block about our stream (section 6.4.1): A - LSR - DLSR, in seconds.

    ``arrival_ntp`` is the 64-bit NTP time the report arrived. None if the peer has not seen an
    SR from us yet.
    """
    if block.last_sr == 0:
        return None
    arrival = (arrival_ntp >> 16) & 0xFFFFFFFF
    rtt = (arrival - block.last_sr - block.delay_since_last_sr) & 0xFFFFFFFF
    if rtt > 0x80000000:  # clock oddities would give a negative value
        return 0.0
    return rtt / 65536.0


@dataclass(frozen=True)
class StreamStatistics:
    """A summary of one call's media, for printing at the end."""

    packets_sent: int
    octets_sent: int
    packets_received: int
    octets_received: int
    packets_expected: int
    packets_lost: int
    jitter_ms: float
    remote_ssrc: int | None
    remote_reported_lost: int | None = None
    remote_reported_jitter_ms: float | None = None
    round_trip_ms: float | None = None
    dtmf_received: str = ""

    @property
    def loss_percent(self) -> float:
        if self.packets_expected <= 0:
            return 0.0
        return 100.0 * max(0, self.packets_lost) / self.packets_expected

    def to_text(self) -> str:
        lines = [
            f"sent:     {self.packets_sent} packets, {self.octets_sent} payload bytes",
            f"received: {self.packets_received} packets, {self.octets_received} payload bytes"
            + (f" from SSRC {self.remote_ssrc:08x}" if self.remote_ssrc is not None else ""),
            f"lost:     {self.packets_lost} of {self.packets_expected} expected "
            f"({self.loss_percent:.1f}%), jitter {self.jitter_ms:.2f} ms",
        ]
        if self.remote_reported_lost is not None:
            remote = f"peer reports: lost {self.remote_reported_lost}"
            if self.remote_reported_jitter_ms is not None:
                remote += f", jitter {self.remote_reported_jitter_ms:.2f} ms"
            if self.round_trip_ms is not None:
                remote += f", round trip {self.round_trip_ms:.1f} ms"
            lines.append(remote)
        if self.dtmf_received:
            lines.append(f"dtmf:     {self.dtmf_received}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        return {
            "packets_sent": self.packets_sent, "octets_sent": self.octets_sent,
            "packets_received": self.packets_received, "octets_received": self.octets_received,
            "packets_expected": self.packets_expected, "packets_lost": self.packets_lost,
            "jitter_ms": round(self.jitter_ms, 3), "remote_ssrc": self.remote_ssrc,
            "remote_reported_lost": self.remote_reported_lost,
            "remote_reported_jitter_ms": self.remote_reported_jitter_ms,
            "round_trip_ms": self.round_trip_ms, "dtmf_received": self.dtmf_received,
        }
