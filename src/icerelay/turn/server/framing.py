"""Cutting a TCP/TLS byte stream into TURN frames (RFC 8656 §12.5, RFC 8489 §6.2.2).

Over a stream a client sends STUN messages (20-byte header with a length) and ChannelData
messages (4-byte header with a length, padded to a multiple of four bytes over streams) back to
back. The first byte tells them apart: 0b00 STUN, 0x40-0x7F ChannelData (RFC 5766's range; the
engine decides which channel numbers it accepts). Anything else means the
stream is not TURN (or lost sync), and the connection must be closed: there is no way to
resynchronise a stream.
"""

from __future__ import annotations

from icerelay.errors import TurnError

_STUN_HEADER = 20
_MAX_BUFFER = 65536 + _STUN_HEADER


class StreamFramer:
    """Accumulates bytes and returns whole frames (without ChannelData padding).

    A stream must start with a STUN message (there is no channel before an Allocate): this
    stops an HTTP or TLS probe, whose first letters fall in the ChannelData range, from
    holding a connection open while the framer waits for a huge "ChannelData" length.
    """

    __slots__ = ("_buffer", "_seen_stun")

    def __init__(self) -> None:
        self._buffer = b""
        self._seen_stun = False

    def feed(self, data: bytes) -> list[bytes]:
        """Add *data*; return every complete frame. Raises TurnError when the stream is garbage."""
        buffer = self._buffer + data if self._buffer else data
        frames: list[bytes] = []
        offset = 0
        size = len(buffer)
        while size - offset >= 4:
            first = buffer[offset]
            length = buffer[offset + 2] << 8 | buffer[offset + 3]
            if first < 0x04:
                self._seen_stun = True
                if length & 3:
                    raise TurnError("STUN length not a multiple of 4 on a stream")
                total = _STUN_HEADER + length
                end = offset + total
            elif 0x40 <= first <= 0x7F and self._seen_stun:
                total = 4 + length
                end = offset + total + (-length & 3)
                if size < end:
                    break
                frames.append(buffer[offset : offset + total])
                offset = end
                continue
            else:
                raise TurnError(f"not a TURN stream (first byte 0x{first:02x})")
            if size < end:
                break
            frames.append(buffer[offset:end])
            offset = end
        self._buffer = buffer[offset:]
        if len(self._buffer) > _MAX_BUFFER:
            raise TurnError("frame too large")
        return frames
