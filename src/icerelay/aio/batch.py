"""Batched UDP reading: up to N datagrams per readiness callback, handed over as one list.

A datagram protocol object costs a callback per datagram; a server that relays media reads
faster with its own reader: ``loop.add_reader`` on a non-blocking socket, then ``recvfrom``
until the socket is empty or the reader's budget for this wake-up is spent. The budget keeps
reading fair: the loop is level-triggered, so what is left wakes the reader again on the loop's
next turn, after every other ready socket had its turn. The datagrams are handed over in chunks
(a list per chunk) so that what the first ones produced can be sent before the rest of a deep
queue is read.

Socket errors other than "nothing to read" (an ICMP error reported on the socket, a socket
closed meanwhile) go to ``on_error``, which says whether to keep reading.

Both callbacks get the reader's ``tag`` first (e.g. the socket's local address), so a server
with thousands of sockets passes one bound method to all of them instead of a closure each.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any, Generic, TypeVar

#: ``(data, address)`` exactly as ``socket.recvfrom`` returns it (an IPv6 address has 4 fields).
Received = tuple[bytes, Any]
T = TypeVar("T")
#: Takes (tag, one chunk of datagrams, oldest first).
BatchHandler = Callable[[T, list[Received]], None]
#: Told (tag, a socket error); returns True to keep reading this wake-up, False to stop.
ErrorHandler = Callable[[T, OSError], bool]

MAX_DATAGRAM = 65535


def _ignore(_tag: object, _error: OSError) -> bool:
    return True


class BatchReader(Generic[T]):
    """Reads *sock* (non-blocking UDP) on *loop*: at most :attr:`limit` datagrams per wake-up,
    in lists of at most :attr:`chunk`, each handed to ``handler(tag, batch)``. :meth:`start`,
    :meth:`close`.
    """

    __slots__ = (
        "_handler",
        "_loop",
        "_on_error",
        "_open",
        "chunk",
        "limit",
        "size",
        "sock",
        "tag",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        handler: BatchHandler[T],
        tag: T,
        *,
        limit: int = 64,
        chunk: int = 64,
        size: int = MAX_DATAGRAM,
        on_error: ErrorHandler[T] | None = None,
    ) -> None:
        self._loop = loop
        self.sock = sock
        self._handler = handler
        #: Passed first to both callbacks.
        self.tag = tag
        self._on_error = on_error or _ignore
        #: Datagrams read per wake-up at most; may be changed while running.
        self.limit = limit
        #: Datagrams per list handed to the handler at most.
        self.chunk = chunk
        #: Receive buffer size (larger datagrams are truncated by the kernel).
        self.size = size
        self._open = False

    def start(self) -> None:
        """Start reading (the socket must be non-blocking)."""
        if not self._open:
            self._open = True
            self._loop.add_reader(self.sock.fileno(), self._on_readable)

    def close(self) -> None:
        """Stop reading (the socket stays open: it is the caller's)."""
        if self._open:
            self._open = False
            self._loop.remove_reader(self.sock.fileno())

    def _on_readable(self) -> None:
        recvfrom = self.sock.recvfrom
        size = self.size
        handler = self._handler
        tag = self.tag
        chunk = self.chunk
        remaining = self.limit
        while remaining > 0:
            count = chunk if chunk < remaining else remaining
            remaining -= count
            batch: list[Received] = []
            append = batch.append
            for _ in range(count):
                try:
                    append(recvfrom(size))
                except (BlockingIOError, InterruptedError):
                    if batch:
                        handler(tag, batch)
                    return
                except OSError as error:
                    if batch:
                        handler(tag, batch)
                        batch = []
                        append = batch.append
                    if not self._open or not self._on_error(tag, error):
                        return
            handler(tag, batch)
            if not self._open:
                return  # the handler closed us
