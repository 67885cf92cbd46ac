"""What a datagram on a relay port is, as cheaply as the latching policy needs to know it.

A relay port carries RTP, RTCP (on the next port, or on the same one with rtcp-mux) and, when
the parties run ICE through the relay, STUN connectivity checks (RFC 7983 §7 demultiplexing by
the first byte). The policy treats them differently (valid media latches, authenticated checks
latch provisionally, an authenticated nominating check moves a latch): see :mod:`.latching`.

The tests here are the ones the data plane has always made, kept exactly so that behaviour does
not change: a datagram is STUN when its first byte is below 4 and it looks like one whole STUN
message (:func:`~icerelay.stun.is_stun`); anything else is media, and it is RTCP when its second
byte, the packet type, is 192..223 (RFC 5761 §4), whatever its first byte. Only the policy of
:mod:`.latching` decides what follows from the kind; this module only names it.
"""

from __future__ import annotations

from enum import IntEnum

from icerelay.errors import StunError
from icerelay.stun import AttributeType, MessageClass, Method, decode_message, is_stun
from icerelay.stun.message import Message

__all__ = [
    "PacketKind",
    "classify",
    "is_rtcp",
    "looks_like_stun",
    "ssrc",
    "stun_kind",
]


class PacketKind(IntEnum):
    """What one datagram on a relay port is."""

    #: RTP: first byte 128..191 (version 2) and not RTCP.
    RTP = 0
    #: RTCP: the packet type (second byte) is 192..223.
    RTCP = 1
    #: A STUN Binding request without USE-CANDIDATE: an ICE connectivity check.
    STUN_REQUEST = 2
    #: A STUN Binding request with USE-CANDIDATE: a nominating check.
    STUN_NOMINATION = 3
    #: Any other STUN message: an answer to a check, an indication, another method.
    STUN_OTHER = 4
    #: Looks like STUN by its header but does not decode.
    MALFORMED_STUN = 5
    #: Neither STUN nor RTP/RTCP by its first byte (DTLS, ZRTP, garbage). The latching policy
    #: relays DTLS and ZRTP without latching and drops the rest unless it comes from the
    #: latched source.
    OTHER = 6


# Enum members as module constants for the per-packet paths: looking one up on its class costs
# ~80 ns in Python 3.11.
_BINDING = Method.BINDING
_REQUEST = MessageClass.REQUEST
_USE_CANDIDATE = AttributeType.USE_CANDIDATE
_CHECK = PacketKind.STUN_REQUEST
_NOMINATION = PacketKind.STUN_NOMINATION
_STUN_OTHER = PacketKind.STUN_OTHER


def looks_like_stun(data: bytes) -> bool:
    """The demultiplexing test: first byte 0..3 and a whole STUN message by its header."""
    return bool(data) and data[0] < 4 and is_stun(data)


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 §4: packet type 192..223 in the second byte means RTCP on a multiplexed port."""
    return len(data) > 1 and 192 <= data[1] <= 223


def stun_kind(message: Message) -> PacketKind:
    """The kind of a decoded STUN message: a check, a nominating check, or something else."""
    if message.method == _BINDING and message.message_class == _REQUEST:
        return _NOMINATION if message.has(_USE_CANDIDATE) else _CHECK
    return _STUN_OTHER


def classify(data: bytes) -> PacketKind:
    """The kind of one datagram (decodes STUN messages; cheap for everything else).

    The latching policy makes the same tests inline on its hot path, and decodes a STUN message
    once for both its kind and its integrity check.
    """
    if looks_like_stun(data):
        try:
            return stun_kind(decode_message(data))
        except StunError:
            return PacketKind.MALFORMED_STUN
    if is_rtcp(data):
        return PacketKind.RTCP
    if data and 128 <= data[0] <= 191:
        return PacketKind.RTP
    return PacketKind.OTHER


def ssrc(data: bytes, kind: PacketKind) -> int | None:
    """The sender's SSRC of an RTP packet (bytes 8..11) or RTCP packet (bytes 4..7), if present."""
    if kind == PacketKind.RTP and len(data) >= 12:
        return int.from_bytes(data[8:12], "big")
    if kind == PacketKind.RTCP and len(data) >= 8:
        return int.from_bytes(data[4:8], "big")
    return None
