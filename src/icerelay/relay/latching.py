"""The latching policy: what a relay port does with each datagram, for every data plane.

Latching (the relay learns where a party really is from the packets it sends, because the SDP
address is often a private one behind a NAT) is also how media gets hijacked (the "RTP Bleed"
class): whoever latches a leg receives the other party's audio. The rules, and why:

- **Only what the party could have sent latches.** A leg latches on valid media -- RTP version
  2 whose payload type one of the two SDPs offered, or RTCP version 2 (see :func:`_invalid`
  for the header tests) -- or on an ICE check or response whose MESSAGE-INTEGRITY verifies
  with the credentials of the two SDPs (:mod:`.checks`). Anything else never latches and is
  dropped unless it comes from the latched source; DTLS and ZRTP (RFC 7983) are relayed but
  do not latch, except a DTLS hello on a leg whose SDP keys SRTP with DTLS and that has not
  latched yet (:func:`_dtls_hello`: the party's first packet). Without payload types
  (MediaProxy's protocol) any RTP version 2 is valid; without both SDPs' ICE credentials,
  STUN never latches (nothing can verify it); a stream that is not RTP (T.38 over UDPTL)
  cannot be validated, so its first packet latches.
- **The first valid packet latches; after that, silence alone never hands a leg over.**
  Another source takes a latched leg only when (a) it continues the latched source's RTP
  stream: the same SSRC and a sequence number at most :data:`MAX_DROPOUT` ahead of the last
  one (RFC 3550 A.1; an off-path attacker cannot guess a 32-bit SSRC), once the latched source
  has been silent for ``handover_after`` seconds (so two sources sending the same stream do not
  take turns) -- a NAT rebinding; (b) it sends an authenticated nominating check (USE-CANDIDATE),
  or answers one the other party sent; (c) it is the address signalling announced for the
  party, if that is globally routable (a packet from there would be answered there anyway); or
  (d) it comes from the *host* of that announced public address (another port: the NAT gave
  the party a new mapping, as after a long hold) with a new stream, once the latched source
  has been silent for ``handover_after`` -- a phone that resumes from hold with a new SSRC
  through a NAT whose mapping expired; only a host behind the party's own public address can
  send from there and receive the answers. A latch learnt from checks only (provisional)
  yields to valid media from any source an authenticated check came from.
- Everything else from another source is a refused handover: relayed without moving the
  latch, or dropped with ``strict_source``. Every drop and refusal is counted by reason
  (:attr:`LegState.refusals`).

On a leg with rtcp-mux, packets with an RTCP packet type (RFC 5761 §4) on the RTP port are RTCP.
On a leg with its own ICE credentials (``ICE=force``) the relay is an ICE-lite agent (RFC 8445
§2.5): it answers authenticated Binding requests itself and a nominating request latches;
checks with wrong credentials get no answer (a 401 would tell an attacker the ufrag is right).

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
each component towards that party, rebuilt only when its latch or its description changes; it
keeps a reference to the last packet from the latched source (not its parsed SSRC and
sequence number, which would be new int objects) for the continuity test. The verdict's
``moved`` says that this packet moved the sender's latch, so the routes towards the sender
changed: a kernel data plane reprograms its map then.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum

from icerelay.errors import StunError
from icerelay.relay.checks import CheckKeys, CheckVerdict, check_keys, verify_message
from icerelay.relay.forwarding import Forwarding, ForwardingCounters, Leg, LegCounters
from icerelay.relay.packets import PacketKind, ssrc, stun_kind
from icerelay.stun import Address, AttributeType, MessageClass, Method, decode_message, is_stun
from icerelay.stun.credentials import short_term_key
from icerelay.stun.message import Message

__all__ = [
    "HANDOVER_REFUSED",
    "MAX_DROPOUT",
    "MAX_TRANSACTIONS",
    "MAX_VERIFIED",
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

#: How far ahead of the last sequence number of the latched source a packet from a new source
#: may be and still continue its stream (RFC 3550 A.1's MAX_DROPOUT: a gap of 3000 packets is
#: a minute of 20 ms audio lost, far more than a NAT rebinding costs; 3000/65536 of a guess).
MAX_DROPOUT = 3000

#: Sources of authenticated checks remembered per component (the party's ICE candidates seen
#: at the relay); bounded, the oldest go first.
MAX_VERIFIED = 8

#: Transaction IDs of authenticated requests remembered per leg, against replays.
MAX_TRANSACTIONS = 32

#: The refusal counted when another source's valid packet met no handover rule.
HANDOVER_REFUSED = "handover-refused"


class DropReason(StrEnum):
    """Why a packet is not relayed."""

    #: It came from one of the relay's own ports of this stream (a party named a relay port as
    #: its address): forwarding it would start a loop.
    OWN_SOURCE = "own-source"
    #: ``strict_source``: not from the latched source, and no handover rule let it take over.
    FOREIGN_SOURCE = "foreign-source"
    #: The other party's address is unknown (no SDP address yet, or on hold) and not latched.
    NO_DESTINATION = "no-destination"
    #: It looks like STUN but does not decode.
    MALFORMED_STUN = "malformed-stun"
    #: A check with the wrong username or message integrity (for the relay's ICE-lite agent,
    #: or for the credentials of the two SDPs).
    UNAUTHENTICATED = "unauthenticated"
    #: ICE-lite leg: a STUN message that is not a Binding request (nothing to answer). Not
    #: counted in :attr:`LegState.dropped`, as before this policy had a name.
    NOT_A_CHECK = "not-a-check"
    #: From a source other than the latched one: neither RTP/RTCP version 2 nor STUN, DTLS or
    #: ZRTP (RFC 7983), or too short for its header.
    NOT_MEDIA = "not-media"
    #: From a source other than the latched one: RTP with a payload type neither SDP offered.
    UNKNOWN_PAYLOAD_TYPE = "unknown-payload-type"
    #: An authenticated check whose transaction ID came from another source before: a copy
    #: replayed by someone on the path (a retransmission comes from the same source).
    REPLAYED_CHECK = "replayed-check"


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
_NO_DESTINATION = _DROPS[DropReason.NO_DESTINATION]
_NO_DESTINATION_MOVED = Drop(DropReason.NO_DESTINATION, moved=True)
# Enum members as module constants: looking one up on its class costs ~80 ns in Python 3.11.
_NOMINATION = PacketKind.STUN_NOMINATION
_STUN_OTHER = PacketKind.STUN_OTHER
_FOREIGN = DropReason.FOREIGN_SOURCE
_NOT_MEDIA = DropReason.NOT_MEDIA
_UNKNOWN_PT = DropReason.UNKNOWN_PAYLOAD_TYPE
_UNAUTHENTICATED = DropReason.UNAUTHENTICATED
_VERIFIED_NOMINATION = CheckVerdict.NOMINATION
_VERIFIED_RESPONSE = CheckVerdict.RESPONSE
_VERIFIED_OTHER = CheckVerdict.OTHER
_UNVERIFIED = CheckVerdict.UNAUTHENTICATED


@dataclass(slots=True, eq=False)
class LegState:
    """The latching state and counters of one leg (one party), owned by this module.

    Lists are indexed by component (:data:`RTP`, :data:`RTCP`). :attr:`latched` is the party's
    source; :attr:`media_latched` says whether media decided it (final) or only ICE checks
    (provisional); :attr:`latched_seen` is when the latched source last sent; :attr:`ssrc` is
    the SSRC of the media packet that latched (None if a check did); :attr:`recent` the last
    packet from the latched source (for the continuity test).
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
    recent: list[bytes | None] = field(default_factory=lambda: [None, None])
    #: A kernel data plane forwarded media from the latched RTP source that this policy never
    #: saw, so :attr:`recent`'s sequence number is stale: rule (a) then asks for the latched
    #: SSRC alone (still 32 bits an off-path attacker must guess). Cleared by the next packet
    #: the policy sees from the latched source.
    unseen_media: bool = False
    #: What a packet of each component *towards this party* gets: see :func:`_routes`.
    routes: list[Forward | Drop] = field(default_factory=lambda: [_NO_DESTINATION] * 2)
    #: The payload types either SDP offered (None: unknown, any is valid).
    payload_types: frozenset[int] | None = None
    #: Keys verifying the checks from this party (None: an SDP had no ICE credentials), and
    #: the keys before an ICE restart (checks with the old credentials go on until it ends).
    keys: CheckKeys | None = None
    previous_keys: CheckKeys | None = None
    #: The addresses signalling announced for the party, per component, if public (rule c).
    announced: list[Sockaddr | None] = field(default_factory=lambda: [None, None])
    #: Sources of this party's authenticated checks, per component (at most MAX_VERIFIED).
    verified: list[list[Sockaddr]] = field(default_factory=lambda: [[], []])
    #: Transaction ID of the last authenticated nominating check the *other* party sent: this
    #: party's answer to it moves this party's latch.
    nominating: bytes | None = None
    #: Sources of the last authenticated requests from this party, by transaction ID.
    transactions: dict[bytes, Sockaddr] = field(default_factory=dict)
    packets: int = 0
    bytes: int = 0
    rtcp_packets: int = 0
    dropped: int = 0
    refusals: dict[str, int] = field(default_factory=dict)
    stun_requests: int = 0
    stun_nominations: int = 0
    checks_authenticated: int = 0
    last_check: float | None = None
    last_nomination: float | None = None
    last_media: float | None = None
    last_packet: float | None = None

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
        self.recent = [None, None]
        self.verified = [[], []]
        _routes(self)

    def counters(self) -> LegCounters:
        """A snapshot of the counters and latched addresses."""
        rtp, rtcp = self.latched
        refusals = self.refusals
        # Positional, in LegCounters' field order: the engine takes a snapshot per deadline
        # and the service one per live stream per second (the latch watcher), so keywords
        # and copying an empty dict showed up in the ng path's profile.
        return LegCounters(
            self.packets,
            self.bytes,
            self.rtcp_packets,
            self.dropped,
            refusals.copy() if refusals else {},
            self.stun_requests,
            self.stun_nominations,
            self.checks_authenticated,
            self.last_check,
            self.last_nomination,
            self.last_media,
            self.last_packet,
            Address(rtp[0], rtp[1]) if rtp else None,
            Address(rtcp[0], rtcp[1]) if rtcp else None,
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
        which learns its source afresh (by the same rules as the first time)."""
        for state, leg in ((self.a, forwarding.a), (self.b, forwarding.b)):
            previous = state.leg
            state.leg = leg
            if leg.local != previous.local or (leg.rtp_peer, leg.rtcp_peer) != (
                previous.rtp_peer,
                previous.rtcp_peer,
            ):
                state.forget()
            elif leg.sdp_ice != previous.sdp_ice:
                # An ICE restart: the candidates seen so far proved the old credentials.
                state.verified = [[], []]
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
        a_types, b_types = forwarding.a.payload_types, forwarding.b.payload_types
        # A sender may use the payload types of either SDP (RFC 3264 §5.1 numbers them for the
        # receiver; asymmetric dynamic numbers happen), so either is valid on both legs.
        types = a_types | b_types if a_types is not None and b_types is not None else None
        for state in (self.a, self.b):
            leg = state.leg
            state.strict_source = forwarding.strict_source
            state.handover_after = forwarding.handover_after
            state.own = frozenset(own)
            state.payload_types = types
            keys = check_keys(leg.sdp_ice, state.peer.leg.sdp_ice)
            if keys != state.keys:
                state.previous_keys = state.keys
                state.keys = keys
            state.announced = [_announced(leg.rtp_peer), _announced(leg.rtcp_peer)]
            _routes(state)


def _announced(address: Address | None) -> Sockaddr | None:
    """The address signalling announced, if it may take a latch over (rule c): only a
    globally routable one. A private address (a phone behind a NAT) never sends from there
    across the Internet; letting it take over would let anyone who can spoof it point the
    media at an unreachable address."""
    if address is None or not _is_global(address.host):
        return None
    return (address.host, address.port)


@functools.lru_cache(maxsize=4096)
def _is_global(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_global
    except ValueError:
        return False


def decide(state: LegState, component: int, data: bytes, source: Sockaddr, now: float) -> Verdict:
    """Decide what to do with ``data``, which arrived from ``source`` on ``state``'s relay port
    ``component`` at time ``now``; update the latches and counters of ``state``.

    The hot path: keep it free of calls and allocations for media from the latched source.
    ``data`` must be immutable (``bytes``, not a view of a reused buffer): the policy keeps a
    reference to the last packet from the latched source for the continuity test.
    """
    if source in state.own:
        return _refuse(state, DropReason.OWN_SOURCE)
    if data and data[0] < 4 and is_stun(data):
        return _stun(state, component, data, source, now)
    if component == RTP and state.leg.rtcp_mux and len(data) > 1 and 192 <= data[1] <= 223:
        # RFC 5761 §4: on a multiplexed port, packet types 192..223 are RTCP.
        component = RTCP
    moved = False
    if state.latched[component] == source:
        state.recent[component] = data
        state.unseen_media = False
        state.latched_seen[component] = now
        state.media_latched[component] = True
    else:
        handover = _handover(state, component, data, source, now)
        if handover is True:
            moved = True
        elif isinstance(handover, DropReason) and (handover is not _FOREIGN or state.strict_source):
            return _refuse(state, handover)
    state.last_packet = now
    state.last_media = now
    if component == RTCP:
        state.rtcp_packets += 1
    else:
        state.packets += 1
        state.bytes += len(data)
    route = state.peer.routes[component]
    if moved or route is _NO_DESTINATION:
        return _onward(state, component, moved)
    return route


def _handover(
    state: LegState, component: int, data: bytes, source: Sockaddr, now: float
) -> DropReason | bool:
    """A packet from a source other than the latched one: True if it took the latch over;
    False to relay it without latching; else why not (:attr:`DropReason.FOREIGN_SOURCE`:
    valid, but no rule let it: relayed unless ``strict_source``; the other reasons are always
    dropped)."""
    opaque = state.leg.opaque
    if opaque:
        invalid = None
    else:
        invalid = _invalid(state, component, data)
        if invalid is not None and not _keying(data):
            return invalid
    latched = state.latched[component]
    if invalid is None:
        if (
            (latched is None and _pairs(state, component, source))
            or source == state.announced[component]
            or (not state.media_latched[component] and source in state.verified[component])
            or (not opaque and _continues(state, component, data, now))
            or _rejoins(state, component, source, now)
        ):
            _latch(state, component, source, now)
            state.media_latched[component] = True
            state.recent[component] = data
            state.ssrc[component] = _ssrc(data, component)
            return True
    elif latched is None:
        if state.leg.dtls and _pairs(state, component, source) and _dtls_hello(data):
            # A DTLS-SRTP party without ICE (RFC 5763) sends its handshake before any SRTP,
            # and behind a NAT the answer can only reach it at the source it sends from: a
            # leg with nothing better latches on the hello, as it would on a first RTP
            # packet (both are header tests; the SRTP that follows from it confirms it).
            _latch(state, component, source, now)
            return True
        # ZRTP, or DTLS where the SDP announced none, before anything latched: relay it
        # towards the SDP address, but it proves nothing about its source.
        return False
    _count(state, HANDOVER_REFUSED)
    return _FOREIGN


def _pairs(state: LegState, component: int, source: Sockaddr) -> bool:
    """The first latch of a component must come from the host the leg's other component
    latched on, if it did: a party sends RTP and RTCP from one address (a NAT maps them to one
    public address, RFC 4787 REQ-2). Otherwise a stranger racing the party's first RTCP packet
    would receive the other party's receiver reports, which name the party's SSRC and sequence
    numbers: exactly what rule (a) needs."""
    other = state.latched[1 - component]
    return other is None or other[0] == source[0]


def _invalid(state: LegState, component: int, data: bytes) -> DropReason | None:
    """Why ``data`` is not media the party could have sent on ``component``, or None.

    The header tests of RFC 3550 A.1/A.2 that hold for SRTP and SRTCP too (their headers are
    in the clear): version 2; for RTCP, a first packet type SR..XR (200..207) whose length fits
    the datagram; for RTP, a payload type an SDP offered, and CSRCs, header extension and
    padding that fit. Random bytes pass about once in 400 (measured: 200-byte datagrams, three
    offered payload types); a deliberate stranger's valid RTP is met by the handover rules.
    """
    size = len(data)
    if size < 8 or data[0] & 0xC0 != 0x80:
        return _NOT_MEDIA
    if 192 <= data[1] <= 223:
        # RTCP: on the RTCP port, demultiplexed on the RTP port, or on the RTP port of a party
        # that multiplexes although the relay does not think so.
        if data[1] < 200 or data[1] > 207 or (((data[2] << 8) | data[3]) + 1) * 4 > size:
            return _NOT_MEDIA
        return None
    header = 12 + 4 * (data[0] & 0x0F)
    if component == RTCP or size < header:
        return _NOT_MEDIA
    if data[0] & 0x10:
        # A header extension: 4 bytes of profile and length (in words), then the words.
        if size < header + 4:
            return _NOT_MEDIA
        header += 4 + 4 * ((data[header + 2] << 8) | data[header + 3])
        if size < header:
            return _NOT_MEDIA
    if data[0] & 0x20 and not 0 < data[-1] <= size - header:
        return _NOT_MEDIA
    types = state.payload_types
    if types is not None and data[1] & 0x7F not in types:
        return _UNKNOWN_PT
    return None


def _dtls_hello(data: bytes) -> bool:
    """A DTLS record that opens a handshake (RFC 6347 §4.1, §4.2.2; RFC 9147 keeps this
    plaintext framing for its first flight): content type 22, version 1.0 or 1.2, epoch 0, a
    length that fits the datagram, and a ClientHello, ServerHello or HelloVerifyRequest."""
    return (
        len(data) >= 25
        and data[0] == 22
        and data[1] == 0xFE
        and data[2] in (0xFF, 0xFD)
        and data[3] == 0
        and data[4] == 0
        and 13 + ((data[11] << 8) | data[12]) <= len(data)
        and data[13] in (1, 2, 3)
    )


def _keying(data: bytes) -> bool:
    """ZRTP (first byte 16..19) or DTLS (20..63), RFC 7983 §7: relayed, never latching."""
    return bool(data) and 16 <= data[0] <= 63


def _continues(state: LegState, component: int, data: bytes, now: float) -> bool:
    """True if valid ``data`` from a new source continues the latched source's stream (rule a).

    RTP: the same SSRC as the last packet from the latched source and a sequence number at
    most :data:`MAX_DROPOUT` ahead of it (modulo 2^16). RTCP carries no sequence number: its
    sender SSRC must be the one of the latched RTP or RTCP stream. Either way the latched source
    must have been silent for ``handover_after`` seconds.
    """
    guard = state.handover_after
    if guard and now - state.latched_seen[component] < guard:
        return False
    if component == RTCP:
        sender = data[4:8]
        rtcp, rtp = state.recent[RTCP], state.recent[RTP]
        return (rtcp is not None and len(rtcp) >= 8 and rtcp[4:8] == sender) or (
            rtp is not None and len(rtp) >= 12 and rtp[8:12] == sender
        )
    last = state.recent[RTP]
    if last is None or len(last) < 12 or last[8:12] != data[8:12]:
        return False
    if state.unseen_media:
        return True
    gap = (int.from_bytes(data[2:4], "big") - int.from_bytes(last[2:4], "big")) % 65536
    return 0 < gap <= MAX_DROPOUT


def _rejoins(state: LegState, component: int, source: Sockaddr, now: float) -> bool:
    """True if valid media from ``source`` is the party back on a new NAT mapping (rule d):
    the host of the public address signalling announced for it, another port, the latched
    source silent for ``handover_after`` seconds."""
    announced = state.announced[component]
    if announced is None or source[0] != announced[0]:
        return False
    guard = state.handover_after
    return not guard or now - state.latched_seen[component] >= guard


def _ssrc(data: bytes, component: int) -> int | None:
    if component == RTCP:
        return ssrc(data, PacketKind.RTCP)
    return ssrc(data, PacketKind.RTP)


def _count(state: LegState, reason: str) -> None:
    refusals = state.refusals
    refusals[reason] = refusals.get(reason, 0) + 1


def _refuse(state: LegState, reason: DropReason) -> Drop:
    """Drop, counted in :attr:`LegState.dropped` and by reason."""
    state.dropped += 1
    _count(state, reason)
    return _DROPS[reason]


def _onward(state: LegState, component: int, moved: bool) -> Forward | Drop:
    """The route towards the other party for a packet of ``component``."""
    route = state.peer.routes[component]
    if isinstance(route, Forward):
        return Forward(route.destination, route.socket, moved=True) if moved else route
    _refuse(state, DropReason.NO_DESTINATION)
    return _NO_DESTINATION_MOVED if moved else _NO_DESTINATION


def _pass(state: LegState, component: int, source: Sockaddr) -> Forward | Drop:
    """A packet that may be relayed but never latches (STUN nothing can verify): from the
    latched source, or, without ``strict_source``, from anywhere."""
    latched = state.latched[component]
    if latched is not None and latched != source and state.strict_source:
        return _refuse(state, _FOREIGN)
    return _onward(state, component, False)


def _stun(state: LegState, component: int, data: bytes, source: Sockaddr, now: float) -> Verdict:
    try:
        message = decode_message(data)
    except StunError:
        return _refuse(state, DropReason.MALFORMED_STUN)
    kind = stun_kind(message)
    nominating = kind is _NOMINATION
    if kind is not _STUN_OTHER:
        state.stun_requests += 1
        if nominating:
            state.stun_nominations += 1
    if state.leg.ice_credentials is not None:
        return _ice_lite(state, component, message, kind, source, now)
    keys = state.keys
    if keys is None:
        # The fallback without both SDPs' credentials: nothing can tell the party's checks from
        # a stranger's, so they latch nothing (media will); they still reach the other party.
        return _pass(state, component, source)
    verdict = verify_message(message, keys)
    if verdict is _UNVERIFIED and state.previous_keys is not None:
        verdict = verify_message(message, state.previous_keys)
    if verdict is _UNVERIFIED:
        # The other party would reject it too (RFC 8445 §7.3): drop it here, counted.
        return _refuse(state, _UNAUTHENTICATED)
    if verdict is _VERIFIED_OTHER:
        # An indication (a keepalive) or another method: nothing to verify, nothing learnt.
        return _pass(state, component, source)
    if verdict is not _VERIFIED_RESPONSE and _replayed(state, message.transaction_id, source):
        return _refuse(state, DropReason.REPLAYED_CHECK)
    _authenticated(state, component, source, now, nominating)
    latched = state.latched[component]
    if verdict is _VERIFIED_NOMINATION:
        # Its answer, from the other party, will move the other party's latch (regular
        # nomination: the controlled agent never nominates).
        state.peer.nominating = message.transaction_id
        move = True
    elif verdict is _VERIFIED_RESPONSE:
        move = latched is None or message.transaction_id == state.nominating
    else:  # a plain check: latches only a leg that has nothing yet
        move = latched is None
    moved = move and latched != source
    if moved:
        _latch(state, component, source, now)
    elif latched == source:
        state.latched_seen[component] = now
    return _onward(state, component, moved)


def _replayed(state: LegState, transaction_id: bytes, source: Sockaddr) -> bool:
    """True if an authenticated request with this transaction ID came from another source
    (an on-path copy: only the party knows the password, but anyone who sees a check can send
    it again); else remember it."""
    transactions = state.transactions
    first = transactions.get(transaction_id)
    if first is not None:
        return first != source
    if len(transactions) >= MAX_TRANSACTIONS:
        del transactions[next(iter(transactions))]
    transactions[transaction_id] = source
    return False


def _authenticated(
    state: LegState, component: int, source: Sockaddr, now: float, nominating: bool
) -> None:
    """Count an authenticated check and remember its source as one of the party's."""
    state.checks_authenticated += 1
    state.last_check = now
    if nominating:
        state.last_nomination = now
    verified = state.verified[component]
    if source not in verified:
        if len(verified) >= MAX_VERIFIED:
            del verified[0]
        verified.append(source)


def _ice_lite(
    state: LegState,
    component: int,
    message: Message,
    kind: PacketKind,
    source: Sockaddr,
    now: float,
) -> Verdict:
    """The relay's own ICE-lite agent on this leg (``ICE=force``)."""
    credentials = state.leg.ice_credentials
    assert credentials is not None
    if kind is _STUN_OTHER:
        return _DROPS[DropReason.NOT_A_CHECK]
    username = message.get(AttributeType.USERNAME) or ""
    key = short_term_key(credentials.pwd)
    if not username.startswith(credentials.ufrag + ":") or not message.check_integrity(key):
        # RFC 8445 §7.3: a check with wrong credentials gets no answer from us; only counted.
        return _refuse(state, _UNAUTHENTICATED)
    if _replayed(state, message.transaction_id, source):
        return _refuse(state, DropReason.REPLAYED_CHECK)
    nominating = kind is _NOMINATION
    _authenticated(state, component, source, now, nominating)
    moved = False
    if nominating:
        moved = state.latched[component] != source
        _latch(state, component, source, now)
    response = Message(Method.BINDING, MessageClass.SUCCESS_RESPONSE, message.transaction_id)
    response.add(AttributeType.XOR_MAPPED_ADDRESS, Address(source[0], source[1]))
    reply = response.encode(integrity_key=key, fingerprint=True)
    return Answer(reply, source, RTP if state.leg.rtcp_mux else component, moved)


def _latch(state: LegState, component: int, source: Sockaddr, now: float) -> None:
    """Latch ``source`` for ``component`` (media_latched, recent and ssrc are the caller's)."""
    if state.latched[component] != source:
        state.recent[component] = None
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
