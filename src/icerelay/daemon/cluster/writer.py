"""What of this instance's calls must go to Redis: call documents, written only when changed.

A call document holds the snapshots of the call's sessions (:mod:`icerelay.relay.snapshot`),
the instance whose addresses and ports it uses (``origin``: this one, or the instance it was
adopted from), the journal position of its record when the accounting journal has one, and the
Unix time it was written. The writer keeps a cheap fingerprint per session -- what signalling,
timers and latching change -- and exports a session only when its fingerprint moved, or every
``counters_interval`` so that the counters in Redis stay fresh. All of this runs on the writer's
own schedule, never per packet.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from icerelay.relay.dialogs import Session
from icerelay.relay.sessions import SessionEngine
from icerelay.relay.snapshot import export_session

__all__ = ["CallWriter", "Changes", "EngineView"]


@dataclass(frozen=True, slots=True)
class EngineView:
    """An engine whose calls this instance writes, and the instance whose ports they use."""

    origin: str
    engine: SessionEngine


@dataclass(slots=True)
class Changes:
    """Call documents to write (Call-ID -> JSON) and Call-IDs that ended."""

    write: dict[str, str] = field(default_factory=dict)
    gone: list[str] = field(default_factory=list)


class CallWriter:
    """Tracks what was written; :meth:`changes` says what to write next.

    :param journal_position: the accounting journal's position for a Call-ID (records branch),
        stored in the document so an adopter can tell the record was not written yet.
    """

    def __init__(
        self,
        instance: str,
        *,
        counters_interval: float,
        journal_position: Callable[[str], object] | None = None,
    ) -> None:
        self.instance = instance
        self.counters_interval = counters_interval
        self.journal_position = journal_position
        # Per Call-ID: the fingerprint last written and when (Unix time).
        self._fingerprints: dict[str, object] = {}
        self._written_at: dict[str, float] = {}
        # Fingerprints of documents handed out by changes() and not yet confirmed.
        self._pending: dict[str, object] = {}

    @property
    def written(self) -> int:
        """Calls this instance believes are in Redis."""
        return len(self._fingerprints)

    def forget(self) -> None:
        """Write everything again next time (Redis lost data, or was unreachable)."""
        self._fingerprints.clear()
        self._written_at.clear()
        self._pending.clear()

    def changes(
        self,
        engines: Iterable[EngineView],
        now: float,
        wall_offset: float,
        *,
        refresh_budget: int | None = None,
    ) -> Changes:
        """What changed since :meth:`confirm` was last called; ``now`` is Unix time.

        At most ``refresh_budget`` unchanged calls are rewritten for fresh counters per call
        (an export costs ~0.15 ms: a thousand at once would stall the event loop that also
        relays media); the others wait for a later round.
        """
        out = Changes()
        live: set[str] = set()
        budget = refresh_budget if refresh_budget is not None else -1
        for view in engines:
            calls: dict[str, list[Session]] = {}
            for session in view.engine.live_sessions():
                calls.setdefault(session.call_id, []).append(session)
            for call_id, sessions in calls.items():
                live.add(call_id)
                fingerprint = (view.origin, tuple(_fingerprint(view.engine, s) for s in sessions))
                if self._fingerprints.get(call_id) == fingerprint:
                    due = now - self._written_at.get(call_id, now) >= self.counters_interval
                    if not due or budget == 0:
                        continue
                    budget -= 1
                out.write[call_id] = self.document(view, sessions, now, wall_offset)
                self._pending[call_id] = fingerprint
        out.gone = [call_id for call_id in self._fingerprints if call_id not in live]
        return out

    def document(
        self, view: EngineView, sessions: list[Session], now: float, wall_offset: float
    ) -> str:
        """The JSON document of one call."""
        engine = view.engine
        snapshots = [
            export_session(
                session,
                {stream.key: engine.stream_counters(stream) for stream in session.streams},
                wall_offset=wall_offset,
            )
            for session in sessions
        ]
        document: dict[str, Any] = {
            "origin": view.origin,
            "owner": self.instance,
            "written": now,
            "sessions": snapshots,
        }
        if self.journal_position is not None:
            document["journal"] = self.journal_position(sessions[0].call_id)
        return json.dumps(document, separators=(",", ":"))

    def note_written(self, call_id: str, live: bool, now: float) -> None:
        """A call was written (``live``) or removed outside :meth:`changes`: the next
        :meth:`changes` sees it as changed (a fresh fingerprint), or not at all."""
        self._pending.pop(call_id, None)
        self._fingerprints.pop(call_id, None)
        self._written_at.pop(call_id, None)
        if live:
            # Unknown fingerprint, so written again once by the periodic writer: harmless,
            # and it keeps the gone-detection knowing the call.
            self._fingerprints[call_id] = None
            self._written_at[call_id] = now

    def confirm(self, changes: Changes, now: float) -> None:
        """``changes`` reached Redis."""
        for call_id in changes.write:
            fingerprint = self._pending.pop(call_id, None)
            if fingerprint is not None:
                self._fingerprints[call_id] = fingerprint
                self._written_at[call_id] = now
        for call_id in changes.gone:
            self._fingerprints.pop(call_id, None)
            self._written_at.pop(call_id, None)


def _fingerprint(engine: SessionEngine, session: Session) -> object:
    """What signalling, timers and latching change in a session (cheap: no export)."""
    streams = []
    for stream in session.streams:
        counters = engine.stream_counters(stream) if stream.installed else None
        latched = (
            None
            if counters is None
            else (counters.a.latched_rtp, counters.b.latched_rtp, counters.a.latched_rtcp)
        )
        streams.append((stream.key, stream.installed, stream.ended, latched))
    return (
        session.id,
        tuple(session.tags),
        session.last_signal,
        session.pending,
        session.answered,
        session.delete_at,
        tuple(streams),
    )
