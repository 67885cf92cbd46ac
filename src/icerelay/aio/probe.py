"""Run a :class:`~icerelay.probe.behavior.Probe` on real sockets with asyncio."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from icerelay.aio.addresses import family_of, from_sockaddr, to_sockaddr
from icerelay.errors import ProbeError, StunError
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


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, Address]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.queue.put_nowait((data, from_sockaddr(addr)))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable): the probe's timeout already covers them.
        pass


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
    sock = socket.socket(family_of(server), socket.SOCK_DGRAM)
    try:
        sock.bind(to_sockaddr(local))
    except OSError as exc:
        sock.close()
        raise ProbeError(f"cannot bind {local}: {exc.strerror}") from None
    sock.setblocking(False)
    local = from_sockaddr(sock.getsockname())
    transport, receiver = await loop.create_datagram_endpoint(_Receiver, sock=sock)
    try:
        probe = Probe(server, local, loop.time(), behavior=behavior, timeout=timeout)
        while not probe.done:
            for outgoing in probe.datagrams_to_send(loop.time()):
                transport.sendto(outgoing.data, to_sockaddr(outgoing.destination))
            timer = probe.next_timer()
            wait = None if timer is None else max(0.0, timer - loop.time())
            try:
                data, source = await asyncio.wait_for(receiver.queue.get(), wait)
            except TimeoutError:
                probe.handle_timer(loop.time())
                continue
            try:
                message = decode_message(data)
            except StunError:
                continue
            probe.receive(message, source, loop.time())
    finally:
        transport.close()
    return _outcome(probe)


async def probe_tcp(server: Address, *, timeout: float = 3.0) -> ProbeResult:
    """One Binding over a TCP connection to ``server`` (RFC 8489 framing)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(server.host, server.port), timeout
        )
    except (OSError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise ProbeError(f"cannot connect to {server} over TCP: {reason}") from None
    try:
        local = from_sockaddr(writer.get_extra_info("sockname"))
        remaining = max(0.1, timeout - (loop.time() - started))
        probe = Probe(server, local, loop.time(), transport="tcp", timeout=remaining)
        buffer = bytearray()
        while not probe.done:
            for outgoing in probe.datagrams_to_send(loop.time()):
                writer.write(outgoing.data)
            timer = probe.next_timer()
            wait = None if timer is None else max(0.0, timer - loop.time())
            try:
                chunk = await asyncio.wait_for(reader.read(65536), wait)
            except TimeoutError:
                probe.handle_timer(loop.time())
                continue
            if not chunk:
                raise ProbeError(f"{server} closed the TCP connection without answering")
            buffer += chunk
            while (length := _frame_length(buffer)) is not None and len(buffer) >= length:
                frame, buffer = bytes(buffer[:length]), buffer[length:]
                with contextlib.suppress(StunError):
                    probe.receive(decode_message(frame), server, loop.time())
    finally:
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
