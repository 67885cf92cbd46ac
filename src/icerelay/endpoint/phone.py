"""``icerelay phone``: place or answer one call, play and record audio, print statistics.

The asyncio shell around three sans-I/O engines: the SIP :class:`~icerelay.sip.UserAgent`, the
:class:`~icerelay.endpoint.session.RtpSession`, and (with ``--ice``) the ICE agent through its
asyncio driver :class:`icerelay.ice.aio.Connection`. One loop wakes on a datagram or on the
earliest engine timer, feeds the engines, and sends what they return.

Media without ICE is symmetric RTP (RFC 4961): sent from the port we receive on, to the peer's
``c=``/``m=`` address, and re-pointed ("latched") to where the peer's packets really come from,
as Asterisk does with ``nat=yes``, so a peer behind a NAT still hears us.

With ICE the offer carries the candidates in the shape of asterisk-ice.txt; media goes over the
pair ICE selects; once ICE completes the controlling agent (the caller) sends the updated offer
in a re-INVITE with the selected candidate in ``c=``/``m=`` and ``a=remote-candidates``
(RFC 8445 section 8.1.2 / RFC 8839 section 4.2.2); the answerer handles it.

As a library (the command is a thin layer over this)::

    result = await Phone(PhoneOptions(target="sip:bob@192.0.2.20", ice=True, duration=10,
                                      stun_servers=[("192.0.2.1", 3478)])).run()
    result.media_both_ways, result.ice_pair, result.statistics.to_text()
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import random
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click

from icerelay.endpoint.audio import AudioSource, Recorder, ToneSource, WavSource
from icerelay.endpoint.errors import RtpError
from icerelay.endpoint.offer import (
    IceDescription,
    LocalMedia,
    RemoteMedia,
    SdpOrigin,
    build_sdp,
    parse_remote,
)
from icerelay.endpoint.session import (
    CODECS,
    RTCP_COMPONENT,
    RTP_COMPONENT,
    DtmfReceived,
    RemoteBye,
    RtpSession,
)
from icerelay.endpoint.stats import StreamStatistics
from icerelay.errors import ConfigError, IcerelayError, SdpError
from icerelay.sip.message import SipUri, stream_frame_length
from icerelay.sip.sipconf import SipConf, load_sip_conf
from icerelay.sip.useragent import (
    Call,
    CallAnswered,
    CallConfirmed,
    CallEnded,
    CallProgress,
    CallState,
    IncomingCall,
    ReinviteAnswered,
    ReinviteFailed,
    ReinviteReceived,
    UserAgent,
)

if TYPE_CHECKING:
    # The ICE package is imported only when a call uses it: `icerelay` starts faster.
    from icerelay.ice.rtpconf import RtpIceSettings

Address = tuple[str, int]
Output = Callable[[str], None]

MAX_SIP_MESSAGE = 1 << 20
"""Largest SIP message taken from a TCP connection (a call's SDP is a few kilobytes)."""

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


@dataclass
class PhoneOptions:
    """Everything ``icerelay phone`` can be told."""

    target: str | None = None
    listen: Address = ("127.0.0.1", 0)
    answer: bool = False
    proxy: Address | None = None
    username: str | None = None
    password: str | None = None
    user: str = "icerelay"
    play: Path | None = None
    tone: float = 440.0
    record: Path | None = None
    duration: float = 5.0
    setup_timeout: float = 30.0
    wait: float | None = None
    ring: float = 0.0
    """Seconds to ring (180) before answering an incoming call."""
    codec: str = "PCMU"
    rtp_address: str | None = None
    rtcp_mux: bool = False
    rtcp_interval: float = 5.0
    dtmf: str | None = None
    ice: bool | None = None
    """ICE on or off for this call; None: as sip.conf says for the peer (default off, as in
    chan_sip)."""
    rtp_conf: RtpIceSettings | None = None
    """Asterisk rtp.conf ICE settings (icesupport, stunaddr, turnaddr..., ACLs, host
    candidates, rtpstart/rtpend)."""
    sip_conf: SipConf | None = None
    peer: str | None = None
    """The sip.conf peer (section name) being called, when the target named one."""
    """Asterisk sip.conf: per-peer icesupport, and host/port/secret of named peers."""
    stun_servers: list[Address] = field(default_factory=list)
    turn_server: Address | None = None
    turn_username: str | None = None
    turn_password: str | None = None
    relay_only: bool = False
    ice_lite: bool = False
    """Be an ICE-lite agent (RFC 8445 section 2.5): host candidates only, answer checks, never
    control; what a server on a public address runs."""
    """Offer only relayed candidates (hide our addresses; aioice's TransportPolicy.RELAY)."""
    transport: str = "UDP"
    """SIP transport for our requests: UDP or TCP (we accept both)."""
    external_address: Address | None = None
    """Our SIP address as seen from outside a NAT (Asterisk's ``externaddr``), for Contact."""
    debug: bool = False
    as_json: bool = False


@dataclass
class PhoneResult:
    established: bool = False
    end_reason: str = ""
    statistics: StreamStatistics | None = None
    ice_pair: str | None = None
    ice_state: str | None = None
    reinvites: int = 0
    recorded_samples: int = 0

    @property
    def media_both_ways(self) -> bool:
        s = self.statistics
        return bool(self.established and s and s.packets_sent > 0 and s.packets_received > 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "established": self.established,
            "end_reason": self.end_reason,
            "media_both_ways": self.media_both_ways,
            "ice_pair": self.ice_pair,
            "ice_state": self.ice_state,
            "reinvites": self.reinvites,
            "recorded_samples": self.recorded_samples,
            "statistics": self.statistics.to_dict() if self.statistics else None,
        }


class _Tcp(asyncio.Protocol):
    """One SIP-over-TCP connection: frames messages by Content-Length (RFC 3261 section 18.3)."""

    def __init__(self, phone: Phone, peer: Address | None = None) -> None:
        self.phone = phone
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.peer is None:
            name = transport.get_extra_info("peername")
            self.peer = (str(name[0]).split("%", 1)[0], int(name[1]))
        self.phone._tcp[self.peer] = self

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._buffer:
            try:
                length = stream_frame_length(self._buffer)
            except IcerelayError:
                self.close()  # not SIP, or a header larger than we accept: drop the connection
                return
            if length is None:
                if len(self._buffer) > MAX_SIP_MESSAGE:
                    self.close()  # a body we will never accept: stop buffering it
                return
            if length > MAX_SIP_MESSAGE:
                self.close()
                return
            message, self._buffer = self._buffer[:length], self._buffer[length:]
            assert self.peer is not None
            self.phone._sip_received(message, self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.phone._tcp.get(self.peer) is self:
            del self.phone._tcp[self.peer]

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Udp(asyncio.DatagramProtocol):
    """One bound UDP socket handing datagrams to a callback."""

    def __init__(self, handler: Callable[[bytes, Address], None]) -> None:
        self.handler = handler
        self.transport: asyncio.DatagramTransport | None = None
        self.address: Address = ("", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        name = transport.get_extra_info("sockname")
        self.address = (str(name[0]), int(name[1]))

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.handler(data, (str(addr[0]).split("%", 1)[0], int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        return  # ICMP unreachable from a peer that has gone: not fatal

    def send(self, data: bytes, destination: Address) -> None:
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(OSError):
                self.transport.sendto(data, destination)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def _bind(host: str, port: int, handler: Callable[[bytes, Address], None]) -> _Udp:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    _, protocol = await loop.create_datagram_endpoint(
        lambda: _Udp(handler), local_addr=(host, port), family=family
    )
    return protocol


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Phone:
    """One call, from setup to statistics."""

    def __init__(
        self, options: PhoneOptions, output: Output | None = None, notice: Output | None = None
    ) -> None:
        self.options = options
        self.out: Output = output or (lambda text: click.echo(text))
        self.notice: Output = notice or (lambda text: click.echo(text, err=True))
        self.result = PhoneResult()
        self.ua: UserAgent | None = None
        self.call: Call | None = None
        self.session: RtpSession | None = None
        self.recorder = Recorder() if options.record else Recorder(max_duration=600.0)
        self.origin = SdpOrigin.new(rng=random.SystemRandom())
        self._wake = asyncio.Event()
        self._done = False
        self._sip: _Udp | None = None
        self._rtp: _Udp | None = None
        self._rtcp: _Udp | None = None
        self._remote: RemoteMedia | None = None
        self._rtp_destination: Address | None = None
        self._rtcp_destination: Address | None = None
        self._latched = {RTP_COMPONENT: False, RTCP_COMPONENT: False}
        self._hangup_at: float | None = None
        self._give_up_at: float | None = None
        self._ice: Any = None  # icerelay.ice.aio.Connection, imported only with --ice
        self._ice_sends: list[tuple[bytes, int]] = []
        self._early: list[tuple[int, bytes, Address, float]] = []
        self.ice_send_errors = 0
        self._tcp: dict[Address, _Tcp] = {}
        self._tcp_pending: dict[Address, list[bytes]] = {}
        self._tcp_server: asyncio.Server | None = None
        self.ice_media_received = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._names: dict[str, str] = {}
        self._rtcp_mux = options.rtcp_mux
        self._peer_name: str | None = options.peer
        if options.target is not None and self._peer_name is None:
            with contextlib.suppress(IcerelayError):
                self._peer_name = SipUri.parse(options.target).user

    # -- public -----------------------------------------------------------------------------------

    async def run(self) -> PhoneResult:
        loop = asyncio.get_running_loop()
        options = self.options
        host, port = options.listen
        self._sip = await _bind(host, port, self._sip_received)
        local = self._sip.address
        # SIP over TCP on the same port (RFC 3261 section 18: a UA listens on both).
        try:
            self._tcp_server = await loop.create_server(lambda: _Tcp(self), local[0], local[1])
        except OSError as exc:
            if options.transport == "TCP":
                raise
            self._say(f"no SIP over TCP on port {local[1]}: {exc}")
        if local[0] in ("0.0.0.0", "::"):
            # Via and Contact need an address the peer can reach, not the wildcard.
            local = (self._sip_host(), local[1])
        self.ua = UserAgent(
            local,
            user=options.user,
            username=options.username,
            password=options.password,
            user_agent="icerelay phone",
            transport=options.transport,
            trace=self._trace if options.debug else None,
            rng=random.SystemRandom(),
        )
        if options.external_address is not None:
            external_host, external_port = options.external_address
            self.ua.public_address = (external_host, external_port or local[1])
        # Always on stderr, first: scripts and tests read the port from it (--listen ...:0).
        self.notice(f"SIP on udp:{_hp(local)}")
        now = loop.time()
        try:
            if options.target is not None:
                offer = await self._local_sdp(offerer=True)
                self.call = self.ua.call(options.target, offer, loop.time(), proxy=options.proxy)
                self._give_up_at = now + options.setup_timeout
            elif options.wait is not None:
                self._give_up_at = now + options.wait
            await self._loop()
        finally:
            await self._close()
        if self.session is not None:
            self.result.statistics = self.session.statistics()
        self.result.recorded_samples = len(self.recorder.samples)
        if options.record is not None:
            self.recorder.save(options.record)
        return self.result

    # -- the loop ---------------------------------------------------------------------------------

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.ua is not None
        while not self._done:
            now = loop.time()
            self.ua.handle_timer(now)
            if self.session is not None:
                self.session.handle_timer(now)
            self._check_deadlines(now)
            self._service(now)
            for data, component in self._ice_sends:
                try:
                    await self._ice.send(data, component)
                except IcerelayError as exc:
                    # No pair for that component yet, or consent lost: counted, reported once.
                    self.ice_send_errors += 1
                    if self.ice_send_errors == 1:
                        self._say(f"ICE: cannot send on component {component}: {exc}")
            self._ice_sends.clear()
            if self._done:
                break
            timers = [
                t
                for t in (
                    self.ua.next_timer(),
                    self.session.next_timer() if self.session else None,
                    self._hangup_at,
                    self._give_up_at,
                )
                if t is not None
            ]
            timeout = max(0.0, min(timers) - loop.time()) if timers else None
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _check_deadlines(self, now: float) -> None:
        assert self.ua is not None
        if self._hangup_at is not None and now >= self._hangup_at:
            self._hangup_at = None
            if self.call is not None and self.call.state is not CallState.TERMINATED:
                self._say("hanging up")
                self.ua.hangup(self.call, now)
            self._give_up_at = now + 5.0  # if the BYE is never answered
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
                self._give_up_at = now + 5.0
                return
            if self.call is None:
                self.result.end_reason = "no incoming call"
            else:
                self.result.end_reason = self.result.end_reason or "BYE not answered"
            self._finish(now)

    def _service(self, now: float) -> None:
        assert self.ua is not None and self._sip is not None
        while True:
            # Handling an event may make the UA queue more (a 180 for an incoming call): go
            # round until both are empty, or it would wait for the next wake-up.
            outgoing = self.ua.datagrams_to_send(now)
            for data, destination in outgoing:
                self._send_sip(data, self._resolve(destination))
            event = self.ua.next_event()
            if event is None and not outgoing:
                break
            if event is not None:
                self._sip_event(event, now)
        session = self.session
        if session is None:
            return
        for packet in session.datagrams_to_send(now):
            if self._ice is not None:
                self._ice_sends.append((packet.data, packet.component))
            elif packet.component == RTP_COMPONENT or self._rtcp_mux:
                if self._rtp is not None and self._rtp_destination is not None:
                    self._rtp.send(packet.data, self._rtp_destination)
            elif self._rtcp is not None and self._rtcp_destination is not None:
                self._rtcp.send(packet.data, self._rtcp_destination)
        while (media_event := session.next_event()) is not None:
            if isinstance(media_event, DtmfReceived):
                self._say(f"DTMF {media_event.digit}")
            elif isinstance(media_event, RemoteBye):
                self._say("peer sent RTCP BYE")

    def _finish(self, now: float) -> None:
        if self.session is not None and not self.session.stopped:
            self.session.stop(now)
            self._service(now)
        self._done = True
        self._wake.set()

    # -- SIP --------------------------------------------------------------------------------------

    def _send_sip(self, data: bytes, destination: Address) -> None:
        assert self._sip is not None
        connection = self._tcp.get(destination)
        if connection is not None:
            connection.send(data)  # a response on the request's connection, or our own one
        elif self.options.transport == "TCP":
            queued = self._tcp_pending.setdefault(destination, [])
            queued.append(data)
            if len(queued) == 1:
                self._spawn(self._connect(destination))
        else:
            self._sip.send(data, destination)

    async def _connect(self, destination: Address) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: _Tcp(self, destination), *destination)
        except OSError as exc:
            # The transaction times out (or the setup timer fires): no retry storm here.
            self._say(f"SIP over TCP: cannot connect to {destination[0]}:{destination[1]}: {exc}")
            self._tcp_pending.pop(destination, None)
            return
        connection = self._tcp.get(destination)
        for data in self._tcp_pending.pop(destination, []):
            if connection is not None:
                connection.send(data)

    def _sip_received(self, data: bytes, source: Address) -> None:
        if self.ua is not None:
            self.ua.receive(data, source, asyncio.get_running_loop().time())
            self._wake.set()

    def _trace(self, direction: str, data: bytes, peer: Address) -> None:
        # The layout of Asterisk's `sip set debug on`, so the SDP and candidates read the same.
        verb = "Transmitting to" if direction == "sent" else "Received from"
        text = data.decode("utf-8", "replace").replace("\r\n", "\n").rstrip("\n")
        self.out(f"<--- {verb} {peer[0]}:{peer[1]} --->\n{text}\n<------------->")

    def _sip_event(self, event: object, now: float) -> None:
        assert self.ua is not None
        if isinstance(event, IncomingCall):
            self._incoming(event, now)
        elif isinstance(event, CallProgress):
            self._say(f"call progress: {event.status} {event.reason}")
        elif isinstance(event, CallAnswered):
            self._say("call answered")
            self._answered(event.call, event.answer, now)
        elif isinstance(event, CallConfirmed):
            self._say("call confirmed (ACK)")
        elif isinstance(event, ReinviteReceived):
            self._reinvite_received(event.call, event.offer, now)
        elif isinstance(event, ReinviteAnswered):
            self._say("re-INVITE answered")
        elif isinstance(event, ReinviteFailed):
            self._say(f"re-INVITE failed: {event.status}")
        elif isinstance(event, CallEnded) and event.call is self.call:
            self._say(f"call ended: {event.reason}")
            self.result.end_reason = self.result.end_reason or event.reason
            self._finish(now)

    def _incoming(self, event: IncomingCall, now: float) -> None:
        assert self.ua is not None
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
        self._spawn(self._answer(event.call, remote))

    async def _answer(self, call: Call, remote: RemoteMedia) -> None:
        assert self.ua is not None
        loop = asyncio.get_running_loop()
        self._rtcp_mux = remote.rtcp_mux  # RFC 5761: accept multiplexing when offered
        use_ice = self._ice_for(self._peer_name) and remote.has_ice and not remote.ice_mismatch
        if remote.ice_mismatch and self._ice_for(self._peer_name):
            self._say("ICE mismatch: the offer's c=/m= is not one of its candidates; plain RTP")
        answer = await self._local_sdp(offerer=False, ice=use_ice, remote=remote)
        if self.options.ring > 0:
            await asyncio.sleep(self.options.ring)
        if call.state is not CallState.INCOMING:
            return  # cancelled while we gathered
        self.ua.answer(call, answer, loop.time())
        self._established(loop.time())
        if use_ice:
            # RFC 8445 section 6.1.1: facing an ICE-lite peer, the full agent controls.
            self._start_ice(remote, controlling=remote.ice_lite)
        else:
            self._start_plain_media(remote)
        self._wake.set()

    def _answered(self, call: Call, answer: bytes, now: float) -> None:
        self._established(now)
        try:
            remote = parse_remote(answer, supported=self._codecs())
        except SdpError as exc:
            self._say(f"cannot use the answer: {exc}; hanging up")
            assert self.ua is not None
            self.ua.hangup(call, now)
            return
        self._remote = remote
        self._rtcp_mux = self._rtcp_mux and remote.rtcp_mux
        if self._ice is not None and remote.has_ice:
            # A lite agent never controls (RFC 8445 section 6.1.1); a full one facing us does.
            self._start_ice(remote, controlling=not self.options.ice_lite)
        else:
            if self._ice is not None:
                self._spawn(self._fall_back_to_plain(remote))
                return
            self._start_plain_media(remote)

    def _established(self, now: float) -> None:
        self.result.established = True
        self._give_up_at = None
        # The call lasts --duration from the start of media (ICE may take a moment); this later
        # deadline only ends a call whose media never starts.
        self._hangup_at = now + self.options.setup_timeout + self.options.duration

    def _reinvite_received(self, call: Call, offer: bytes, now: float) -> None:
        assert self.ua is not None
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
        if self._ice is None:
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

    # -- media ------------------------------------------------------------------------------------

    def _codecs(self) -> tuple[Any, ...]:
        first = CODECS[self.options.codec.upper()]
        return (first, *(c for c in CODECS.values() if c is not first))

    def _source(self) -> AudioSource:
        if self.options.play is not None:
            return WavSource(self.options.play)
        return ToneSource(self.options.tone, amplitude=0.3)

    def _make_session(self, remote: RemoteMedia) -> RtpSession:
        loop = asyncio.get_running_loop()
        import time

        session = RtpSession(
            remote.codec,
            source=self._source(),
            recorder=self.recorder,
            telephone_event=remote.telephone_event,
            rtcp_mux=self._rtcp_mux,
            rtcp_interval=self.options.rtcp_interval,
            send_enabled=remote.direction in ("sendrecv", "recvonly"),
            wall_clock=time.time,
            rng=random.SystemRandom(),
        )
        session.start(loop.time())
        self._hangup_at = loop.time() + self.options.duration
        if self.options.dtmf and remote.telephone_event is not None:
            session.send_dtmf(self.options.dtmf)
        self._say(
            f"media: {remote.codec.name}/{remote.codec.clock_rate}, "
            f"ptime {int(session.ptime * 1000)} ms" + (", rtcp-mux" if self._rtcp_mux else "")
        )
        early, self._early = self._early, []
        for component, data, _, arrival in early:
            session.receive(data, arrival, component)
        return session

    def _start_plain_media(self, remote: RemoteMedia) -> None:
        self._rtp_destination = self._resolve(remote.rtp)
        self._rtcp_destination = self._resolve(remote.rtp if self._rtcp_mux else remote.rtcp)
        self._say(f"symmetric RTP to {_hp(remote.rtp)} (no ICE)")
        self.session = self._make_session(remote)
        self._wake.set()

    def _media_received(self, component: int, data: bytes, source: Address) -> None:
        now = asyncio.get_running_loop().time()
        if self.session is None:
            # Early media: the answerer starts sending with its 200 OK, which may arrive after
            # its first packets. Keep a few and replay them once the session exists.
            if len(self._early) < 64:
                self._early.append((component, data, source, now))
            return
        if self._ice is None:
            destination = (
                self._rtp_destination if component == RTP_COMPONENT else self._rtcp_destination
            )
            if source != destination and not self._latched[component]:
                # Symmetric RTP: answer where the packets come from (a NAT's mapping).
                self._latched[component] = True
                if component == RTP_COMPONENT:
                    self._rtp_destination = source
                    if self._rtcp_mux:
                        self._rtcp_destination = source
                else:
                    self._rtcp_destination = source
                self._say(
                    f"latched {'RTP' if component == 1 else 'RTCP'} to {_hp(source)}"
                )
            self._latched[component] = True
        self.session.receive(data, now, component)

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

    async def _bind_media(self) -> None:
        host = self.options.rtp_address or self._sip_host()
        low, high = self.options.rtp_conf.port_range if self.options.rtp_conf else (0, 0)
        for _ in range(64):
            # rtp.conf's rtpstart/rtpend: a random even port in the range; else any pair.
            port = random.randrange(low, high, 2) if high > low else 0
            try:
                rtp = await _bind(
                    host, port, lambda d, s: self._media_received(RTP_COMPONENT, d, s)
                )
            except OSError:
                continue
            if rtp.address[1] % 2 == 0:
                try:
                    rtcp = await _bind(
                        host,
                        rtp.address[1] + 1,
                        lambda d, s: self._media_received(RTCP_COMPONENT, d, s),
                    )
                except OSError:
                    rtp.close()
                    continue
                self._rtp, self._rtcp = rtp, rtcp
                return
            rtp.close()
        raise RtpError(f"no free even/odd UDP port pair on {host}")

    def _sip_host(self) -> str:
        assert self._sip is not None
        host = self._sip.address[0]
        if host in ("0.0.0.0", "::"):
            from icerelay.aio.ice import default_local_addresses

            found = default_local_addresses(ipv4=":" not in host, ipv6=":" in host)
            return found[0] if found else "127.0.0.1"
        return host

    # -- SDP --------------------------------------------------------------------------------------

    async def _local_sdp(
        self, *, offerer: bool, ice: bool | None = None, remote: RemoteMedia | None = None
    ) -> bytes:
        use_ice = self._ice_for(self._peer_name) if ice is None else ice
        if use_ice:
            lite_peer = remote is not None and remote.ice_lite
            controlling = (offerer or lite_peer) and not self.options.ice_lite
            await self._gather(controlling=controlling, remote=remote)
        elif self._rtp is None:
            await self._bind_media()
        return self._current_sdp(offer=offerer)

    def _current_sdp(self, *, offer: bool = False) -> bytes:
        codecs = self._codecs()
        if self._remote is not None and not offer:
            # Answer with the codec the peer put first among ours (RFC 3264 section 6.1).
            chosen = self._remote.codec
            codecs = (chosen,)
        telephone_event: int | None = 101
        direction = "sendrecv"
        if self._remote is not None and not offer:
            telephone_event = self._remote.telephone_event
            # RFC 3264 section 6.1: the answer's direction mirrors the offer's.
            direction = _ANSWER_DIRECTION.get(self._remote.direction, "sendrecv")
        if self._ice is not None:
            return self._ice_sdp(codecs, telephone_event, direction)
        assert self._rtp is not None and self._rtcp is not None
        address, port = self._rtp.address
        media = LocalMedia(
            address=address,
            port=port,
            rtcp_port=self._rtcp.address[1],
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

    # -- ICE --------------------------------------------------------------------------------------

    async def _gather(self, *, controlling: bool, remote: RemoteMedia | None) -> None:
        from icerelay.aio.ice import Connection
        from icerelay.ice.relay import TurnServer

        components = 1 if (self.options.rtcp_mux and (remote is None or remote.rtcp_mux)) else 2
        if remote is not None and remote.rtcp_mux:
            components = 1
        self._rtcp_mux = components == 1
        turn = []
        if self.options.turn_server is not None:
            turn.append(
                TurnServer(
                    self.options.turn_server,
                    self.options.turn_username or "",
                    self.options.turn_password or "",
                )
            )
        host = self.options.rtp_address or self._sip_host()
        from icerelay.ice.config import AgentConfig

        config = AgentConfig(relay_only=self.options.relay_only)
        addresses = [host]
        port_range = None
        rtp_conf = self.options.rtp_conf
        if rtp_conf is not None:
            # Asterisk's rtp.conf: stunaddr, the STUN ACL and [ice_host_candidates] go into the
            # agent's configuration; turnaddr adds a relay; the ICE ACL filters host addresses.
            config = rtp_conf.agent_config(config)
            turn.extend(rtp_conf.turn_servers())
            addresses = rtp_conf.host_addresses(addresses) or addresses
            port_range = rtp_conf.port_range
        self._ice = Connection(
            controlling=controlling,
            lite=self.options.ice_lite,
            components=components,
            stun_servers=self.options.stun_servers,
            turn_servers=turn,
            local_addresses=addresses,
            port_range=port_range,
            on_event=self._ice_event,
            config=config,
        )
        await self._ice.gather()
        self._say(
            f"ICE: gathered {len(self._ice.local_candidates)} candidates "
            f"({components} component{'s' if components > 1 else ''})"
        )

    def _ice_sdp(
        self, codecs: tuple[Any, ...], telephone_event: int | None, direction: str = "sendrecv"
    ) -> bytes:
        connection = self._ice
        agent = connection.agent
        selected = {c: agent.selected_pair(c) for c in agent.components}
        remote_candidates: tuple[tuple[int, str, int], ...] = ()
        if selected.get(1) is not None:
            # After ICE: the selected local candidates become the default destination.
            rtp = selected[1].local.address
            rtcp = selected[2].local.address if selected.get(2) is not None else None
            if agent.controlling:
                remote_candidates = tuple(
                    (component, *pair.remote.address)
                    for component, pair in selected.items()
                    if pair is not None
                )
        else:
            rtp = _default_candidate(connection.local_candidates, 1)
            rtcp = (
                _default_candidate(connection.local_candidates, 2)
                if 2 in agent.components
                else None
            )
        candidates = tuple(c.to_attribute() for c in connection.local_candidates)
        if selected.get(1) is not None and agent.state.value == "completed":
            # RFC 5245 section 9.1.2.2 / RFC 8839 section 4.2.2: once ICE completed, a new offer
            # lists only the candidates of the selected pairs.
            candidates = tuple(
                pair.local.to_attribute() for pair in selected.values() if pair is not None
            )
        media = LocalMedia(
            address=rtp[0],
            port=rtp[1],
            rtcp_port=rtcp[1] if rtcp else None,
            codecs=codecs,
            telephone_event=telephone_event,
            rtcp_mux=self._rtcp_mux,
            ice=IceDescription(
                connection.local_username,
                connection.local_password,
                candidates,
                remote_candidates,
                lite=self.options.ice_lite,
            ),
            direction=direction,
        )
        return build_sdp(media, self.origin)

    def _start_ice(self, remote: RemoteMedia, *, controlling: bool) -> None:
        from icerelay.ice.candidate import Candidate as IceCandidate

        connection = self._ice
        connection.set_remote_credentials(remote.ice_ufrag, remote.ice_pwd, lite=remote.ice_lite)
        for candidate in remote.candidates:
            if candidate.component in connection.agent.components and candidate.is_udp:
                connection.add_remote_candidate(IceCandidate.from_sdp(candidate))
        connection.add_remote_candidate(None)
        self._spawn(self._run_ice(remote, controlling))

    async def _run_ice(self, remote: RemoteMedia, controlling: bool) -> None:
        from icerelay.ice.events import ConnectionState

        connection = self._ice
        try:
            await connection.connect(timeout=self.options.setup_timeout)
        except (IcerelayError, TimeoutError) as exc:
            self._say(f"ICE failed: {exc}")
            self.result.ice_state = "failed"
            if self.call is not None and self.ua is not None:
                self.ua.hangup(self.call, asyncio.get_running_loop().time())
                self._wake.set()
            return
        self._note_pair()
        self.session = self._make_session(remote)
        self._wake.set()
        if not controlling:
            return
        with contextlib.suppress(TimeoutError):
            await connection.wait_for(ConnectionState.COMPLETED, timeout=10.0)
        self._note_pair()
        if self.call is not None and self.ua is not None and self.call.established:
            self._say("ICE completed: sending the updated offer (re-INVITE)")
            self.ua.reinvite(
                self.call, self._current_sdp(offer=True), asyncio.get_running_loop().time()
            )
            self._wake.set()

    def _note_pair(self) -> None:
        agent = self._ice.agent
        pair = agent.selected_pair(1)
        self.result.ice_state = agent.state.value
        if pair is not None:
            self.result.ice_pair = (
                f"{pair.local.type.value} {_hp(pair.local.address)}"
                f" -> {pair.remote.type.value} {_hp(pair.remote.address)}"
            )

    def _ice_event(self, event: object) -> None:
        from icerelay.ice.events import (
            CandidatePairStateChanged,
            ConnectionStateChanged,
            DataReceived,
            SelectedPairChanged,
        )

        if isinstance(event, DataReceived):
            self.ice_media_received += 1
            now = asyncio.get_running_loop().time()
            if self.session is not None:
                self.session.receive(event.data, now, event.component)
                self._wake.set()
            elif len(self._early) < 64:
                self._early.append((event.component, event.data, event.source, now))
            return
        if not self.options.debug:
            return
        if isinstance(event, CandidatePairStateChanged):
            pair = event.pair
            self.out(
                f"ICE check list: {pair.local.type.value} {_hp(pair.local.address)} -> "
                f"{pair.remote.type.value} {_hp(pair.remote.address)} component "
                f"{pair.local.component}: {event.state.value}"
                f"{' nominated' if pair.nominated else ''}"
            )
        elif isinstance(event, SelectedPairChanged):
            pair = event.pair
            self.out(
                f"ICE selected pair for component {event.component}: "
                f"{_hp(pair.local.address)} -> {_hp(pair.remote.address)}"
                f"{' (nominated)' if event.nominated else ''}"
            )
        elif isinstance(event, ConnectionStateChanged):
            self.out(f"ICE state: {event.state.value}")

    async def _fall_back_to_plain(self, remote: RemoteMedia) -> None:
        """The answer has no ICE: media goes plainly from our default candidate's port."""
        connection, self._ice = self._ice, None
        host, port = _default_candidate(connection.local_candidates, 1)
        rtcp = (
            _default_candidate(connection.local_candidates, 2)
            if 2 in connection.agent.components
            else None
        )
        await connection.close()
        # Rebind the ports our offer announced (they were the ICE sockets'; the peer sends to
        # what the SDP said). asyncio closes a transport on a later loop turn: retry briefly.
        rtcp_port = rtcp[1] if rtcp else port + 1
        for attempt in range(50):
            try:
                self._rtp = await _bind(
                    host, port, lambda d, s: self._media_received(RTP_COMPONENT, d, s)
                )
                break
            except OSError:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.01)
        for _ in range(50):
            try:
                self._rtcp = await _bind(
                    host, rtcp_port, lambda d, s: self._media_received(RTCP_COMPONENT, d, s)
                )
                break
            except OSError:
                await asyncio.sleep(0.01)
        self._say("the peer does not do ICE: plain RTP")
        self._start_plain_media(remote)

    # -- helpers ----------------------------------------------------------------------------------

    def _resolve(self, address: Address) -> Address:
        host, port = address
        if _is_ip(host):
            return host, port
        if host not in self._names:
            try:
                self._names[host] = str(
                    socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)[0][4][0]
                )
            except OSError:
                self._names[host] = host
        return self._names[host], port

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._say(f"error: {exc}")
            self.result.end_reason = f"error: {exc}"
            self._done = True
            self._wake.set()

    def _say(self, text: str) -> None:
        if not self.options.as_json:
            self.out(text)

    async def _close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # Let the last SIP messages and the RTCP BYE leave before closing the sockets.
        await asyncio.sleep(0)
        if self._ice is not None:
            if self.options.debug:
                agent = self._ice.agent
                self.out(f"ICE: {agent.checks_sent} checks sent, "
                         f"{self.ice_media_received} media datagrams received, "
                         f"{getattr(agent, 'data_dropped', 0)} media datagrams dropped "
                         "(not from a known peer address)")
                for relay in agent.gatherer.relays():
                    counters = getattr(getattr(relay, "allocation", None), "counters", None)
                    if counters is not None:
                        self.out(f"TURN relay via {_hp(relay.server)}: {counters}")
            with contextlib.suppress(Exception):
                await self._ice.close()
        for udp in (self._sip, self._rtp, self._rtcp):
            if udp is not None:
                udp.close()
        for connection in list(self._tcp.values()):
            connection.close()
        if self._tcp_server is not None:
            self._tcp_server.close()


_ANSWER_DIRECTION = {"sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}


def _hp(address: Address) -> str:
    """host:port, with IPv6 in brackets."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _default_candidate(candidates: list[Any], component: int) -> Address:
    """RFC 8445 section 5.1.4: the default is the candidate most likely to work without ICE:
    relayed, else server-reflexive, else host."""
    rank = {"relay": 0, "srflx": 1, "prflx": 2, "host": 3}
    mine = [c for c in candidates if c.component == component]
    if not mine:
        raise RtpError(f"no candidate for component {component}")
    best = min(mine, key=lambda c: (rank.get(c.type.value, 4), -c.priority))
    return best.host, best.port


# --- the command ----------------------------------------------------------------------------------


def _peer_target(
    target: str, conf: SipConf, password: str | None
) -> tuple[str, str | None, str | None]:
    """A bare peer name from sip.conf becomes its URI (``host``/``port``, ``defaultuser``), and
    lends its ``secret`` when no --password was given."""
    peer = conf.peers.get(target.lower()) if ":" not in target and "@" not in target else None
    if peer is None:
        return target, password, None
    if peer.host is None:
        raise ConfigError(f"peer [{peer.name}] has no host to call (host=dynamic)")
    host = f"[{peer.host}]" if ":" in peer.host else peer.host
    uri = f"sip:{peer.user or peer.name}@{host}:{peer.port}"
    return uri, password or peer.secret, peer.name


def _transport(choice: str | None, target: str | None) -> str:
    """--transport, else the target URI's ``;transport=`` parameter, else UDP."""
    if choice is not None:
        return choice.upper()
    if target is not None:
        with contextlib.suppress(IcerelayError):
            if SipUri.parse(target).transport == "tcp":
                return "TCP"
    return "UDP"


def _address(text: str, default_port: int) -> Address:
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port)
    return text, default_port


@click.command("phone")
@click.argument("target", required=False, metavar="[SIP-URI]")
@click.option(
    "--listen",
    default="127.0.0.1:0",
    show_default=True,
    metavar="IP:PORT",
    help="SIP address to bind (port 0 picks one).",
)
@click.option("--answer", is_flag=True, help="Wait for a call and answer it.")
@click.option(
    "--ring",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="With --answer: seconds of ringing (180) before the 200 OK.",
)
@click.option("--proxy", metavar="HOST[:PORT]", help="Send the INVITE through this proxy.")
@click.option(
    "--transport",
    type=click.Choice(["udp", "tcp"], case_sensitive=False),
    default=None,
    help="SIP transport for our requests (default: the URI's ;transport, else udp).",
)
@click.option("--user", default="icerelay", show_default=True, help="Our SIP user name.")
@click.option("--auth-user", help="Digest user name (default: --user).")
@click.option("--password", help="Digest password for 401/407 challenges.")
@click.option(
    "--play",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="WAV file to send (default: a tone).",
)
@click.option("--tone", type=float, default=440.0, show_default=True, help="Tone frequency (Hz).")
@click.option(
    "--record",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write what is received to this WAV file.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds from answer to hang-up.",
)
@click.option(
    "--timeout",
    "setup_timeout",
    type=click.FloatRange(min=0.5),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the call (and ICE) to connect.",
)
@click.option(
    "--wait",
    type=click.FloatRange(min=0.1),
    default=None,
    help="With --answer: give up if no call comes within this many seconds.",
)
@click.option(
    "--codec",
    type=click.Choice(["PCMU", "PCMA"], case_sensitive=False),
    default="PCMU",
    show_default=True,
    help="Preferred codec.",
)
@click.option("--rtp-address", help="Local IP for media (default: the SIP address).")
@click.option("--rtcp-mux", is_flag=True, help="Offer RTCP multiplexed on the RTP port.")
@click.option("--rtcp-interval", type=click.FloatRange(min=0.5), default=5.0, show_default=True)
@click.option("--dtmf", metavar="DIGITS", help="Send these DTMF digits (RFC 4733) at the start.")
@click.option(
    "--ice/--no-ice",
    default=None,
    help="Offer and answer ICE (RFC 8445 / RFC 8839); default: sip.conf's icesupport, else off.",
)
@click.option(
    "--rtp-conf",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Asterisk rtp.conf: icesupport, stunaddr, turnaddr/turnport/turnusername/"
    "turnpassword, ICE/STUN ACLs, [ice_host_candidates], rtpstart/rtpend.",
)
@click.option(
    "--sip-conf",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Asterisk sip.conf: per-peer icesupport; call a peer by its section name.",
)
@click.option(
    "--stun",
    "stun_servers",
    multiple=True,
    metavar="HOST[:PORT]",
    help="STUN server for server-reflexive candidates (repeatable).",
)
@click.option("--turn", "turn_server", metavar="HOST[:PORT]", help="TURN server (UDP).")
@click.option("--turn-user", help="TURN user name.")
@click.option("--turn-password", help="TURN password.")
@click.option("--relay-only", is_flag=True, help="With --ice: offer only relayed candidates.")
@click.option("--ice-lite", is_flag=True, help="With --ice: be an ICE-lite agent (a=ice-lite).")
@click.option(
    "--external-address",
    metavar="IP[:PORT]",
    help="Our SIP address outside the NAT, for Contact (Asterisk's externaddr).",
)
@click.option(
    "--debug",
    is_flag=True,
    help="Show SIP messages with their SDP, and the ICE check list (like 'sip set debug on').",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def phone(
    target: str | None,
    listen: str,
    answer: bool,
    ring: float,
    proxy: str | None,
    transport: str | None,
    user: str,
    auth_user: str | None,
    password: str | None,
    play: Path | None,
    tone: float,
    record: Path | None,
    duration: float,
    setup_timeout: float,
    wait: float | None,
    codec: str,
    rtp_address: str | None,
    rtcp_mux: bool,
    rtcp_interval: float,
    dtmf: str | None,
    ice: bool | None,
    rtp_conf: Path | None,
    sip_conf: Path | None,
    stun_servers: tuple[str, ...],
    turn_server: str | None,
    turn_user: str | None,
    turn_password: str | None,
    relay_only: bool,
    ice_lite: bool,
    external_address: str | None,
    debug: bool,
    as_json: bool,
) -> None:
    """Place a call to SIP-URI, or answer one (--answer); play, record, hang up, report.

    Exits 0 only if the call connected and media flowed both ways.

    \b
    icerelay phone --listen 127.0.0.1:5070 --answer --record in.wav
    icerelay phone sip:bob@127.0.0.1:5070 --duration 3 --tone 1000
    """
    if (target is None) == (not answer):
        click.echo("icerelay: give a SIP URI to call, or --answer (not both)", err=True)
        sys.exit(EXIT_USAGE)
    try:
        from icerelay.ice.rtpconf import load_rtp_conf

        rtp_settings = load_rtp_conf(rtp_conf) if rtp_conf is not None else None
        sip_settings = load_sip_conf(sip_conf) if sip_conf is not None else None
        for warning in (*(rtp_settings.warnings if rtp_settings else ()),
                        *(sip_settings.warnings if sip_settings else ())):
            click.echo(f"icerelay: configuration: {warning}", err=True)
        peer = None
        if target is not None and sip_settings is not None:
            target, password, peer = _peer_target(target, sip_settings, password)
        options = PhoneOptions(
            target=target,
            listen=_address(listen, 5060),
            answer=answer,
            ring=ring,
            proxy=_address(proxy, 5060) if proxy else None,
            transport=_transport(transport, target),
            username=auth_user or user,
            password=password,
            user=user,
            play=play,
            tone=tone,
            record=record,
            duration=duration,
            setup_timeout=setup_timeout,
            wait=wait,
            codec=codec.upper(),
            rtp_address=rtp_address,
            rtcp_mux=rtcp_mux,
            rtcp_interval=rtcp_interval,
            dtmf=dtmf,
            ice=ice,
            rtp_conf=rtp_settings,
            sip_conf=sip_settings,
            peer=peer,
            stun_servers=[_address(s, 3478) for s in stun_servers],
            turn_server=_address(turn_server, 3478) if turn_server else None,
            turn_username=turn_user,
            turn_password=turn_password,
            relay_only=relay_only,
            ice_lite=ice_lite,
            external_address=_address(external_address, 0) if external_address else None,
            debug=debug,
            as_json=as_json,
        )
        if dtmf:
            from icerelay.endpoint.dtmf import event_for

            for digit in dtmf:
                event_for(digit)
    except (ValueError, IcerelayError) as exc:
        click.echo(f"icerelay: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    try:
        result = asyncio.run(Phone(options).run())
    except (OSError, IcerelayError) as exc:
        click.echo(f"icerelay: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    else:
        if result.ice_pair:
            click.echo(f"ICE: {result.ice_state}, selected pair {result.ice_pair}")
        if result.statistics is not None:
            click.echo(result.statistics.to_text())
        click.echo(
            "media flowed both ways"
            if result.media_both_ways
            else f"FAILED: {'no media both ways' if result.established else 'no call'}"
            + (f" ({result.end_reason})" if result.end_reason else "")
        )
    sys.exit(EXIT_OK if result.media_both_ways else EXIT_FAILURE)
