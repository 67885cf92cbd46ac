"""ng over a byte stream (TCP, a Unix socket): splitting it into messages, framing replies.

Two framings exist in the field and both are accepted per message: a length prefix
``<length>:<cookie> <dictionary>`` (the message as one bencode string), and the bare UDP form
``<cookie> <dictionary>``, whose end is where the bencoded (or JSON) dictionary ends.
"""

from __future__ import annotations

import re
from enum import Enum

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

    Linear in the bytes received, however they are split: the scan of an incomplete message
    resumes where the last read stopped instead of starting over (a client sending a large
    message a byte at a time once made the relay rescan it on every read), and consumed
    messages are cut off the buffer once per :meth:`feed`.

    :param max_message: a message longer than this is a protocol error: it bounds what a
        misbehaving client can make the relay buffer.
    """

    def __init__(self, max_message: int = 1 << 20) -> None:
        self.max_message = max_message
        self._buffer = bytearray()
        # Where the message being framed starts in the buffer, and the scan of its body.
        self._start = 0
        self._scan: _Scan | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for the message not yet complete."""
        return len(self._buffer) - self._start

    def feed(self, data: bytes) -> list[tuple[bytes, bool]]:
        """Add received bytes; return the complete messages as (message, length_prefixed).

        Raises ControlError when the stream cannot be framed: the connection should be closed.
        """
        buffer = self._buffer
        buffer += data
        messages: list[tuple[bytes, bool]] = []
        while True:
            if self._scan is None:
                # Line breaks between messages are tolerated (people test with netcat).
                while self._start < len(buffer) and buffer[self._start] in b"\r\n ":
                    self._start += 1
                if self._start == len(buffer):
                    break
            found = self._next()
            if found is None:
                if len(buffer) - self._start > self.max_message:
                    raise _unframable(f"message longer than {self.max_message} bytes")
                break
            end, length_prefixed, body = found
            messages.append((bytes(buffer[body:end]), length_prefixed))
            self._start = end
            self._scan = None
        if self._start:
            del buffer[: self._start]
            if self._scan is not None:
                self._scan.rebase(self._start)
            self._start = 0
        return messages

    @staticmethod
    def frame(message: bytes, length_prefixed: bool) -> bytes:
        """Frame one reply for the stream."""
        if length_prefixed:
            return b"%d:%s" % (len(message), message)
        return message

    def _next(self) -> tuple[int, bool, int] | None:
        """(end, length_prefixed, start of the message) of the next complete message."""
        buffer, start = self._buffer, self._start
        scan = self._scan
        if scan is None:
            prefix = _LENGTH_PREFIX.match(buffer, start)
            if prefix is not None:
                length = int(prefix.group(1))
                if length > self.max_message:
                    raise _unframable(
                        f"message of {length} bytes is longer than {self.max_message}"
                    )
                scan = self._scan = _Scan(_Kind.LENGTH, prefix.end(), length=length)
            else:
                space = buffer.find(b" ", start, start + _MAX_COOKIE + 1)
                if space < 0:
                    if len(buffer) - start > _MAX_COOKIE:
                        raise _unframable("stream does not start with a cookie")
                    return None
                body = space + 1
                while body < len(buffer) and buffer[body] in b" \t":
                    body += 1
                if body >= len(buffer):
                    return None
                kind = _Kind.JSON if buffer[body] == ord("{") else _Kind.BENCODE
                scan = self._scan = _Scan(kind, body)
        end = scan.advance(buffer)
        if end is None:
            return None
        if scan.kind is _Kind.LENGTH:
            return end, True, scan.position_of_body
        return end, False, start


_MAX_COOKIE = 128
# Digits of a bencoded string length or integer: more than this is no ng message.
_MAX_DIGITS = 12

_JSON_OUTSIDE = re.compile(rb'[{}\[\]"]')
_JSON_INSIDE = re.compile(rb'["\\]')


class _Kind(Enum):
    LENGTH = "length"
    JSON = "json"
    BENCODE = "bencode"


class _Scan:
    """The resumable scan of one message body: where it stopped and what it was inside."""

    def __init__(self, kind: _Kind, body: int, *, length: int = 0) -> None:
        self.kind = kind
        self.body = body
        self.position = body
        self.length = length
        self.depth = 0
        self.in_string = False

    @property
    def position_of_body(self) -> int:
        return self.body

    def rebase(self, removed: int) -> None:
        """The buffer lost its first ``removed`` bytes."""
        self.body -= removed
        self.position -= removed

    def advance(self, buffer: bytearray) -> int | None:
        """Scan on from where the last call stopped; the end offset when the body is whole."""
        if self.kind is _Kind.LENGTH:
            end = self.body + self.length
            return end if len(buffer) >= end else None
        if self.kind is _Kind.JSON:
            return self._json(buffer)
        return self._bencode(buffer)

    def _json(self, buffer: bytearray) -> int | None:
        position = self.position
        while True:
            if self.in_string:
                found = _JSON_INSIDE.search(buffer, position)
                if found is None:
                    self.position = len(buffer)
                    return None
                index = found.start()
                if buffer[index] == 0x5C:  # backslash: the next byte is escaped
                    if index + 1 >= len(buffer):
                        self.position = index  # resume at the backslash
                        return None
                    position = index + 2
                    continue
                self.in_string = False
                position = index + 1
                continue
            found = _JSON_OUTSIDE.search(buffer, position)
            if found is None:
                self.position = len(buffer)
                return None
            index = found.start()
            byte = buffer[index]
            position = index + 1
            if byte == 0x22:
                self.in_string = True
            elif byte in b"{[":
                self.depth += 1
            else:
                self.depth -= 1
                if self.depth <= 0:
                    return position

    def _bencode(self, buffer: bytearray) -> int | None:
        position = self.position
        size = len(buffer)
        while position < size:
            byte = buffer[position]
            if byte in b"dl":
                self.depth += 1
                position += 1
                continue
            if byte == 0x65:  # e
                self.depth -= 1
                position += 1
                if self.depth < 0:
                    raise _unframable("bencode: 'e' closes nothing")
            elif byte == 0x69:  # i
                end = buffer.find(b"e", position + 1, position + 2 + _MAX_DIGITS)
                if end < 0:
                    if size - position > _MAX_DIGITS + 1:
                        raise _unframable("bencode: an integer too long to be one")
                    break
                position = end + 1
            elif 0x30 <= byte <= 0x39:
                colon = buffer.find(b":", position, position + _MAX_DIGITS + 1)
                if colon < 0:
                    if size - position > _MAX_DIGITS:
                        raise _unframable("bencode: a string length too long to be one")
                    break
                digits = bytes(buffer[position:colon])
                if not digits.isdigit():
                    raise _unframable("bencode: a string length is not a number")
                end = colon + 1 + int(digits)
                if end > size:
                    break  # resume at the length: at most a dozen bytes are read again
                position = end
            else:
                raise _unframable(f"not bencode: byte {bytes([byte])!r} where a value starts")
            if self.depth == 0:
                return position
        self.position = position
        return None
