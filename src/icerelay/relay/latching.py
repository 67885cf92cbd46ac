"""The latching policy: what a relay port does with each datagram, for every data plane.

Latching (the relay learns where a party really is from the packets it sends, because the SDP
address is often a private one behind a NAT): the first RTP or RTCP packet on a leg latches its
source for that component. A later packet from another source is forwarded but does not move
the latch, unless the latched source has been silent for ``handover_after`` seconds (a phone that
changed network); with ``strict_source`` it is dropped instead. On a leg with rtcp-mux, packets
with an RTCP packet type (RFC 5761 §4) on the RTP port are RTCP. STUN packets never latch for
good: ICE connectivity checks arrive from every candidate of a party, not only from the one
media will use, so a check latches only provisionally (the first check, then a nominating one)
until media arrives; the answers to a party's checks could not reach it otherwise.

On a leg with its own ICE credentials (``ICE=force``) the relay is an ICE-lite agent (RFC 8445
§2.5): it answers authenticated Binding requests itself and a nominating request (USE-CANDIDATE)
latches; checks with wrong credentials get no answer (a 401 would tell an attacker the ufrag is
right).

The design: sans-I/O, no clock (``now`` is an argument). :class:`ForwardingState` holds the two
:class:`LegState` s of one installed :class:`~icerelay.relay.forwarding.Forwarding`; they are
mutable and owned by this module: :func:`decide` updates the latches and the counters of the
leg a packet arrived on and returns a frozen verdict -- :class:`Forward` (send the packet on, to
``destination``), :class:`Drop` (with a :class:`DropReason`) or :class:`Answer` (send these
bytes back). A data plane only moves bytes as told. Counting lives here too, because only the
policy knows what a packet was; a data plane adds to :attr:`LegState.dropped` only for what
happens after the decision (a socket that is gone).

The hot path (media from the latched source) allocates nothing: each leg keeps its routes,
the :class:`Forward` (or :class:`Drop` when the party's address is unknown) for a packet of
each component towards that party, rebuilt only when its latch or its description changes.
The verdict's ``moved`` says that this packet moved the sender's latch, so the routes towards
the sender changed: a kernel data plane reprograms its map then.

The relay-hardening rules to come (RTP Bleed protection, SSRC continuity, authenticated checks
before latching) belong in :func:`decide`; :attr:`LegState.ssrc` already keeps the SSRC of the
packet that latched each component.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from icerelay.errors import StunError
from icerelay.relay.forwarding import Forwarding, ForwardingCounters, Leg, LegCounters
from icerelay.relay.packets import PacketKind, classify, ssrc, stun_kind
from icerelay.stun import Address, AttributeType, MessageClass, Method, decode_message, is_stun
from icerelay.stun.credentials import short_term_key
from icerelay.stun.message import Message

__all__ = [
    "RTCP",
    "RTP",
    "Answer",
    "Drop",
    "DropReason",
    "Forward",
    "ForwardingState",
    "LegState",
    "Sockaddr",
    "Verdict",
    "decide",
]

#: Components, as indexes: the RTP port and the RTCP port (the next one) of a leg.
RTP, RTCP = 0, 1

#: A socket address as the event loop reports it: (host, port).
Sockaddr = tuple[str, int]


class DropReason(StrEnum):
    """Why a packet is not relayed."""

    #: It came from one of the relay's own ports of this stream (a party named a relay port as
    #: its address): forwarding it would start a loop.
    OWN_SOURCE = "own-source"
    #: ``strict_source``: not from the latched source, which has not been silent long enough.
    FOREIGN_SOURCE = "foreign-source"
    #: The other party's address is unknown (no SDP address yet, or on hold) and not latched.
    NO_DESTINATION = "no-destination"
    #: It looks like STUN but does not decode.
    MALFORMED_STUN = "malformed-stun"
    #: ICE-lite leg: a check with the wrong username or message integrity.
    UNAUTHENTICATED = "unauthenticated"
    #: ICE-lite leg: a STUN message that is not a Binding request (nothing to answer). Not
    #: counted in :attr:`LegState.dropped`, as before this policy had a name.
    NOT_A_CHECK = "not-a-check"


@dataclass(frozen=True, slots=True)
class Forward:
    """Send the packet on, unchanged, to the other party.

    :attr:`destination` is the other party's address; :attr:`socket` is which of the *other*
    leg's relay ports it leaves from (:data:`RTP` or :data:`RTCP`; RTP when that party
    multiplexes). :attr:`moved`: this packet moved the sender's latch.
    """

    destination: Sockaddr
    socket: int
    moved: bool = False


@dataclass(frozen=True, slots=True)
class Drop:
    """Relay nothing. :attr:`moved`: the packet still moved the sender's latch (a first packet
    while the other party's address is unknown)."""

    reason: DropReason
    moved: bool = False


@dataclass(frozen=True, slots=True)
class Answer:
    """Send :attr:`data` back to :attr:`destination` (the sender) from *this* leg's relay port
    :attr:`socket`, and relay nothing: the ICE-lite Binding success response."""

    data: bytes
    destination: Sockaddr
    socket: int
    moved: bool = False


Verdict = Forward | Drop | Answer

_DROPS = {reason: Drop(reason) for reason in DropReason}
_DROP_OWN = _DROPS[DropReason.OWN_SOURCE]
_DROP_FOREIGN = _DROPS[DropReason.FOREIGN_SOURCE]
_NO_DESTINATION = _DROPS[DropReason.NO_DESTINATION]
_NO_DESTINATION_MOVED = Drop(DropReason.NO_DESTINATION, moved=True)
# Enum members as module constants: looking one up on its class costs ~80 ns in Python 3.11.
_NOMINATION = PacketKind.STUN_NOMINATION
_STUN_OTHER = PacketKind.STUN_OTHER


@dataclass(slots=True, eq=False)
class LegState:
    """The latching state and counters of one leg (one party), owned by this module.

    Lists are indexed by component (:data:`RTP`, :data:`RTCP`). :attr:`latched` is the party's
    source; :attr:`media_latched` says whether media decided it (final) or only ICE checks
    (provisional); :attr:`latched_seen` is when the latched source last sent (for handover);
    :attr:`ssrc` is the SSRC of the media packet that latched (None if a check did).
    """

    leg: Leg
    strict_source: bool = False
    handover_after: float | None = None
    #: The relay's own ports of this stream (both legs): packets from them are loops.
    own: frozenset[Sockaddr] = frozenset()
    #: The other party's state: where forwarded packets go.
    peer: LegState = field(init=False)
    latched: list[Sockaddr | None] = field(default_factory=lambda: [None, None])
    latched_seen: list[float] = field(default_factory=lambda: [0.0, 0.0])
    media_latched: list[bool] = field(default_factory=lambda: [False, False])
    ssrc: list[int | None] = field(default_factory=lambda: [None, None])
    #: What a packet of each component *towards this party* gets: see :func:`_routes`.
    routes: list[Forward | Drop] = field(default_factory=lambda: [_NO_DESTINATION] * 2)
    packets: int = 0
    bytes: int = 0
    rtcp_packets: int = 0
    dropped: int = 0
    stun_requests: int = 0
    stun_nominations: int = 0
    last_packet: float | None = None
    # Interim (stepaside branch), until relay/checks.py verifies checks against the SDPs'
    # credentials (latching branch): what the step-aside decision reads.
    checks_authenticated: int = 0
    last_check: float | None = None
    last_nomination: float | None = None
    last_media: float | None = None

    def destination(self, component: int) -> Sockaddr | None:
        """Where a packet of ``component`` for this party goes: the latched source, else the
        SDP address (None: unknown)."""
        route = self.routes[component]
        return route.destination if isinstance(route, Forward) else None

    def forget(self) -> None:
        """Forget the latches (new SDP addresses or a new relay port: learn the source afresh)."""
        self.latched = [None, None]
        self.media_latched = [False, False]
        self.ssrc = [None, None]
        _routes(self)

    def counters(self) -> LegCounters:
        """A snapshot of the counters and latched addresses."""
        rtp, rtcp = self.latched
        return LegCounters(
            packets=self.packets,
            bytes=self.bytes,
            rtcp_packets=self.rtcp_packets,
            dropped=self.dropped,
            stun_requests=self.stun_requests,
            stun_nominations=self.stun_nominations,
            last_packet=self.last_packet,
            checks_authenticated=self.checks_authenticated,
            last_check=self.last_check,
            last_nomination=self.last_nomination,
            last_media=self.last_media,
            latched_rtp=Address(rtp[0], rtp[1]) if rtp else None,
            latched_rtcp=Address(rtcp[0], rtcp[1]) if rtcp else None,
        )


class ForwardingState:
    """The latching state of one installed forwarding: leg :attr:`a` and leg :attr:`b`."""

    __slots__ = ("a", "b", "forwarding")

    def __init__(self, forwarding: Forwarding) -> None:
        self.forwarding = forwarding
        self.a = LegState(forwarding.a)
        self.b = LegState(forwarding.b)
        self.a.peer = self.b
        self.b.peer = self.a
        self._apply(forwarding)

    @property
    def legs(self) -> tuple[LegState, LegState]:
        """Both legs, by side: 0 is a, 1 is b."""
        return self.a, self.b

    def update(self, forwarding: Forwarding) -> None:
        """Take a new description of the same forwarding, in place: latches and counters stay,
        except on a leg whose relay port or SDP addresses changed (a re-INVITE moved the party),
        which learns its source afresh."""
        for state, leg in ((self.a, forwarding.a), (self.b, forwarding.b)):
            previous = state.leg
            state.leg = leg
            if leg.local != previous.local or (leg.rtp_peer, leg.rtcp_peer) != (
                previous.rtp_peer,
                previous.rtcp_peer,
            ):
                state.forget()
        self.forwarding = forwarding
        self._apply(forwarding)

    def counters(self) -> ForwardingCounters:
        """A snapshot of both legs' counters."""
        return ForwardingCounters(self.a.counters(), self.b.counters())

    def _apply(self, forwarding: Forwarding) -> None:
        own: set[Sockaddr] = set()
        for leg in (forwarding.a, forwarding.b):
            own.add((leg.local.host, leg.local.port))
            own.add((leg.local.host, leg.local.port + 1))
        for state in (self.a, self.b):
            state.strict_source = forwarding.strict_source
            state.handover_after = forwarding.handover_after
            state.own = frozenset(own)
            _routes(state)


def decide(state: LegState, component: int, data: bytes, source: Sockaddr, now: float) -> Verdict:
    """Decide what to do with ``data``, which arrived from ``source`` on ``state``'s relay port
    ``component`` at time ``now``; update the latches and counters of ``state``.

    The hot path: keep it free of calls and allocations for media from the latched source.
    """
    if source in state.own:
        state.dropped += 1
        return _DROP_OWN
    if data and data[0] < 4 and is_stun(data):
        return _stun(state, component, data, source, now)
    if component == RTP and state.leg.rtcp_mux and len(data) > 1 and 192 <= data[1] <= 223:
        # RFC 5761 §4: on a multiplexed port, packet types 192..223 are RTCP.
        component = RTCP
    moved = False
    latched = state.latched[component]
    if latched == source:
        state.latched_seen[component] = now
        state.media_latched[component] = True
    else:
        handover = state.handover_after
        if (
            latched is None
            # The first media packet decides, also over a latch learnt from ICE checks.
            or not state.media_latched[component]
            or (handover is not None and now - state.latched_seen[component] >= handover)
        ):
            _latch(state, component, source, now)
            state.media_latched[component] = True
            state.ssrc[component] = ssrc(data, classify(data))
            moved = True
        elif state.strict_source:
            state.dropped += 1
            return _DROP_FOREIGN
    state.last_packet = state.last_media = now
    if component == RTCP:
        state.rtcp_packets += 1
    else:
        state.packets += 1
        state.bytes += len(data)
    route = state.peer.routes[component]
    if moved or route is _NO_DESTINATION:
        return _onward(state, component, moved)
    return route


def _onward(state: LegState, component: int, moved: bool) -> Forward | Drop:
    """The route towards the other party for a packet of ``component``."""
    route = state.peer.routes[component]
    if isinstance(route, Forward):
        return Forward(route.destination, route.socket, moved=True) if moved else route
    state.dropped += 1
    return _NO_DESTINATION_MOVED if moved else _NO_DESTINATION


def _stun(state: LegState, component: int, data: bytes, source: Sockaddr, now: float) -> Verdict:
    try:
        message = decode_message(data)
    except StunError:
        state.dropped += 1
        return _DROPS[DropReason.MALFORMED_STUN]
    kind = stun_kind(message)
    nominating = kind is _NOMINATION
    if kind is not _STUN_OTHER:
        state.stun_requests += 1
        if nominating:
            state.stun_nominations += 1
    credentials = state.leg.ice_credentials
    if credentials is None:
        # ICE runs end to end through the relay: pass the check (or its answer) along; a check
        # latches provisionally (the first, then a nominating one) until media arrives.
        _note_check(state, message, nominating, now)
        moved = False
        if (
            kind is not _STUN_OTHER
            and not state.media_latched[component]
            and (state.latched[component] is None or nominating)
        ):
            moved = state.latched[component] != source
            _latch(state, component, source, now)
        return _onward(state, component, moved)
    if kind is _STUN_OTHER:
        return _DROPS[DropReason.NOT_A_CHECK]
    username = message.get(AttributeType.USERNAME) or ""
    key = short_term_key(credentials.pwd)
    if not username.startswith(credentials.ufrag + ":") or not message.check_integrity(key):
        # RFC 8445 §7.3: a check with wrong credentials gets no answer from us; only counted.
        state.dropped += 1
        return _DROPS[DropReason.UNAUTHENTICATED]
    moved = False
    if nominating:
        moved = state.latched[component] != source
        _latch(state, component, source, now)
    response = Message(Method.BINDING, MessageClass.SUCCESS_RESPONSE, message.transaction_id)
    response.add(AttributeType.XOR_MAPPED_ADDRESS, Address(source[0], source[1]))
    reply = response.encode(integrity_key=key, fingerprint=True)
    return Answer(reply, source, RTP if state.leg.rtcp_mux else component, moved)


def _note_check(state: LegState, message: Message, nominating: bool, now: float) -> None:
    """Interim (stepaside branch): a Binding request or response with MESSAGE-INTEGRITY counts
    as a check for step-aside; relay/checks.py (latching branch) verifies the integrity."""
    if (
        message.method == Method.BINDING
        and message.message_class != MessageClass.INDICATION
        and message.has(AttributeType.MESSAGE_INTEGRITY)
    ):
        state.checks_authenticated += 1
        state.last_check = now
        if nominating:
            state.last_nomination = now


def _latch(state: LegState, component: int, source: Sockaddr, now: float) -> None:
    """Latch ``source`` for ``component`` (media_latched and ssrc are the caller's)."""
    state.latched[component] = source
    state.latched_seen[component] = now
    _routes(state)


def _routes(state: LegState) -> None:
    """Rebuild the routes towards ``state``'s party: the latched source, else the SDP address.

    A party that multiplexes gets both components on its RTP port, at its RTP address.
    """
    leg = state.leg
    if leg.rtcp_mux:
        route = _route(state.latched[RTP], leg.rtp_peer, RTP)
        state.routes = [route, route]
    else:
        state.routes = [
            _route(state.latched[RTP], leg.rtp_peer, RTP),
            _route(state.latched[RTCP], leg.rtcp_peer, RTCP),
        ]


def _route(latched: Sockaddr | None, peer: Address | None, socket: int) -> Forward | Drop:
    if latched is not None:
        return Forward(latched, socket)
    if peer is not None:
        return Forward((peer.host, peer.port), socket)
    return _NO_DESTINATION
