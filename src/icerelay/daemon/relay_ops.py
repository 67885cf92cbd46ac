"""What operators see of the media relay: views, totals, ICE decisions and the logs about them.

:class:`RelayOperations` hangs off a :class:`~icerelay.daemon.relay_service.RelayService`
(``service.ops``) and only reads its state, at the moment a page, a scrape or the once-a-second
watcher asks; the service calls it at three points (a forwarding removed, a stream ended, a
command answered). Nothing here runs per packet. Kept apart from the service so that the
service stays about serving, and so that operations can grow without touching it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from icerelay.control.mediaproxy.commands import MediaproxyRemove
from icerelay.control.mediaproxy.commands import parse_command as parse_mediaproxy
from icerelay.control.ng import ReplyValue
from icerelay.daemon.views import session_view
from icerelay.errors import ControlError
from icerelay.relay.forwarding import ForwardingCounters
from icerelay.relay.records import StreamEndReason

if TYPE_CHECKING:
    from icerelay.daemon.relay_service import RelayService

__all__ = ["RelayOperations", "log_command", "log_mediaproxy"]

logger = logging.getLogger("icerelay.relay")

# Seconds between two looks at the live forwardings for new latches and refused handovers (the
# data plane latches without telling the engine; one scan a second costs nothing per packet).
WATCH_INTERVAL = 1.0

# Prefix of per-reason refusal totals, and the reason latching counts a refused handover under.
_REFUSED = "refused:"
_HANDOVER_REFUSED = "handover-refused"

# Step-aside times kept for the live page, by stream key (oldest forgotten first).
_STEP_ASIDES_KEPT = 4096


class RelayOperations:
    """Views, totals and ICE-decision bookkeeping of one relay service."""

    def __init__(self, service: RelayService) -> None:
        self._service = service
        #: Packets, bytes, RTCP packets, drops (and ``refused:<reason>``) of forwardings already
        #: removed; live ones are read from the data plane when asked.
        self.relayed_totals: Counter[str] = Counter()
        #: ICE decisions: ``stepped_aside``, ``relay_selected``, ``handover_refused``.
        self.ice_decisions: Counter[str] = Counter()
        #: Wall-clock time of each step-aside, by stream key (live page, /api/sessions).
        self.step_asides: dict[str, float] = {}
        # What the watcher last saw per forwarding key and side: (rtp, rtcp, refused).
        self._seen_latches: dict[tuple[str, str], tuple[object, object, int]] = {}
        self._relay_selected: set[str] = set()

    # -- views --------------------------------------------------------------------------------

    def sessions_view(self, call_id: str | None = None) -> list[dict[str, Any]]:
        """Live sessions (of ``call_id`` only, when given) as JSON-ready dicts, oldest first."""
        service = self._service
        counters = service.dataplane.counters
        return [
            session_view(session, counters, service._wall_offset, self.step_asides)
            for session in service.engine.live_sessions()
            if call_id is None or session.call_id == call_id
        ]

    def _all_totals(self) -> Counter[str]:
        service = self._service
        totals = Counter(self.relayed_totals)
        for session in service.engine.live_sessions():
            for stream in session.streams:
                if stream.installed:
                    _add_counters(totals, service.dataplane.counters(stream.key))
        return totals

    def traffic_totals(self) -> dict[str, int]:
        """Packets, bytes, RTCP packets and drops relayed so far, live forwardings included."""
        totals = self._all_totals()
        return {key: totals[key] for key in ("packets", "bytes", "rtcp_packets", "dropped")}

    def refusal_totals(self) -> dict[str, int]:
        """Packets the latching policy refused so far, by reason (when the data plane counts
        them per reason: ``LegCounters.refusals``)."""
        return {
            key.removeprefix(_REFUSED): count
            for key, count in self._all_totals().items()
            if key.startswith(_REFUSED)
        }

    def accounting_figures(self) -> dict[str, int]:
        """Records written and lost, and records waiting in the accounting journal (read from
        the durable journal when the accounting writer has one: ``accounting.journal``)."""
        service = self._service
        figures = service._statistics()
        depth = 0
        journal = getattr(service.accounting, "journal", None)
        position = getattr(journal, "position", None)
        if callable(position):
            depth = int(getattr(position(), "pending", 0))
        return {
            "written": _as_int(figures.get("records_written")),
            "failed": _as_int(figures.get("records_failed")),
            "journal_depth": depth,
        }

    def statistics_view(self) -> dict[str, Any]:
        """The relay's figures for /api/statistics and ``icerelay ctl statistics``."""
        service = self._service
        engine = service.engine
        return {
            "sessions": engine.session_count,
            "calls": engine.call_count,
            "streams": engine.stream_count(),
            "offers": engine.offers,
            "answers": engine.answers,
            "ended": {str(k): v for k, v in engine.ended_by_reason.items()},
            "relayed": self.traffic_totals(),
            "refused": self.refusal_totals(),
            "ice_decisions": dict(self.ice_decisions),
            "ng": service.protocol.counters.snapshot(),
            **service._statistics(),
        }

    # -- hooks the service calls --------------------------------------------------------------

    def forwarding_gone(self, key: str, counters: ForwardingCounters | None) -> None:
        """A forwarding is about to be removed: keep its numbers in the totals."""
        _add_counters(self.relayed_totals, counters)
        self._relay_selected.discard(key)
        for side in ("caller", "callee"):
            self._seen_latches.pop((key, side), None)

    def stepped_aside(self, call_id: str, index: int) -> None:
        """The engine ended a stream because ICE went around the relay: log, count, remember."""
        self.ice_decisions["stepped_aside"] += 1
        now = time.time()
        for session in self._service.engine.live_sessions():
            if session.call_id != call_id:
                continue
            for stream in session.streams:
                if stream.index == index and stream.ended is StreamEndReason.ICE_DIRECT:
                    self.step_asides.setdefault(stream.key, now)
        while len(self.step_asides) > _STEP_ASIDES_KEPT:
            del self.step_asides[next(iter(self.step_asides))]
        logger.info("relay.stepped_aside", extra={"call_id": call_id, "index": index})

    # -- the watcher --------------------------------------------------------------------------

    def watch_latches(self) -> None:
        """Log each new latch and refused handover; count ICE pairs selected through the relay.

        The data plane latches on its own (per packet, without telling the engine), so the
        service looks at every live forwarding's counters once a second instead.
        """
        service = self._service
        for session in service.engine.live_sessions():
            for stream in session.streams:
                if not stream.installed:
                    continue
                counters = service.dataplane.counters(stream.key)
                if counters is None:
                    continue
                for side, leg in (("caller", counters.a), ("callee", counters.b)):
                    refused = int(getattr(leg, "refusals", {}).get(_HANDOVER_REFUSED, 0))
                    seen = (leg.latched_rtp, leg.latched_rtcp, refused)
                    before = self._seen_latches.get((stream.key, side))
                    if before == seen:
                        continue
                    self._seen_latches[(stream.key, side)] = seen
                    old_rtp = before[0] if before is not None else None
                    old_refused = before[2] if before is not None else 0
                    if leg.latched_rtp is not None and leg.latched_rtp != old_rtp:
                        logger.info(
                            "relay.latched",
                            extra={
                                "call_id": session.call_id,
                                "index": stream.index,
                                "side": side,
                                "source": str(leg.latched_rtp),
                                "previous": str(old_rtp) if old_rtp is not None else "-",
                            },
                        )
                    if refused > old_refused:
                        self.ice_decisions["handover_refused"] += refused - old_refused
                        logger.info(
                            "relay.handover_refused",
                            extra={
                                "call_id": session.call_id,
                                "index": stream.index,
                                "side": side,
                                "latched": str(leg.latched_rtp),
                                "refused": refused - old_refused,
                            },
                        )
                nominated = counters.a.last_nomination or counters.b.last_nomination
                if nominated is not None and stream.key not in self._relay_selected:
                    # An authenticated USE-CANDIDATE through the relay: ICE chose the relay pair.
                    self._relay_selected.add(stream.key)
                    self.ice_decisions["relay_selected"] += 1
                    logger.info(
                        "relay.ice_relay_selected",
                        extra={"call_id": session.call_id, "index": stream.index},
                    )

    async def watch(self) -> None:
        """Run :meth:`watch_latches` every :data:`WATCH_INTERVAL` seconds until cancelled."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            try:
                self.watch_latches()
            except Exception:
                logger.exception("relay.watch_error")


# -- command logs -------------------------------------------------------------------------------


def log_command(
    protocol: str,
    name: str,
    call_id: object,
    result: dict[str, ReplyValue],
    seconds: float,
    request_body: object,
) -> None:
    """One info line per control command: command, call-id, outcome, time taken; at debug
    level, a second line with the SDP (or MediaProxy request) in and the SDP out."""
    outcome = str(result.get("result", "ok"))
    fields: dict[str, object] = {
        "protocol": protocol,
        "command": name,
        "call_id": call_id if isinstance(call_id, str) else "-",
        "outcome": outcome,
        "ms": round(seconds * 1000, 2),
    }
    if outcome == "error":
        fields["reason"] = str(result.get("error-reason", ""))
    logger.info("relay.command", extra=fields)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "relay.command_sdp",
            extra={
                "command": name,
                "call_id": fields["call_id"],
                "sdp_in": _text(request_body),
                "sdp_out": _text(result.get("sdp")),
            },
        )


def log_mediaproxy(data: bytes, reply: bytes, seconds: float) -> None:
    """:func:`log_command` for a MediaProxy command and its reply line."""
    try:
        command = parse_mediaproxy(data)
        name = "remove" if isinstance(command, MediaproxyRemove) else "update"
        call_id: str | None = command.call_id
    except ControlError:
        name, call_id = "unknown", None
    text = reply.decode("utf-8", "replace").strip()
    outcome: dict[str, ReplyValue] = (
        {"result": "error", "error-reason": text} if text.startswith("error") else {"result": "ok"}
    )
    log_command("mediaproxy", name, call_id, outcome, seconds, data)


def _text(body: object) -> str:
    if isinstance(body, bytes):
        return body.decode("utf-8", "replace")
    return "" if body is None else str(body)


def _as_int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _add_counters(totals: Counter[str], counters: ForwardingCounters | None) -> None:
    if counters is None:
        return
    for leg in (counters.a, counters.b):
        totals["packets"] += leg.packets
        totals["bytes"] += leg.bytes
        totals["rtcp_packets"] += leg.rtcp_packets
        totals["dropped"] += leg.dropped
        # Per-reason refusals, where the data plane keeps them (latching's LegCounters.refusals).
        for reason, count in getattr(leg, "refusals", {}).items():
            totals[_REFUSED + str(reason)] += count
