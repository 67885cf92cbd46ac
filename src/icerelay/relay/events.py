"""What the session engine asks of its driver: forwardings to install or remove, ends to record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from icerelay.relay.forwarding import Forwarding
from icerelay.relay.records import SessionRecord, StreamEndReason

__all__ = [
    "Event",
    "ForwardingInstalled",
    "ForwardingRemoved",
    "SessionDeleting",
    "SessionEnded",
    "StreamEnded",
]


@dataclass(frozen=True, slots=True)
class ForwardingInstalled:
    """Install or update a forwarding in the data plane."""

    forwarding: Forwarding


@dataclass(frozen=True, slots=True)
class ForwardingRemoved:
    """Remove the forwarding with this key from the data plane (its ports are free again)."""

    key: str


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """One stream stopped being relayed, the session goes on."""

    call_id: str
    from_tag: str
    to_tag: str | None
    index: int
    reason: StreamEndReason
    #: Step-aside: seconds between the relay pair's last use (check or media through the relay,
    #: an upper bound of when ICE completed elsewhere) and the relay freeing the ports.
    idle: float | None = None


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """A session ended; :attr:`record` is its accounting record."""

    record: SessionRecord


@dataclass(frozen=True, slots=True)
class SessionDeleting:
    """A session was deleted with a grace period: :attr:`record` is what it will be recorded
    as (reason ``deleted``, ended at the delete). A driver with a journal writes it down before
    it acknowledges the delete, so that a crash during the grace period still records the call
    as deleted."""

    record: SessionRecord


Event: TypeAlias = (
    ForwardingInstalled | ForwardingRemoved | StreamEnded | SessionDeleting | SessionEnded
)
