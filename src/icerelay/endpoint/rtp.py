"""RTP and RTCP packets (RFC 3550), as frozen dataclasses with ``encode()`` / ``decode()``.

RTCP packets come in compound datagrams (RFC 3550 section 6.1); :func:`decode_rtcp` returns every
packet in one, :func:`encode_rtcp` joins them. :func:`is_rtcp` tells the two apart on a
multiplexed port (RFC 5761 section 4: RTCP packet types 200-204 fall in 192-223 where the RTP
marker bit and payload type would be, a range RTP payload types avoid).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from icerelay.endpoint.errors import RtpError

RTP_VERSION = 2

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
RTCP_APP = 204

SDES_END = 0
SDES_CNAME = 1

_HEADER = struct.Struct("!BBHII")
_RTCP_HEADER = struct.Struct("!BBH")
_REPORT_BLOCK = struct.Struct("!IIIIII")
_SENDER_INFO = struct.Struct("!IQIII")

NTP_EPOCH_OFFSET = 2208988800
"""Seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)."""


def ntp_timestamp(unix_time: float) -> int:
    """Unix time in seconds as a 64-bit NTP timestamp (32.32 fixed point since 1900)."""
    return int((unix_time + NTP_EPOCH_OFFSET) * (1 << 32)) & 0xFFFFFFFFFFFFFFFF


def ntp_middle(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp: the LSR/DLSR clock of RFC 3550 section 6.4.1."""
    return (ntp >> 16) & 0xFFFFFFFF


@dataclass(frozen=True)
class RtpHeaderExtension:
    """The one header extension an RTP packet may carry (RFC 3550 section 5.3.1)."""

    profile: int
    data: bytes

    def __post_init__(self) -> None:
        if len(self.data) % 4:
            raise RtpError("an RTP header extension is a whole number of 32-bit words")


@dataclass(frozen=True)
class RtpPacket:
    """One RTP packet (RFC 3550 section 5.1)."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    extension: RtpHeaderExtension | None = None
    padding: int = 0
    """Number of padding octets at the end (0 for none), including the count octet itself."""

    def __post_init__(self) -> None:
        if not 0 <= self.payload_type <= 127:
            raise RtpError(f"payload type {self.payload_type} is not 0-127")
        if not 0 <= self.sequence <= 0xFFFF:
            raise RtpError(f"sequence number {self.sequence} is not 16-bit")
        if not 0 <= self.timestamp <= 0xFFFFFFFF or not 0 <= self.ssrc <= 0xFFFFFFFF:
            raise RtpError("timestamp and SSRC are 32-bit")
        if len(self.csrcs) > 15:
            raise RtpError("at most 15 CSRCs")
        if not 0 <= self.padding <= 255:
            raise RtpError("padding is 0-255 octets")

    def encode(self) -> bytes:
        first = (RTP_VERSION << 6) | len(self.csrcs)
        if self.padding:
            first |= 0x20
        if self.extension is not None:
            first |= 0x10
        parts = [
            _HEADER.pack(first, (0x80 if self.marker else 0) | self.payload_type, self.sequence,
                         self.timestamp, self.ssrc)
        ]
        if self.csrcs:
            parts.append(struct.pack(f"!{len(self.csrcs)}I", *self.csrcs))
        if self.extension is not None:
            ext = self.extension
            parts.append(struct.pack("!HH", ext.profile, len(ext.data) // 4) + ext.data)
        parts.append(self.payload)
        if self.padding:
            parts.append(bytes(self.padding - 1) + bytes([self.padding]))
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> RtpPacket:
        """Parse one RTP packet; :class:`RtpError` if it is not valid RTP version 2."""
        if len(data) < 12:
            raise RtpError(f"RTP packet of {len(data)} bytes is shorter than the 12-byte header")
        first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
        if first >> 6 != RTP_VERSION:
            raise RtpError(f"RTP version {first >> 6}, expected 2")
        offset = 12
        csrc_count = first & 0x0F
        if len(data) < offset + 4 * csrc_count:
            raise RtpError("RTP packet truncated in the CSRC list")
        csrcs = struct.unpack_from(f"!{csrc_count}I", data, offset)
        offset += 4 * csrc_count
        extension = None
        if first & 0x10:
            if len(data) < offset + 4:
                raise RtpError("RTP packet truncated in the header extension")
            profile, words = struct.unpack_from("!HH", data, offset)
            offset += 4
            if len(data) < offset + 4 * words:
                raise RtpError("RTP header extension longer than the packet")
            extension = RtpHeaderExtension(profile, bytes(data[offset:offset + 4 * words]))
            offset += 4 * words
        end = len(data)
        padding = 0
        if first & 0x20:
            padding = data[-1]
            if padding == 0 or end - padding < offset:
                raise RtpError(f"bad RTP padding length {padding}")
            end -= padding
        return cls(payload_type=second & 0x7F, sequence=sequence, timestamp=timestamp, ssrc=ssrc,
                   payload=bytes(data[offset:end]), marker=bool(second & 0x80), csrcs=csrcs,
                   extension=extension, padding=padding)


def is_rtcp(data: bytes) -> bool:
    """True if a datagram on an rtcp-mux port is RTCP (RFC 5761 section 4)."""
    return len(data) >= 8 and data[0] >> 6 == RTP_VERSION and 192 <= data[1] <= 223


# --- RTCP ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportBlock:
    """Reception report about one source (RFC 3550 section 6.4.1)."""

    ssrc: int
    fraction_lost: int
    """Lost fraction since the previous report, in 1/256 units (0-255)."""
    cumulative_lost: int
    """Packets lost since the beginning: expected - received, signed 24-bit (may be negative
    with duplicates)."""
    highest_sequence: int
    """Extended highest sequence number received (cycles << 16 | sequence)."""
    jitter: int
    """Interarrival jitter in timestamp units (section 6.4.1 / A.8)."""
    last_sr: int = 0
    """Middle 32 bits of the NTP timestamp of the last SR from this source (0: none)."""
    delay_since_last_sr: int = 0
    """Delay since that SR, in 1/65536 seconds."""

    def encode(self) -> bytes:
        lost = max(-0x800000, min(0x7FFFFF, self.cumulative_lost)) & 0xFFFFFF
        return _REPORT_BLOCK.pack(self.ssrc, (self.fraction_lost & 0xFF) << 24 | lost,
                                  self.highest_sequence & 0xFFFFFFFF, self.jitter & 0xFFFFFFFF,
                                  self.last_sr & 0xFFFFFFFF, self.delay_since_last_sr & 0xFFFFFFFF)

    @classmethod
    def decode(cls, data: bytes, offset: int = 0) -> ReportBlock:
        ssrc, lost_word, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(data, offset)
        lost = lost_word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        return cls(ssrc, lost_word >> 24, lost, highest, jitter, lsr, dlsr)


@dataclass(frozen=True)
class SenderReport:
    """RTCP SR (RFC 3550 section 6.4.1): what a sender sent, plus its reception reports."""

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()

    def encode(self) -> bytes:
        body = _SENDER_INFO.pack(self.ssrc, self.ntp_timestamp, self.rtp_timestamp & 0xFFFFFFFF,
                                 self.packet_count & 0xFFFFFFFF, self.octet_count & 0xFFFFFFFF)
        return _rtcp_packet(RTCP_SR, len(self.reports),
                            body + b"".join(r.encode() for r in self.reports))


@dataclass(frozen=True)
class ReceiverReport:
    """RTCP RR (RFC 3550 section 6.4.2): reception reports from a participant that did not send."""

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()

    def encode(self) -> bytes:
        body = struct.pack("!I", self.ssrc) + b"".join(r.encode() for r in self.reports)
        return _rtcp_packet(RTCP_RR, len(self.reports), body)


@dataclass(frozen=True)
class SdesChunk:
    """The items (type, text) describing one source; CNAME is type 1."""

    ssrc: int
    items: tuple[tuple[int, str], ...]

    @property
    def cname(self) -> str | None:
        return next((text for kind, text in self.items if kind == SDES_CNAME), None)


@dataclass(frozen=True)
class SourceDescription:
    """RTCP SDES (RFC 3550 section 6.5)."""

    chunks: tuple[SdesChunk, ...]

    def encode(self) -> bytes:
        body = bytearray()
        for chunk in self.chunks:
            body += struct.pack("!I", chunk.ssrc)
            for kind, text in chunk.items:
                raw = text.encode()[:255]
                body += bytes([kind, len(raw)]) + raw
            body += b"\x00"  # end of the item list, then pad the chunk to a 32-bit boundary
            body += bytes(-len(body) % 4)
        return _rtcp_packet(RTCP_SDES, len(self.chunks), bytes(body))


@dataclass(frozen=True)
class Bye:
    """RTCP BYE (RFC 3550 section 6.6): these sources leave."""

    ssrcs: tuple[int, ...]
    reason: str = ""

    def encode(self) -> bytes:
        body = struct.pack(f"!{len(self.ssrcs)}I", *self.ssrcs)
        if self.reason:
            raw = self.reason.encode()[:255]
            body += bytes([len(raw)]) + raw
            body += bytes(-len(body) % 4)
        return _rtcp_packet(RTCP_BYE, len(self.ssrcs), body)


@dataclass(frozen=True)
class UnknownRtcp:
    """An RTCP packet of a type this module does not interpret (APP, feedback, XR...)."""

    packet_type: int
    count: int
    body: bytes = field(repr=False)

    def encode(self) -> bytes:
        return _rtcp_packet(self.packet_type, self.count, self.body)


RtcpPacket = SenderReport | ReceiverReport | SourceDescription | Bye | UnknownRtcp


def _rtcp_packet(packet_type: int, count: int, body: bytes) -> bytes:
    if count > 31:
        raise RtpError("an RTCP packet carries at most 31 items")
    if len(body) % 4:
        raise RtpError("an RTCP packet is a whole number of 32-bit words")
    return _RTCP_HEADER.pack((RTP_VERSION << 6) | count, packet_type, len(body) // 4) + body


def encode_rtcp(packets: list[RtcpPacket] | tuple[RtcpPacket, ...]) -> bytes:
    """A compound RTCP datagram (RFC 3550 section 6.1: start with SR or RR)."""
    return b"".join(packet.encode() for packet in packets)


def decode_rtcp(data: bytes) -> list[RtcpPacket]:
    """Every packet of a compound RTCP datagram; :class:`RtpError` if any length is wrong."""
    packets: list[RtcpPacket] = []
    offset = 0
    if len(data) < 4:
        raise RtpError("RTCP datagram shorter than one header")
    while offset < len(data):
        if len(data) - offset < 4:
            raise RtpError("trailing bytes after the last RTCP packet")
        first, packet_type, words = _RTCP_HEADER.unpack_from(data, offset)
        if first >> 6 != RTP_VERSION:
            raise RtpError(f"RTCP version {first >> 6}, expected 2")
        end = offset + 4 + 4 * words
        if end > len(data):
            raise RtpError("RTCP packet longer than the datagram")
        body = bytes(data[offset + 4:end])
        if first & 0x20:  # padding, allowed on the last packet only
            if end != len(data) or not body or body[-1] > len(body) or body[-1] == 0:
                raise RtpError("bad RTCP padding")
            body = body[:-body[-1]]
        packets.append(_decode_one(packet_type, first & 0x1F, body))
        offset = end
    return packets


def _decode_one(packet_type: int, count: int, body: bytes) -> RtcpPacket:
    if packet_type == RTCP_SR:
        if len(body) < 24 + 24 * count:
            raise RtpError("RTCP SR shorter than its report count says")
        ssrc, ntp, rtp_ts, packets, octets = _SENDER_INFO.unpack_from(body)
        reports = tuple(ReportBlock.decode(body, 24 + 24 * i) for i in range(count))
        return SenderReport(ssrc, ntp, rtp_ts, packets, octets, reports)
    if packet_type == RTCP_RR:
        if len(body) < 4 + 24 * count:
            raise RtpError("RTCP RR shorter than its report count says")
        (ssrc,) = struct.unpack_from("!I", body)
        return ReceiverReport(ssrc, tuple(ReportBlock.decode(body, 4 + 24 * i)
                                          for i in range(count)))
    if packet_type == RTCP_SDES:
        return SourceDescription(_decode_sdes(body, count))
    if packet_type == RTCP_BYE:
        if len(body) < 4 * count:
            raise RtpError("RTCP BYE shorter than its source count says")
        ssrcs = struct.unpack_from(f"!{count}I", body)
        reason = ""
        rest = body[4 * count:]
        if rest:
            if rest[0] + 1 > len(rest):
                raise RtpError("RTCP BYE reason longer than the packet")
            reason = rest[1:1 + rest[0]].decode("utf-8", "replace")
        return Bye(ssrcs, reason)
    return UnknownRtcp(packet_type, count, body)


def _decode_sdes(body: bytes, count: int) -> tuple[SdesChunk, ...]:
    chunks = []
    offset = 0
    for _ in range(count):
        if offset + 4 > len(body):
            raise RtpError("RTCP SDES truncated")
        (ssrc,) = struct.unpack_from("!I", body, offset)
        offset += 4
        items: list[tuple[int, str]] = []
        while True:
            if offset >= len(body):
                raise RtpError("RTCP SDES item list not terminated")
            kind = body[offset]
            if kind == SDES_END:
                offset += 1
                offset += -offset % 4
                break
            if offset + 2 > len(body) or offset + 2 + body[offset + 1] > len(body):
                raise RtpError("RTCP SDES item longer than the packet")
            length = body[offset + 1]
            items.append((kind, body[offset + 2:offset + 2 + length].decode("utf-8", "replace")))
            offset += 2 + length
        chunks.append(SdesChunk(ssrc, tuple(items)))
    return tuple(chunks)
