"""Batched UDP reads with ``recvmmsg(2)``: one system call for up to :data:`SLOTS` datagrams.

The TURN server's listening socket carries every client's traffic: under load dozens of
datagrams wait at each wake-up, and one ``recvfrom`` per datagram costs a system call, a
bytes object and an address tuple each. :class:`MmsgReader` reads them with one
``recvmmsg`` call into buffers made once (no per-read allocation), then hands each datagram
over as ``(payload bytes, (host, port))`` like :class:`~icerelay.aio.batch.BatchReader`,
whose interface it shares (``start``, ``close``, ``limit``, ``chunk``, ``tag``). The only
per-datagram allocation is the payload; source addresses come from a cache keyed by the raw
``sockaddr`` (a client sends many datagrams from one address).

Linux only (glibc's ``recvmmsg`` through :mod:`ctypes`); :func:`available` says whether it can
be used, and the service falls back to :class:`~icerelay.aio.batch.BatchReader` otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import mmap
import socket
import struct
from typing import Any, Generic, TypeVar

from icerelay.aio.batch import BatchHandler, ErrorHandler

T = TypeVar("T")

#: Datagrams per ``recvmmsg`` call.
SLOTS = 32
#: Room for the largest UDP datagram: nothing is ever truncated.
SLOT_SIZE = 65536
_NAME_SIZE = 28  # sizeof(struct sockaddr_in6)
_MSG_DONTWAIT = 0x40
_MSG_TRUNC = 0x20


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


_MMSG_WORDS = ctypes.sizeof(_Mmsghdr) // 4
_LEN_WORD = _Mmsghdr.len.offset // 4
_FLAGS_WORD = (_Mmsghdr.hdr.offset + _Msghdr.flags.offset) // 4
_recvmmsg: Any = None


def available() -> bool:
    """Whether ``recvmmsg`` can be called here (Linux with glibc or musl)."""
    global _recvmmsg
    if _recvmmsg is None:
        try:
            function = ctypes.CDLL(None, use_errno=True).recvmmsg
        except (OSError, AttributeError):
            _recvmmsg = False
            return False
        function.argtypes = [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_void_p,
        ]
        function.restype = ctypes.c_int
        _recvmmsg = function
    return bool(_recvmmsg)


_V4 = struct.Struct("!2xH4s")
_V6 = struct.Struct("!2xH4x16sI")


class MmsgReader(Generic[T]):
    """Reads *sock* (non-blocking UDP) on *loop* with ``recvmmsg``: at most :attr:`limit`
    datagrams per wake-up, handed to ``handler(tag, batch)`` in lists of at most
    :attr:`chunk` (capped at :data:`SLOTS`)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        handler: BatchHandler[T],
        tag: T,
        *,
        limit: int = 64,
        chunk: int = SLOTS,
        on_error: ErrorHandler[T] | None = None,
    ) -> None:
        if not available():
            raise OSError(errno.ENOSYS, "recvmmsg is not available")
        self._loop = loop
        self.sock = sock
        self._fd = sock.fileno()
        self._handler = handler
        self.tag = tag
        self._on_error = on_error
        self.limit = limit
        self.chunk = chunk
        self._open = False
        self._v6 = sock.family == socket.AF_INET6
        # Anonymous mappings: pages are only backed once a datagram that large lands there.
        self._data = mmap.mmap(-1, SLOTS * SLOT_SIZE)
        self._names = mmap.mmap(-1, SLOTS * _NAME_SIZE)
        data_base = ctypes.addressof(ctypes.c_char.from_buffer(self._data))
        name_base = ctypes.addressof(ctypes.c_char.from_buffer(self._names))
        self._iovecs = (_Iovec * SLOTS)()
        self._messages = (_Mmsghdr * SLOTS)()
        for index in range(SLOTS):
            self._iovecs[index].base = data_base + index * SLOT_SIZE
            self._iovecs[index].len = SLOT_SIZE
            header = self._messages[index].hdr
            header.name = name_base + index * _NAME_SIZE
            header.namelen = _NAME_SIZE
            header.iov = ctypes.addressof(self._iovecs[index])
            header.iovlen = 1
        self._messages_address = ctypes.addressof(self._messages)
        self._words = memoryview(self._messages).cast("B").cast("I")
        self._data_view = memoryview(self._data)
        self._sources: dict[bytes, tuple[str, int]] = {}

    def start(self) -> None:
        """Start reading (the socket must be non-blocking)."""
        if not self._open:
            self._open = True
            self._loop.add_reader(self._fd, self._on_readable)

    def close(self) -> None:
        """Stop reading and free the buffers (the socket stays open: it is the caller's)."""
        if self._open:
            self._open = False
            self._loop.remove_reader(self._fd)
        with contextlib.suppress(BufferError, ValueError):
            self._words.release()
            self._data_view.release()

    def _source(self, key: bytes) -> tuple[str, int]:
        """(host, port) as ``recvfrom`` would give them (link-local with its %scope)."""
        if self._v6:
            port, raw, scope = _V6.unpack_from(key)
            host = socket.inet_ntop(socket.AF_INET6, raw)
            if scope:
                try:
                    host += "%" + socket.if_indextoname(scope)
                except OSError:
                    host += f"%{scope}"
        else:
            port, raw = _V4.unpack_from(key)
            host = socket.inet_ntoa(raw)
        if len(self._sources) >= 65536:
            self._sources.clear()
        source = self._sources[key] = (host, port)
        return source

    def _on_readable(self) -> None:
        recvmmsg = _recvmmsg
        words, data, names = self._words, self._data_view, self._names
        sources = self._sources
        name_size = 16 if not self._v6 else _NAME_SIZE
        remaining = self.limit
        chunk = min(self.chunk, SLOTS)
        while remaining > 0 and self._open:
            want = chunk if chunk < remaining else remaining
            count = recvmmsg(self._fd, self._messages_address, want, _MSG_DONTWAIT, None)
            if count <= 0:
                error = ctypes.get_errno()
                if count == 0 or error in (errno.EAGAIN, errno.EINTR):
                    return
                if self._on_error is None or not self._on_error(
                    self.tag, OSError(error, "recvmmsg")
                ):
                    return
                continue
            remaining -= count
            batch: list[tuple[bytes, tuple[str, int]]] = []
            append = batch.append
            for index in range(count):
                base = index * _MMSG_WORDS
                if words[base + _FLAGS_WORD] & _MSG_TRUNC:
                    continue  # cannot happen with 64 KiB slots; never hand over a cut datagram
                start = index * SLOT_SIZE
                payload = data[start : start + words[base + _LEN_WORD]].tobytes()
                offset = index * _NAME_SIZE
                key = names[offset : offset + name_size]
                source = sources.get(key)
                if source is None:
                    source = self._source(key)
                append((payload, source))
            self._handler(self.tag, batch)
            if count < want:
                return
