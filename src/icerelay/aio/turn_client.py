"""asyncio driver for the sans-I/O TURN :class:`~icerelay.turn.client.allocation.Allocation`.

The shell owns the socket (UDP, TCP or TLS to the server); an
:class:`~icerelay.aio.driver.EngineDriver` owns the clock (``loop.time()``), the one timer and the
drain order; the engine decides everything else. Example::

    import asyncio
    from icerelay.stun import Address
    from icerelay.aio.turn_client import create_turn_allocation

    async def main() -> None:
        async with create_turn_allocation(("turn.example.net", 3478), "alice", "secret") as turn:
            print("relayed candidate", turn.relayed_address, "srflx", turn.mapped_address)
            peer = Address("198.51.100.7", 5000)
            await turn.send_to(b"hello", peer)        # permission + Send, later ChannelData
            data, source = await turn.recv_from()    # Data indication or ChannelData
        # leaving the block deallocates (Refresh with LIFETIME 0)

    asyncio.run(main())

Instead of :meth:`TurnClient.recv_from`, pass ``on_data=callback`` to get each packet as
``callback(data, peer)`` the moment it arrives, as a datagram protocol would.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import socket
import ssl as ssl_module
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from icerelay.aio.driver import EngineDriver
from icerelay.errors import TurnError
from icerelay.net import Datagram
from icerelay.stun import Address
from icerelay.turn.client.allocation import Allocation, State, Transport
from icerelay.turn.client.events import (
    AllocationClosed,
    AllocationCounters,
    AllocationExpired,
    AllocationFailed,
    AllocationSucceeded,
    AlternateServer,
    DataReceived,
    Event,
)

DataCallback = Callable[[bytes, Address], None]
EventCallback = Callable[[Event], None]
ServerSpec = Address | tuple[str, int] | str

#: Packets waiting in recv_from()'s queue; beyond this the oldest are dropped (real-time media
#: prefers fresh packets to a growing delay).
RECEIVE_QUEUE = 1024
DEFAULT_PORT = 3478
DEFAULT_TLS_PORT = 5349


class AllocationError(TurnError):
    """The allocation failed; :attr:`code` is the server's STUN error code, if it sent one."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.code = code


def _parse_server(server: ServerSpec, transport: Transport) -> tuple[str, int]:
    if isinstance(server, Address):
        return server.host, server.port
    if isinstance(server, tuple):
        return server[0], int(server[1])
    default = DEFAULT_TLS_PORT if transport == "tls" else DEFAULT_PORT
    text = server.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port)
    return text, default


async def _resolve(host: str, port: int, transport: Transport) -> Address:
    """An IP literal for *host*: the engine compares datagram sources with it."""
    try:
        ipaddress.ip_address(host)
        return Address(host, port)
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    try:
        infos = await loop.getaddrinfo(host, port, type=kind)
    except OSError as exc:
        raise TurnError(f"cannot resolve TURN server {host!r}: {exc}") from exc
    if not infos:
        raise TurnError(f"TURN server {host!r} has no address")
    sockaddr = infos[0][4]
    return Address(str(sockaddr[0]), int(sockaddr[1]))


def _sockname(transport: asyncio.BaseTransport) -> Address:
    sockname = transport.get_extra_info("sockname")
    if not sockname:
        return Address("0.0.0.0", 0)
    return Address(str(sockname[0]).split("%", 1)[0], int(sockname[1]))


class _DatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, client: TurnClient) -> None:
        self._client = client

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._client._received(data, Address(str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable ...) on UDP: the engine's retransmissions and timeouts
        # decide; one ICMP message is no proof that the server is gone.
        pass


class _StreamProtocol(asyncio.Protocol):
    def __init__(self, client: TurnClient, generation: int) -> None:
        self._client = client
        self._generation = generation

    def data_received(self, data: bytes) -> None:
        self._client._received(data, None, self._generation)

    def connection_lost(self, exc: Exception | None) -> None:
        self._client._stream_lost(self._generation, exc)

    def pause_writing(self) -> None:
        self._client._writable.clear()

    def resume_writing(self) -> None:
        self._client._writable.set()


class TurnClient:
    """One TURN allocation driven by asyncio. Build it with :meth:`connect` or
    :func:`create_turn_allocation`, which allocate before they return."""

    def __init__(
        self,
        engine: Allocation,
        *,
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
        on_data: DataCallback | None = None,
        on_event: EventCallback | None = None,
    ) -> None:
        self.engine = engine
        self._ssl = ssl
        self._server_hostname = server_hostname
        self._on_data = on_data
        self._on_event = on_event
        self._loop = asyncio.get_running_loop()
        self._udp: asyncio.DatagramTransport | None = None
        #: Our end of the socket or connection (what the driver passes as ``destination``).
        self._local = Address("0.0.0.0", 0)
        self._stream: asyncio.Transport | None = None
        self._generation = 0
        self._pending_writes: list[bytes] = []
        self._connecting: asyncio.Task[None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        # Events first (a redirection changes where bytes go), then datagrams, then the timer.
        self._driver = EngineDriver(engine, self._write, self._dispatch)
        self._allocated: asyncio.Future[None] = self._loop.create_future()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._queue: asyncio.Queue[tuple[bytes, Address] | None] = asyncio.Queue(RECEIVE_QUEUE)
        self._end_reason: str | None = None

    # ---------------------------------------------------------------- construction

    @classmethod
    async def connect(
        cls,
        server: ServerSpec,
        username: str,
        password: str,
        *,
        transport: Transport = "udp",
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
        local_address: tuple[str, int] | None = None,
        timeout: float = 10.0,
        on_data: DataCallback | None = None,
        on_event: EventCallback | None = None,
        **options: Any,
    ) -> TurnClient:
        """Reach the server and allocate; raises :class:`AllocationError` (a TurnError) when
        the server refuses, or when nothing succeeds within *timeout* seconds.

        *options* go to :class:`Allocation` (lifetime, family, channel_threshold, software,
        rto, ...). For TLS, *ssl* defaults to the system's trust store and *server_hostname* to
        the host name given in *server*.
        """
        host, port = _parse_server(server, transport)
        address = await _resolve(host, port, transport)
        if transport == "tls":
            if ssl is None:
                ssl = ssl_module.create_default_context()
            if server_hostname is None:
                server_hostname = host
        options.setdefault("rng", random.SystemRandom())  # the shell owns the randomness
        engine = Allocation(address, username, password, transport=transport, **options)
        client = cls(
            engine, ssl=ssl, server_hostname=server_hostname, on_data=on_data, on_event=on_event
        )
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancellation that lands
            # as the awaited operation completes (see icerelay.aio.tasks).
            async with asyncio.timeout(timeout):
                await client._open(local_address)
        except TimeoutError:
            client._abort()
            raise AllocationError(f"no allocation from {address} within {timeout} s") from None
        except BaseException:
            client._abort()
            raise
        return client

    async def _open(self, local_address: tuple[str, int] | None) -> None:
        server = self.engine.server
        if self.engine.transport == "udp":
            family = socket.AF_INET6 if server.family == 6 else socket.AF_INET
            if local_address is None:
                local_address = ("::" if family == socket.AF_INET6 else "0.0.0.0", 0)
            transport, _ = await self._loop.create_datagram_endpoint(
                lambda: _DatagramProtocol(self), local_addr=local_address, family=family
            )
            self._udp = transport
            self._local = _sockname(transport)
        else:
            await self._connect_stream(server, local_address)
        self.engine.start(self._loop.time())
        self._driver.transmit()
        await asyncio.shield(self._allocated)

    async def _connect_stream(self, server: Address, local_address: tuple[str, int] | None) -> None:
        self._generation += 1
        generation = self._generation
        try:
            transport, _ = await self._loop.create_connection(
                lambda: _StreamProtocol(self, generation),
                server.host,
                server.port,
                ssl=self._ssl if self.engine.transport == "tls" else None,
                server_hostname=self._server_hostname if self.engine.transport == "tls" else None,
                local_addr=local_address,
            )
        except (OSError, ssl_module.SSLError) as exc:
            raise AllocationError(f"cannot connect to TURN server {server}: {exc}") from exc
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Media through TURN/TCP: small writes must not wait for Nagle.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._stream = transport
        self._local = _sockname(transport)
        pending, self._pending_writes = self._pending_writes, []
        for data in pending:
            transport.write(data)

    # ---------------------------------------------------------------- public API

    @property
    def relayed_address(self) -> Address:
        """The relayed transport address (the ``typ relay`` candidate)."""
        if self.engine.relayed_address is None:
            raise TurnError("no allocation")
        return self.engine.relayed_address

    @property
    def mapped_address(self) -> Address | None:
        """Our address as the server saw it (a server-reflexive candidate)."""
        return self.engine.mapped_address

    @property
    def lifetime(self) -> int:
        """Seconds the server granted at the last Allocate or Refresh."""
        return self.engine.lifetime

    @property
    def counters(self) -> AllocationCounters:
        """The engine's counters (Send indications vs ChannelData sent, received, malformed ...)."""
        return self.engine.counters

    @property
    def closed(self) -> bool:
        """True once the allocation ended (closed, expired or failed)."""
        return self.engine.state is State.CLOSED

    async def send_to(self, data: bytes, peer: Address | tuple[str, int]) -> None:
        """Relay *data* to *peer*; waits only when a TCP/TLS connection applies backpressure."""
        if not isinstance(peer, Address):
            peer = Address(str(peer[0]), int(peer[1]))
        self.engine.send_to(data, peer, self._loop.time())
        self._driver.transmit()
        if not self._writable.is_set():
            await self._writable.wait()

    async def recv_from(self) -> tuple[bytes, Address]:
        """The next packet a peer sent to the relayed address, and that peer.

        Raises :class:`TurnError` once the allocation has ended and the queue is empty. Not
        usable together with ``on_data``.
        """
        if self._on_data is not None:
            raise TurnError("recv_from() is not available when on_data is set")
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # wake the next reader too
            raise TurnError(self._end_reason or "allocation closed")
        return item

    async def create_permission(self, peers: Iterable[Address]) -> None:
        """Install (and keep) permissions for *peers* without sending to them."""
        self.engine.create_permission(list(peers), self._loop.time())
        self._driver.transmit()

    async def bind_channel(self, peer: Address) -> None:
        """Bind a channel to *peer* now instead of on first traffic."""
        self.engine.bind_channel(peer, self._loop.time())
        self._driver.transmit()

    async def refresh(self) -> None:
        """Refresh the allocation now (the engine also does it on its own before expiry)."""
        self.engine.refresh(self._loop.time())
        self._driver.transmit()

    async def close(self, timeout: float = 5.0) -> None:
        """Deallocate (Refresh with LIFETIME 0), wait for the answer up to *timeout* seconds,
        then close the socket. Safe to call more than once."""
        if not self.closed:
            self.engine.close(self._loop.time())
            self._driver.transmit()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self._closed)
        self._abort()

    async def __aenter__(self) -> TurnClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---------------------------------------------------------------- engine plumbing

    def _received(self, data: bytes, source: Address | None, generation: int = 0) -> None:
        if generation and generation != self._generation:
            return  # a connection we already left (after ALTERNATE-SERVER)
        # A stream carries only the server's bytes; the engine checks a UDP source itself.
        self._driver.datagram_received(
            data, source if source is not None else self.engine.server, self._local
        )

    def _stream_lost(self, generation: int, exc: Exception | None) -> None:
        if generation != self._generation:
            return
        self._stream = None
        reason = f"connection to the server lost: {exc}" if exc else "server closed the connection"
        self.engine.connection_lost(self._loop.time(), reason)
        self._driver.transmit()

    def _write(self, datagram: Datagram) -> None:
        if self._udp is not None:
            self._udp.sendto(datagram.data, (datagram.destination.host, datagram.destination.port))
        elif self._stream is not None and not self._stream.is_closing():
            self._stream.write(datagram.data)
        else:
            self._pending_writes.append(datagram.data)

    def _dispatch(self, event: object) -> None:
        if isinstance(event, DataReceived):
            if self._on_data is not None:
                self._on_data(event.data, event.peer)
            else:
                if self._queue.full():
                    self._queue.get_nowait()
                    self.engine.counters.dropped += 1
                self._queue.put_nowait((event.data, event.peer))
        elif isinstance(event, AllocationSucceeded):
            if not self._allocated.done():
                self._allocated.set_result(None)
        elif isinstance(event, AllocationFailed):
            self._end(event.reason)
            if not self._allocated.done():
                self._allocated.set_exception(AllocationError(event.reason, event.code))
        elif isinstance(event, AllocationExpired):
            self._end(event.reason)
        elif isinstance(event, AllocationClosed):
            self._end("allocation closed")
        elif isinstance(event, AlternateServer) and self.engine.transport != "udp":
            self._reconnect(event.server)
        if self._on_event is not None and isinstance(event, Event):
            self._on_event(event)

    def _reconnect(self, server: Address) -> None:
        # RFC 8656 §7.4 / RFC 8489 §10: over a stream, the alternate server needs its own
        # connection; bytes the engine produces meanwhile wait in _pending_writes.
        old, self._stream = self._stream, None
        self._generation += 1
        if old is not None:
            old.close()

        async def connect() -> None:
            try:
                await self._connect_stream(server, None)
            except AllocationError as exc:
                self.engine.connection_lost(self._loop.time(), str(exc))
                self._driver.transmit()

        self._connecting = self._loop.create_task(connect())

    def _end(self, reason: str) -> None:
        if self._end_reason is None:
            self._end_reason = reason
        if not self._closed.done():
            self._closed.set_result(None)
        if self._on_data is None:
            if self._queue.full():
                self._queue.get_nowait()
            self._queue.put_nowait(None)

    def _abort(self) -> None:
        """Drop the socket and timer without talking to the server."""
        self._driver.close()
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._stream is not None:
            self._generation += 1  # its connection_lost is no news to the engine
            self._stream.close()
            self._stream = None
        if not self._allocated.done():
            self._allocated.cancel()


@contextlib.asynccontextmanager
async def create_turn_allocation(
    server: ServerSpec,
    username: str,
    password: str,
    *,
    transport: Transport = "udp",
    ssl: ssl_module.SSLContext | None = None,
    **options: Any,
) -> AsyncIterator[TurnClient]:
    """``async with create_turn_allocation(server, user, password) as allocation:`` allocates,
    yields the :class:`TurnClient`, and deallocates on the way out. See :meth:`TurnClient.connect`
    for the options."""
    client = await TurnClient.connect(
        server, username, password, transport=transport, ssl=ssl, **options
    )
    try:
        yield client
    finally:
        await client.close()
