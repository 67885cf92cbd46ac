"""Demultiplexing STUN, ZRTP, DTLS, TURN ChannelData and RTP/RTCP on one port by the first byte
(RFC 7983 §7, with the TURN channel range of RFC 8656 §12 / RFC 7983bis).

::

    first byte   0..3     STUN
                 16..19   ZRTP
                 20..63   DTLS
                 64..79   TURN ChannelData
                 128..191 RTP / RTCP (RTCP when the second byte, the packet type, is 192..223)
                 other    unknown: drop
"""

from __future__ import annotations

from enum import Enum

from icerelay.errors import StunError
from icerelay.stun.constants import HEADER_LENGTH

__all__ = ["PacketKind", "classify_packet", "is_stun_request", "stream_frame_length"]


class PacketKind(Enum):
    """What a packet on a multiplexed port is."""

    STUN = "stun"
    ZRTP = "zrtp"
    DTLS = "dtls"
    CHANNEL_DATA = "channel-data"
    RTP = "rtp"
    RTCP = "rtcp"
    UNKNOWN = "unknown"


_BY_FIRST_BYTE: list[PacketKind] = []
for _byte in range(256):
    if _byte <= 3:
        _kind = PacketKind.STUN
    elif 16 <= _byte <= 19:
        _kind = PacketKind.ZRTP
    elif 20 <= _byte <= 63:
        _kind = PacketKind.DTLS
    elif 64 <= _byte <= 79:
        _kind = PacketKind.CHANNEL_DATA
    elif 128 <= _byte <= 191:
        _kind = PacketKind.RTP
    else:
        _kind = PacketKind.UNKNOWN
    _BY_FIRST_BYTE.append(_kind)
del _byte, _kind


def classify_packet(data: bytes | bytearray | memoryview) -> PacketKind:
    """Classify one datagram by its first byte (and, for RTP/RTCP, its second).

    RTCP is told from RTP by the packet type in the second byte, 192..223 (RFC 5761 §4): with
    the marker bit set those values are RTP payload types 64..95, which RFC 5761 tells
    multiplexing applications not to use.
    """
    if not data:
        return PacketKind.UNKNOWN
    kind = _BY_FIRST_BYTE[data[0]]
    if kind is PacketKind.RTP and len(data) > 1 and 192 <= data[1] <= 223:
        return PacketKind.RTCP
    return kind


def stream_frame_length(buffer: bytes | bytearray | memoryview) -> int | None:
    """The length of the first frame in a TCP/TLS byte stream carrying STUN and ChannelData
    (RFC 8489 §6.2.2, RFC 8656 §12.5), or None if more bytes are needed to know it.

    STUN messages are 20 + their length field; ChannelData frames are 4 + their length field,
    padded to a multiple of four over streams. Raises StunError for a first byte that is
    neither (the stream cannot be resynchronised: close it).
    """
    if len(buffer) < 4:
        return None
    first = buffer[0]
    length = buffer[2] << 8 | buffer[3]
    if first <= 3:
        return HEADER_LENGTH + length
    if 64 <= first <= 79:
        return 4 + ((length + 3) & ~3)
    raise StunError(f"byte 0x{first:02X} starts neither STUN nor ChannelData")


def is_stun_request(data: bytes) -> bool:
    """Whether *data* looks like a STUN request: a first byte of 0..3 and both class bits of the
    message type clear (RFC 8489 §5: C1 is bit 8, the low bit of the first byte; C0 is bit 4,
    0x10 in the second). A cheap look at two bytes, for scheduling; nothing is validated."""
    return len(data) >= 2 and data[0] <= 3 and not data[0] & 0x01 and not data[1] & 0x10
