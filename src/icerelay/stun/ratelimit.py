"""At most one log line per source per interval, with a count of what was suppressed.

Hostile or broken peers can send thousands of bad packets a second; logging each would turn
them into a disk-filling attack. Time is passed in, so the limiter is exact under tests.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class LogLimiter:
    """Decides whether something about ``key`` (usually the source IP) may be logged now."""

    def __init__(self, interval: float, max_keys: int = 4096) -> None:
        self.interval = interval
        self.max_keys = max_keys
        # key -> (time of last log line, events suppressed since); oldest first.
        self._entries: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()

    def allow(self, key: Hashable, now: float) -> int | None:
        """None if the caller must stay quiet; otherwise how many events about ``key`` were
        suppressed since its last log line (0 the first time)."""
        entry = self._entries.get(key)
        if entry is not None:
            last, suppressed = entry
            if now - last < self.interval:
                self._entries[key] = (last, suppressed + 1)
                return None
            del self._entries[key]
            self._remember(key, now)
            return suppressed
        self._remember(key, now)
        return 0

    def _remember(self, key: Hashable, now: float) -> None:
        # Bounded memory: a flood from many spoofed sources evicts the oldest entries, which at
        # worst means an extra log line for a source we forgot.
        while len(self._entries) >= self.max_keys:
            self._entries.popitem(last=False)
        self._entries[key] = (now, 0)
