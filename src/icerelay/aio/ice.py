"""asyncio driver for the sans-I/O :class:`~icerelay.ice.agent.Agent`.

The shell only moves bytes: it binds one UDP socket per component and local address (and opens
TCP/TLS connections to TURN servers when the agent asks); an
:class:`~icerelay.aio.driver.EngineDriver` feeds every datagram to the agent with
``loop.time()``, hands out its events, sends what it returns, and keeps the one timer at
``agent.next_timer()``. Everything ICE decides happens in the engine. Example::

    import asyncio
    from icerelay.aio.ice import Connection

    async def main() -> None:
        offerer = Connection(controlling=True, stun_servers=[("stun.example.net", 3478)])
        answerer = Connection(controlling=False)
        await offerer.gather()
        await answerer.gather()
        # signalling, here in-process; normally SDP (ice-ufrag, ice-pwd, a=candidate)
        answerer.set_remote_credentials(offerer.local_username, offerer.local_password)
        offerer.set_remote_credentials(answerer.local_username, answerer.local_password)
        for candidate in offerer.local_candidates:
            answerer.add_remote_candidate(candidate)
        for candidate in answerer.local_candidates:
            offerer.add_remote_candidate(candidate)
        offerer.add_remote_candidate(None)          # end-of-candidates
        answerer.add_remote_candidate(None)
        await asyncio.gather(offerer.connect(), answerer.connect())
        await offerer.send(b"hello")
        print(await answerer.recv())
        await offerer.close()
        await answerer.close()

    asyncio.run(main())

Trickle ICE works the same way: call :meth:`Connection.add_remote_candidate` whenever a candidate
arrives, and read :meth:`Connection.next_event` (or pass ``on_event``) to signal local candidates
as they are gathered, before :meth:`gather` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import socket
import ssl
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, cast

from icerelay.aio.driver import EngineDriver
from icerelay.errors import IceError
from icerelay.ice.agent import Agent
from icerelay.ice.candidate import Candidate, TransportAddress
from icerelay.ice.config import AgentConfig
from icerelay.ice.events import (
    ConnectionState,
    ConnectionStateChanged,
    DataReceived,
    Event,
    GatheringComplete,
)
from icerelay.ice.relay import TurnServer
from icerelay.net import Address, Datagram

# Addresses in these documentation ranges are never routed: connecting a UDP socket to one only
# asks the kernel which source address it would use, and sends nothing.
_PROBE_TARGETS = {4: "192.0.2.1", 6: "2001:db8::1"}


_SIOCGIFFLAGS = 0x8913
_SIOCGIFADDR = 0x8915
_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8
# /proc/net/if_inet6 flags of addresses not to use: tentative (DAD running), deprecated,
# DAD failed (IFA_F_TENTATIVE 0x40, IFA_F_DEPRECATED 0x20, IFA_F_DADFAILED 0x08).
_IFA_UNUSABLE = 0x40 | 0x20 | 0x08


def interface_addresses(*, ipv4: bool = True, ipv6: bool = True) -> list[str]:
    """Every usable address of every interface that is up (Linux), loopback and link-local
    excluded; empty where the system does not tell (then see :func:`default_local_addresses`).

    IPv4 comes from the interface list (one address per interface, the primary), IPv6 from
    ``/proc/net/if_inet6`` (global and unique-local scope, not tentative or deprecated).
    """
    found: list[str] = []
    if ipv4:
        with contextlib.suppress(OSError, AttributeError, ImportError):
            import fcntl

            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                for _, name in socket.if_nameindex():
                    request = struct.pack("256s", name.encode()[:15])
                    try:
                        flags_reply = fcntl.ioctl(probe.fileno(), _SIOCGIFFLAGS, request)
                        flags = struct.unpack_from("H", flags_reply, 16)[0]
                        if not flags & _IFF_UP or flags & _IFF_LOOPBACK:
                            continue
                        reply = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)
                    except OSError:
                        continue  # no IPv4 address on this interface
                    address = socket.inet_ntoa(reply[20:24])
                    if not ipaddress.ip_address(address).is_link_local:
                        found.append(address)
    if ipv6:
        with contextlib.suppress(OSError), open("/proc/net/if_inet6", encoding="ascii") as table:
            for line in table:
                fields = line.split()
                if len(fields) < 6:
                    continue
                scope, flags = int(fields[3], 16), int(fields[4], 16)
                if scope != 0 or flags & _IFA_UNUSABLE:
                    continue  # host, link or site scope; or not usable yet/any more
                packed = bytes.fromhex(fields[0])
                found.append(str(ipaddress.IPv6Address(packed)))
    return found


def default_local_addresses(*, ipv4: bool = True, ipv6: bool = False) -> list[str]:
    """The addresses to gather host candidates on by default.

    Every usable interface address (:func:`interface_addresses`) where the system lists them;
    otherwise the address the host would use to reach the Internet, per family, found without
    sending anything. Pass explicit addresses to :class:`Connection` to choose (Asterisk's
    ``ice_permit``/``ice_deny`` do that through :mod:`icerelay.ice.rtpconf`), or to use loopback
    in tests.
    """
    listed = interface_addresses(ipv4=ipv4, ipv6=ipv6)
    if listed:
        return listed
    found: list[str] = []
    for family, wanted in ((4, ipv4), (6, ipv6)):
        if not wanted:
            continue
        kind = socket.AF_INET if family == 4 else socket.AF_INET6
        with contextlib.suppress(OSError), socket.socket(kind, socket.SOCK_DGRAM) as probe:
            probe.connect((_PROBE_TARGETS[family], 9))
            address = str(probe.getsockname()[0]).split("%", 1)[0]
            if not ipaddress.ip_address(address).is_unspecified:
                found.append(address)
    return found


class _AgentEngine:
    """The :class:`Agent` seen as an :class:`~icerelay.aio.driver.Engine`.

    The agent speaks ``(ip, port)`` tuples and its own :class:`icerelay.ice.events.Datagram`;
    the driver speaks :class:`icerelay.net.Address` and :class:`icerelay.net.Datagram`.
    """

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def receive(self, data: bytes, source: Address, destination: Address, now: float) -> None:
        self.agent.receive(
            data, (source.host, source.port), (destination.host, destination.port), now
        )

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        return [
            Datagram(
                datagram.data,
                Address(*datagram.source),
                Address(*datagram.destination),
                datagram.transport,
            )
            for datagram in self.agent.datagrams_to_send(now)
        ]

    def next_timer(self) -> float | None:
        return self.agent.next_timer()

    def handle_timer(self, now: float) -> None:
        self.agent.handle_timer(now)

    def next_event(self) -> Event | None:
        return self.agent.next_event()


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.transport: asyncio.DatagramTransport | None = None
        self.address: TransportAddress = ("", 0)
        self.local = Address("", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        sockname = transport.get_extra_info("sockname")
        self.address = (str(sockname[0]).split("%", 1)[0], int(sockname[1]))
        self.local = Address(*self.address)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        source = Address(str(addr[0]).split("%", 1)[0], int(addr[1]))
        self.connection._driver().datagram_received(data, source, self.local)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable...) on UDP: the checks on that path simply fail.
        return


StreamKey = tuple[TransportAddress, TransportAddress, str]
"""(local base, TURN server, "tcp"/"tls"): how the engine names a relay's stream connection."""


class _Stream(asyncio.Protocol):
    """The TCP or TLS connection of one TURN relay; writes wait until it is open."""

    def __init__(self, connection: Connection, key: StreamKey) -> None:
        self.connection = connection
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)
        else:
            self.pending.append(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        for data in self.pending:
            self.transport.write(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        self.connection._stream_data(self.key, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection._stream_lost(self.key)


class Connection:
    """One ICE session (one data stream) over real UDP sockets.

    ``local_addresses`` are the IPs to gather host candidates on (default: the primary address
    of each enabled family); ``port_range`` limits the ports bound (Asterisk's rtpstart/rtpend).
    ``on_event`` is called with every engine event (CandidateGathered for trickle signalling...).
    ``on_data(component, data, source)``, when given, gets the media instead of :meth:`recv`.
    """

    def __init__(
        self,
        *,
        controlling: bool,
        components: int = 1,
        lite: bool = False,
        stun_servers: Iterable[TransportAddress] = (),
        turn_servers: Sequence[TurnServer] = (),
        local_addresses: Sequence[str] | None = None,
        port_range: tuple[int, int] | None = None,
        config: AgentConfig | None = None,
        on_event: Callable[[Event], None] | None = None,
        on_data: Callable[[int, bytes, TransportAddress], None] | None = None,
        local_username: str | None = None,
        local_password: str | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        base = config or AgentConfig()
        servers = tuple(base.stun_servers) + tuple(
            (str(host), int(port)) for host, port in stun_servers
        )
        self.agent = Agent(
            controlling=controlling,
            components=components,
            lite=lite,
            config=replace(base, stun_servers=servers),
            turn_servers=turn_servers,
            local_ufrag=local_username,
            local_pwd=local_password,
            rng=random.SystemRandom(),
        )
        self.local_addresses = list(local_addresses or default_local_addresses()) or ["127.0.0.1"]
        self.port_range = port_range
        self.on_event = on_event
        self.on_data = on_data
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sockets: dict[TransportAddress, _Socket] = {}
        self._streams: dict[StreamKey, _Stream] = {}
        self._tls_context = tls_context
        self._engine_driver: EngineDriver | None = None  # made once a loop runs
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._received: dict[int, asyncio.Queue[tuple[bytes, TransportAddress]]] = {
            component: asyncio.Queue() for component in self.agent.components
        }
        self._gathered = asyncio.Event()
        self._state_changed = asyncio.Event()

    # --- properties -------------------------------------------------------------------------

    @property
    def local_username(self) -> str:
        return self.agent.local_username

    @property
    def local_password(self) -> str:
        return self.agent.local_password

    @property
    def local_candidates(self) -> list[Candidate]:
        return self.agent.local_candidates

    @property
    def state(self) -> ConnectionState:
        return self.agent.state

    # --- API --------------------------------------------------------------------------------

    async def gather(self) -> None:
        """Bind the sockets and gather; returns when every candidate is in (or timed out)."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        addresses: dict[int, list[TransportAddress]] = {}
        for component in self.agent.components:
            addresses[component] = []
            for ip in self.local_addresses:
                protocol = await self._bind(loop, ip)
                self._sockets[protocol.address] = protocol
                addresses[component].append(protocol.address)
        self.agent.gather(addresses, loop.time())
        self._service()
        await self._gathered.wait()

    def set_remote_credentials(self, ufrag: str, pwd: str, *, lite: bool = False) -> None:
        """The peer's ice-ufrag and ice-pwd; checks start as soon as there are pairs."""
        self.agent.set_remote_credentials(ufrag, pwd, self._now(), lite=lite)
        self._service()

    def add_remote_candidate(self, candidate: Candidate | str | None) -> None:
        """A remote candidate (object or SDP text), or None for end-of-candidates."""
        if isinstance(candidate, str):
            candidate = Candidate.from_sdp(candidate)
        self.agent.add_remote_candidate(candidate, self._now())
        self._service()

    async def connect(self, timeout: float | None = None, *, nominated: bool | None = None) -> None:
        """Wait until every component has a selected pair; IceError if ICE fails.

        With ``nominated`` (the default for a controlled agent) wait until the pairs are
        nominated (``completed``): a valid pair alone only says that our checks got answers,
        not that the controlling agent will use it (RFC 8445 §8.1.1). IceError when no
        nomination comes within ``AgentConfig.nomination_timeout`` of the first valid pair.
        """
        loop = asyncio.get_running_loop()
        wait_nomination = (not self.agent.controlling) if nominated is None else nominated
        patience = self.agent.config.nomination_timeout
        connected_at: float | None = None
        async with asyncio.timeout(timeout):
            while True:
                state = self.agent.state
                remaining: float | None = None
                if state is ConnectionState.COMPLETED:
                    return
                if state is ConnectionState.CONNECTED:
                    if not wait_nomination:
                        return
                    if connected_at is None:
                        connected_at = loop.time()
                    remaining = connected_at + patience - loop.time()
                    if remaining <= 0:
                        raise IceError(
                            f"ICE connected but the controlling agent nominated no pair "
                            f"within {patience:g} s"
                        )
                if state in (ConnectionState.FAILED, ConnectionState.CLOSED):
                    raise IceError(f"ICE {state.value}")
                self._state_changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._state_changed.wait()

    async def wait_for(self, *states: ConnectionState, timeout: float | None = None) -> None:
        """Wait until the agent is in one of ``states``."""
        async with asyncio.timeout(timeout):
            while self.agent.state not in states:
                self._state_changed.clear()
                await self._state_changed.wait()

    async def send(self, data: bytes, component: int = 1) -> None:
        """Send a datagram on the component's selected pair."""
        self.agent.send(data, component, now=self._now())
        self._service()

    async def recv(self, component: int = 1) -> bytes:
        """The next non-STUN datagram received for the component."""
        data, _ = await self._received[component].get()
        return data

    async def recvfrom(self, component: int = 1) -> tuple[bytes, TransportAddress]:
        return await self._received[component].get()

    async def next_event(self) -> Event:
        """The next engine event (also passed to ``on_event``)."""
        return await self._events.get()

    async def restart(self) -> None:
        """ICE restart: new local credentials; signal them and the candidates again."""
        self.agent.restart(self._now())
        self._service()

    async def close(self) -> None:
        """Stop ICE, deallocate TURN relays, close the sockets."""
        self.agent.close(self._now())
        self._service()
        if self._engine_driver is not None:
            self._engine_driver.close()
        if self.agent.gatherer.relays():
            # Give the deallocation (Refresh, lifetime 0) a moment to leave.
            await asyncio.sleep(0)
        for protocol in self._sockets.values():
            if protocol.transport is not None:
                protocol.transport.close()
        self._sockets.clear()
        for stream in list(self._streams.values()):
            stream.closed = True
            if stream.transport is not None:
                stream.transport.close()
        self._streams.clear()

    # --- the driver -------------------------------------------------------------------------

    async def _bind(self, loop: asyncio.AbstractEventLoop, ip: str) -> _Socket:
        family = socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET
        ports: Iterable[int] = [0]
        if self.port_range is not None:
            low, high = self.port_range
            ports = range(low, high + 1)
        last_error: OSError | None = None
        for port in ports:
            try:
                _, protocol = await loop.create_datagram_endpoint(
                    lambda: _Socket(self), local_addr=(ip, port), family=family
                )
                return protocol
            except OSError as exc:
                last_error = exc
        raise IceError(f"no free UDP port on {ip}: {last_error}")

    def _now(self) -> float:
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        return loop.time()

    def _driver(self) -> EngineDriver:
        if self._engine_driver is None:
            self._now()  # remember the running loop
            self._engine_driver = EngineDriver(_AgentEngine(self.agent), self._send, self._on_event)
        return self._engine_driver

    def _stream_for(self, key: StreamKey) -> _Stream:
        stream = self._streams.get(key)
        if stream is None:
            stream = _Stream(self, key)
            self._streams[key] = stream
            assert self._loop is not None
            self._loop.create_task(self._open_stream(stream))
        return stream

    async def _open_stream(self, stream: _Stream) -> None:
        assert self._loop is not None
        _, server, transport = stream.key
        context: ssl.SSLContext | None = None
        if transport == "tls":
            context = self._tls_context or ssl.create_default_context()
        try:
            await self._loop.create_connection(lambda: stream, server[0], server[1], ssl=context)
        except OSError:
            self._stream_lost(stream.key)

    def _stream_data(self, key: StreamKey, data: bytes) -> None:
        base, server, transport = key
        self.agent.receive(data, server, base, self._now(), transport=transport)
        self._service()

    def _stream_lost(self, key: StreamKey) -> None:
        stream = self._streams.pop(key, None)
        if stream is None or stream.closed:
            return
        base, server, transport = key
        self.agent.connection_lost(server, base, transport, self._now())
        self._service()

    def _service(self) -> None:
        """Dispatch the agent's events, send what it wants sent, re-arm the timer."""
        self._driver().transmit()

    def _send(self, datagram: Datagram) -> None:
        assert datagram.source is not None  # the agent always names the local base
        source = (datagram.source.host, datagram.source.port)
        destination = (datagram.destination.host, datagram.destination.port)
        if datagram.transport != "udp":
            self._stream_for((source, destination, datagram.transport)).write(datagram.data)
            return
        protocol = self._sockets.get(source)
        if protocol is not None and protocol.transport is not None:
            protocol.transport.sendto(datagram.data, destination)

    def _on_event(self, item: object) -> None:
        event = cast(Event, item)  # the driver hands back what the agent's next_event() gave
        if isinstance(event, DataReceived):
            if self.on_data is not None:
                self.on_data(event.component, event.data, event.source)
            else:
                self._received[event.component].put_nowait((event.data, event.source))
        else:
            if isinstance(event, GatheringComplete):
                self._gathered.set()
            elif isinstance(event, ConnectionStateChanged):
                self._state_changed.set()
            self._events.put_nowait(event)
        if self.on_event is not None:
            self.on_event(event)
