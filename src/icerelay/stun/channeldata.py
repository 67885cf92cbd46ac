"""TURN ChannelData messages (RFC 8656 §12.4-12.5).

::

    0                   1                   2                   3
    | Channel Number (0x4000-0x4FFF) |           Length              |
    |                      Application Data ...                      |

Over UDP the frame need not be padded; over TCP and TLS it is padded to a multiple of four
bytes and the padding is not counted in Length.
"""

from __future__ import annotations

import struct

from icerelay.errors import StunError

__all__ = [
    "CHANNEL_NUMBER_MAX",
    "CHANNEL_NUMBER_MIN",
    "decode_channel_data",
    "encode_channel_data",
    "is_valid_channel_number",
]

CHANNEL_NUMBER_MIN = 0x4000
CHANNEL_NUMBER_MAX = 0x4FFF
_HEAD = struct.Struct("!HH")


def is_valid_channel_number(number: int) -> bool:
    """Whether a number may be bound to a channel (RFC 8656 §12)."""
    return CHANNEL_NUMBER_MIN <= number <= CHANNEL_NUMBER_MAX


def encode_channel_data(channel_number: int, data: bytes, *, stream: bool = False) -> bytes:
    """A ChannelData frame; ``stream=True`` pads it to four bytes for TCP/TLS."""
    if not is_valid_channel_number(channel_number):
        raise ValueError(f"channel number 0x{channel_number:04X} outside 0x4000-0x4FFF")
    if len(data) > 0xFFFF:
        raise ValueError("ChannelData payload longer than 65535 bytes")
    frame = _HEAD.pack(channel_number, len(data)) + data
    if stream and len(data) % 4:
        frame += b"\x00" * (-len(data) % 4)
    return frame


def decode_channel_data(frame: bytes | bytearray | memoryview) -> tuple[int, bytes]:
    """(channel number, application data) from one ChannelData frame.

    Accepts the frame with or without padding (up to three bytes beyond Length, as a TCP
    frame has or a UDP sender may add). Raises StunError if the channel number is outside
    0x4000-0x4FFF or the length does not fit.
    """
    if len(frame) < 4:
        raise StunError(f"ChannelData: {len(frame)} bytes, shorter than its header")
    channel_number, length = _HEAD.unpack_from(frame)
    if not is_valid_channel_number(channel_number):
        raise StunError(f"ChannelData: channel number 0x{channel_number:04X} is not a channel")
    available = len(frame) - 4
    if length > available:
        raise StunError(f"ChannelData: length {length} but {available} bytes follow")
    if available - length > 3:
        raise StunError(f"ChannelData: {available - length} bytes beyond length and padding")
    return channel_number, bytes(frame[4 : 4 + length])
