"""What the relay writes down about sessions and streams: end reasons, records, live summaries."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from icerelay.stun import Address

__all__ = [
    "SessionRecord",
    "SessionSummary",
    "StreamEndReason",
    "StreamRecord",
    "TerminationReason",
]


class TerminationReason(StrEnum):
    """Why a session ended (written into its record)."""

    DELETED = "deleted"
    NO_MEDIA = "no-media"
    HOLD_TIMEOUT = "hold-timeout"
    OFFER_TIMEOUT = "offer-timeout"
    MAX_DURATION = "max-duration"
    SHUTDOWN = "shutdown"
    #: The relay could not open the ports it had allocated (the data plane refused them).
    RELAY_FAILURE = "relay-failure"
    #: The relay process died (kill -9, power cut) while the call was up; written on the next
    #: start from the call's last checkpoint, with its last counters.
    INTERRUPTED = "interrupted"


class StreamEndReason(StrEnum):
    """Why one stream stopped being relayed while its session went on."""

    REJECTED = "rejected"
    DISABLED = "disabled"
    REMOVED = "removed"
    #: ICE selected a direct path between the parties: the relay stepped aside.
    ICE_DIRECT = "ice-direct-path"


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """Accounting of one stream: who sent how much, and where from."""

    index: int
    media: str
    codec: str | None
    caller: Address | None
    callee: Address | None
    caller_latched: Address | None
    callee_latched: Address | None
    packets_from_caller: int
    bytes_from_caller: int
    packets_from_callee: int
    bytes_from_callee: int
    relay_ports: tuple[int | None, int | None]
    end_reason: StreamEndReason | None
    rtcp_packets_from_caller: int = 0
    rtcp_packets_from_callee: int = 0
    # Step-aside (issue 11): per direction, what the relay carried (``relayed``, ``direct``:
    # ICE took another path, ``none``), and when the relay stepped aside (ICE went direct).
    path_from_caller: str = "none"
    path_from_callee: str = "none"
    stepped_aside: float | None = None


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """Accounting of one session, produced when it ends.

    ``ended`` is when the call ended for the parties: the ``delete`` (not the end of the grace
    period that follows it), the last media for a media or hold timeout, otherwise the moment
    the relay ended it. ``record_id`` names the session uniquely across restarts, so that a
    record delivered twice (a crash between the database's commit and the journal's) is
    stored once.
    """

    call_id: str
    from_tag: str
    to_tag: str | None
    via_branch: str | None
    created: float
    answered: float | None
    ended: float
    reason: TerminationReason
    streams: tuple[StreamRecord, ...]
    caller_user_agent: str | None = None
    callee_user_agent: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    record_id: str = ""

    @property
    def duration(self) -> float:
        """Seconds from the answer to the end (0 for a call never answered)."""
        return 0.0 if self.answered is None else max(0.0, self.ended - self.answered)


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """A live view of one session (for ``query`` and ``delete`` replies)."""

    call_id: str
    from_tag: str
    to_tag: str | None
    created: float
    last_signal: float
    answered: float | None
    streams: tuple[StreamRecord, ...]
    #: A ``delete`` was received; media still flows until its grace period is over.
    deleting: bool = False
