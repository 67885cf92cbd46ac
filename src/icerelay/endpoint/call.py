"""The call controller: one phone call over the SIP user agent, the RTP session and ICE, sans I/O.

:class:`CallController` is what ``icerelay phone`` is, without sockets or a clock: it places or
answers one call with the SIP :class:`~icerelay.sip.useragent.UserAgent`, builds the SDP
(:mod:`icerelay.endpoint.offer`), runs the :class:`~icerelay.endpoint.session.RtpSession` and,
with ICE, an :class:`icerelay.ice.session.Session`, and reports how it went. It follows the
engine convention of DESIGN.md::

    controller = CallController(options, sip=("192.0.2.10", 5060), rng=random.Random(1))
    controller.start(now)
    controller.receive(data, source, destination, now)   # SIP, RTP, RTCP or STUN
    controller.datagrams_to_send(now)                     # [Datagram], with source addresses
    controller.next_timer() / controller.handle_timer(now)
    controller.next_event()                               # PortsWanted, Notice, CallFinished...

The driver binds the SIP socket itself; media ports it binds when asked (:class:`PortsWanted`,
answered with :meth:`CallController.ports_bound`), and it delivers each datagram with the
local address it arrived on, which tells the controller whose it is.

Media without ICE is symmetric RTP (RFC 4961): sent from the port we receive on, to the peer's
``c=``/``m=`` address, and re-pointed ("latched") to where the peer's packets really come from,
as Asterisk does with ``nat=yes``, so a peer behind a NAT still hears us.

With ICE the offer carries the candidates in the shape of asterisk-ice.txt; media goes over the
pair ICE selects; once ICE completes the controlling agent (the caller) sends the updated offer
in a re-INVITE with the selected candidate in ``c=``/``m=`` and ``a=remote-candidates``
(RFC 8445 section 8.1.2 / RFC 8839 section 4.2.2); the answerer handles it.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from icerelay.endpoint.audio import AudioSource, Recorder, ToneSource
from icerelay.endpoint.errors import RtpError
from icerelay.endpoint.events import (
    CallAnswered,
    CallEnded,
    CallEvent,
    CallFinished,
    DebugLine,
    MediaStarted,
    Notice,
    PortsWanted,
)
from icerelay.endpoint.offer import (
    LocalMedia,
    RemoteMedia,
    SdpOrigin,
    best_default,
    build_sdp,
    ice_media,
    parse_remote,
)
from icerelay.endpoint.options import IceSetup, PhoneOptions, PhoneResult
from icerelay.endpoint.session import (
    CODECS,
    RTCP_COMPONENT,
    RTP_COMPONENT,
    Codec,
    DtmfReceived,
    RemoteBye,
    RtpSession,
)
from icerelay.errors import IcerelayError, SdpError
from icerelay.ice.candidate import Candidate as IceCandidate
from icerelay.ice.config import AgentConfig
from icerelay.ice.events import (
    CandidatePairStateChanged,
    ConnectionState,
    ConnectionStateChanged,
    DataReceived,
    GatheringComplete,
    SelectedPairChanged,
)
from icerelay.ice.session import Session
from icerelay.net import Address as NetAddress
from icerelay.net import Datagram
from icerelay.sip import useragent as sip
from icerelay.sip.message import SipUri
from icerelay.sip.useragent import Call, CallState, UserAgent

if TYPE_CHECKING:
    from random import Random

Address = tuple[str, int]

EARLY_MEDIA_KEPT = 64
"""Datagrams kept from before the RTP session exists (the answerer's first packets may beat
its 200 OK), replayed into the session when it starts."""

ICE_COMPLETION_WAIT = 10.0
"""How long the controlling agent waits for ICE to complete before the updated offer anyway."""

BYE_WAIT = 5.0
"""How long to wait for the answer to our BYE or CANCEL before giving up on it."""

_ANSWER_DIRECTION = {"sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}


class CallController:
    """One call, from setup to statistics (see the module docstring).

    ``sip`` is the SIP address (the socket's, or the host's address when the socket is bound to
    the wildcard). ``ice`` is how to run ICE when the call uses it (None: ICE is never used).
    ``source`` makes the audio to send (default: the tone of ``options.tone``); ``wall_clock``
    gives the wall-clock time for RTCP sender reports; ``resolve`` turns a host name from SIP or
    SDP into an address (default: names are used as they are). ``rng`` draws every random value:
    SIP tags and branches, ICE credentials, SSRC, sequence numbers, the SDP session id.
    """

    def __init__(
        self,
        options: PhoneOptions,
        *,
        sip: Address,
        rng: Random,
        ice: IceSetup | None = None,
        source: Callable[[], AudioSource] | None = None,
        wall_clock: Callable[[], float] | None = None,
        resolve: Callable[[str], str] | None = None,
    ) -> None:
        self.options = options
        self.result = PhoneResult()
        self.sip = sip
        self._rng = rng
        self._ice_setup = ice
        self._source = source or (lambda: ToneSource(options.tone, amplitude=0.3))
        self._wall_clock = wall_clock
        self._resolver = resolve or (lambda host: host)
        self.recorder = Recorder() if options.record else Recorder(max_duration=600.0)
        self.origin = SdpOrigin.new(rng=rng)
        self.ua = UserAgent(
            sip,
            user=options.user,
            username=options.username,
            password=options.password,
            user_agent="icerelay phone",
            transport=options.transport,
            trace=self._trace if options.debug else None,
            rng=rng,
        )
        if options.external_address is not None:
            external_host, external_port = options.external_address
            self.ua.public_address = (external_host, external_port or sip[1])
        self.call: Call | None = None
        self.session: RtpSession | None = None
        self.ice: Session | None = None
        """The ICE session while the call uses ICE (None without, or after falling back)."""
        self._retired: list[Session] = []  # closed ICE sessions still sending their goodbyes
        self._events: deque[CallEvent] = deque()
        self._finished = False
        self._remote: RemoteMedia | None = None
        self._rtp: Address | None = None
        self._rtcp: Address | None = None
        self._rtp_destination: Address | None = None
        self._rtcp_destination: Address | None = None
        self._latched = {RTP_COMPONENT: False, RTCP_COMPONENT: False}
        self._rtcp_mux = options.rtcp_mux
        self._early: list[tuple[int, bytes, float]] = []
        self._names: dict[str, str] = {}
        self._peer_name: str | None = options.peer
        if options.target is not None and self._peer_name is None:
            with contextlib.suppress(IcerelayError):
                self._peer_name = SipUri.parse(options.target).user
        # The step that waits for local media (ports, then ICE gathering): "offer" or "answer".
        self._preparing: str | None = None
        self._pending_ice: tuple[bool, int] | None = None  # (controlling, components) to gather
        self._answer_call: Call | None = None
        self._answer_sdp: bytes | None = None
        self._answer_ice = False
        self._ice_remote: RemoteMedia | None = None
        self._ice_controlling = False
        # Deadlines (None: not armed).
        self._hangup_at: float | None = None
        self._give_up_at: float | None = None
        self._answer_at: float | None = None
        self._ice_connect_by: float | None = None
        self._ice_complete_by: float | None = None
        self.ice_send_errors = 0
        self.ice_media_received = 0

    # -- application interface --------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """The call is over (:class:`CallFinished` was reported)."""
        return self._finished

    def start(self, now: float) -> None:
        """Place the call (with ``options.target``) or wait for one."""
        if self.options.target is not None:
            self._give_up_at = now + self.options.setup_timeout
            self._prepare("offer", ice=None, remote=None, now=now)
        elif self.options.wait is not None:
            self._give_up_at = now + self.options.wait
        self._pump(now)

    def ports_bound(self, ports: Mapping[int, Sequence[Address]], now: float) -> None:
        """The answer to :class:`PortsWanted`: ``{component: [local address, ...]}``."""
        if self._pending_ice is not None:
            controlling, components = self._pending_ice
            self._pending_ice = None
            setup = self._ice_setup or IceSetup(AgentConfig())
            self.ice = Session(
                controlling=controlling,
                streams=(components,),
                lite=self.options.ice_lite,
                config=setup.config,
                turn_servers=setup.turn_servers,
                rng=self._rng,
            )
            addresses = {c: [_pair(a) for a in ports[c]] for c in range(1, components + 1)}
            self.ice.gather([addresses], now)  # continues at GatheringComplete
        else:
            self._rtp, self._rtcp = _pair(ports[RTP_COMPONENT][0]), _pair(ports[RTCP_COMPONENT][0])
            self._local_media_ready(now)
        self._pump(now)

    def fail(self, reason: str, now: float) -> None:
        """End the call because of a local failure the driver met (no port to bind...)."""
        self._say(f"error: {reason}")
        self.result.end_reason = f"error: {reason}"
        self._finish(now)
        self._pump(now)

    def close(self, now: float) -> None:
        """Stop ICE (TURN allocations are released by the next datagrams) and complete the
        result with the RTP statistics; call once, after :class:`CallFinished` or to abort."""
        if self.session is not None and not self.session.stopped:
            self.session.stop(now)
        if self.ice is not None:
            if self.options.debug:
                agent = self.ice.agents[0]
                self._debug(f"ICE: {agent.checks_sent} checks sent, "
                            f"{self.ice_media_received} media datagrams received, "
                            f"{agent.data_dropped} media datagrams dropped "
                            "(not from a known peer address)")
                for relay in agent.gatherer.relays():
                    counters = getattr(getattr(relay, "allocation", None), "counters", None)
                    if counters is not None:
                        self._debug(f"TURN relay via {_hp(relay.server)}: {counters}")
            self.ice.close(now)
            self._retired.append(self.ice)
        if self.session is not None:
            self.result.statistics = self.session.statistics()
        self.result.recorded_samples = len(self.recorder.samples)

    # -- engine interface -------------------------------------------------------------------------

    def receive(self, data: bytes, source: Any, destination: Any, now: float) -> None:
        """Feed one datagram (or one SIP message framed off a TCP connection) that arrived on
        the local address ``destination``."""
        source, destination = _pair(source), _pair(destination)
        if destination == self.sip:
            self.ua.receive(data, source, now)
        elif self.ice is not None and _owns(self.ice, destination):
            self.ice.receive(data, source, destination, now)
        elif destination == self._rtp:
            self._media_received(RTP_COMPONENT, data, source, now)
        elif destination == self._rtcp:
            self._media_received(RTCP_COMPONENT, data, source, now)
        else:
            for retired in self._retired:
                if _owns(retired, destination):
                    retired.receive(data, source, destination, now)
        self._pump(now)

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        out: list[Datagram] = []
        sip_source = NetAddress(*self.sip)
        for data, to in self.ua.datagrams_to_send(now):
            out.append(Datagram(data, sip_source, NetAddress(*self._resolve(to))))
        if self.session is not None:
            for packet in self.session.datagrams_to_send(now):
                if self.ice is not None:
                    try:
                        self.ice.send(0, packet.data, packet.component, now=now)
                    except IcerelayError as exc:
                        # No pair for that component yet, or consent lost: counted, told once.
                        self.ice_send_errors += 1
                        if self.ice_send_errors == 1:
                            self._say(f"ICE: cannot send on component {packet.component}: {exc}")
                    continue
                local: Address | None
                destination: Address | None
                if packet.component == RTP_COMPONENT or self._rtcp_mux:
                    local, destination = self._rtp, self._rtp_destination
                else:
                    local, destination = self._rtcp, self._rtcp_destination
                if local is not None and destination is not None:
                    out.append(Datagram(packet.data, NetAddress(*local), NetAddress(*destination)))
        for ice in (*([self.ice] if self.ice is not None else []), *self._retired):
            for datagram in ice.datagrams_to_send(now):
                out.append(Datagram(datagram.data, NetAddress(*datagram.source),
                                    NetAddress(*datagram.destination), datagram.transport))
        return out

    def next_timer(self) -> float | None:
        timers = [
            self.ua.next_timer(),
            self.session.next_timer() if self.session is not None else None,
            self.ice.next_timer() if self.ice is not None else None,
            *(retired.next_timer() for retired in self._retired),
            self._hangup_at,
            self._give_up_at,
            self._answer_at,
            self._ice_connect_by,
            self._ice_complete_by,
        ]
        return min((t for t in timers if t is not None), default=None)

    def handle_timer(self, now: float) -> None:
        self.ua.handle_timer(now)
        if self.session is not None:
            self.session.handle_timer(now)
        for ice in (*([self.ice] if self.ice is not None else []), *self._retired):
            ice.handle_timer(now)
        self._pump(now)
        if self._answer_at is not None and now >= self._answer_at:
            self._answer_at = None
            self._answer_now(now)
        if self._ice_connect_by is not None and now >= self._ice_connect_by:
            self._ice_failed("", now)  # asyncio.timeout's TimeoutError says nothing more
        if self._ice_complete_by is not None and now >= self._ice_complete_by:
            self._ice_completed(now)
        self._check_deadlines(now)
        self._pump(now)

    def next_event(self) -> CallEvent | None:
        return self._events.popleft() if self._events else None

    # -- the engines' events ----------------------------------------------------------------------

    def _pump(self, now: float) -> None:
        """Act on what the SIP UA, ICE and RTP report until they are quiet."""
        busy = True
        while busy:
            busy = False
            while (event := self.ua.next_event()) is not None:
                busy = True
                self._sip_event(event, now)
            if self.ice is not None:
                ice = self.ice
                while (stream_event := ice.next_event()) is not None:
                    busy = True
                    self._ice_event(stream_event.event, now)
                self._check_ice(now)
            for retired in self._retired:
                while retired.next_event() is not None:
                    pass
            if self.session is not None:
                while (media_event := self.session.next_event()) is not None:
                    busy = True
                    if isinstance(media_event, DtmfReceived):
                        self._say(f"DTMF {media_event.digit}")
                    elif isinstance(media_event, RemoteBye):
                        self._say("peer sent RTCP BYE")

    def _check_deadlines(self, now: float) -> None:
        if self._hangup_at is not None and now >= self._hangup_at:
            self._hangup_at = None
            if self.call is not None and self.call.state is not CallState.TERMINATED:
                self._say("hanging up")
                self.ua.hangup(self.call, now)
            self._give_up_at = now + BYE_WAIT  # if the BYE is never answered
        if self._give_up_at is not None and now >= self._give_up_at:
            self._give_up_at = None
            if self.call is not None and self.call.state in (
                CallState.CALLING,
                CallState.EARLY,
                CallState.INCOMING,
            ):
                # CANCEL (or 486 to an incoming call), then wait a moment for the 487 so the
                # peer's transaction ends cleanly; the next expiry finishes regardless.
                self.result.end_reason = "call setup timed out"
                self.ua.hangup(self.call, now)
                if self.call.outgoing and not self.call.provisional_received:
                    self._finish(now)  # nobody answered at all: there is no one to CANCEL
                    return
                self._give_up_at = now + BYE_WAIT
                return
            if self.call is None:
                self.result.end_reason = "no incoming call"
            else:
                self.result.end_reason = self.result.end_reason or "BYE not answered"
            self._finish(now)

    def _finish(self, now: float) -> None:
        if self._finished:
            return
        if self.session is not None and not self.session.stopped:
            self.session.stop(now)  # the RTCP BYE leaves with the next datagrams
        self._finished = True
        for name in ("_hangup_at", "_give_up_at", "_answer_at", "_ice_connect_by",
                     "_ice_complete_by"):
            setattr(self, name, None)
        self._events.append(CallFinished(self.result))

    # -- SIP --------------------------------------------------------------------------------------

    def _trace(self, direction: str, data: bytes, peer: Address) -> None:
        # The layout of Asterisk's `sip set debug on`, so the SDP and candidates read the same.
        verb = "Transmitting to" if direction == "sent" else "Received from"
        text = data.decode("utf-8", "replace").replace("\r\n", "\n").rstrip("\n")
        self._debug(f"<--- {verb} {peer[0]}:{peer[1]} --->\n{text}\n<------------->")

    def _sip_event(self, event: sip.Event, now: float) -> None:
        if isinstance(event, sip.IncomingCall):
            self._incoming(event, now)
        elif isinstance(event, sip.CallProgress):
            self._say(f"call progress: {event.status} {event.reason}")
        elif isinstance(event, sip.CallAnswered):
            self._say("call answered")
            self._answered(event.call, event.answer, now)
        elif isinstance(event, sip.CallConfirmed):
            self._say("call confirmed (ACK)")
        elif isinstance(event, sip.ReinviteReceived):
            self._reinvite_received(event.call, event.offer, now)
        elif isinstance(event, sip.ReinviteAnswered):
            self._say("re-INVITE answered")
        elif isinstance(event, sip.ReinviteFailed):
            self._say(f"re-INVITE failed: {event.status}")
        elif isinstance(event, sip.CallEnded) and event.call is self.call:
            self._say(f"call ended: {event.reason}")
            self._events.append(CallEnded(event.reason))
            self.result.end_reason = self.result.end_reason or event.reason
            self._finish(now)

    def _incoming(self, event: sip.IncomingCall, now: float) -> None:
        if self.call is not None or not self.options.answer:
            self.ua.reject(event.call, now, 486)
            return
        self.call = event.call
        self._give_up_at = None
        self._say(f"incoming call from {event.request.from_address.uri}")
        self._peer_name = event.request.from_address.uri.user
        try:
            remote = parse_remote(event.offer or b"", supported=self._codecs())
        except SdpError as exc:
            self._say(f"cannot use the offer: {exc}")
            self.ua.reject(event.call, now, 488)
            return
        self._remote = remote
        self.ua.ringing(event.call, now)
        self._rtcp_mux = remote.rtcp_mux  # RFC 5761: accept multiplexing when offered
        use_ice = self._ice_for(self._peer_name) and remote.has_ice and not remote.ice_mismatch
        if remote.ice_mismatch and self._ice_for(self._peer_name):
            self._say("ICE mismatch: the offer's c=/m= is not one of its candidates; plain RTP")
        self._answer_call, self._answer_ice = event.call, use_ice
        self._prepare("answer", ice=use_ice, remote=remote, now=now)

    def _answer_now(self, now: float) -> None:
        call, answer, remote = self._answer_call, self._answer_sdp, self._remote
        if call is None or answer is None or remote is None:
            return
        self._answer_call = self._answer_sdp = None
        if call.state is not CallState.INCOMING:
            return  # cancelled while we gathered or rang
        self.ua.answer(call, answer, now)
        self._established(now)
        if self._answer_ice:
            # RFC 8445 section 6.1.1: facing an ICE-lite peer, the full agent controls.
            self._start_ice(remote, controlling=remote.ice_lite, now=now)
        else:
            self._start_plain_media(remote, now)

    def _answered(self, call: Call, answer: bytes, now: float) -> None:
        self._established(now)
        try:
            remote = parse_remote(answer, supported=self._codecs())
        except SdpError as exc:
            self._say(f"cannot use the answer: {exc}; hanging up")
            self.ua.hangup(call, now)
            return
        self._remote = remote
        self._rtcp_mux = self._rtcp_mux and remote.rtcp_mux
        if self.ice is not None and remote.ice_mismatch_signalled:
            self._say("the answer says a=ice-mismatch: plain RTP to its c=/m=")
            self._fall_back_to_plain(remote, now)
        elif self.ice is not None and remote.has_ice:
            if self._rtcp_mux:
                self.ice.agents[0].use_rtcp_mux()
            # A lite agent never controls (RFC 8445 section 6.1.1); a full one facing us does.
            self._start_ice(remote, controlling=not self.options.ice_lite, now=now)
        elif self.ice is not None:
            self._fall_back_to_plain(remote, now)
        else:
            self._start_plain_media(remote, now)

    def _established(self, now: float) -> None:
        self.result.established = True
        self._give_up_at = None
        # The call lasts --duration from the start of media (ICE may take a moment); this later
        # deadline only ends a call whose media never starts.
        self._hangup_at = now + self.options.setup_timeout + self.options.duration
        self._events.append(CallAnswered())

    def _reinvite_received(self, call: Call, offer: bytes, now: float) -> None:
        self.result.reinvites += 1
        try:
            remote = parse_remote(offer, supported=self._codecs())
        except SdpError as exc:
            self._say(f"cannot use the re-INVITE offer: {exc}")
            self.ua.reject_reinvite(call, now, 488)
            return
        self._remote = remote
        if self.session is not None:
            # Hold and resume (RFC 3264 section 8.4): send only if the peer wants to receive.
            self.session.set_sending(remote.direction in ("sendrecv", "recvonly"), now)
        if self.ice is None:
            # A plain peer moved its media (hold, transfer, a relay): follow its c=/m=.
            self._rtp_destination = self._resolve(remote.rtp)
            self._rtcp_destination = self._resolve(remote.rtcp)
            self._latched = {RTP_COMPONENT: False, RTCP_COMPONENT: False}
        elif remote.remote_candidates:
            self._say(
                "updated offer with remote-candidates: "
                + " ".join(f"{c} {a}:{p}" for c, a, p in remote.remote_candidates)
            )
        self.ua.accept_reinvite(call, self._current_sdp(), now)

    # -- local media: ports, gathering, SDP -------------------------------------------------------

    def _prepare(self, step: str, *, ice: bool | None, remote: RemoteMedia | None,
                 now: float) -> None:
        """Get local media ready (ports; with ICE the candidates), then go on with ``step``."""
        self._preparing = step
        use_ice = self._ice_for(self._peer_name) if ice is None else ice
        if use_ice:
            lite_peer = remote is not None and remote.ice_lite
            controlling = (step == "offer" or lite_peer) and not self.options.ice_lite
            if remote is not None:
                # Answering: multiplex exactly when the offer did (RFC 5761 §5.1.1).
                components = 1 if remote.rtcp_mux else 2
                self._rtcp_mux = remote.rtcp_mux
            else:
                # Offering rtcp-mux still offers RTCP candidates as the fallback (RFC 5761
                # §5.1.3), unless mux-only (RFC 8858); the answer settles it.
                components = 1 if self.options.rtcp_mux_only else 2
                self._rtcp_mux = self.options.rtcp_mux or self.options.rtcp_mux_only
            self._pending_ice = (controlling, components)
            setup = self._ice_setup or IceSetup(AgentConfig())
            self._events.append(PortsWanted(True, components, setup.addresses, setup.port_range))
        elif self._rtp is None:
            rtp_conf = self.options.rtp_conf
            host = self.options.rtp_address or self.sip[0]
            self._events.append(
                PortsWanted(False, 2, (host,), rtp_conf.port_range if rtp_conf else None)
            )
        else:
            self._local_media_ready(now)

    def _local_media_ready(self, now: float) -> None:
        step, self._preparing = self._preparing, None
        if step == "offer":
            assert self.options.target is not None
            offer = self._current_sdp(offer=True)
            self.call = self.ua.call(self.options.target, offer, now, proxy=self.options.proxy)
        elif step == "answer":
            self._answer_sdp = self._current_sdp(offer=False)
            if self.options.ring > 0:
                self._answer_at = now + self.options.ring
            else:
                self._answer_now(now)

    def _current_sdp(self, *, offer: bool = False) -> bytes:
        codecs = self._codecs()
        telephone_event: int | None = 101
        direction = "sendrecv"
        if self._remote is not None and not offer:
            # Answer with the codec the peer put first among ours (RFC 3264 section 6.1).
            codecs = (self._remote.codec,)
            telephone_event = self._remote.telephone_event
            # RFC 3264 section 6.1: the answer's direction mirrors the offer's.
            direction = _ANSWER_DIRECTION.get(self._remote.direction, "sendrecv")
        if self.ice is not None:
            return self._ice_sdp(codecs, telephone_event, direction)
        if self._rtp is None or self._rtcp is None:
            raise RtpError("no local media ports")
        address, port = self._rtp
        media = LocalMedia(
            address=address,
            port=port,
            rtcp_port=self._rtcp[1],
            codecs=codecs,
            telephone_event=telephone_event,
            rtcp_mux=self._rtcp_mux if not offer else self.options.rtcp_mux,
            direction=direction,
            ice_mismatch=bool(
                self._remote is not None and not offer and self._remote.ice_mismatch
                and self._ice_for(self._peer_name)
            ),
        )
        return build_sdp(media, self.origin)

    def _ice_sdp(
        self, codecs: tuple[Codec, ...], telephone_event: int | None, direction: str
    ) -> bytes:
        assert self.ice is not None
        media = ice_media(
            self.ice.agents[0],
            LocalMedia("", 0, codecs=codecs, telephone_event=telephone_event,
                       rtcp_mux=self._rtcp_mux, direction=direction,
                       rtcp_mux_only=self._rtcp_mux and self.options.rtcp_mux_only),
            lite=self.options.ice_lite,
        )
        return build_sdp(media, self.origin)

    # -- media ------------------------------------------------------------------------------------

    def _codecs(self) -> tuple[Codec, ...]:
        first = CODECS[self.options.codec.upper()]
        return (first, *(c for c in CODECS.values() if c is not first))

    def _ice_for(self, peer: str | None) -> bool:
        """Asterisk's rule: rtp.conf's icesupport must allow ICE at all; then chan_sip's
        setting for the peer (or [general]); a --ice/--no-ice flag overrides sip.conf."""
        rtp_conf = self.options.rtp_conf
        if rtp_conf is not None and not rtp_conf.icesupport:
            return False
        if self.options.ice is not None:
            return self.options.ice
        if self.options.sip_conf is not None:
            return self.options.sip_conf.icesupport(peer)
        return False

    def _make_session(self, remote: RemoteMedia, now: float) -> RtpSession:
        session = RtpSession(
            remote.codec,
            source=self._source(),
            recorder=self.recorder,
            telephone_event=remote.telephone_event,
            rtcp_mux=self._rtcp_mux,
            rtcp_interval=self.options.rtcp_interval,
            send_enabled=remote.direction in ("sendrecv", "recvonly"),
            wall_clock=self._wall_clock,
            rng=self._rng,
        )
        session.start(now)
        self._hangup_at = now + self.options.duration
        if self.options.dtmf and remote.telephone_event is not None:
            session.send_dtmf(self.options.dtmf)
        self._say(
            f"media: {remote.codec.name}/{remote.codec.clock_rate}, "
            f"ptime {int(session.ptime * 1000)} ms" + (", rtcp-mux" if self._rtcp_mux else "")
        )
        early, self._early = self._early, []
        for component, data, arrival in early:
            session.receive(data, arrival, component)
        self._events.append(MediaStarted(remote.codec.name, self.result.ice_pair))
        return session

    def _start_plain_media(self, remote: RemoteMedia, now: float) -> None:
        self._rtp_destination = self._resolve(remote.rtp)
        self._rtcp_destination = self._resolve(remote.rtp if self._rtcp_mux else remote.rtcp)
        self._say(f"symmetric RTP to {_hp(remote.rtp)} (no ICE)")
        self.session = self._make_session(remote, now)

    def _media_received(self, component: int, data: bytes, source: Address, now: float) -> None:
        if self.session is None:
            # Early media: the answerer starts sending with its 200 OK, which may arrive after
            # its first packets. Keep a few and replay them once the session exists.
            if len(self._early) < EARLY_MEDIA_KEPT:
                self._early.append((component, data, now))
            return
        destination = (
            self._rtp_destination if component == RTP_COMPONENT else self._rtcp_destination
        )
        if source != destination and not self._latched[component]:
            # Symmetric RTP: answer where the packets come from (a NAT's mapping).
            if component == RTP_COMPONENT:
                self._rtp_destination = source
                if self._rtcp_mux:
                    self._rtcp_destination = source
            else:
                self._rtcp_destination = source
            self._say(f"latched {'RTP' if component == 1 else 'RTCP'} to {_hp(source)}")
        self._latched[component] = True
        self.session.receive(data, now, component)

    # -- ICE --------------------------------------------------------------------------------------

    def _ice_event(self, event: object, now: float) -> None:
        if isinstance(event, DataReceived):
            self.ice_media_received += 1
            if self.session is not None:
                self.session.receive(event.data, now, event.component)
            elif len(self._early) < EARLY_MEDIA_KEPT:
                self._early.append((event.component, event.data, now))
            return
        if isinstance(event, GatheringComplete) and self._preparing is not None:
            assert self.ice is not None
            components = len(self.ice.agents[0].components)
            self._say(
                f"ICE: gathered {len(self.ice.local_candidates(0))} candidates "
                f"({components} component{'s' if components > 1 else ''})"
            )
            self._local_media_ready(now)
            return
        if (
            isinstance(event, ConnectionStateChanged)
            and self._ice_remote is not None
            and self._ice_connect_by is None
            and self.result.ice_state != "failed"
            and event.state not in (ConnectionState.CLOSED, ConnectionState.FAILED)
        ):
            # The result says where ICE got to (a controlled phone completes on the peer's
            # nomination, after media started on the first valid pair); closing at hangup is
            # not news.
            self._note_pair()
        if not self.options.debug:
            return
        if isinstance(event, CandidatePairStateChanged):
            pair = event.pair
            self._debug(
                f"ICE check list: {pair.local.type.value} {_hp(pair.local.address)} -> "
                f"{pair.remote.type.value} {_hp(pair.remote.address)} component "
                f"{pair.local.component}: {event.state.value}"
                f"{' nominated' if pair.nominated else ''}"
            )
        elif isinstance(event, SelectedPairChanged):
            selected = event.pair
            self._debug(
                f"ICE selected pair for component {event.component}: "
                f"{_hp(selected.local.address)} -> {_hp(selected.remote.address)}"
                f"{' (nominated)' if event.nominated else ''}"
            )
        elif isinstance(event, ConnectionStateChanged):
            self._debug(f"ICE state: {event.state.value}")

    def _start_ice(self, remote: RemoteMedia, *, controlling: bool, now: float) -> None:
        assert self.ice is not None and remote.ice_ufrag and remote.ice_pwd
        ice = self.ice
        ice.set_remote_credentials(remote.ice_ufrag, remote.ice_pwd, now, lite=remote.ice_lite)
        components = ice.agents[0].components
        for candidate in remote.candidates:
            if candidate.component in components and candidate.is_udp:
                ice.add_remote_candidate(0, IceCandidate.from_sdp(candidate), now)
        ice.add_remote_candidate(0, None, now)
        self._ice_remote, self._ice_controlling = remote, controlling
        self._ice_connect_by = now + self.options.setup_timeout
        self._check_ice(now)

    def _check_ice(self, now: float) -> None:
        """Move on when ICE connected (media starts), completed (the updated offer) or failed."""
        if self.ice is None:
            return
        state = self.ice.state
        if self._ice_connect_by is not None:
            if state in (ConnectionState.CONNECTED, ConnectionState.COMPLETED):
                self._ice_connect_by = None
                self._ice_connected(now)
            elif state in (ConnectionState.FAILED, ConnectionState.CLOSED):
                self._ice_failed(f"ICE {state.value}", now)
        elif self._ice_complete_by is not None and state is ConnectionState.COMPLETED:
            self._ice_completed(now)

    def _ice_connected(self, now: float) -> None:
        assert self._ice_remote is not None
        self._note_pair()
        self.session = self._make_session(self._ice_remote, now)
        if self._ice_controlling:
            self._ice_complete_by = now + ICE_COMPLETION_WAIT
            self._check_ice(now)

    def _ice_failed(self, reason: str, now: float) -> None:
        self._ice_connect_by = None
        self._say(f"ICE failed: {reason}")
        self.result.ice_state = "failed"
        if self.call is not None:
            self.ua.hangup(self.call, now)

    def _ice_completed(self, now: float) -> None:
        self._ice_complete_by = None
        self._note_pair()
        if self.call is not None and self.call.established:
            self._say("ICE completed: sending the updated offer (re-INVITE)")
            self.ua.reinvite(self.call, self._current_sdp(offer=True), now)

    def _note_pair(self) -> None:
        assert self.ice is not None
        agent = self.ice.agents[0]
        pair = agent.selected_pair(1)
        self.result.ice_state = agent.state.value
        if pair is not None:
            self.result.ice_pair = (
                f"{pair.local.type.value} {_hp(pair.local.address)}"
                f" -> {pair.remote.type.value} {_hp(pair.remote.address)}"
            )

    def _fall_back_to_plain(self, remote: RemoteMedia, now: float) -> None:
        """The answer has no ICE: media goes plainly from our default candidates' sockets
        (their bases: the peer sends to what our SDP said, and the base is where that arrives)."""
        assert self.ice is not None
        ice, self.ice = self.ice, None
        candidates = ice.local_candidates(0)
        try:
            self._rtp = _base_of(candidates, 1)
            self._rtcp = _base_of(candidates, 2) if 2 in ice.agents[0].components else None
        except RtpError as exc:
            self.fail(str(exc), now)
            return
        ice.close(now)
        self._retired.append(ice)
        self._say("the peer does not do ICE: plain RTP")
        self._start_plain_media(remote, now)

    # -- helpers ----------------------------------------------------------------------------------

    def _resolve(self, address: Address) -> Address:
        host, port = address
        if _is_ip(host):
            return host, port
        if host not in self._names:
            self._names[host] = self._resolver(host)
        return self._names[host], port

    def _say(self, text: str) -> None:
        self._events.append(Notice(text))

    def _debug(self, text: str) -> None:
        self._events.append(DebugLine(text))


def _base_of(candidates: Sequence[IceCandidate], component: int) -> Address:
    candidate = best_default(candidates, component)
    return _pair(candidate.base or candidate.address)


def _owns(ice: Session, local: Address) -> bool:
    return any(agent.owns(local) for agent in ice.agents)


def _pair(address: Any) -> Address:
    """(host, port) from a tuple or an :class:`icerelay.net.Address`."""
    if isinstance(address, tuple):
        return str(address[0]), int(address[1])
    return str(address.host), int(address.port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _hp(address: Address) -> str:
    """host:port, with IPv6 in brackets."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
