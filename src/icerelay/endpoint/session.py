"""An RTP session for one audio stream (RFC 3550), sans I/O.

The session paces outgoing audio itself: :meth:`RtpSession.next_timer` is the time of the next
packet (or RTCP report), :meth:`RtpSession.handle_timer` produces what is due, and
:meth:`RtpSession.datagrams_to_send` hands it to the driver as :class:`Outgoing` packets tagged
with the ICE component (1 = RTP, 2 = RTCP; RTCP goes on component 1 with rtcp-mux). The driver
decides where they go: to the peer's ``c=``/``m=`` address (symmetric RTP, RFC 4961, sent from the
port we receive on) or through the ICE agent's selected pair::

    session = RtpSession(PCMU, source=ToneSource(440), recorder=Recorder(), rng=rng)
    session.start(now)
    session.receive(datagram, now, component=1)
    for packet in session.datagrams_to_send(now): ...
    session.next_timer() / session.handle_timer(now)
    session.next_event()        # MediaStarted, DtmfReceived, RemoteBye, ...
    session.stop(now)           # final report with BYE
    session.statistics()

Why the session paces: a sans-I/O clock makes packet timing exact in tests, and a late wake-up
(a busy event loop) sends the packets that are due with the timestamps they should have had, so
the receiver's jitter reflects the network and our lateness honestly.
"""

from __future__ import annotations

import os
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from icerelay.endpoint import g711
from icerelay.endpoint.audio import AudioSource, Recorder
from icerelay.endpoint.dtmf import DtmfReceiver, DtmfSender
from icerelay.endpoint.errors import RtpError
from icerelay.endpoint.rtp import (
    Bye,
    ReceiverReport,
    ReportBlock,
    RtcpPacket,
    RtpPacket,
    SdesChunk,
    SenderReport,
    SourceDescription,
    decode_rtcp,
    encode_rtcp,
    is_rtcp,
    ntp_timestamp,
)
from icerelay.endpoint.stats import ReceptionStatistics, StreamStatistics, round_trip_time

if TYPE_CHECKING:
    from random import Random

RTP_COMPONENT = 1
RTCP_COMPONENT = 2
COMFORT_NOISE = 13


@dataclass(frozen=True)
class Codec:
    """An audio codec the session can send and receive."""

    name: str
    payload_type: int
    clock_rate: int
    encode: Callable[[array[int]], bytes]
    decode: Callable[[bytes], array[int]]


PCMU = Codec("PCMU", 0, 8000, g711.encode_ulaw, g711.decode_ulaw)
PCMA = Codec("PCMA", 8, 8000, g711.encode_alaw, g711.decode_alaw)
CODECS: dict[str, Codec] = {"PCMU": PCMU, "PCMA": PCMA}


@dataclass(frozen=True)
class Outgoing:
    """A datagram for the driver to send on an ICE component (1 RTP, 2 RTCP)."""

    data: bytes
    component: int


@dataclass(frozen=True)
class MediaStarted:
    """The first RTP packet from the peer arrived."""

    ssrc: int
    payload_type: int


@dataclass(frozen=True)
class DtmfReceived:
    digit: str


@dataclass(frozen=True)
class RemoteBye:
    """The peer sent RTCP BYE for these sources."""

    ssrcs: tuple[int, ...]
    reason: str


@dataclass(frozen=True)
class SourceEnded:
    """Our audio source has no more samples; silence follows."""


SessionEvent = MediaStarted | DtmfReceived | RemoteBye | SourceEnded


class RtpSession:
    """One RTP stream out and the peer's stream in, with RTCP and telephone-events."""

    def __init__(
        self,
        codec: Codec = PCMU,
        *,
        source: AudioSource | None = None,
        recorder: Recorder | None = None,
        ssrc: int | None = None,
        cname: str | None = None,
        ptime: float = 0.02,
        telephone_event: int | None = 101,
        rtcp_mux: bool = False,
        rtcp_interval: float = 5.0,
        send_enabled: bool = True,
        wall_clock: Callable[[], float] | None = None,
        rng: Random,
    ) -> None:
        if not 0.01 <= ptime <= 0.2:
            raise RtpError("ptime must be 10-200 ms")
        self.codec = codec
        self.source = source
        self.recorder = recorder
        self.ssrc = ssrc if ssrc is not None else rng.getrandbits(32)
        self.cname = cname or f"icerelay-{os.getpid()}@{rng.randbytes(4).hex()}"
        self.samples_per_packet = round(ptime * codec.clock_rate)
        self.ptime = self.samples_per_packet / codec.clock_rate
        self.telephone_event = telephone_event
        self.rtcp_mux = rtcp_mux
        self.rtcp_interval = rtcp_interval
        self.send_enabled = send_enabled
        self._rng = rng
        # RFC 3550 section 5.1: random initial sequence number and timestamp.
        self._sequence = self._rng.randrange(1 << 16)
        self._timestamp_base = self._rng.randrange(1 << 32)
        self._wall_clock = wall_clock
        self._clock_offset: float | None = None  # wall time minus session time, for NTP in SR
        self._started_at: float | None = None
        self._packets_due = 0  # packet index of the next audio packet
        self._next_packet: float | None = None
        self._next_rtcp: float | None = None
        self._stopped = False
        self._source_ended = False
        self._dtmf_queue: deque[tuple[str, float]] = deque()
        self._dtmf: DtmfSender | None = None
        self._dtmf_timestamp = 0
        self._out: list[Outgoing] = []
        self._events: deque[SessionEvent] = deque()
        self.packets_sent = 0
        self.octets_sent = 0
        self._last_rtp_timestamp = self._timestamp_base
        self._sources: dict[int, ReceptionStatistics] = {}
        self._current_remote: int | None = None
        self._dtmf_receiver = DtmfReceiver()
        self.octets_received = 0
        self.packets_received = 0
        self.packets_ignored = 0
        self.malformed = 0
        self._sent_sr = False
        self.remote_report: ReportBlock | None = None
        self.round_trip: float | None = None
        self.remote_bye = False

    # -- control ----------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Start sending at ``now``; the first RTCP report follows after half an interval
        (RFC 3550 section 6.2: the first report may go at half the minimum interval)."""
        if self._started_at is not None:
            return
        self._started_at = now
        if self._wall_clock is not None:
            self._clock_offset = self._wall_clock() - now
        self._next_packet = now if self.send_enabled else None
        self._next_rtcp = now + self._randomized(self.rtcp_interval / 2)

    def set_sending(self, enabled: bool, now: float) -> None:
        """Start or stop sending (hold: the peer's a=sendonly/inactive). Timestamps keep
        running with the clock, so on resumption the receiver sees a gap, not a rewind."""
        self.send_enabled = enabled
        if self._started_at is None or self._stopped:
            return
        if not enabled:
            self._next_packet = None
        elif self._next_packet is None:
            self._next_packet = now

    def send_dtmf(self, digits: str, duration: float = 0.1) -> None:
        """Queue DTMF digits as RFC 4733 events (audio pauses while one plays)."""
        if self.telephone_event is None:
            raise RtpError("the peer did not accept telephone-event")
        for digit in digits:
            DtmfSender(digit)  # validate now, not in the middle of the stream
            self._dtmf_queue.append((digit, duration))

    def stop(self, now: float) -> None:
        """Stop sending: queue a final compound RTCP with BYE (RFC 3550 section 6.6)."""
        if self._stopped:
            return
        self._stopped = True
        if self._started_at is not None:
            self._out.append(Outgoing(encode_rtcp(self._report(now, bye=True)),
                                      self._rtcp_component))
        self._next_packet = None
        self._next_rtcp = None

    @property
    def stopped(self) -> bool:
        return self._stopped

    # -- sans-I/O surface ------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        timers = [t for t in (self._next_packet, self._next_rtcp) if t is not None]
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        if self._stopped:
            return
        if self._next_packet is not None and now >= self._next_packet:
            self._send_due_packets(now)
        if self._next_rtcp is not None and now >= self._next_rtcp:
            self._out.append(Outgoing(encode_rtcp(self._report(now)), self._rtcp_component))
            self._next_rtcp = now + self._randomized(self.rtcp_interval)

    def datagrams_to_send(self, now: float) -> list[Outgoing]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> SessionEvent | None:
        return self._events.popleft() if self._events else None

    def receive(self, data: bytes, now: float, component: int = RTP_COMPONENT) -> None:
        """Feed one datagram that arrived on ``component`` (RTCP is recognised on either)."""
        try:
            if component == RTCP_COMPONENT or is_rtcp(data):
                self._receive_rtcp(decode_rtcp(data), now)
            else:
                self._receive_rtp(RtpPacket.decode(data), now)
        except RtpError:
            self.malformed += 1  # counted, never fatal: the network sends odd things

    # -- sending ----------------------------------------------------------------------------------

    @property
    def _rtcp_component(self) -> int:
        return RTP_COMPONENT if self.rtcp_mux else RTCP_COMPONENT

    def _randomized(self, interval: float) -> float:
        # RFC 3550 section 6.3.1: randomize between 0.5 and 1.5 times to avoid synchronisation.
        return interval * (0.5 + self._rng.random())

    def _send_due_packets(self, now: float) -> None:
        assert self._started_at is not None and self._next_packet is not None
        due = int((now - self._started_at) / self.ptime + 1e-9) + 1
        if due - self._packets_due > 50:
            # More than a second behind (suspended process): skip ahead rather than burst;
            # the timestamp still advances, so the receiver sees a gap, not a time warp.
            self._packets_due = due - 1
        while self._packets_due < due:
            self._send_one(self._packets_due)
            self._packets_due += 1
        self._next_packet = self._started_at + self._packets_due * self.ptime

    def _send_one(self, index: int) -> None:
        timestamp = (self._timestamp_base + index * self.samples_per_packet) & 0xFFFFFFFF
        if self._dtmf is None and self._dtmf_queue:
            digit, duration = self._dtmf_queue.popleft()
            self._dtmf = DtmfSender(digit, duration=duration,
                                    samples_per_packet=self.samples_per_packet,
                                    clock_rate=self.codec.clock_rate)
            self._dtmf_timestamp = timestamp
        if self._dtmf is not None and self.telephone_event is not None:
            marker = self._dtmf.first()
            payload = self._dtmf.next_packet()
            if payload is not None:
                self._emit_rtp(self.telephone_event, self._dtmf_timestamp, payload, marker)
                self._read_audio()  # the source keeps its pace while the digit plays
                if self._dtmf.done:
                    self._dtmf = None
                return
            self._dtmf = None
        samples = self._read_audio()
        self._emit_rtp(self.codec.payload_type, timestamp, self.codec.encode(samples),
                       self.packets_sent == 0)

    def _read_audio(self) -> array[int]:
        samples = self.source.read(self.samples_per_packet) if self.source else array("h")
        if len(samples) < self.samples_per_packet:
            if self.source is not None and not self._source_ended:
                self._source_ended = True
                self._events.append(SourceEnded())
            samples = array("h", samples)
            samples.extend(array("h", bytes(2 * (self.samples_per_packet - len(samples)))))
        return samples

    def _emit_rtp(self, payload_type: int, timestamp: int, payload: bytes, marker: bool) -> None:
        packet = RtpPacket(payload_type=payload_type, sequence=self._sequence, timestamp=timestamp,
                           ssrc=self.ssrc, payload=payload, marker=marker)
        self._sequence = (self._sequence + 1) & 0xFFFF
        self.packets_sent += 1
        self.octets_sent += len(payload)
        self._last_rtp_timestamp = timestamp
        self._out.append(Outgoing(packet.encode(), RTP_COMPONENT))

    def _ntp_now(self, now: float) -> int:
        return ntp_timestamp(now + (self._clock_offset or 0.0))

    def _rtp_timestamp_at(self, now: float) -> int:
        if self._started_at is None:
            return self._timestamp_base
        elapsed = int((now - self._started_at) * self.codec.clock_rate)
        return (self._timestamp_base + elapsed) & 0xFFFFFFFF

    def _report(self, now: float, *, bye: bool = False) -> list[RtcpPacket]:
        blocks = tuple(stats.report_block(now) for stats in self._sources.values()
                       if stats.expected > 0)[:31]
        first: RtcpPacket
        if self.packets_sent:
            self._sent_sr = True
            first = SenderReport(self.ssrc, self._ntp_now(now), self._rtp_timestamp_at(now),
                                 self.packets_sent, self.octets_sent, blocks)
        else:
            first = ReceiverReport(self.ssrc, blocks)
        packets: list[RtcpPacket] = [
            first, SourceDescription((SdesChunk(self.ssrc, ((1, self.cname),)),)),
        ]
        if bye:
            packets.append(Bye((self.ssrc,), "call ended"))
        return packets

    # -- receiving --------------------------------------------------------------------------------

    def _receive_rtp(self, packet: RtpPacket, now: float) -> None:
        stats = self._sources.get(packet.ssrc)
        if stats is None:
            if len(self._sources) >= 8:
                self.packets_ignored += 1  # a flood of SSRCs is not a conversation
                return
            stats = ReceptionStatistics(packet.ssrc, self.codec.clock_rate)
            self._sources[packet.ssrc] = stats
        if packet.ssrc != self._current_remote:
            if self._current_remote is None:
                self._events.append(MediaStarted(packet.ssrc, packet.payload_type))
            elif self.recorder is not None:
                self.recorder.restart()  # new source (re-INVITE, transfer): append, keep timeline
            self._current_remote = packet.ssrc
        stats.update(packet.sequence, packet.timestamp, now, len(packet.payload))
        self.packets_received += 1
        self.octets_received += len(packet.payload)
        if packet.payload_type == self.codec.payload_type:
            if self.recorder is not None:
                self.recorder.write(packet.timestamp, self.codec.decode(packet.payload))
        elif packet.payload_type == self.telephone_event:
            digit = self._dtmf_receiver.receive(packet.timestamp, packet.payload)
            if digit is not None:
                self._events.append(DtmfReceived(digit))
        elif packet.payload_type in (PCMU.payload_type, PCMA.payload_type):
            # The peer switched to the other G.711 law (allowed if both were offered).
            other = PCMA if packet.payload_type == PCMA.payload_type else PCMU
            if self.recorder is not None:
                self.recorder.write(packet.timestamp, other.decode(packet.payload))
        elif packet.payload_type != COMFORT_NOISE:
            self.packets_ignored += 1

    def _receive_rtcp(self, packets: list[RtcpPacket], now: float) -> None:
        for packet in packets:
            if isinstance(packet, SenderReport):
                stats = self._sources.get(packet.ssrc)
                if stats is not None:
                    stats.note_sender_report(packet.ntp_timestamp, now)
                self._note_reports(packet.reports, now)
            elif isinstance(packet, ReceiverReport):
                self._note_reports(packet.reports, now)
            elif isinstance(packet, Bye) and packet.ssrcs != (self.ssrc,):
                self.remote_bye = True
                self._events.append(RemoteBye(packet.ssrcs, packet.reason))

    def _note_reports(self, blocks: tuple[ReportBlock, ...], now: float) -> None:
        for block in blocks:
            if block.ssrc != self.ssrc:
                continue
            self.remote_report = block
            rtt = round_trip_time(block, self._ntp_now(now))
            if rtt is not None and self._sent_sr:
                self.round_trip = rtt

    # -- results ----------------------------------------------------------------------------------

    @property
    def dtmf_received(self) -> str:
        return "".join(self._dtmf_receiver.digits)

    @property
    def media_received(self) -> bool:
        return self.packets_received > 0

    def statistics(self) -> StreamStatistics:
        expected = sum(s.expected for s in self._sources.values())
        lost = sum(s.lost for s in self._sources.values())
        current = self._sources.get(self._current_remote) if self._current_remote else None
        report = self.remote_report
        return StreamStatistics(
            packets_sent=self.packets_sent,
            octets_sent=self.octets_sent,
            packets_received=self.packets_received,
            octets_received=self.octets_received,
            packets_expected=expected,
            packets_lost=lost,
            jitter_ms=1000 * current.jitter_seconds if current else 0.0,
            remote_ssrc=self._current_remote,
            remote_reported_lost=report.cumulative_lost if report else None,
            remote_reported_jitter_ms=(1000 * report.jitter / self.codec.clock_rate
                                       if report else None),
            round_trip_ms=1000 * self.round_trip if self.round_trip is not None else None,
            dtmf_received=self.dtmf_received,
        )


__all__ = [
    "CODECS",
    "PCMA",
    "PCMU",
    "RTCP_COMPONENT",
    "RTP_COMPONENT",
    "Codec",
    "DtmfReceived",
    "MediaStarted",
    "Outgoing",
    "RemoteBye",
    "RtpSession",
    "SessionEvent",
    "SourceEnded",
]
