"""The phone's asyncio shell: sockets around the sans-I/O call controller.

:class:`Phone` binds the SIP socket (UDP, and TCP on the same port), the media ports the
:class:`~icerelay.endpoint.call.CallController` asks for, and drives the controller (and so the
phone's SIP, RTP and ICE) through the one :class:`~icerelay.aio.driver.EngineDriver`. Everything
the call decides happens in the controller; this module only moves bytes and prints.

As a library (``icerelay phone`` is a thin layer over this)::

    result = await Phone(PhoneOptions(target="sip:bob@192.0.2.20", ice=True, duration=10,
                                      stun_servers=[("192.0.2.1", 3478)])).run()
    result.media_both_ways, result.ice_pair, result.statistics.to_text()
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any, cast

import click

from icerelay.aio.driver import EngineDriver
from icerelay.endpoint.audio import AudioSource, Recorder, ToneSource, WavSource
from icerelay.endpoint.call import CallController
from icerelay.endpoint.errors import RtpError
from icerelay.endpoint.events import CallFinished, DebugLine, Notice, PortsWanted
from icerelay.endpoint.options import IceSetup, PhoneOptions, PhoneResult
from icerelay.errors import IceError, IcerelayError
from icerelay.net import Address as NetAddress
from icerelay.net import Datagram
from icerelay.sip.message import stream_frame_length

__all__ = ["Phone", "PhoneOptions", "PhoneResult"]

Address = tuple[str, int]
Output = Callable[[str], None]

MAX_SIP_MESSAGE = 1 << 20
"""Largest SIP message taken from a TCP connection (a call's SDP is a few kilobytes)."""

PORT_ATTEMPTS = 64
"""Random even ports tried for plain RTP before giving up."""


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
        self.address = (str(name[0]).split("%", 1)[0], int(name[1]))

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


class Phone:
    """One call, from setup to statistics: the sockets, the driver, and what gets printed."""

    def __init__(
        self, options: PhoneOptions, output: Output | None = None, notice: Output | None = None
    ) -> None:
        self.options = options
        self.out: Output = output or (lambda text: click.echo(text))
        self.notice: Output = notice or (lambda text: click.echo(text, err=True))
        self.result = PhoneResult()
        self.controller: CallController | None = None
        self._driver: EngineDriver | None = None
        self._rng = random.SystemRandom()
        self._done = asyncio.Event()
        self._fatal: BaseException | None = None
        self._sip: _Udp | None = None
        self._sip_address: Address = ("", 0)
        self._media: dict[Address, _Udp] = {}
        self._tcp: dict[Address, _Tcp] = {}
        self._tcp_pending: dict[Address, list[bytes]] = {}
        self._tcp_server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._names: dict[str, str] = {}

    @property
    def recorder(self) -> Recorder:
        """What was received (empty before the call)."""
        return self.controller.recorder if self.controller is not None else Recorder()

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
        self._sip_address = local
        self.controller = CallController(
            options,
            sip=local,
            rng=self._rng,
            ice=self._ice_setup(local[0]),
            source=self._source,
            wall_clock=time.time,
            resolve=self._resolve,
        )
        self._driver = EngineDriver(self.controller, self._send, self._event)
        # Always on stderr, first: scripts and tests read the port from it (--listen ...:0).
        self.notice(f"SIP on udp:{_hp(local)}")
        try:
            self.controller.start(loop.time())
            self._driver.transmit()
            await self._done.wait()
        finally:
            await self._close()
        if self._fatal is not None:
            raise self._fatal
        self.result = self.controller.result
        if options.record is not None:
            self.controller.recorder.save(options.record)
        return self.result

    # -- the controller's requests and events -----------------------------------------------------

    def _event(self, event: object) -> None:
        if isinstance(event, Notice):
            self._say(event.text)
        elif isinstance(event, DebugLine):
            self.out(event.text)
        elif isinstance(event, PortsWanted):
            self._spawn(self._bind_ports(event))
        elif isinstance(event, CallFinished):
            self._done.set()

    async def _bind_ports(self, wanted: PortsWanted) -> None:
        assert self.controller is not None and self._driver is not None
        try:
            if wanted.ice:
                ports = await self._bind_ice(wanted)
            else:
                ports = await self._bind_plain(wanted)
        except (OSError, IcerelayError) as exc:
            if self.options.target is not None and self.controller.call is None:
                # Nothing was sent yet: fail as the command fails on a bad argument.
                self._fatal = exc
                self._done.set()
                return
            self.controller.fail(str(exc), asyncio.get_running_loop().time())
            self._driver.transmit()
            return
        self.controller.ports_bound(ports, asyncio.get_running_loop().time())
        self._driver.transmit()

    async def _bind_plain(self, wanted: PortsWanted) -> dict[int, list[Address]]:
        host = wanted.hosts[0]
        low, high = wanted.port_range or (0, 0)
        for _ in range(PORT_ATTEMPTS):
            # rtp.conf's rtpstart/rtpend: a random even port in the range; else any pair.
            port = self._rng.randrange(low, high, 2) if high > low else 0
            try:
                rtp = await self._bind_media(host, port)
            except OSError:
                continue
            if rtp.address[1] % 2 == 0:
                try:
                    rtcp = await self._bind_media(host, rtp.address[1] + 1)
                except OSError:
                    self._unbind(rtp)
                    continue
                return {1: [rtp.address], 2: [rtcp.address]}
            self._unbind(rtp)
        raise RtpError(f"no free even/odd UDP port pair on {host}")

    async def _bind_ice(self, wanted: PortsWanted) -> dict[int, list[Address]]:
        ports: dict[int, list[Address]] = {}
        for component in range(1, wanted.components + 1):
            ports[component] = []
            for ip in wanted.hosts:
                candidates = range(wanted.port_range[0], wanted.port_range[1] + 1) \
                    if wanted.port_range is not None else [0]
                last_error: OSError | None = None
                for port in candidates:
                    try:
                        bound = await self._bind_media(ip, port)
                        break
                    except OSError as exc:
                        last_error = exc
                else:
                    raise IceError(f"no free UDP port on {ip}: {last_error}")
                ports[component].append(bound.address)
        return ports

    async def _bind_media(self, host: str, port: int) -> _Udp:
        holder: list[Address] = []

        def handler(data: bytes, source: Address) -> None:
            if self._driver is not None and holder:
                self._driver.datagram_received(data, NetAddress(*source), NetAddress(*holder[0]))

        protocol = await _bind(host, port, handler)
        holder.append(protocol.address)
        self._media[protocol.address] = protocol
        return protocol

    def _unbind(self, protocol: _Udp) -> None:
        self._media.pop(protocol.address, None)
        protocol.close()

    # -- sending ----------------------------------------------------------------------------------

    def _send(self, datagram: Datagram) -> None:
        destination = (datagram.destination.host, datagram.destination.port)
        source = datagram.source
        if source is None or (source.host, source.port) == self._sip_address:
            self._send_sip(datagram.data, destination)
            return
        protocol = self._media.get((source.host, source.port))
        if protocol is not None:
            protocol.send(datagram.data, destination)

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
        if self._driver is not None:
            self._driver.datagram_received(
                data, NetAddress(*source), NetAddress(*self._sip_address)
            )

    # -- what the controller is given -------------------------------------------------------------

    def _source(self) -> AudioSource:
        if self.options.play is not None:
            return WavSource(self.options.play)
        return ToneSource(self.options.tone, amplitude=0.3)

    def _ice_setup(self, sip_host: str) -> IceSetup | None:
        """ICE's configuration from the options, or None when no call of ours can use ICE."""
        options = self.options
        rtp_conf = options.rtp_conf
        if options.ice is False or (rtp_conf is not None and not rtp_conf.icesupport):
            return None
        from icerelay.ice.config import AgentConfig
        from icerelay.ice.relay import TurnServer

        turn = []
        if options.turn_server is not None:
            turn.append(
                TurnServer(options.turn_server, options.turn_username or "",
                           options.turn_password or "")
            )
        config = AgentConfig(relay_only=options.relay_only)
        addresses = [options.rtp_address or sip_host]
        port_range = None
        if rtp_conf is not None:
            # Asterisk's rtp.conf: stunaddr, the STUN ACL and [ice_host_candidates] go into the
            # agent's configuration; turnaddr adds a relay; the ICE ACL filters host addresses.
            config = rtp_conf.agent_config(config, resolve=_resolve_ipv4)
            turn.extend(rtp_conf.turn_servers(resolve=_resolve_ipv4))
            addresses = rtp_conf.host_addresses(addresses) or addresses
            port_range = rtp_conf.port_range
        servers = tuple(config.stun_servers) + tuple(
            (str(host), int(port)) for host, port in options.stun_servers
        )
        return IceSetup(replace(config, stun_servers=servers), tuple(turn), tuple(addresses),
                        port_range)

    def _resolve(self, host: str) -> str:
        if host not in self._names:
            try:
                self._names[host] = str(
                    socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)[0][4][0]
                )
            except OSError:
                self._names[host] = host
        return self._names[host]

    def _sip_host(self) -> str:
        assert self._sip is not None
        host = self._sip.address[0]
        if host in ("0.0.0.0", "::"):
            from icerelay.aio.ice import default_local_addresses

            found = default_local_addresses(ipv4=":" not in host, ipv6=":" in host)
            return found[0] if found else "127.0.0.1"
        return host

    # -- helpers ----------------------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._say(f"error: {exc}")
            if self.controller is not None:
                self.controller.result.end_reason = f"error: {exc}"
            self._done.set()

    def _say(self, text: str) -> None:
        if not self.options.as_json:
            self.out(text)

    async def _close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.controller is not None and self._driver is not None:
            # The RTCP BYE, the last SIP messages and the TURN deallocations leave now.
            self.controller.close(asyncio.get_running_loop().time())
            self._driver.close()
            self._driver.transmit()
        await asyncio.sleep(0)
        for udp in (self._sip, *self._media.values()):
            if udp is not None:
                udp.close()
        for connection in list(self._tcp.values()):
            connection.close()
        if self._tcp_server is not None:
            self._tcp_server.close()


def _hp(address: Address) -> str:
    """host:port, with IPv6 in brackets."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _resolve_ipv4(host: str) -> str:
    """rtp.conf's stunaddr/turnaddr: an A record, as Asterisk resolves them (OSError: skip)."""
    infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_DGRAM)
    return str(infos[0][4][0])
