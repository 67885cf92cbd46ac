"""RFC 7983 demultiplexing and TURN ChannelData framing."""

from __future__ import annotations

import os

import pytest

from icerelay.errors import StunError
from icerelay.stun import Message, MessageClass, Method
from icerelay.stun.channeldata import decode_channel_data, encode_channel_data
from icerelay.stun.demux import PacketKind, classify_packet, stream_frame_length


@pytest.mark.parametrize(
    ("first", "kind"),
    [
        (0, PacketKind.STUN),
        (3, PacketKind.STUN),
        (4, PacketKind.UNKNOWN),
        (15, PacketKind.UNKNOWN),
        (16, PacketKind.ZRTP),
        (19, PacketKind.ZRTP),
        (20, PacketKind.DTLS),
        (22, PacketKind.DTLS),
        (63, PacketKind.DTLS),
        (64, PacketKind.CHANNEL_DATA),
        (79, PacketKind.CHANNEL_DATA),
        (80, PacketKind.UNKNOWN),
        (127, PacketKind.UNKNOWN),
        (128, PacketKind.RTP),
        (191, PacketKind.RTP),
        (192, PacketKind.UNKNOWN),
        (255, PacketKind.UNKNOWN),
    ],
)
def test_first_byte(first: int, kind: PacketKind) -> None:
    assert classify_packet(bytes((first, 0, 0, 0))) is kind


def test_rtcp_by_packet_type() -> None:
    assert classify_packet(bytes((0x80, 0))) is PacketKind.RTP  # PT 0 (PCMU)
    assert classify_packet(bytes((0x80, 200))) is PacketKind.RTCP  # SR
    assert classify_packet(bytes((0x81, 201))) is PacketKind.RTCP  # RR
    assert classify_packet(bytes((0x80, 0x80 | 8))) is PacketKind.RTP  # marker, PT 8
    assert classify_packet(b"") is PacketKind.UNKNOWN
    assert classify_packet(b"\x80") is PacketKind.RTP


def test_stun_message_classifies_as_stun() -> None:
    data = Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12)).encode()
    assert classify_packet(data) is PacketKind.STUN
    assert stream_frame_length(data) == len(data)


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 160])
def test_channel_data_round_trip(size: int) -> None:
    payload = bytes(range(size % 256)) * (size // 256) + bytes(range(size % 256))
    payload = payload[:size]
    frame = encode_channel_data(0x4001, payload)
    assert len(frame) == 4 + size
    assert classify_packet(frame) is PacketKind.CHANNEL_DATA
    assert decode_channel_data(frame) == (0x4001, payload)
    padded = encode_channel_data(0x4FFF, payload, stream=True)
    assert len(padded) % 4 == 0
    assert stream_frame_length(padded) == len(padded)
    assert stream_frame_length(padded + b"more") == len(padded)
    assert decode_channel_data(padded) == (0x4FFF, payload)


def test_channel_data_errors() -> None:
    with pytest.raises(ValueError):
        encode_channel_data(0x3FFF, b"")
    with pytest.raises(ValueError):
        encode_channel_data(0x5000, b"")
    for bad in (
        b"",
        b"\x40\x00\x00",
        b"\x40\x00\x00\x05abcd",
        b"\x50\x00\x00\x00",
        b"\x40\x00\x00\x00abcd",
    ):
        with pytest.raises(StunError):
            decode_channel_data(bad)


def test_stream_frame_length() -> None:
    assert stream_frame_length(b"\x00\x01") is None
    assert stream_frame_length(b"\x00\x01\x00\x08") == 28
    assert stream_frame_length(b"\x40\x00\x00\x05") == 12
    with pytest.raises(StunError):
        stream_frame_length(b"\x80\x00\x00\x00")
