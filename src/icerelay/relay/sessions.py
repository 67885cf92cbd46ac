"""The relay's session engine, sans-I/O: calls, their media streams, ports, SDP and timeouts.

A SIP proxy hands the engine every SDP offer and answer of a call (through a control protocol).
The engine gives each media stream a port pair facing each party, rewrites the SDP so that both
parties send to the relay, and tells the data plane what to forward (as events). It never touches
a socket or a clock: time is passed in, and the data plane's counters are read through a callable.

Vocabulary. A *session* is one dialog of a call: the caller's side ``a`` (the From-tag of the
initial offer) and the callee's side ``b`` (the To-tag of the answer). A call (Call-ID) may hold
several sessions when a proxy forks and tells the branches apart by ``via-branch``. Each ``m=``
section is a *stream*; stream ``i`` keeps its ports for the whole session unless it is rejected
(port 0), disabled, or ICE finds a direct path around the relay.

Timeouts (each ends the session with a named :class:`TerminationReason`): no media for
``media_timeout`` seconds after the answer; ``hold_timeout`` instead while every stream is on hold;
an offer never answered within ``offer_timeout``; ``max_duration`` since the first offer; and the
grace period a ``delete`` asks for, during which media still flows (the BYE's 200 OK and late
RTCP are not cut off).
"""

from __future__ import annotations

import functools
import heapq
import ipaddress
import secrets
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeAlias

from icerelay.errors import RelayError, SdpError
from icerelay.relay.forwarding import Forwarding, ForwardingCounters, Leg
from icerelay.relay.policy import IceMode, IcePriority
from icerelay.relay.ports import PortPair, PortPool
from icerelay.relay.rewrite import MediaInfo, StreamPlan, describe, rewrite
from icerelay.sdp import IceCredentials, SessionDescription
from icerelay.stun import Address

__all__ = [
    "CounterSource",
    "Event",
    "ForwardingInstalled",
    "ForwardingRemoved",
    "MediaRequest",
    "RelayConfig",
    "RelayOptions",
    "SessionEnded",
    "SessionEngine",
    "SessionRecord",
    "SessionSummary",
    "StreamEndReason",
    "StreamEnded",
    "StreamRecord",
    "TerminationReason",
]

# Sides of a session: the caller (From-tag of the initial offer) and the callee.
A, B = 0, 1

#: Reads the data plane's counters for a forwarding key (None: unknown key).
CounterSource: TypeAlias = Callable[[str], ForwardingCounters | None]

_ICE_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


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


class StreamEndReason(StrEnum):
    """Why one stream stopped being relayed while its session went on."""

    REJECTED = "rejected"
    DISABLED = "disabled"
    REMOVED = "removed"
    #: ICE selected a direct path between the parties: the relay stepped aside.
    ICE_DIRECT = "ice-direct-path"


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """Engine settings (the relay's addresses and timeouts).

    :param addresses: local address to bind per IP family (4, 6).
    :param advertised: address written into SDP per family when it differs from the local one
        (a relay behind a 1:1 NAT); defaults to :attr:`addresses`.
    """

    addresses: dict[int, str] = field(default_factory=lambda: {4: "127.0.0.1"})
    advertised: dict[int, str] = field(default_factory=dict)
    media_timeout: float = 60.0
    hold_timeout: float = 3600.0
    offer_timeout: float = 300.0
    max_duration: float | None = 86400.0
    delete_delay: float = 30.0
    ice_priority: IcePriority = IcePriority.LOW
    strict_source: bool = False
    handover_after: float | None = 5.0
    #: Default for requests that say neither trust-address nor SIP-source-address (rtpengine's
    #: ``--sip-source``): send media to where the signalling came from.
    sip_source: bool = False

    def advertised_address(self, family: int) -> str:
        """The address the SDP names for ``family``; RelayError if the relay has none."""
        if family not in self.addresses:
            raise RelayError(f"the relay has no IPv{family} address configured")
        return self.advertised.get(family, self.addresses[family])


@dataclass(frozen=True, slots=True)
class RelayOptions:
    """Per-request knobs, whatever control protocol carried them."""

    replace_origin: bool = False
    replace_session_connection: bool = False
    ice: IceMode | None = None
    ice_priority: IcePriority | None = None
    #: IP family (4 or 6) of the relay address to offer to the receiving party.
    address_family: int | None = None
    #: Use this address for the sending party instead of the one in its SDP.
    media_address: str | None = None
    #: Where the SIP message came from; used instead of the SDP address with sip_source_address.
    received_from: str | None = None
    #: True: media goes to the SIP source address (received_from), not the SDP's; False: trust
    #: the SDP (rtpengine's default since 3.8); None: the relay's configured default.
    sip_source_address: bool | None = None
    strict_source: bool | None = None
    #: rtpengine's ``rtcp-mux`` requests: ``offer``, ``require``, ``demux``, ``reject``,
    #: ``accept`` (the relay bridges a multiplexing party and one that is not).
    rtcp_mux: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class MediaRequest:
    """An offer or an answer: identifiers, the SDP body and options."""

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


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """Accounting of one session, produced when it ends."""

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

    @property
    def duration(self) -> float:
        """Seconds from the answer to the end (0 for a call never answered)."""
        return 0.0 if self.answered is None else self.ended - self.answered


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


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """A session ended; :attr:`record` is its accounting record."""

    record: SessionRecord


Event: TypeAlias = ForwardingInstalled | ForwardingRemoved | StreamEnded | SessionEnded


@dataclass(slots=True)
class _Stream:
    index: int
    key: str
    media: str
    ports: list[PortPair | None]
    family: list[int]
    info: list[MediaInfo | None] = field(default_factory=lambda: [None, None])
    # Where to send media for each side, after received-from / media-address overrides.
    peer: list[tuple[Address | None, Address | None]] = field(
        default_factory=lambda: [(None, None), (None, None)]
    )
    ice_credentials: list[IceCredentials | None] = field(default_factory=lambda: [None, None])
    ended: StreamEndReason | None = None
    final: ForwardingCounters | None = None
    installed: bool = False
    # RTP ports facing (a, b), kept for the record after the pairs went back to the pool.
    relay_ports: tuple[int | None, int | None] = (None, None)
    # Whether the SDP the relay last sent to each side had a=rtcp-mux (None: nothing sent yet,
    # or an offer from that side is waiting for its answer).
    mux_sent: list[bool | None] = field(default_factory=lambda: [None, None])

    def held(self) -> bool:
        return any(info is not None and info.hold for info in self.info)


@dataclass(slots=True)
class _Session:
    id: int
    call_id: str
    tags: list[str | None]
    via_branch: str | None
    created: float
    last_signal: float
    answered: float | None = None
    pending: int | None = None
    streams: list[_Stream] = field(default_factory=list)
    strict_source: bool = False
    ice_priority: IcePriority | None = None
    delete_at: float | None = None
    scheduled: float | None = None
    ended: bool = False
    user_agents: list[str | None] = field(default_factory=lambda: [None, None])
    metadata: dict[str, str] = field(default_factory=dict)

    def note(self, side: int, request: MediaRequest) -> None:
        if request.user_agent:
            self.user_agents[side] = request.user_agent
        self.metadata.update(request.metadata)

    @property
    def from_tag(self) -> str:
        tag = self.tags[A]
        assert tag is not None
        return tag


class SessionEngine:
    """Sans-I/O media relay engine (see the module docstring).

    :param pool: where stream ports come from; the engine returns every pair it takes.
    :param counters: reads the data plane's counters of a forwarding; used for media timeouts
        and for the final numbers of accounting records. Without it the engine sees no media.
    """

    def __init__(
        self,
        config: RelayConfig,
        pool: PortPool,
        *,
        counters: CounterSource | None = None,
    ) -> None:
        self.config = config
        self.pool = pool
        self._counters: CounterSource = counters if counters is not None else (lambda key: None)
        self._calls: dict[str, list[_Session]] = {}
        self._sessions: dict[int, _Session] = {}
        self._timers: list[tuple[float, int]] = []
        self._events: deque[Event] = deque()
        self._next_id = 1
        self._active_streams = 0
        self.ended_by_reason: dict[TerminationReason, int] = dict.fromkeys(TerminationReason, 0)
        self.offers = 0
        self.answers = 0

    # -- signalling ---------------------------------------------------------------------------

    def offer(self, request: MediaRequest, now: float) -> bytes:
        """Process an SDP offer; return the SDP to forward (pointing at the relay)."""
        sdp = _parse(request.sdp)
        session, side = self._session_for_offer(request, now)
        fresh = not session.streams
        try:
            body = self._process(session, side, sdp, request.options, now, is_offer=True)
        except RelayError:
            if fresh:
                self._forget(session)
            raise
        self.offers += 1
        session.note(side, request)
        session.pending = side
        session.last_signal = now
        self._schedule(session, now)
        return body

    def answer(self, request: MediaRequest, now: float) -> bytes:
        """Process an SDP answer; return the SDP to forward to the offerer."""
        if request.to_tag is None:
            raise RelayError("an answer needs a to-tag")
        sdp = _parse(request.sdp)
        session, side = self._session_for_answer(request)
        body = self._process(session, side, sdp, request.options, now, is_offer=False)
        self.answers += 1
        session.note(side, request)
        session.pending = None
        if session.answered is None:
            session.answered = now
        session.last_signal = now
        self._schedule(session, now)
        return body

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
        """
        matched = [
            session
            for session in self._calls.get(call_id, [])
            if _matches(session, from_tag, to_tag, via_branch)
        ]
        if not matched:
            raise RelayError(f"unknown call {_describe_call(call_id, from_tag, to_tag)}")
        wait = self.config.delete_delay if delay is None else delay
        summaries = [self._summary(session) for session in matched]
        for session in matched:
            session.last_signal = now
            if wait <= 0:
                self._end(session, reason, now)
            else:
                deadline = now + wait
                if session.delete_at is None or deadline < session.delete_at:
                    session.delete_at = deadline
                self._schedule(session, now)
        return summaries

    def query(
        self, call_id: str, *, from_tag: str | None = None, to_tag: str | None = None
    ) -> list[SessionSummary]:
        """Summaries of the matching live sessions; RelayError if the call is unknown."""
        matched = [
            self._summary(session)
            for session in self._calls.get(call_id, [])
            if _matches(session, from_tag, to_tag, None)
        ]
        if not matched:
            raise RelayError(f"unknown call {_describe_call(call_id, from_tag, to_tag)}")
        return matched

    def awaits_answer_from(self, call_id: str, tag: str) -> bool:
        """True if a session of ``call_id`` has an open offer that the party ``tag`` must answer.

        A control protocol that does not say "offer" or "answer" (mediaproxy says "request" or
        "reply") uses this to recognise a late offer's answer (the SDP in an ACK).
        """
        for session in self._calls.get(call_id, []):
            if session.pending is None:
                continue
            answerer = session.tags[1 - session.pending]
            # An initial offer has no To-tag yet: any party but the offerer may answer it.
            if answerer == tag or (answerer is None and session.tags[session.pending] != tag):
                return True
        return False

    def has_call(self, call_id: str) -> bool:
        """True if the engine has a live session of ``call_id``."""
        return call_id in self._calls

    def call_ids(self, limit: int | None = None) -> list[str]:
        """Call-IDs of live calls, oldest first, at most ``limit``."""
        ids = list(self._calls)
        return ids if limit is None else ids[:limit]

    def shutdown(self, now: float) -> None:
        """End every session (reason ``shutdown``), so that records are written and ports freed."""
        for session in list(self._sessions.values()):
            self._end(session, TerminationReason.SHUTDOWN, now)

    @property
    def session_count(self) -> int:
        """Live sessions."""
        return len(self._sessions)

    @property
    def call_count(self) -> int:
        """Live calls (Call-IDs)."""
        return len(self._calls)

    def stream_count(self) -> int:
        """Streams currently relayed (each holds two port pairs)."""
        return self._active_streams

    # -- timers and events --------------------------------------------------------------------

    def next_timer(self) -> float | None:
        """The earliest time :meth:`handle_timer` has something to check, or None."""
        while self._timers:
            deadline, session_id = self._timers[0]
            session = self._sessions.get(session_id)
            if session is not None and session.scheduled == deadline:
                return deadline
            heapq.heappop(self._timers)
        return None

    def handle_timer(self, now: float) -> None:
        """End every session whose deadline has passed (media activity is read afresh)."""
        while self._timers and self._timers[0][0] <= now:
            deadline, session_id = heapq.heappop(self._timers)
            session = self._sessions.get(session_id)
            if session is None or session.scheduled != deadline:
                continue
            session.scheduled = None
            due, reason = self._deadline(session)
            if due is not None and due <= now and reason is TerminationReason.NO_MEDIA:
                # Silence on a stream whose ICE checks crossed the relay means ICE picked a
                # path around it (a pair through the relay would carry media, or at least
                # consent checks): step aside instead of ending the call.
                stepped_aside = False
                for stream in session.streams:
                    if stream.ended is None and self._ice_went_around(stream):
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

    # -- internals: finding sessions ----------------------------------------------------------

    def _session_for_offer(self, request: MediaRequest, now: float) -> tuple[_Session, int]:
        sessions = self._calls.get(request.call_id, [])
        tag, other = request.from_tag, request.to_tag
        if other is not None:
            for session in sessions:
                if session.tags == [tag, other]:
                    return session, A
                if session.tags == [other, tag]:
                    return session, B
        # An initial offer again (retransmitted with a new cookie, or forked without
        # via-branch): the same session, so the same ports.
        for session in sessions:
            if (
                session.tags[A] == tag
                and session.via_branch == request.via_branch
                and (other is None or session.tags[B] is None)
            ):
                return session, A
        for session in sessions:
            if session.tags[B] == tag and other is None and session.answered is not None:
                return session, B
        session = _Session(
            id=self._next_id,
            call_id=request.call_id,
            tags=[tag, other],
            via_branch=request.via_branch,
            created=now,
            last_signal=now,
            strict_source=self.config.strict_source,
        )
        self._next_id += 1
        self._calls.setdefault(request.call_id, []).append(session)
        self._sessions[session.id] = session
        return session, A

    def _session_for_answer(self, request: MediaRequest) -> tuple[_Session, int]:
        sessions = self._calls.get(request.call_id, [])
        tag, other = request.from_tag, request.to_tag
        for session in sessions:
            if session.tags == [tag, other]:
                return session, B
            if session.tags == [other, tag]:
                return session, A
        candidates = [session for session in sessions if session.tags[A] == tag]
        if request.via_branch is not None:
            candidates = [s for s in candidates if s.via_branch == request.via_branch] or candidates
        if not candidates:
            raise RelayError(
                f"answer for unknown call {_describe_call(request.call_id, tag, other)}"
            )
        # Prefer a session still waiting for its first answer; otherwise a forked call got a
        # second final answer, and the latest one wins (it is the dialog the caller keeps).
        session = next((s for s in candidates if s.tags[B] is None), candidates[-1])
        session.tags[B] = other
        return session, B

    # -- internals: offer/answer processing ---------------------------------------------------

    def _process(
        self,
        session: _Session,
        side: int,
        sdp: SessionDescription,
        options: RelayOptions,
        now: float,
        *,
        is_offer: bool,
    ) -> bytes:
        infos = describe(sdp)
        if options.strict_source is not None:
            session.strict_source = options.strict_source
        mode = options.ice or IceMode.DEFAULT
        plans: list[StreamPlan | None] = []
        changed: list[_Stream] = []
        opened: list[_Stream] = []
        try:
            self._plan(session, side, infos, options, mode, is_offer, plans, changed, opened)
            if not is_offer:
                # Streams the offer had and the answer left out are gone (RFC 3264 forbids
                # this, but a port leak is worse than accepting it).
                for stream in session.streams[len(infos) :]:
                    if stream.ended is None:
                        self._end_stream(session, stream, StreamEndReason.REMOVED)
            if options.ice_priority is not None:
                # Given once (typically on the initial offer), the policy holds for the call.
                session.ice_priority = options.ice_priority
            priority = session.ice_priority or self.config.ice_priority
            out = rewrite(
                sdp,
                plans,
                ice=mode,
                priority=priority,
                replace_origin=options.replace_origin,
                replace_session_connection=options.replace_session_connection,
            )
        except (RelayError, SdpError) as error:
            # Streams this request opened give their ports back; nothing was installed yet.
            for stream in opened:
                self._release(stream)
                stream.ended = StreamEndReason.DISABLED
            if isinstance(error, SdpError):
                raise RelayError(f"cannot rewrite the SDP: {error}") from None
            raise
        receiver = 1 - side
        for stream in changed:
            if stream.index < len(out.media):
                stream.mux_sent[receiver] = out.media[stream.index].rtcp_mux
            self._install(session, stream)
        return out.to_bytes()

    def _plan(
        self,
        session: _Session,
        side: int,
        infos: list[MediaInfo],
        options: RelayOptions,
        mode: IceMode,
        is_offer: bool,
        plans: list[StreamPlan | None],
        changed: list[_Stream],
        opened: list[_Stream],
    ) -> None:
        receiver = 1 - side
        for info in infos:
            stream = session.streams[info.index] if info.index < len(session.streams) else None
            if info.rejected:
                if stream is not None and stream.ended is None:
                    reason = StreamEndReason.DISABLED if is_offer else StreamEndReason.REJECTED
                    self._end_stream(session, stream, reason)
                if stream is not None:
                    stream.info[side] = info
                plans.append(None)
                continue
            if not is_offer and stream is None:
                raise RelayError(
                    f"the answer has media section {info.index + 1}, the offer did not"
                )
            if stream is not None and stream.ended is StreamEndReason.ICE_DIRECT:
                previous = stream.info[side]
                restart = (
                    is_offer
                    and info.ice
                    and previous is not None
                    and previous.ice_ufrag is not None
                    and info.ice_ufrag != previous.ice_ufrag
                )
                if not restart:
                    stream.info[side] = info
                    plans.append(None)
                    continue
                # An ICE restart (RFC 8445 section 9, new credentials): the direct path may be
                # gone (a network change), so the relay offers itself again.
            if (
                is_offer
                and stream is not None
                and stream.ended is None
                and self._ice_went_direct(stream, side, info)
            ):
                stream.info[side] = info
                self._end_stream(session, stream, StreamEndReason.ICE_DIRECT)
                plans.append(None)
                continue
            if stream is None or stream.ended is not None:
                stream = self._open_stream(session, info, side, options, stream)
                opened.append(stream)
            stream.info[side] = info
            stream.media = info.media
            peer = self._peer_addresses(info, options)
            if not self._is_own(peer[0]):
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
                stream.ice_credentials[receiver] = _new_credentials()
            ports = stream.ports[receiver]
            assert ports is not None
            plans.append(
                StreamPlan(
                    address=self.config.advertised_address(stream.family[receiver]),
                    rtp_port=ports.rtp,
                    rtcp_port=ports.rtcp,
                    ice_credentials=(
                        stream.ice_credentials[receiver] if mode is IceMode.FORCE else None
                    ),
                    rtcp_mux=_mux_out(options.rtcp_mux, is_offer, stream.info[receiver]),
                )
            )
            if is_offer:
                stream.mux_sent[side] = None
            changed.append(stream)

    def _open_stream(
        self,
        session: _Session,
        info: MediaInfo,
        side: int,
        options: RelayOptions,
        previous: _Stream | None,
    ) -> _Stream:
        family = _family_of(info.address) or _family_of(options.received_from) or 4
        if family not in self.config.addresses:
            family = next(iter(self.config.addresses))
        receiver_family = options.address_family or family
        if receiver_family not in self.config.addresses:
            raise RelayError(f"the relay has no IPv{receiver_family} address configured")
        first = self.pool.allocate()
        try:
            second = self.pool.allocate()
        except RelayError:
            self.pool.release(first)
            raise
        pair = (first, second) if side == A else (second, first)
        ports: list[PortPair | None] = list(pair)
        families = [0, 0]
        families[side], families[1 - side] = family, receiver_family
        stream = _Stream(
            index=info.index,
            key=f"{session.id}.{info.index}",
            media=info.media,
            ports=ports,
            family=families,
            relay_ports=(pair[A].rtp, pair[B].rtp),
        )
        if previous is not None:
            # A stream re-enabled in a later offer: new ports, a new forwarding generation.
            stream.key = f"{previous.key}+"
            stream.info = previous.info
        self._active_streams += 1
        if info.index < len(session.streams):
            session.streams[info.index] = stream
        else:
            session.streams.append(stream)
        return stream

    def _peer_addresses(
        self, info: MediaInfo, options: RelayOptions
    ) -> tuple[Address | None, Address | None]:
        if info.address is None or _is_unspecified(info.address) or info.port == 0:
            return None, None
        host = info.address
        rtcp_host = info.rtcp_address or host
        override = options.media_address
        sip_source = options.sip_source_address
        if sip_source is None:
            sip_source = self.config.sip_source
        if override is None and sip_source and options.received_from:
            override = options.received_from
        if override is not None:
            host = rtcp_host = override
        if _family_of(host) is None:
            # An FQDN: the data plane does not resolve names; latching will find the peer.
            return None, None
        rtcp = Address(rtcp_host, info.rtcp_port) if _family_of(rtcp_host) else None
        return Address(host, info.port), rtcp

    def _is_own(self, address: Address | None) -> bool:
        """True if ``address`` is one of the relay's own ports."""
        if address is None or not self.pool.first <= address.port <= self.pool.last:
            return False
        host = _canonical(address.host)
        config = self.config
        return host in config.addresses.values() or host in config.advertised.values()

    def _ice_went_direct(self, stream: _Stream, side: int, info: MediaInfo) -> bool:
        """True if ``side``'s re-offer shows ICE selected a pair that avoids the relay.

        RFC 8839 §4.2.5: after ICE completes, the controlling agent re-offers with its selected
        local candidate in ``c=``/``m=`` and the selected remote candidates in
        ``a=remote-candidates``. The remote candidates name what this side received from the
        relay; if none is the relay's address and ports, ICE chose a path around the relay.
        """
        previous_self, other = stream.info[side], stream.info[1 - side]
        if previous_self is None or other is None:
            return False
        if not (previous_self.ice and other.ice and info.remote_candidates):
            return False
        ports = stream.ports[side]
        if ports is None:
            return False
        relay_address = self.config.advertised_address(stream.family[side])
        relay = {(relay_address, ports.rtp), (relay_address, ports.rtcp)}
        return not any(
            (_canonical(address), port) in relay for _, address, port in info.remote_candidates
        )

    def _ice_went_around(self, stream: _Stream) -> bool:
        """Both parties do ICE, their checks went through the relay, and the relay pair was
        never the one in use: no media crossed it, or media did (sent to the default address
        before ICE completed) but no nomination ever did."""
        offered, answered = stream.info
        if offered is None or answered is None or not (offered.ice and answered.ice):
            return False
        counters = self._counters(stream.key)
        if counters is None:
            return False
        checks = counters.a.stun_requests + counters.b.stun_requests
        nominations = counters.a.stun_nominations + counters.b.stun_nominations
        media = counters.a.packets + counters.b.packets
        return checks > 0 and (media == 0 or nominations == 0)

    def _install(self, session: _Session, stream: _Stream) -> None:
        legs = []
        for side in (A, B):
            ports = stream.ports[side]
            assert ports is not None
            info = stream.info[side]
            # A party multiplexes when its own SDP says so and the SDP it got from the relay
            # agreed (until its offer is answered, it must be ready for both, RFC 5761).
            sent = stream.mux_sent[side]
            mux = info is not None and info.rtcp_mux and sent is not False
            rtp_peer, rtcp_peer = stream.peer[side]
            if mux:
                rtcp_peer = rtp_peer
            legs.append(
                Leg(
                    local=Address(self.config.addresses[stream.family[side]], ports.rtp),
                    rtp_peer=rtp_peer,
                    rtcp_peer=rtcp_peer,
                    rtcp_mux=mux,
                    ice_credentials=stream.ice_credentials[side],
                )
            )
        stream.installed = True
        self._events.append(
            ForwardingInstalled(
                Forwarding(
                    key=stream.key,
                    a=legs[A],
                    b=legs[B],
                    strict_source=session.strict_source,
                    handover_after=self.config.handover_after,
                )
            )
        )

    def _end_stream(self, session: _Session, stream: _Stream, reason: StreamEndReason) -> None:
        self._release(stream)
        stream.ended = reason
        self._events.append(
            StreamEnded(session.call_id, session.from_tag, session.tags[B], stream.index, reason)
        )

    def _release(self, stream: _Stream) -> None:
        if stream.installed:
            stream.final = self._counters(stream.key) or stream.final
            self._events.append(ForwardingRemoved(stream.key))
            stream.installed = False
        if stream.ports[A] is not None or stream.ports[B] is not None:
            self._active_streams -= 1
        for side in (A, B):
            ports = stream.ports[side]
            if ports is not None:
                self.pool.release(ports)
                stream.ports[side] = None

    # -- internals: ending --------------------------------------------------------------------

    def _deadline(self, session: _Session) -> tuple[float | None, TerminationReason | None]:
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

    def _schedule(self, session: _Session, now: float) -> None:
        if session.ended:
            return
        deadline, _ = self._deadline(session)
        if deadline is None:
            session.scheduled = None
            return
        if session.scheduled == deadline:
            return
        session.scheduled = deadline
        heapq.heappush(self._timers, (deadline, session.id))

    def _end(self, session: _Session, reason: TerminationReason, now: float) -> None:
        if session.ended:
            return
        for stream in session.streams:
            self._release(stream)
        record = SessionRecord(
            call_id=session.call_id,
            from_tag=session.from_tag,
            to_tag=session.tags[B],
            via_branch=session.via_branch,
            created=session.created,
            answered=session.answered,
            ended=now,
            reason=reason,
            streams=tuple(self._stream_records(session)),
            caller_user_agent=session.user_agents[A],
            callee_user_agent=session.user_agents[B],
            metadata=tuple(sorted(session.metadata.items())),
        )
        session.ended = True
        self._forget(session)
        self.ended_by_reason[reason] += 1
        self._events.append(SessionEnded(record))

    def _forget(self, session: _Session) -> None:
        self._sessions.pop(session.id, None)
        sessions = self._calls.get(session.call_id)
        if sessions is not None:
            if session in sessions:
                sessions.remove(session)
            if not sessions:
                del self._calls[session.call_id]

    def _summary(self, session: _Session) -> SessionSummary:
        return SessionSummary(
            call_id=session.call_id,
            from_tag=session.from_tag,
            to_tag=session.tags[B],
            created=session.created,
            last_signal=session.last_signal,
            answered=session.answered,
            streams=tuple(self._stream_records(session)),
        )

    def _stream_records(self, session: _Session) -> Iterator[StreamRecord]:
        for stream in session.streams:
            counters = (
                self._counters(stream.key) if stream.installed else stream.final
            ) or ForwardingCounters()
            caller, callee = stream.info[A], stream.info[B]
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
            )


# -- helpers ------------------------------------------------------------------------------------


def _parse(body: bytes) -> SessionDescription:
    try:
        return SessionDescription.parse(body)
    except SdpError as error:
        raise RelayError(f"cannot parse the SDP: {error}") from None


def _matches(
    session: _Session, from_tag: str | None, to_tag: str | None, via_branch: str | None
) -> bool:
    tags = set(session.tags)
    if from_tag is not None and from_tag not in tags:
        return False
    if to_tag is not None and to_tag not in tags:
        return False
    return via_branch is None or session.via_branch in (None, via_branch)


def _describe_call(call_id: str, from_tag: str | None, to_tag: str | None) -> str:
    text = f"call-id {call_id!r}"
    if from_tag is not None:
        text += f" from-tag {from_tag!r}"
    if to_tag is not None:
        text += f" to-tag {to_tag!r}"
    return text


# The address helpers below are cached: they are asked several times per request for the same
# few addresses, and ipaddress parsing is among the control path's top costs.
@functools.lru_cache(maxsize=4096)
def _family_of(address: str | None) -> int | None:
    if address is None:
        return None
    try:
        return ipaddress.ip_address(address).version
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def _is_unspecified(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False


@functools.lru_cache(maxsize=4096)
def _canonical(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address


def _mux_out(requests: frozenset[str], is_offer: bool, offerer: MediaInfo | None) -> bool | None:
    """What ``a=rtcp-mux`` the relay writes towards the receiving party, per rtpengine's flags.

    In an offer: ``demux``/``reject`` take it away, ``offer``/``require`` add it. In an answer
    (``offerer`` is the party that receives it): ``accept``/``require`` grant what the offerer
    offered even when the answerer declined, ``reject`` declines it; an offerer that did not
    offer it never gets it. None: pass through.
    """
    if not is_offer and offerer is not None and not offerer.rtcp_mux:
        # The relay may have offered mux on its own ("offer"); the offerer never did, so its
        # answer must not carry it (RFC 5761 section 5.1.1).
        return False
    if not requests:
        return None
    if is_offer:
        if requests & {"demux", "reject"}:
            return False
        if requests & {"offer", "require"}:
            return True
        return None
    if "reject" in requests:
        return False
    if requests & {"accept", "require"} and offerer is not None and offerer.rtcp_mux:
        return True
    return None


def _codec(info: MediaInfo | None) -> str | None:
    return info.codec if info is not None else None


def _new_credentials() -> IceCredentials:
    """Fresh ICE credentials for the relay's ICE-lite side (RFC 8445 §5.3: random, 24+ bits
    of ufrag entropy, 128+ bits of password entropy)."""
    ufrag = "".join(secrets.choice(_ICE_CHARS) for _ in range(8))
    pwd = "".join(secrets.choice(_ICE_CHARS) for _ in range(24))
    return IceCredentials(ufrag, pwd)
