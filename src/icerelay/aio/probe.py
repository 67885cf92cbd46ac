"""Run a :class:`~icerelay.probe.behavior.Probe` on real sockets with asyncio.

The probe is driven by :class:`~icerelay.aio.driver.EngineDriver` like every engine: a small
adapter decodes each datagram (the probe takes STUN messages) and turns "done" into an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from icerelay.aio.addresses import family_of, from_sockaddr, to_sockaddr
from icerelay.aio.driver import EngineDriver
from icerelay.aio.udp import UdpEndpoint
from icerelay.errors import ProbeError, StunError
from icerelay.net import Datagram
from icerelay.probe.behavior import Probe
from icerelay.probe.results import ProbeResult
from icerelay.stun import Address, decode_message
from icerelay.stun.demux import stream_frame_length


async def resolve(host: str, port: int, family: int = 0) -> Address:
    """First address of ``host`` (an IP literal or a name); ``family`` 4 or 6 restricts it."""
    loop = asyncio.get_running_loop()
    af = {4: socket.AF_INET, 6: socket.AF_INET6}.get(family, socket.AF_UNSPEC)
    try:
        infos = await loop.getaddrinfo(host, port, family=af, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise ProbeError(f"cannot resolve {host!r}: {exc.strerror}") from None
    if not infos:
        raise ProbeError(f"cannot resolve {host!r}")
    return from_sockaddr(infos[0][4])


def _route_source(server: Address) -> str:
    """The local IP the kernel would use to reach ``server`` (connect() on UDP sends nothing)."""
    with socket.socket(family_of(server), socket.SOCK_DGRAM) as sock:
        sock.connect(to_sockaddr(server))
        return from_sockaddr(sock.getsockname()).host


@dataclass(frozen=True, slots=True)
class ProbeFinished:
    """The probe is done: its ``result`` or ``error`` is set."""


class _ProbeEngine:
    """A :class:`Probe` seen as an :class:`~icerelay.aio.driver.Engine`.

    The probe takes decoded STUN messages (anything else is not for it) and has no events of
    its own; its end is reported as one :class:`ProbeFinished` event.
    """

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self._finished_reported = False

    def receive(self, data: bytes, source: Address, destination: Address, now: float) -> None:
        try:
            message = decode_message(data)
        except StunError:
            return
        self.probe.receive(message, source, now)

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        return self.probe.datagrams_to_send(now)

    def next_timer(self) -> float | None:
        return self.probe.next_timer()

    def handle_timer(self, now: float) -> None:
        self.probe.handle_timer(now)

    def next_event(self) -> ProbeFinished | None:
        if self.probe.done and not self._finished_reported:
            self._finished_reported = True
            return ProbeFinished()
        return None


def _finisher(finished: asyncio.Future[None]) -> Callable[[object], None]:
    def on_event(event: object) -> None:
        if isinstance(event, ProbeFinished) and not finished.done():
            finished.set_result(None)

    return on_event


async def probe_udp(
    server: Address, *, behavior: bool = False, timeout: float = 3.0, local: Address | None = None
) -> ProbeResult:
    """Probe ``server`` over UDP from an unconnected socket (answers may come from the server's
    other addresses). Raises :class:`ProbeError` when test I fails."""
    loop = asyncio.get_running_loop()
    if local is None:
        # Bind the concrete source IP, not the wildcard, so that "mapped == local" (no NAT) can
        # be told from the XOR-MAPPED-ADDRESS.
        try:
            local = Address(_route_source(server), 0)
        except OSError as exc:
            raise ProbeError(f"no route to {server}: {exc.strerror}") from None
    if local.family != server.family:
        raise ProbeError(f"cannot bind {local}: not of the address family of {server}")
    driver: EngineDriver | None = None

    def received(data: bytes, source: Address, destination: Address) -> None:
        if driver is not None:
            driver.datagram_received(data, source, destination)

    try:
        endpoint = await UdpEndpoint.open(local, received)
    except OSError as exc:
        raise ProbeError(f"cannot bind {local}: {exc.strerror}") from None

    def send(datagram: Datagram) -> None:
        endpoint.send(datagram.data, datagram.destination)

    probe = Probe(
        server,
        endpoint.local_address,
        loop.time(),
        rng=random.SystemRandom(),
        behavior=behavior,
        timeout=timeout,
    )
    finished: asyncio.Future[None] = loop.create_future()
    driver = EngineDriver(_ProbeEngine(probe), send, _finisher(finished))
    try:
        driver.transmit()
        if not probe.done:
            await finished
    finally:
        driver.close()
        endpoint.close()
    return _outcome(probe)


async def probe_tcp(server: Address, *, timeout: float = 3.0) -> ProbeResult:
    """One Binding over a TCP connection to ``server`` (RFC 8489 framing)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        # Not wait_for: on 3.11 it loses a cancellation that lands as the connection is made.
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(server.host, server.port)
    except (OSError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise ProbeError(f"cannot connect to {server} over TCP: {reason}") from None

    def send(datagram: Datagram) -> None:
        writer.write(datagram.data)

    driver: EngineDriver | None = None
    try:
        local = from_sockaddr(writer.get_extra_info("sockname"))
        remaining = max(0.1, timeout - (loop.time() - started))
        probe = Probe(
            server,
            local,
            loop.time(),
            rng=random.SystemRandom(),
            transport="tcp",
            timeout=remaining,
        )
        finished: asyncio.Future[None] = loop.create_future()
        driver = EngineDriver(_ProbeEngine(probe), send, _finisher(finished))
        driver.transmit()
        buffer = bytearray()
        while not probe.done:
            read = asyncio.ensure_future(reader.read(65536))
            waiting: set[asyncio.Future[Any]] = {read, finished}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not read.done():
                read.cancel()  # the probe ended on its timer
                break
            chunk = read.result()
            if not chunk:
                raise ProbeError(f"{server} closed the TCP connection without answering")
            buffer += chunk
            while (length := _frame_length(buffer)) is not None and len(buffer) >= length:
                frame, buffer = bytes(buffer[:length]), buffer[length:]
                driver.datagram_received(frame, server, local)
    finally:
        if driver is not None:
            driver.close()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return _outcome(probe)


def _frame_length(buffer: bytearray) -> int | None:
    try:
        return stream_frame_length(buffer)
    except (StunError, ValueError):
        raise ProbeError("the server sent bytes that are not STUN") from None


def _outcome(probe: Probe) -> ProbeResult:
    if probe.error is not None:
        raise probe.error
    assert probe.result is not None
    return probe.result
