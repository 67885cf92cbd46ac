"""Cutting MediaProxy dispatcher commands out of a UNIX stream socket's bytes."""

from __future__ import annotations

from icerelay.errors import ControlError

__all__ = ["MAX_COMMAND", "MediaproxyFramer"]

# Bounds a client that never sends the blank line from making the relay buffer without end.
MAX_COMMAND = 64 * 1024


class MediaproxyFramer:
    """Splits the byte stream of one connection into commands (each ends with an empty line)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the complete commands. ControlError: close the connection."""
        self._buffer += data
        commands = []
        while True:
            # Both CRLF (what the module sends) and bare LF (people typing into socat) end lines.
            ends = [
                i for i in (self._buffer.find(b"\r\n\r\n"), self._buffer.find(b"\n\n")) if i >= 0
            ]
            if not ends:
                break
            end = min(ends)
            size = 4 if self._buffer.startswith(b"\r\n\r\n", end) else 2
            command, self._buffer = self._buffer[:end], self._buffer[end + size :]
            if command.strip():
                commands.append(command)
        if len(self._buffer) > MAX_COMMAND:
            raise ControlError(f"command longer than {MAX_COMMAND} bytes without an empty line")
        return commands
