"""The one counter type: what a service or engine received, answered and dropped, by name.

Plain integers in a dict, because they are bumped on the hot path and read rarely (logs, the
metrics export). Names are stable strings: they become metric labels.
"""

from __future__ import annotations

from collections import Counter

__all__ = ["Counters"]


class Counters:
    """Named event counts plus drop counts by reason."""

    def __init__(self) -> None:
        self.events: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()

    def count(self, name: str, amount: int = 1) -> None:
        """Count an event (``"binding_requests"``, ``"error_responses"``, ...)."""
        self.events[name] += amount

    def drop(self, reason: str, amount: int = 1) -> None:
        """Count a dropped input (``reason`` is a stable name, often a StrEnum member)."""
        self.dropped[str(reason)] += amount

    def snapshot(self) -> dict[str, int]:
        """All counters, drops prefixed ``dropped.``, for logs and metrics."""
        data = dict(self.events)
        data.update({f"dropped.{k}": v for k, v in self.dropped.items()})
        return data
