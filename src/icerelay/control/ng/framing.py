"""ng over a byte stream (TCP, a Unix socket): splitting it into messages, framing replies.

Two framings exist in the field and both are accepted per message: a length prefix
``<length>:<cookie> <dictionary>`` (the message as one bencode string), and the bare UDP form
``<cookie> <dictionary>``, whose end is where the bencoded (or JSON) dictionary ends.
"""

from __future__ import annotations

import re

from icerelay import bencode
from icerelay.errors import ControlError

__all__ = ["NgStreamFramer"]

_LENGTH_PREFIX = re.compile(rb"([0-9]{1,10}):")


def _unframable(reason: str) -> ControlError:
    # Nothing can be answered on a stream out of step: the connection is closed.
    return ControlError(reason, counter="unframable_stream", remote=True)


class NgStreamFramer:
    """Splits an ng byte stream (TCP) into messages, and frames replies the same way.

    Two framings exist in the field and both are accepted per message: a length prefix
    ``<length>:<cookie> <dictionary>`` (the message as one bencode string), and the bare UDP form
    ``<cookie> <dictionary>``, whose end is where the bencoded (or JSON) dictionary ends. A reply
    goes back in the framing of its request.

    :param max_message: a message longer than this is a protocol error: it bounds what a
        misbehaving client can make the relay buffer.
    """

    def __init__(self, max_message: int = 1 << 20) -> None:
        self.max_message = max_message
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bool]]:
        """Add received bytes; return the complete messages as (message, length_prefixed).

        Raises ControlError when the stream cannot be framed: the connection should be closed.
        """
        self._buffer += data
        messages: list[tuple[bytes, bool]] = []
        while True:
            # Line breaks between messages are tolerated (people test with netcat).
            while self._buffer and self._buffer[0] in b"\r\n ":
                del self._buffer[:1]
            if not self._buffer:
                break
            found = self._next()
            if found is None:
                if len(self._buffer) > self.max_message:
                    raise _unframable(f"message longer than {self.max_message} bytes")
                break
            message, length_prefixed, end = found
            del self._buffer[:end]
            messages.append((message, length_prefixed))
        return messages

    @staticmethod
    def frame(message: bytes, length_prefixed: bool) -> bytes:
        """Frame one reply for the stream."""
        if length_prefixed:
            return b"%d:%s" % (len(message), message)
        return message

    def _next(self) -> tuple[bytes, bool, int] | None:
        buffer = bytes(self._buffer)
        prefix = _LENGTH_PREFIX.match(buffer)
        if prefix is not None:
            length = int(prefix.group(1))
            if length > self.max_message:
                raise _unframable(f"message of {length} bytes is longer than {self.max_message}")
            start = prefix.end()
            if len(buffer) - start < length:
                return None
            return buffer[start : start + length], True, start + length
        space = buffer.find(b" ")
        if space < 0:
            if len(buffer) > 128:
                raise _unframable("stream does not start with a cookie")
            return None
        start = space + 1
        while start < len(buffer) and buffer[start] in b" \t":
            start += 1
        if start >= len(buffer):
            return None
        if buffer[start] == ord("{"):
            end = _json_object_end(buffer, start)
        else:
            try:
                _, end = bencode.decode_prefix(buffer, start)
            except bencode.IncompleteBencode:
                return None
        if end is None:
            return None
        return buffer[:end], False, end


def _json_object_end(buffer: bytes, start: int) -> int | None:
    """Offset just after the JSON object starting at ``start``, or None if it is incomplete."""
    depth = 0
    in_string = False
    escaped = False
    for index in range(start, len(buffer)):
        byte = buffer[index]
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in b"{[":
            depth += 1
        elif byte in b"}]":
            depth -= 1
            if depth == 0:
                return index + 1
    return None
