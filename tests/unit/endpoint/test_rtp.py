"""RTP and RTCP packets: round trips, the bits on the wire, malformed input."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from icerelay.endpoint.errors import RtpError
from icerelay.endpoint.rtp import (
    Bye,
    ReceiverReport,
    ReportBlock,
    RtpHeaderExtension,
    RtpPacket,
    SdesChunk,
    SenderReport,
    SourceDescription,
    UnknownRtcp,
    decode_rtcp,
    encode_rtcp,
    is_rtcp,
    ntp_middle,
    ntp_timestamp,
)


def test_rtp_header_bits() -> None:
    packet = RtpPacket(payload_type=0, sequence=0x1234, timestamp=0xDEADBEEF, ssrc=0x01020304,
                       payload=b"\xff" * 160, marker=True)
    data = packet.encode()
    assert data[:12] == bytes.fromhex("80801234deadbeef01020304")
    assert len(data) == 172
    assert RtpPacket.decode(data) == packet


def test_rtp_csrc_extension_padding_round_trip() -> None:
    packet = RtpPacket(payload_type=101, sequence=65535, timestamp=1, ssrc=2, payload=b"abc",
                       csrcs=(7, 8), extension=RtpHeaderExtension(0xBEDE, b"\x10\x01\x00\x00"),
                       padding=5)
    data = packet.encode()
    assert data[0] == 0x80 | 0x20 | 0x10 | 2
    assert data[-1] == 5
    assert RtpPacket.decode(data) == packet


@pytest.mark.parametrize("data", [
    b"", b"\x80" * 11, b"\x40" + bytes(11),           # short, version 1
    b"\x8f" + bytes(11),                               # 15 CSRCs announced, none there
    b"\x90" + bytes(11) + b"\x00\x00\x00\x05",         # extension longer than the packet
    b"\xa0" + bytes(11) + b"\x00",                     # padding count 0
    b"\xa0" + bytes(11) + b"\x40",                     # padding longer than the packet
])
def test_rtp_malformed(data: bytes) -> None:
    with pytest.raises(RtpError):
        RtpPacket.decode(data)


@given(st.binary(max_size=80))
def test_rtp_decoder_raises_only_rtp_error(data: bytes) -> None:
    try:
        packet = RtpPacket.decode(data)
    except RtpError:
        return
    assert RtpPacket.decode(packet.encode()) == packet


@given(st.binary(max_size=120))
def test_rtcp_decoder_raises_only_rtp_error(data: bytes) -> None:
    with contextlib.suppress(RtpError):
        decode_rtcp(data)


def test_compound_rtcp_round_trip() -> None:
    block = ReportBlock(ssrc=9, fraction_lost=64, cumulative_lost=-3, highest_sequence=70000,
                       jitter=12, last_sr=0x12345678, delay_since_last_sr=65536)
    packets = [
        SenderReport(1, ntp_timestamp(1_700_000_000.5), 160, 10, 1600, (block,)),
        SourceDescription((SdesChunk(1, ((1, "alice@example.com"), (6, "icerelay"))),
                           SdesChunk(2, ((1, "x"),)))),
        Bye((1,), "bye now"),
    ]
    data = encode_rtcp(packets)
    assert len(data) % 4 == 0
    assert data[1] == 200 and is_rtcp(data)
    decoded = decode_rtcp(data)
    assert decoded == packets
    sdes = decoded[1]
    assert isinstance(sdes, SourceDescription) and sdes.chunks[0].cname == "alice@example.com"


def test_receiver_report_and_unknown() -> None:
    packets = [ReceiverReport(5), UnknownRtcp(204, 1, b"nameXXXX")]
    assert decode_rtcp(encode_rtcp(packets)) == packets


def test_cumulative_lost_is_signed_24_bit() -> None:
    block = ReportBlock(1, 0, -1, 0, 0)
    raw = block.encode()
    assert raw[4:8] == b"\x00\xff\xff\xff"
    assert ReportBlock.decode(raw).cumulative_lost == -1
    assert ReportBlock.decode(ReportBlock(1, 0, 10**9, 0, 0).encode()).cumulative_lost == 0x7FFFFF


def test_rtcp_lengths_checked() -> None:
    data = ReceiverReport(5, (ReportBlock(1, 0, 0, 0, 0),)).encode()
    with pytest.raises(RtpError):
        decode_rtcp(data[:-4])
    with pytest.raises(RtpError):
        decode_rtcp(data + b"\x80")
    bad_count = bytes([0x80 | 3]) + data[1:]
    with pytest.raises(RtpError):
        decode_rtcp(bad_count)


def test_is_rtcp_on_a_muxed_port() -> None:
    assert not is_rtcp(RtpPacket(0, 1, 2, 3, b"x" * 160).encode())
    assert not is_rtcp(RtpPacket(101, 1, 2, 3, b"x" * 4, marker=True).encode())
    assert is_rtcp(ReceiverReport(1).encode())


def test_ntp() -> None:
    ntp = ntp_timestamp(0.0)
    assert ntp >> 32 == 2208988800 and ntp & 0xFFFFFFFF == 0
    assert ntp_middle(ntp_timestamp(0.5)) & 0xFFFF == 0x8000
    assert struct.pack("!Q", ntp_timestamp(1.25))[4:] == b"\x40\x00\x00\x00"
