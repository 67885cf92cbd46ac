"""A CSPRNG for the control path that reads the kernel's entropy in blocks.

:class:`random.SystemRandom` makes one ``getrandom`` system call per draw; the relay draws three
to four times per call it sets up (random relay ports, ICE credentials), which profiled at ~7 us
each on the ng offer/answer path. :class:`BufferedSystemRandom` takes the same bytes from
``os.urandom`` a block at a time and hands them out in order, so every draw is still a fresh
slice of the kernel's CSPRNG output, never reused. Like SystemRandom it cannot be seeded.

Not for a process that forks after drawing (a child would repeat the parent's buffer); the relay
does not.
"""

from __future__ import annotations

import os
import random
from typing import Any, NoReturn

__all__ = ["BufferedSystemRandom"]

_BLOCK = 4096


class BufferedSystemRandom(random.Random):
    """:class:`random.SystemRandom` with ``os.urandom`` read in 4 KiB blocks."""

    def __init__(self) -> None:
        self._buffer = b""
        self._offset = 0
        super().__init__()

    def _bytes(self, count: int) -> bytes:
        if self._offset + count > len(self._buffer):
            self._buffer = os.urandom(max(_BLOCK, count))
            self._offset = 0
        start = self._offset
        self._offset = start + count
        return self._buffer[start : start + count]

    def random(self) -> float:
        """A float in [0, 1) from 53 random bits (as SystemRandom does)."""
        return (int.from_bytes(self._bytes(7), "big") >> 3) * 2.0**-53

    def getrandbits(self, k: int) -> int:
        """``k`` random bits."""
        if k < 0:
            raise ValueError("number of bits must be non-negative")
        if k == 0:
            return 0
        count = (k + 7) // 8
        return int.from_bytes(self._bytes(count), "big") >> (count * 8 - k)

    def randbytes(self, n: int) -> bytes:
        """``n`` random bytes."""
        return self._bytes(n)

    def seed(self, *args: Any, **kwds: Any) -> None:
        """Ignored, as for SystemRandom (there is no state to seed)."""

    def getstate(self) -> NoReturn:
        raise NotImplementedError("BufferedSystemRandom has no state")

    def setstate(self, state: Any) -> NoReturn:
        raise NotImplementedError("BufferedSystemRandom has no state")
