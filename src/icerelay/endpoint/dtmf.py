"""DTMF as RTP telephone-events (RFC 4733).

A payload is 4 bytes: event (0-9, 10 = ``*``, 11 = ``#``, 12-15 = A-D, 16 = flash), the E (end)
bit, the reserved bit, a volume in -dBm0 (0-63), and the duration so far in timestamp units.

Sending (section 2.5.1): every packet of one event has the timestamp of its start; the first has
the marker bit; updates follow each packet time with a growing duration; the end packet (E bit) is
sent three times, the same each time, so that the loss of one does not stretch the digit.
Receiving (section 2.5.2): an event is identified by its timestamp; repeats are ignored.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from icerelay.endpoint.errors import RtpError

EVENT_CODES = "0123456789*#ABCD"
"""Events 0-15 in order; 16 is flash (hook flash), reported as ``!``."""
FLASH = 16


def event_for(digit: str) -> int:
    """The RFC 4733 event number of a DTMF digit (``0-9 * # A-D``, ``!`` for flash)."""
    if digit == "!":
        return FLASH
    index = EVENT_CODES.find(digit.upper())
    if len(digit) != 1 or index < 0:
        raise RtpError(f"{digit!r} is not a DTMF digit")
    return index


def digit_for(event: int) -> str:
    if event == FLASH:
        return "!"
    if 0 <= event < len(EVENT_CODES):
        return EVENT_CODES[event]
    return "?"


@dataclass(frozen=True)
class TelephoneEvent:
    """One telephone-event payload."""

    event: int
    end: bool = False
    volume: int = 10
    duration: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.event <= 255 or not 0 <= self.volume <= 63:
            raise RtpError("telephone-event: event is 0-255 and volume 0-63")
        if not 0 <= self.duration <= 0xFFFF:
            raise RtpError("telephone-event duration is 16-bit")

    @property
    def digit(self) -> str:
        return digit_for(self.event)

    def encode(self) -> bytes:
        return struct.pack("!BBH", self.event, (0x80 if self.end else 0) | self.volume,
                           self.duration)

    @classmethod
    def decode(cls, payload: bytes) -> TelephoneEvent:
        if len(payload) < 4:
            raise RtpError(f"telephone-event payload of {len(payload)} bytes, expected 4")
        event, flags, duration = struct.unpack_from("!BBH", payload)
        return cls(event, bool(flags & 0x80), flags & 0x3F, duration)


class DtmfSender:
    """The packets of one digit, one call per packet time."""

    def __init__(self, digit: str, *, duration: float = 0.1, volume: int = 10,
                 samples_per_packet: int = 160, clock_rate: int = 8000,
                 end_repeats: int = 3) -> None:
        self.event = event_for(digit)
        self.volume = volume
        self.step = samples_per_packet
        self.total = max(samples_per_packet, min(0xFFFF, int(duration * clock_rate)))
        self._elapsed = 0
        self._ends_left = end_repeats
        self._first = True

    @property
    def done(self) -> bool:
        return self._ends_left <= 0

    def next_packet(self) -> bytes | None:
        """The next payload (None when the event is over); marker only on the first."""
        if self.done:
            return None
        self._elapsed = min(self.total, self._elapsed + self.step)
        end = self._elapsed >= self.total
        if end:
            self._ends_left -= 1
        return TelephoneEvent(self.event, end, self.volume, self._elapsed).encode()

    def first(self) -> bool:
        """True once: whether the packet about to go out needs the marker bit."""
        first, self._first = self._first, False
        return first


class DtmfReceiver:
    """Turns telephone-event packets into digits, once each (by start timestamp)."""

    def __init__(self) -> None:
        self._current: tuple[int, int] | None = None  # (start timestamp, event)
        self._ended: set[int] = set()
        self.digits: list[str] = []

    def receive(self, timestamp: int, payload: bytes) -> str | None:
        """The digit when an event ends (first end packet), else None.

        If every end packet of an event was lost, the event is reported when the next one starts
        (RFC 4733 section 2.5.2.2 lets the receiver end it then).
        """
        event = TelephoneEvent.decode(payload)
        if timestamp in self._ended:
            return None  # a repeated end packet or a late update
        reported = None
        if self._current is not None and self._current[0] != timestamp:
            reported = self._finish(self._current[0], self._current[1])
        self._current = (timestamp, event.event)
        if event.end:
            self._current = None
            return self._finish(timestamp, event.event)
        return reported

    def _finish(self, timestamp: int, event: int) -> str:
        self._ended.add(timestamp)
        if len(self._ended) > 64:  # keep only recent starts
            self._ended.discard(min(self._ended))
        digit = digit_for(event)
        self.digits.append(digit)
        return digit

