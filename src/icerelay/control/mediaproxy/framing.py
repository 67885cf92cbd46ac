"""Cutting MediaProxy dispatcher commands out of a UNIX stream socket's bytes."""

from __future__ import annotations

from icerelay.errors import ControlError

__all__ = ["MAX_COMMAND", "MediaproxyFramer"]

# Bounds a client that never sends the blank line from making the relay buffer without end.
MAX_COMMAND = 64 * 1024


class MediaproxyFramer:
    """Splits the byte stream of one connection into commands (each ends with an empty line).

    Linear in the bytes received however they are split: a search resumes where the last one
    stopped (less the three bytes an end marker can straddle), and consumed commands are cut
    off once per :meth:`feed`.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        # Where the search for the end of the current command resumes.
        self._scanned = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the complete commands. ControlError: close the connection."""
        buffer = self._buffer
        buffer += data
        commands = []
        start = 0
        while True:
            # Both CRLF (what the module sends) and bare LF (people typing into socat) end
            # lines; the earliest "\n\n" or "\n\r\n" is the empty line.
            end = buffer.find(b"\n", max(start, self._scanned))
            found = -1
            while end >= 0:
                if buffer.startswith(b"\n", end + 1):
                    found, size = end, 2
                    break
                if buffer.startswith(b"\r\n", end + 1):
                    found, size = end, 3
                    break
                if end + 2 >= len(buffer):
                    break  # the marker may complete with the next bytes
                end = buffer.find(b"\n", end + 1)
            if found < 0:
                # Resume at the last newline that could still start a marker.
                self._scanned = end if end >= 0 else len(buffer)
                break
            command = bytes(buffer[start:found]).rstrip(b"\r")
            start = found + size
            self._scanned = start
            if command.strip():
                commands.append(command)
        if start:
            del buffer[:start]
            self._scanned -= start
        if len(buffer) > MAX_COMMAND:
            raise ControlError(f"command longer than {MAX_COMMAND} bytes without an empty line")
        return commands
