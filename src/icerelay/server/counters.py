"""Counters a service keeps about what it received, answered and dropped.

Plain integers in a dict, because they are bumped on the hot path and read rarely (logs today,
metrics export later). Names are stable strings: they will become metric labels.
"""

from __future__ import annotations

from collections import Counter
from enum import StrEnum


class DropReason(StrEnum):
    """Why an input was dropped without an answer."""

    #: Not a STUN message at all (first bits, length or magic cookie wrong).
    NOT_STUN = "not_stun"
    #: Looked like STUN but did not decode (bad attribute, overrun, ...).
    MALFORMED = "malformed"
    #: FINGERPRINT present and wrong: corrupted, or not meant for us.
    BAD_FINGERPRINT = "bad_fingerprint"
    #: A response (success or error) sent to a server.
    UNEXPECTED_RESPONSE = "unexpected_response"
    #: An indication of a method we do not handle (Binding indications are keepalives: counted
    #: apart, never a drop).
    UNSUPPORTED_INDICATION = "unsupported_indication"
    #: TURN ChannelData arriving at a STUN-only service.
    CHANNEL_DATA = "channel_data"
    #: A response could not be sent (socket error, unknown local address).
    SEND_FAILED = "send_failed"
    #: TCP stream that cannot be framed (first byte neither STUN nor ChannelData).
    UNFRAMEABLE_STREAM = "unframeable_stream"


class Counters:
    """Named event counts plus drop counts by :class:`DropReason`."""

    def __init__(self) -> None:
        self.events: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()

    def count(self, name: str, amount: int = 1) -> None:
        """Count an event (``"binding_requests"``, ``"error_responses"``, ...)."""
        self.events[name] += amount

    def drop(self, reason: DropReason) -> None:
        """Count a dropped input."""
        self.dropped[reason.value] += 1

    def snapshot(self) -> dict[str, int]:
        """All counters, drops prefixed ``dropped.``, for logs and metrics."""
        data = dict(self.events)
        data.update({f"dropped.{k}": v for k, v in self.dropped.items()})
        return data
