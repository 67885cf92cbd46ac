"""A TCP server for STUN-family streams: messages back to back, each framed by its header.

STUN over TCP has no extra framing (RFC 8489 §6.2.2): a message is 20 bytes of header plus the
length in the header. TURN adds ChannelData frames on the same stream (RFC 8656 §12.5), padded to
four bytes. :func:`icerelay.stun.demux.stream_frame_length` knows both; this module cuts the
stream into frames and hands each to a callback together with its :class:`StreamConnection`.

Hostile streams are bounded: a first byte that starts neither kind of frame closes the
connection (a stream cannot be resynchronised); a connection idle for ``idle_timeout`` (including
one that sent half a frame and stopped) is closed; at most ``max_connections`` are open, and at
most ``max_connections_per_source`` from one IP address (so one source cannot take them all and
lock everyone else out); a peer that does not read its responses is cut off once
``max_write_buffer`` bytes are queued.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from collections.abc import Callable
from typing import cast

from icerelay.aio.addresses import bound_socket, from_sockaddr
from icerelay.errors import StunError
from icerelay.stun import Address
from icerelay.stun.demux import stream_frame_length

logger = logging.getLogger("icerelay.aio.stream")

#: (one whole frame, the connection it came on)
FrameHandler = Callable[[bytes, "StreamConnection"], None]
#: Called with a short reason when a connection is closed for misbehaving.
RejectHandler = Callable[[str, Address], None]


class StreamConnection(asyncio.Protocol):
    """One accepted connection."""

    def __init__(self, server: StreamServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._idle_handle: asyncio.TimerHandle | None = None
        self._last_activity = 0.0
        self.peer = Address("0.0.0.0", 0)
        self.local = server.local_address

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio's classes.
        self._transport = cast(asyncio.Transport, transport)
        self.peer = from_sockaddr(self._transport.get_extra_info("peername"))
        server = self._server
        if len(server.connections) >= server.max_connections:
            server.reject("too_many_connections", self.peer)
            self._transport.abort()
            return
        per_source = server.max_connections_per_source
        if per_source and server.per_source[self.peer.host] >= per_source:
            server.reject("too_many_connections_per_source", self.peer)
            self._transport.abort()
            return
        server.connections.add(self)
        server.per_source[self.peer.host] += 1
        loop = asyncio.get_running_loop()
        self._last_activity = loop.time()
        self._idle_handle = loop.call_later(self._server.idle_timeout, self._check_idle)

    def data_received(self, data: bytes) -> None:
        self._last_activity = asyncio.get_running_loop().time()
        self._buffer += data
        while self._transport is not None and not self._transport.is_closing():
            try:
                length = stream_frame_length(self._buffer)
            except (StunError, ValueError):
                self._server.reject("unframeable_stream", self.peer)
                self.abort()
                return
            if length is None or len(self._buffer) < length:
                return
            frame = bytes(self._buffer[:length])
            del self._buffer[:length]
            self._server.handler(frame, self)

    def connection_lost(self, exc: Exception | None) -> None:
        server = self._server
        if self in server.connections:
            server.connections.discard(self)
            host = self.peer.host
            server.per_source[host] -= 1
            if server.per_source[host] <= 0:
                del server.per_source[host]
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        self._transport = None

    # --- for handlers ----------------------------------------------------------------------

    def send(self, data: bytes) -> bool:
        """Write a frame; False (and the connection is cut) if the peer stopped reading."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        if transport.get_write_buffer_size() + len(data) > self._server.max_write_buffer:
            self._server.reject("write_buffer_full", self.peer)
            self.abort()
            return False
        transport.write(data)
        return True

    def close(self) -> None:
        """Close after queued data is written."""
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Close now, dropping queued data."""
        if self._transport is not None:
            self._transport.abort()

    def _check_idle(self) -> None:
        loop = asyncio.get_running_loop()
        idle_for = loop.time() - self._last_activity
        if idle_for >= self._server.idle_timeout:
            self._server.reject("idle_timeout", self.peer)
            self.abort()
        else:
            self._idle_handle = loop.call_later(
                self._server.idle_timeout - idle_for, self._check_idle
            )


class StreamServer:
    """A listening TCP socket whose connections are framed into STUN/ChannelData frames."""

    def __init__(
        self,
        handler: FrameHandler,
        *,
        idle_timeout: float = 300.0,
        max_connections: int = 1024,
        max_write_buffer: int = 256 * 1024,
        on_reject: RejectHandler | None = None,
        max_connections_per_source: int = 0,
    ) -> None:
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        #: 0: no limit per source IP address.
        self.max_connections_per_source = max_connections_per_source
        #: Open connections per source IP address.
        self.per_source: Counter[str] = Counter()
        self.max_write_buffer = max_write_buffer
        self.connections: set[StreamConnection] = set()
        self.local_address = Address("0.0.0.0", 0)
        self._on_reject = on_reject
        self._server: asyncio.Server | None = None

    @classmethod
    async def open(cls, local: Address, handler: FrameHandler, **options: object) -> StreamServer:
        """Listen on ``local`` (port 0 picks one; see :attr:`local_address`)."""
        server = cls(handler, **options)  # type: ignore[arg-type]
        sock = bound_socket(local, socket.SOCK_STREAM)
        server.local_address = from_sockaddr(sock.getsockname())
        loop = asyncio.get_running_loop()
        server._server = await loop.create_server(lambda: StreamConnection(server), sock=sock)
        return server

    def reject(self, reason: str, peer: Address) -> None:
        if self._on_reject is not None:
            self._on_reject(reason, peer)

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.abort()
        if self._server is not None:
            await self._server.wait_closed()
