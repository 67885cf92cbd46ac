"""Carries out typed ng commands on the session engine and builds rtpengine-shaped replies.

The reply keys follow rtpengine's (``result``, ``sdp``, ``created``, ``last signal``, ``totals``,
``calls``, ``statistics``...), because proxies and monitoring scripts read them by name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from icerelay.control.ng.commands import (
    Answer,
    Command,
    Delete,
    List,
    MediaOptions,
    Offer,
    Ping,
    Query,
    Reply,
    ReplyValue,
    Statistics,
)
from icerelay.control.ng.protocol import command_counts, error_reply
from icerelay.counters import Counters
from icerelay.errors import ControlError, IcerelayError, RelayError
from icerelay.relay.sessions import (
    MediaRequest,
    RelayOptions,
    SessionEngine,
    SessionSummary,
    StreamRecord,
)

__all__ = ["DEFAULT_MAX_STREAMS", "NgHandler", "media_count", "relay_options", "reply_too_big"]

#: Media streams (m-lines) one offer or answer may carry: a video call has two or three, a
#: telepresence room a dozen; without a bound one request holds four relay ports per m-line.
DEFAULT_MAX_STREAMS = 32

# What a rewritten SDP may add per m-line (relay candidates, ICE credentials, a=rtcp) and once
# (o=, c=, the reply's own keys): measured at 85-190 bytes per m-line. The margin makes the
# estimate an upper bound in practice without refusing replies that would fit by much; a reply
# that still outgrows it is rolled back by the shell.
_REPLY_PER_STREAM = 256
_REPLY_FIXED = 512


def media_count(sdp: bytes) -> int:
    """How many m-lines ``sdp`` has (counted on the bytes, before any parsing)."""
    return sdp.count(b"\nm=") + sdp.startswith(b"m=")


def reply_too_big(size: int, limit: int) -> ControlError:
    """The refusal of a request whose reply would not fit in one datagram."""
    return ControlError(
        f"the reply ({size} bytes) would not fit in one UDP datagram of at most {limit} bytes:"
        " use ng over TCP, or fewer media streams",
        counter="reply_too_big",
        remote=True,
    )


def relay_options(options: MediaOptions) -> RelayOptions:
    """Map the ng spelling of the options onto the engine's."""
    family = {"IP4": 4, "IP6": 6}.get(options.address_family or "")
    return RelayOptions(
        replace_origin=bool({"origin", "origin-full"} & options.replace),
        replace_session_connection="session-connection" in options.replace,
        ice=options.ice,
        ice_priority=options.ice_priority,
        address_family=family,
        media_address=options.media_address,
        received_from=options.received_from[1] if options.received_from else None,
        sip_source_address=(
            True
            if "sip-source-address" in options.flags
            else False
            if "trust-address" in options.flags
            else None
        ),
        strict_source=True if options.strict_source else None,
        rtcp_mux=options.rtcp_mux,
    )


class NgHandler:
    """Runs ng commands against one :class:`SessionEngine`.

    :param counters: the protocol's counters (:attr:`NgProtocol.counters`), reported by
        ``statistics``; failures are counted there too.
    :param max_streams: m-lines an offer or answer may carry (more: ``error-reason``, counted
        as ``error.too_many_streams``, nothing allocated).
    """

    def __init__(
        self,
        engine: SessionEngine,
        counters: Counters | None = None,
        *,
        wall_offset: float = 0.0,
        service_statistics: Callable[[], Mapping[str, ReplyValue]] | None = None,
        max_streams: int = DEFAULT_MAX_STREAMS,
    ) -> None:
        self.engine = engine
        self.counters = counters
        self.max_streams = max_streams
        #: The shell's own counters (data plane, accounting, ...), reported by ``statistics``.
        self.service_statistics = service_statistics
        #: Added to the engine's (monotonic) times to give Unix times, which is what rtpengine
        #: reports and what monitoring scripts compute call ages from.
        self.wall_offset = wall_offset
        self._started: float | None = None
        # The engine's options for the last ng options seen: the usual options are one shared
        # value per spelling (commands._usual_options), so consecutive requests hit this.
        self._options: tuple[MediaOptions, RelayOptions] | None = None

    def handle(self, command: Command, now: float, *, max_reply: int | None = None) -> Reply:
        """The reply dictionary for ``command``; engine errors become ``error-reason``.

        ``max_reply``: the most bytes the reply may take (one UDP datagram); an offer or answer
        whose rewritten SDP could be larger is refused before anything is allocated.
        """
        if self._started is None:
            self._started = now
        try:
            if isinstance(command, Offer | Answer):
                self._check_size(command.sdp, max_reply)
            return self._dispatch(command, now)
        except IcerelayError as error:
            return error_reply(error, self.counters)

    def _check_size(self, sdp: bytes, max_reply: int | None) -> None:
        streams = media_count(sdp)
        if streams > self.max_streams:
            raise ControlError(
                f"too many media streams: {streams} (at most {self.max_streams} per call)",
                counter="too_many_streams",
                remote=True,
            )
        if max_reply is not None:
            estimate = len(sdp) + _REPLY_FIXED + _REPLY_PER_STREAM * streams
            if estimate > max_reply:
                raise reply_too_big(estimate, max_reply)

    def _dispatch(self, command: Command, now: float) -> Reply:
        engine = self.engine
        if isinstance(command, Ping):
            return {"result": "pong"}
        if isinstance(command, Offer | Answer):
            known = self._options
            if known is not None and known[0] is command.options:
                options = known[1]
            else:
                options = relay_options(command.options)
                self._options = (command.options, options)
            request = MediaRequest(
                call_id=command.call_id,
                from_tag=command.from_tag,
                sdp=command.sdp,
                to_tag=command.to_tag,
                via_branch=command.via_branch,
                options=options,
            )
            if isinstance(command, Offer):
                sdp = engine.offer(request, now)
            else:
                sdp = engine.answer(request, now)
            reply: Reply = {"result": "ok", "sdp": sdp}
            warning = _warning(command.options)
            if warning:
                reply["warning"] = warning
            return reply
        if isinstance(command, Delete):
            try:
                summaries = engine.delete(
                    command.call_id,
                    now,
                    from_tag=command.from_tag,
                    to_tag=command.to_tag,
                    via_branch=command.via_branch,
                    delay=None if command.delete_delay is None else float(command.delete_delay),
                )
            except RelayError as error:
                # A BYE for a call the relay already ended (a timeout, a crossed BYE) is
                # normal; like rtpengine, only the "fatal" flag makes it an error.
                if "fatal" in command.flags:
                    raise
                return {"result": "ok", "warning": str(error)}
            return {"result": "ok", **_call_report(summaries, self.wall_offset)}
        if isinstance(command, Query):
            summaries = engine.query(
                command.call_id, from_tag=command.from_tag, to_tag=command.to_tag
            )
            return {"result": "ok", **_call_report(summaries, self.wall_offset)}
        if isinstance(command, List):
            return {"result": "ok", "calls": engine.call_ids(command.limit)}
        if isinstance(command, Statistics):
            return {"result": "ok", "statistics": self._statistics(now)}
        raise AssertionError(f"unhandled command {command!r}")  # pragma: no cover

    def _statistics(self, now: float) -> Reply:
        engine = self.engine
        current: Reply = {
            "sessionsown": engine.session_count,
            "sessionstotal": engine.session_count,
            "calls": engine.call_count,
            "streams": engine.stream_count(),
            "portsused": engine.pool.in_use * 2,
            "portsfree": engine.pool.available * 2,
        }
        totals: Reply = {
            "uptime": int(now - (self._started or now)),
            "offers": engine.offers,
            "answers": engine.answers,
            "ended": {str(reason): count for reason, count in engine.ended_by_reason.items()},
        }
        if self.counters is not None:
            events = self.counters.events
            totals["requests"] = events["requests"]
            totals["retransmissions"] = events["retransmissions"]
            totals["errors"] = events["errors"]
            totals["commands"] = dict(command_counts(self.counters))
        reply: Reply = {"currentstatistics": current, "totalstatistics": totals}
        if self.service_statistics is not None:
            reply["service"] = dict(self.service_statistics())
        return reply


def _warning(options: MediaOptions) -> str:
    ignored = list(options.ignored)
    if options.transport_protocol is not None:
        # Translating RTP/AVP <-> RTP/SAVP(F) means doing SRTP, which this relay does not.
        ignored.append(f"transport-protocol={options.transport_protocol}")
    if not ignored:
        return ""
    return "not supported, ignored: " + ", ".join(ignored)


def _call_report(summaries: Iterable[SessionSummary], wall_offset: float) -> Reply:
    """rtpengine's per-call report: creation, last signal (Unix times), per-tag media, totals."""
    items = list(summaries)
    tags: dict[str, ReplyValue] = {}
    packets = bytes_ = rtcp = 0
    for summary in items:
        for side, tag in (("caller", summary.from_tag), ("callee", summary.to_tag)):
            if tag is None:
                continue
            tags[tag] = {
                "tag": tag,
                "medias": [_media(stream, side, summary.deleting) for stream in summary.streams],
            }
        for stream in summary.streams:
            packets += stream.packets_from_caller + stream.packets_from_callee
            bytes_ += stream.bytes_from_caller + stream.bytes_from_callee
            rtcp += stream.rtcp_packets_from_caller + stream.rtcp_packets_from_callee
    created = min(summary.created for summary in items) + wall_offset
    return {
        "created": int(created),
        "created_us": round(created % 1 * 1_000_000) % 1_000_000,
        "last signal": int(max(summary.last_signal for summary in items) + wall_offset),
        "tags": tags,
        # rtpengine reports both blocks; RTCP bytes are not counted by this data plane.
        "totals": {
            "RTP": {"packets": packets, "bytes": bytes_, "errors": 0},
            "RTCP": {"packets": rtcp, "bytes": 0, "errors": 0},
        },
    }


def _media(stream: StreamRecord, side: str, deleting: bool) -> Mapping[str, ReplyValue]:
    caller = side == "caller"
    address = stream.caller if caller else stream.callee
    latched = stream.caller_latched if caller else stream.callee_latched
    port = stream.relay_ports[0 if caller else 1]
    return {
        "index": stream.index + 1,
        "type": stream.media,
        "codec": stream.codec or "",
        "local port": port or 0,
        "advertised": str(address) if address else "",
        "endpoint": str(latched) if latched else "",
        "packets": stream.packets_from_caller if caller else stream.packets_from_callee,
        "bytes": stream.bytes_from_caller if caller else stream.bytes_from_callee,
        # A deleted call still relays during its grace period, but it is over for its parties.
        "state": (
            str(stream.end_reason) if stream.end_reason else "deleting" if deleting else "relaying"
        ),
        # What the relay carried of this party's media: relayed, direct (ICE went around the
        # relay for it) or none; a call relayed one way and direct the other says so here.
        "path": stream.path_from_caller if caller else stream.path_from_callee,
    }
