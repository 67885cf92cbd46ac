"""The relay's session engine, sans-I/O: calls, their media streams, ports, plans and timeouts.

A SIP proxy hands the engine every offer and answer of a call (through a control protocol). The
engine gives each media stream a port pair facing each party, says where each party must send
(a :class:`~.plans.SessionPlan`), and tells the data plane what to forward (as events). It never
touches a socket, a clock or a random source of its own: time is passed in, randomness comes
from the injected ``rng``, and the data plane's counters are read through a callable.

The core is :meth:`SessionEngine.update`, which takes typed :class:`~.plans.StreamOffer` values.
SDP is handled at the edge: :meth:`SessionEngine.offer` and :meth:`SessionEngine.answer` describe
an SDP body into stream offers, run the core, and rewrite the body from the plan (:mod:`.rewrite`).
Sessions are found by :mod:`.dialogs`, per-stream decisions are made in :mod:`.streams`.

Timeouts (each ends the session with a named :class:`TerminationReason`): no media for
``media_timeout`` seconds after the answer; ``hold_timeout`` instead while every stream is on hold;
an offer never answered within ``offer_timeout``; ``max_duration`` since the first offer; and the
grace period a ``delete`` asks for, during which media still flows (the BYE's 200 OK and late
RTCP are not cut off).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

from icerelay.errors import RelayError, SdpError
from icerelay.relay import fastlane, stepaside
from icerelay.relay import streams as planning
from icerelay.relay.candidates import candidates_to_add
from icerelay.relay.dialogs import DialogRef, Dialogs, Session, describe_call
from icerelay.relay.events import (
    Event,
    ForwardingInstalled,
    ForwardingRemoved,
    SessionDeleting,
    SessionEnded,
    StreamEnded,
)
from icerelay.relay.forwarding import ForwardingCounters
from icerelay.relay.options import RelayConfig, RelayOptions
from icerelay.relay.plans import Exchange, SessionPlan, StreamOffer, StreamPlan
from icerelay.relay.policy import IceMode, IcePriority
from icerelay.relay.ports import PortPair, PortPool
from icerelay.relay.records import (
    SessionRecord,
    SessionSummary,
    StreamEndReason,
    StreamRecord,
    TerminationReason,
)
from icerelay.relay.rewrite import apply_plan, describe
from icerelay.relay.streams import A, B, Stream
from icerelay.sdp import SessionDescription

if TYPE_CHECKING:
    from random import Random

__all__ = [
    "CounterSource",
    "DialogRef",
    "Event",
    "Exchange",
    "ForwardingInstalled",
    "ForwardingRemoved",
    "MediaRequest",
    "RelayConfig",
    "RelayOptions",
    "SessionDeleting",
    "SessionEnded",
    "SessionEngine",
    "SessionPlan",
    "SessionRecord",
    "SessionSummary",
    "StreamEndReason",
    "StreamEnded",
    "StreamOffer",
    "StreamPlan",
    "StreamRecord",
    "TerminationReason",
]

#: Reads the data plane's counters for a forwarding key (None: unknown key).
CounterSource: TypeAlias = Callable[[str], ForwardingCounters | None]


@dataclass(frozen=True, slots=True)
class MediaRequest:
    """An SDP offer or answer: identifiers, the SDP body and options."""

    call_id: str
    from_tag: str
    sdp: bytes
    to_tag: str | None = None
    via_branch: str | None = None
    options: RelayOptions = field(default_factory=RelayOptions)
    #: The sending party's User-Agent, when the control protocol passes it (mediaproxy does).
    user_agent: str | None = None
    #: Call facts for the accounting record (``from_uri``, ``to_uri``, ``dialog_id``...); later
    #: requests add to or overwrite earlier values.
    metadata: tuple[tuple[str, str], ...] = ()

    @property
    def dialog(self) -> DialogRef:
        """The request's place in its call."""
        return DialogRef(self.call_id, self.from_tag, self.to_tag, self.via_branch)


class SessionEngine:
    """Sans-I/O media relay engine (see the module docstring).

    :param pool: where stream ports come from; the engine returns every pair it takes.
    :param counters: reads the data plane's counters of a forwarding; used for media timeouts
        and for the final numbers of accounting records. Without it the engine sees no media.
    :param rng: source of the relay's ICE credentials (``ICE=force``); a
        :class:`random.SystemRandom` in production, a seeded :class:`random.Random` in tests.
    :param record_prefix: put before a new session's number to make its record's
        ``record_id``; the driver makes it unique per process start. A restored session keeps
        the id its snapshot carries (the call's first engine chose it).
    """

    def __init__(
        self,
        config: RelayConfig,
        pool: PortPool,
        *,
        rng: Random,
        counters: CounterSource | None = None,
        record_prefix: str = "",
    ) -> None:
        self.config = config
        self.record_prefix = record_prefix
        self.pool = pool
        self._rng = rng
        self._counters: CounterSource = counters if counters is not None else (lambda key: None)
        self._dialogs = Dialogs()
        self._timers: list[tuple[float, int]] = []
        self._events: deque[Event] = deque()
        self._active_streams = 0
        self.ended_by_reason: dict[TerminationReason, int] = dict.fromkeys(TerminationReason, 0)
        self.offers = 0
        self.answers = 0
        # The time of the request or timer being handled (step-aside needs it deep in _plan).
        self._now = 0.0
        #: Streams the relay left because ICE went around it (:mod:`.stepaside`).
        self.stepped_aside = 0

    # -- the structured core ------------------------------------------------------------------

    def update(
        self,
        dialog: DialogRef,
        exchange: Exchange,
        streams: Sequence[StreamOffer],
        now: float,
        *,
        options: RelayOptions | None = None,
        user_agent: str | None = None,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> SessionPlan:
        """Process the streams of an offer or an answer sent by ``dialog.from_tag``.

        Returns, per stream, where the other party must send (None: leave the stream as the
        sender wrote it). Forwardings to install or remove are queued as events. RelayError if
        the request does not fit (an answer for an unknown call, no ports left...); nothing
        changes then.
        """
        return self._update(
            dialog, exchange, streams, now, options or RelayOptions(), user_agent, metadata, None
        )

    # -- SDP at the edge ----------------------------------------------------------------------

    def offer(self, request: MediaRequest, now: float) -> bytes:
        """Process an SDP offer; return the SDP to forward (pointing at the relay)."""
        return self._sdp(request, Exchange.OFFER, now)

    def answer(self, request: MediaRequest, now: float) -> bytes:
        """Process an SDP answer; return the SDP to forward to the offerer."""
        if request.to_tag is None:
            raise RelayError("an answer needs a to-tag")
        return self._sdp(request, Exchange.ANSWER, now)

    def _sdp(self, request: MediaRequest, exchange: Exchange, now: float) -> bytes:
        simple = fastlane.read(request.sdp)
        sdp: SessionDescription | None = None
        if simple is not None:
            # A simple body (no ICE, CRLF, single spaces): read and rewritten on its lines,
            # with the same outcome as the general model's (see fastlane).
            offers = simple.offers
        else:
            sdp = _parse(request.sdp)
            try:
                offers = describe(sdp)
            except SdpError as error:
                raise RelayError(f"cannot rewrite the SDP: {error}") from None
        bodies: list[bytes] = []

        def write(plan: SessionPlan) -> None:
            nonlocal sdp
            if sdp is None:
                assert simple is not None
                body = simple.write(plan, request.options)
                if body is not None:
                    bodies.append(body)
                    return
                # A plan only the general path writes (ICE=force or force-relay, a new c= line).
                sdp = _parse(request.sdp)
            # In place: the parsed body serves nothing else once described.
            bodies.append(apply_plan(sdp, plan, request.options, in_place=True, offers=offers))

        self._update(
            request.dialog,
            exchange,
            offers,
            now,
            request.options,
            request.user_agent,
            request.metadata,
            write,
        )
        return bodies[0]

    # -- ending and looking up ----------------------------------------------------------------

    def delete(
        self,
        call_id: str,
        now: float,
        *,
        from_tag: str | None = None,
        to_tag: str | None = None,
        via_branch: str | None = None,
        delay: float | None = None,
        reason: TerminationReason = TerminationReason.DELETED,
    ) -> list[SessionSummary]:
        """End the matching sessions after ``delay`` seconds (None: the configured default).

        Without tags every session of the call matches. Returns a summary of each matched
        session as it is now; RelayError if nothing matches. ``reason`` is what the record
        says when the session ends right away (``delay`` 0).

        The call ends for its record now: the grace period is not part of its duration, and
        whatever ends the session during it (shutdown, a timeout) leaves it ``deleted``. A
        :class:`SessionDeleting` event carries the record-to-be of a session kept for a grace
        period.
        """
        matched = self._dialogs.matching(call_id, from_tag, to_tag, via_branch)
        if not matched:
            raise RelayError(f"unknown call {describe_call(call_id, from_tag, to_tag)}")
        wait = self.config.delete_delay if delay is None else delay
        for session in matched:
            session.last_signal = now
            if reason is TerminationReason.DELETED and session.deleted_at is None:
                session.deleted_at = now
            if wait > 0:
                deadline = now + wait
                if session.delete_at is None or deadline < session.delete_at:
                    session.delete_at = deadline
        summaries = [self._summary(session) for session in matched]
        for session in matched:
            if wait <= 0:
                self._end(session, reason, now)
            else:
                self._schedule(session, now)
                self._events.append(SessionDeleting(self._record(session, reason, now)))
        return summaries

    def discard(
        self, call_id: str, now: float, reason: TerminationReason, *, from_tag: str | None = None
    ) -> list[SessionRecord]:
        """End the matching sessions at once without recording them; return their records.

        For a driver that retries a failed request: only the outcome of its last attempt is
        handed to :meth:`account` (one call, one record).
        """
        matched = self._dialogs.matching(call_id, from_tag, None, None)
        return [self._end(session, reason, now, record=False) for session in matched]

    def account(self, record: SessionRecord) -> None:
        """Record ``record`` (from :meth:`discard`) as if its session had just ended."""
        self.ended_by_reason[record.reason] += 1
        self._events.append(SessionEnded(record))

    def query(
        self, call_id: str, *, from_tag: str | None = None, to_tag: str | None = None
    ) -> list[SessionSummary]:
        """Summaries of the matching live sessions; RelayError if the call is unknown."""
        matched = [
            self._summary(session) for session in self._dialogs.matching(call_id, from_tag, to_tag)
        ]
        if not matched:
            raise RelayError(f"unknown call {describe_call(call_id, from_tag, to_tag)}")
        return matched

    def awaits_answer_from(self, call_id: str, tag: str) -> bool:
        """True if a session of ``call_id`` has an open offer that the party ``tag`` must answer.

        A control protocol that does not say "offer" or "answer" (mediaproxy says "request" or
        "reply") uses this to recognise a late offer's answer (the SDP in an ACK).
        """
        return self._dialogs.awaits_answer_from(call_id, tag)

    def has_call(self, call_id: str) -> bool:
        """True if the engine has a live session of ``call_id``."""
        return call_id in self._dialogs.calls

    def call_ids(self, limit: int | None = None) -> list[str]:
        """Call-IDs of live calls, oldest first, at most ``limit``."""
        ids = list(self._dialogs.calls)
        return ids if limit is None else ids[:limit]

    # -- snapshots (cluster failover, :mod:`.snapshot`) ---------------------------------------

    def live_sessions(self) -> list[Session]:
        """The live sessions, for :func:`~.snapshot.export_session` (read them, do not change)."""
        return list(self._dialogs)

    def stream_counters(self, stream: Stream) -> ForwardingCounters | None:
        """A stream's counters: the data plane's while installed, its final ones after."""
        return self._counters(stream.key) if stream.installed else stream.final

    def restore(self, session: Session, now: float) -> None:
        """Take over a session rebuilt by :func:`~.snapshot.restore_session`.

        Its port pairs are reserved in this engine's pool, it gets a new id (stream keys
        follow, so they cannot collide with this engine's), its installed streams are installed
        again (events) and its timers run from here. RelayError if a pair is taken or the call
        already has a session with these tags; nothing changes then.
        """
        for existing in self._dialogs.matching(session.call_id):
            if existing.tags == session.tags and existing.via_branch == session.via_branch:
                raise RelayError(f"session {describe_call(session.call_id, *session.tags)} exists")
        reserved: list[PortPair] = []
        try:
            for stream in session.streams:
                for pair in stream.ports:
                    if pair is not None:
                        self.pool.reserve(pair)
                        reserved.append(pair)
        except RelayError:
            for pair in reserved:
                self.pool.release(pair)
            raise
        self._dialogs.add(session)
        if not session.record_id:
            # A snapshot from before record ids were carried: an id of this engine's.
            session.record_id = f"{self.record_prefix}{session.id}"
        session.ended = False
        session.scheduled = None
        for stream in session.streams:
            generation = stream.key.count("+")
            stream.key = f"{session.id}.{stream.index}" + "+" * generation
            if stream.ports[A] is not None or stream.ports[B] is not None:
                self._active_streams += 1
            if stream.installed and stream.ended is None:
                self._install(session, stream)
        self._schedule(session, now)

    def shutdown(self, now: float) -> None:
        """End every session (reason ``shutdown``, ``deleted`` for those already deleted), so
        that records are written and ports freed."""
        for session in self._dialogs:
            self._end(session, TerminationReason.SHUTDOWN, now)

    def snapshot(
        self, now: float, call_ids: Iterable[str] | None = None
    ) -> list[SessionRecord]:
        """The record each live session (of ``call_ids``, default all) would get if the relay
        died now: reason ``interrupted`` (``deleted`` once deleted), with the counters as they
        are. A driver checkpoints these so that a crash loses no call; with many calls it asks
        for a slice at a time (unknown Call-IDs, calls ended meanwhile, are skipped)."""
        if call_ids is None:
            sessions: Iterable[Session] = self._dialogs
        else:
            calls = self._dialogs.calls
            sessions = [s for call_id in call_ids for s in calls.get(call_id, ())]
        return [self._record(session, TerminationReason.INTERRUPTED, now) for session in sessions]

    @property
    def session_count(self) -> int:
        """Live sessions."""
        return len(self._dialogs)

    @property
    def call_count(self) -> int:
        """Live calls (Call-IDs)."""
        return len(self._dialogs.calls)

    def stream_count(self) -> int:
        """Streams currently relayed (each holds two port pairs)."""
        return self._active_streams

    # -- timers and events --------------------------------------------------------------------

    def next_timer(self) -> float | None:
        """The earliest time :meth:`handle_timer` has something to check, or None."""
        while self._timers:
            deadline, session_id = self._timers[0]
            session = self._dialogs.by_id.get(session_id)
            if session is not None and session.scheduled == deadline:
                return deadline
            heapq.heappop(self._timers)
        return None

    def handle_timer(self, now: float) -> None:
        """End every session whose deadline has passed (media activity is read afresh), and
        step aside from streams whose ICE went around the relay."""
        self._now = now
        self.pool.expire(now)
        while self._timers and self._timers[0][0] <= now:
            deadline, session_id = heapq.heappop(self._timers)
            session = self._dialogs.by_id.get(session_id)
            if session is None or session.scheduled != deadline:
                continue
            session.scheduled = None
            self._step_aside(session, now)
            due, reason = self._deadline(session)
            if due is not None and due <= now and reason is TerminationReason.NO_MEDIA:
                # Silence on a stream whose ICE checks crossed the relay means ICE picked a
                # path around it (a pair through the relay would carry media, or at least
                # consent checks): step aside instead of ending the call.
                stepped_aside = False
                for stream in session.streams:
                    if stream.ended is None and planning.ice_went_around(
                        stream, self._counters(stream.key)
                    ):
                        self._end_stream(session, stream, StreamEndReason.ICE_DIRECT)
                        stepped_aside = True
                if stepped_aside:
                    due, reason = self._deadline(session)
            if due is not None and due <= now and reason is not None:
                self._end(session, reason, now)
            else:
                self._schedule(session, now)

    def next_event(self) -> Event | None:
        """The oldest event not yet taken, or None."""
        return self._events.popleft() if self._events else None

    # -- internals: offer/answer processing ---------------------------------------------------

    def _update(
        self,
        dialog: DialogRef,
        exchange: Exchange,
        streams: Sequence[StreamOffer],
        now: float,
        options: RelayOptions,
        user_agent: str | None,
        metadata: tuple[tuple[str, str], ...],
        finish: Callable[[SessionPlan], None] | None,
    ) -> SessionPlan:
        """:meth:`update`; ``finish`` (the SDP rewrite) runs before anything is installed, and
        its failure undoes the request like the engine's own."""
        self._now = now
        # Quarantined ports whose time is up may serve this request.
        self.pool.expire(now)
        if exchange is Exchange.OFFER:
            session, side = self._dialogs.for_offer(
                dialog,
                now,
                strict_source=self.config.strict_source,
                max_sessions=self.config.max_sessions,
            )
            fresh = not session.streams
            if not session.record_id:
                session.record_id = f"{self.record_prefix}{session.id}"
        else:
            if dialog.to_tag is None:
                raise RelayError("an answer needs a to-tag")
            session, side = self._dialogs.for_answer(dialog)
            fresh = False
        try:
            plan = self._process(session, side, streams, options, exchange, finish)
        except RelayError:
            if fresh:
                self._dialogs.forget(session)
            raise
        if exchange is Exchange.OFFER:
            self.offers += 1
            session.note(side, user_agent, metadata)
            session.pending = side
        else:
            self.answers += 1
            session.note(side, user_agent, metadata)
            session.pending = None
            if session.answered is None:
                session.answered = now
        session.last_signal = now
        self._schedule(session, now)
        return plan

    def _process(
        self,
        session: Session,
        side: int,
        offers: Sequence[StreamOffer],
        options: RelayOptions,
        exchange: Exchange,
        finish: Callable[[SessionPlan], None] | None,
    ) -> SessionPlan:
        if options.strict_source is not None:
            session.strict_source = options.strict_source
        mode = options.ice or IceMode.DEFAULT
        # Given once (typically on the initial offer), the policy holds for the call.
        priority = options.ice_priority or session.ice_priority or self.config.ice_priority
        plans: list[StreamPlan | None] = []
        changed: list[tuple[Stream, bool]] = []
        opened: list[Stream] = []
        try:
            for offer in offers:
                plans.append(
                    self._plan(
                        session, side, offer, options, mode, priority, exchange, changed, opened
                    )
                )
            if exchange is Exchange.ANSWER:
                # Streams the offer had and the answer left out are gone (RFC 3264 forbids
                # this, but a port leak is worse than accepting it).
                for stream in session.streams[len(offers) :]:
                    if stream.ended is None:
                        self._end_stream(session, stream, StreamEndReason.REMOVED)
            if options.ice_priority is not None:
                session.ice_priority = options.ice_priority
            plan = SessionPlan(tuple(plans), mode, priority)
            if finish is not None:
                finish(plan)
        except (RelayError, SdpError) as error:
            # Streams this request opened give their ports back; nothing was installed yet.
            for stream in opened:
                self._release(stream)
                stream.ended = StreamEndReason.DISABLED
            if isinstance(error, SdpError):
                raise RelayError(f"cannot rewrite the SDP: {error}") from None
            raise
        receiver = 1 - side
        for stream, mux in changed:
            stream.mux_sent[receiver] = mux
            self._install(session, stream)
        return plan

    def _plan(
        self,
        session: Session,
        side: int,
        offer: StreamOffer,
        options: RelayOptions,
        mode: IceMode,
        priority: IcePriority,
        exchange: Exchange,
        changed: list[tuple[Stream, bool]],
        opened: list[Stream],
    ) -> StreamPlan | None:
        """One stream of a request: its plan, or None to leave it as the sender wrote it."""
        receiver = 1 - side
        is_offer = exchange is Exchange.OFFER
        index = offer.index
        stream = session.streams[index] if index < len(session.streams) else None
        if offer.rejected:
            if stream is not None and stream.ended is None:
                reason = StreamEndReason.DISABLED if is_offer else StreamEndReason.REJECTED
                self._end_stream(session, stream, reason)
            if stream is not None:
                stream.offers[side] = offer
            return None
        if not is_offer and stream is None:
            raise RelayError(f"the answer has media section {index + 1}, the offer did not")
        # After ICE went direct the relay stays out, unless an ICE restart (RFC 8445 section 9,
        # new credentials) says the direct path may be gone (a network change).
        if (
            stream is not None
            and stream.ended is StreamEndReason.ICE_DIRECT
            and not planning.ice_restarted(stream, side, offer, exchange)
        ):
            stream.offers[side] = offer
            return None
        if (
            is_offer
            and stream is not None
            and stream.ended is None
            and self._reoffer_went_direct(stream, side, offer)
        ):
            stream.offers[side] = offer
            self._end_stream(session, stream, StreamEndReason.ICE_DIRECT)
            return None
        if stream is None or stream.ended is not None:
            stream = planning.open_stream(
                self.config, self.pool, session.id, offer, side, options, stream
            )
            self._active_streams += 1
            if index < len(session.streams):
                session.streams[index] = stream
            else:
                session.streams.append(stream)
            opened.append(stream)
        stream.offers[side] = offer
        stream.media = offer.media
        peer = planning.peer_addresses(self.config, offer, options)
        if not planning.is_own(self.config, self.pool, peer[0]):
            # After ICE through the relay, an agent may name the relay itself (its
            # peer-reflexive address) in c=/m=: sending there would loop, so the party's
            # address stays what it was (latching knows the real one).
            stream.peer[side] = peer
        family = options.address_family
        if family is not None and family in self.config.addresses:
            stream.family[receiver] = family
        elif family is not None:
            raise RelayError(f"the relay has no IPv{family} address configured")
        if mode is IceMode.FORCE and stream.ice_credentials[receiver] is None:
            stream.ice_credentials[receiver] = planning.new_credentials(self._rng)
        ports = stream.ports[receiver]
        assert ports is not None
        address = self.config.advertised_address(stream.family[receiver])
        credentials = stream.ice_credentials[receiver] if mode is IceMode.FORCE else None
        rtcp_mux = planning.mux_out(options.rtcp_mux, exchange, stream.offers[receiver])
        # What the receiving party is told about rtcp-mux (ICE=force-relay keeps the sender's
        # lines as they are).
        mux = offer.rtcp_mux
        if mode is not IceMode.FORCE_RELAY and rtcp_mux is not None:
            mux = rtcp_mux
        if mode is IceMode.REMOVE or (mode is not IceMode.FORCE and not offer.ice):
            # No candidate to add (candidates_to_add's answer, without building the plan
            # twice: this is every stream of a call without ICE).
            plan = StreamPlan(address, ports.rtp, ports.rtcp, credentials, rtcp_mux, ())
        else:
            bare = StreamPlan(address, ports.rtp, ports.rtcp, credentials, rtcp_mux)
            plan = StreamPlan(
                address,
                ports.rtp,
                ports.rtcp,
                credentials,
                rtcp_mux,
                candidates_to_add(
                    bare,
                    mode,
                    priority,
                    carries_ice=offer.ice,
                    component_2=offer.component_2,
                    rtcp_mux=mux,
                ),
            )
        if is_offer:
            stream.mux_sent[side] = None
        changed.append((stream, mux))
        return plan

    def _install(self, session: Session, stream: Stream) -> None:
        stream.installed = True
        forwarding = planning.forwarding(self.config, stream, strict_source=session.strict_source)
        self._events.append(ForwardingInstalled(forwarding))

    def _end_stream(self, session: Session, stream: Stream, reason: StreamEndReason) -> None:
        idle: float | None = None
        if reason is StreamEndReason.ICE_DIRECT and stream.installed:
            counters = self._counters(stream.key)
            last = stepaside.last_relay_use(counters) if counters is not None else None
            idle = None if last is None else self._now - last
        if reason is StreamEndReason.ICE_DIRECT:
            # The parties still know the relay's candidate: late checks or packets may come.
            stream.stepped_aside = self._now
            self.stepped_aside += 1
            self._release(stream, quarantine=self.config.port_quarantine)
        else:
            self._release(stream)
        stream.ended = reason
        self._events.append(
            StreamEnded(
                session.call_id, session.from_tag, session.tags[B], stream.index, reason, idle
            )
        )

    def _release(self, stream: Stream, *, quarantine: float = 0.0) -> None:
        until = self._now + quarantine if quarantine > 0 else None
        if stream.installed:
            stream.final = self._counters(stream.key) or stream.final
            self._events.append(ForwardingRemoved(stream.key))
            stream.installed = False
        if stream.ports[A] is not None or stream.ports[B] is not None:
            self._active_streams -= 1
        for side in (A, B):
            ports = stream.ports[side]
            if ports is not None:
                self.pool.release(ports, until=until)
                stream.ports[side] = None

    # -- internals: step-aside (issue 11, :mod:`.stepaside`) -----------------------------------

    def _watched(self, stream: Stream) -> bool:
        """True if the relay looks for ICE going around it on ``stream``: relayed, both parties
        run ICE end to end (not ICE=force, where the relay is the parties' only candidate)."""
        offered, answered = stream.offers
        return (
            stream.ended is None
            and stream.installed
            and offered is not None
            and answered is not None
            and offered.ice
            and answered.ice
            and stream.ice_credentials[A] is None
            and stream.ice_credentials[B] is None
        )

    def _step_aside(self, session: Session, now: float) -> None:
        """Free every watched stream whose relay pair ICE stopped using."""
        config = self.config
        for stream in session.streams:
            if self._watched(stream) and stepaside.should_step_aside(
                self._counters(stream.key),
                now,
                config.ice_settle,
                held=stream.held(),
                components=_ice_components(stream),
                checking_wait=config.ice_checking_wait,
            ):
                self._end_stream(session, stream, StreamEndReason.ICE_DIRECT)

    def _step_aside_deadline(self, session: Session, now: float) -> float | None:
        """When a watched stream of ``session`` must be looked at next, or None."""
        config = self.config
        times = [
            stepaside.next_check(
                self._counters(stream.key),
                now,
                config.ice_settle,
                held=stream.held(),
                components=_ice_components(stream),
                checking_wait=config.ice_checking_wait,
            )
            for stream in session.streams
            if self._watched(stream)
        ]
        return min(times) if times else None

    def _reoffer_went_direct(self, stream: Stream, side: int, offer: StreamOffer) -> bool:
        """A re-offer after ICE: the relay pair is selected only if the relay's candidate is in
        ``a=remote-candidates`` and, when several candidates are listed (baresip lists every
        one), what the relay saw says the relay pair is in use."""
        if planning.ice_went_direct(self.config, stream, side, offer):
            return True
        listed = sum(1 for component, _, _ in offer.remote_candidates if component == 1)
        if listed <= 1 or not self._watched(stream):
            return False
        in_use = stepaside.relay_in_use(
            self._counters(stream.key), self._now, self.config.ice_settle
        )
        return in_use is False

    # -- internals: ending --------------------------------------------------------------------

    def _deadline(self, session: Session) -> tuple[float | None, TerminationReason | None]:
        config = self.config
        options: list[tuple[float, TerminationReason]] = []
        created = session.created
        if session.delete_at is not None:
            options.append((session.delete_at, TerminationReason.DELETED))
        if config.max_duration is not None:
            options.append((created + config.max_duration, TerminationReason.MAX_DURATION))
        if session.answered is None:
            options.append(
                (session.created + config.offer_timeout, TerminationReason.OFFER_TIMEOUT)
            )
        else:
            active = [stream for stream in session.streams if stream.ended is None]
            if active:
                last = session.answered
                for stream in active:
                    counters = self._counters(stream.key)
                    if counters is not None and counters.last_packet is not None:
                        last = max(last, counters.last_packet)
                last = max(last, session.last_signal)
                if all(stream.held() for stream in active):
                    options.append((last + config.hold_timeout, TerminationReason.HOLD_TIMEOUT))
                else:
                    options.append((last + config.media_timeout, TerminationReason.NO_MEDIA))
        if not options:
            return None, None
        return min(options, key=lambda item: item[0])

    def _schedule(self, session: Session, now: float) -> None:
        if session.ended:
            return
        deadline, _ = self._deadline(session)
        watch = self._step_aside_deadline(session, now)
        if watch is not None and (deadline is None or watch < deadline):
            deadline = watch
        if deadline is None:
            session.scheduled = None
            return
        if session.scheduled == deadline:
            return
        session.scheduled = deadline
        heapq.heappush(self._timers, (deadline, session.id))

    def _end(
        self, session: Session, reason: TerminationReason, now: float, *, record: bool = True
    ) -> SessionRecord:
        if session.ended:
            return self._record(session, reason, now)
        for stream in session.streams:
            self._release(stream)
        ended = self._record(session, reason, now)
        session.ended = True
        self._dialogs.forget(session)
        if record:
            self.account(ended)
        return ended

    def _record(self, session: Session, reason: TerminationReason, now: float) -> SessionRecord:
        """The accounting record of ``session`` ending now for ``reason``."""
        ended = now
        if session.deleted_at is not None and reason is not TerminationReason.RELAY_FAILURE:
            # Deleted, then ended by the grace period or by anything else during it: the
            # call ended at the delete.
            reason, ended = TerminationReason.DELETED, session.deleted_at
        elif reason in (TerminationReason.NO_MEDIA, TerminationReason.HOLD_TIMEOUT):
            # The call ended with its last media (or signal), not a timeout later.
            ended = min(now, self._last_activity(session))
        return SessionRecord(
            call_id=session.call_id,
            from_tag=session.from_tag,
            to_tag=session.tags[B],
            via_branch=session.via_branch,
            created=session.created,
            answered=session.answered,
            ended=ended,
            reason=reason,
            streams=tuple(self._stream_records(session)),
            caller_user_agent=session.user_agents[A],
            callee_user_agent=session.user_agents[B],
            metadata=tuple(sorted(session.metadata.items())),
            record_id=session.record_id or f"{self.record_prefix}{session.id}",
        )

    def _last_activity(self, session: Session) -> float:
        """The last media packet or signal of ``session`` (its answer at the earliest)."""
        last = max(session.answered or session.created, session.last_signal)
        for stream in session.streams:
            counters = self._counters(stream.key) if stream.installed else stream.final
            if counters is not None and counters.last_packet is not None:
                last = max(last, counters.last_packet)
        return last

    def _summary(self, session: Session) -> SessionSummary:
        return SessionSummary(
            call_id=session.call_id,
            from_tag=session.from_tag,
            to_tag=session.tags[B],
            created=session.created,
            last_signal=session.last_signal,
            answered=session.answered,
            streams=tuple(self._stream_records(session)),
            deleting=session.deleted_at is not None,
        )

    def _stream_records(self, session: Session) -> Iterator[StreamRecord]:
        for stream in session.streams:
            counters = (
                self._counters(stream.key) if stream.installed else stream.final
            ) or ForwardingCounters()
            caller, callee = stream.offers[A], stream.offers[B]
            from_caller, from_callee = stepaside.paths(
                counters,
                self.config.ice_settle,
                stepped_aside=stream.ended is StreamEndReason.ICE_DIRECT,
            )
            yield StreamRecord(
                index=stream.index,
                media=stream.media,
                codec=_codec(callee) or _codec(caller),
                caller=stream.peer[A][0],
                callee=stream.peer[B][0],
                caller_latched=counters.a.latched_rtp,
                callee_latched=counters.b.latched_rtp,
                packets_from_caller=counters.a.packets,
                bytes_from_caller=counters.a.bytes,
                packets_from_callee=counters.b.packets,
                bytes_from_callee=counters.b.bytes,
                relay_ports=stream.relay_ports,
                end_reason=stream.ended,
                rtcp_packets_from_caller=counters.a.rtcp_packets,
                rtcp_packets_from_callee=counters.b.rtcp_packets,
                path_from_caller=str(from_caller),
                path_from_callee=str(from_callee),
                stepped_aside=stream.stepped_aside,
            )


def _parse(body: bytes) -> SessionDescription:
    try:
        return SessionDescription.parse(body)
    except SdpError as error:
        raise RelayError(f"cannot parse the SDP: {error}") from None


def _ice_components(stream: Stream) -> int:
    """ICE components of a stream: 1 when both parties multiplex RTCP or neither has RTCP
    candidates, else 2 (RFC 5761, RFC 8445 §5.1.1)."""
    offered, answered = stream.offers
    if offered is None or answered is None:
        return 1
    if offered.rtcp_mux and answered.rtcp_mux:
        return 1
    return 2 if offered.component_2 and answered.component_2 else 1


def _codec(offer: StreamOffer | None) -> str | None:
    return offer.codec if offer is not None else None
