"""Cutting a TCP/TLS byte stream from a TURN server into STUN and ChannelData messages
(RFC 8656 §12.5, RFC 8489 §6.2.2).

Over UDP each datagram is one message. Over TCP and TLS the server sends one byte stream in which
STUN messages and ChannelData messages follow each other; the first two bits of each say which it
is (00: STUN, 01: ChannelData), and the length field says where it ends. On streams ChannelData
is padded to a multiple of four bytes so that the next message starts aligned.
"""

from __future__ import annotations

from icerelay.errors import StunError, TurnError
from icerelay.stun.demux import stream_frame_length


class StreamFramer:
    """Cuts a byte stream into whole STUN and ChannelData messages.

    Feed it whatever the socket returned (any split, several messages coalesced); it returns the
    complete messages (ChannelData with its padding, which the ChannelData decoder accepts) and
    keeps the rest. A first byte that is neither STUN nor ChannelData, or a STUN length that is
    not a whole number of 32-bit words, means the stream lost its framing: nothing after it can
    be trusted, so :meth:`feed` raises :class:`TurnError` and the framer stays broken.
    """

    __slots__ = ("_broken", "_buffer")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._broken = False

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a whole message."""
        return len(self._buffer)

    def feed(self, chunk: bytes) -> list[bytes]:
        """Append *chunk*; return every message it completed, in order."""
        if self._broken:
            raise TurnError("stream framing was lost earlier")
        buffer = self._buffer
        buffer += chunk
        frames: list[bytes] = []
        offset = 0
        while True:
            view = memoryview(buffer)[offset:]
            try:
                size = stream_frame_length(view)
            except (StunError, ValueError) as exc:
                view.release()
                self._broken = True
                raise TurnError(f"stream framing lost: {exc}") from None
            if size is not None and view[0] <= 3 and size % 4:
                # STUN bodies are whole words (RFC 8489 §5): any other length would leave us
                # reading the next message from the middle of this one.
                view.release()
                self._broken = True
                raise TurnError(
                    f"stream framing lost: STUN length {size - 20} is not a multiple of 4"
                )
            if size is None or len(view) < size:
                view.release()
                break
            frames.append(bytes(view[:size]))
            view.release()
            offset += size
        del buffer[:offset]
        return frames
