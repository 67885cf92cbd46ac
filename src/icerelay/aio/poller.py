"""Many hot UDP sockets read through one readiness set, with wake-ups coalesced under load.

A relay reads thousands of sockets (one per relayed address) that each carry one media stream.
Read through the event loop, every datagram costs a wake-up of the process and a callback of
its own, and after the datagram a second ``recvfrom`` that only raises "nothing to read": on
this project's machines that was about two thirds of the CPU a relayed packet cost, against
about a sixth for the two socket calls that move it (benchmarks/turn). :class:`DatagramPoller`
keeps the hot sockets in an epoll set of its own, which the event loop sees as one readable
descriptor, and reads them in *rounds*:

- one ``epoll_wait`` returns every ready socket; each is read once (its queue is one datagram
  at a stream's rate), or up to its ``limit`` if it was ready in the round before too (a
  backlog, or a high-rate stream): the "nothing to read" call is then paid only by those; a
  socket marked ``eager`` (a server's listening socket, shared by every client) is always read
  up to its limit. What is left waits for the next round (the set is level-triggered), so no
  socket holds the others up;
- ``on_flush`` runs after every ``chunk`` datagrams and at the end of the round: the caller
  sends what the round produced in one go;
- coalescing (interrupt moderation, as network cards do it): when a round reads at least
  ``coalesce_after`` datagrams the load is high, and the next round runs ``interval`` seconds
  later from a timer instead of at the next readiness: one wake-up per interval instead of one
  per datagram or two, at the price of at most ``interval`` of added delay while the load
  lasts. A round that reads less (a timed round: less than ``coalesce_while``, which a poller
  may set higher, so that a burst alone does not keep it on the timer) goes back to waking on
  readiness, so a lightly loaded relay adds no delay at all;
- requests do not count toward that load: a socket may be given an ``urgent`` test (a TURN
  server's listening socket: "is this a STUN request?"), and datagrams it accepts are read and
  handled like the rest but not counted for coalescing. A client waiting on its answers (an
  Allocate, then its retry with credentials) would otherwise wait up to ``interval`` per round
  trip as soon as a few clients were at it, which bounds how many requests a few clients can
  make per second (benchmarks/turn, allocations/s at 8 in flight: 3,556/s, about 8 requests
  per 2 ms) without saving any CPU worth having at such rates.

An eager socket that had one datagram to read (a listening socket at a few requests at a time:
one per round) is not read again only to hear "nothing to read": that answer is an exception
in Python, about 8,000 instructions, against 2,000 for asking an epoll set of its own whether
more is queued. Once that says yes, the socket is read until its queue is empty as before.

Socket errors other than "nothing to read" (an ICMP error reported on the socket) go to the
socket's ``on_error``, which says whether to keep reading it this round.
"""

from __future__ import annotations

import asyncio
import select
import socket
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
#: Told (datagram, source address, the socket's tag, now) for every datagram read. The address
#: is ``(host, port)`` for both families (an IPv6 socket's flow and scope fields are dropped).
DatagramHandler = Callable[[bytes, Any, T, float], None]
#: Told (tag, a socket error); returns True to keep reading this socket this round.
ErrorHandler = Callable[[T, OSError], bool]
#: Told a datagram; True if it is a request someone waits on (see the module docstring).
UrgentTest = Callable[[bytes], bool]

MAX_DATAGRAM = 65535
#: Datagrams read between two ``on_flush`` calls at most: what the first datagrams of a deep
#: queue produced goes out before the rest is read.
CHUNK = 64
#: Seconds between rounds while the load is high. The event loop's timers may be no finer
#: than a millisecond (uvloop's are not), so that is the step.
INTERVAL = 0.001
#: Datagrams a round must read for the next round to wait for the timer: about 4,000
#: datagrams/s for a poller. benchmarks/turn, 300 streams (7,500 packets/s per worker): with
#: 16 the poller still woke every packet or two, 13.7-15.1 us of CPU per relayed packet; with 4,
#: 8.7-9.8 us, for 0.1 -> 0.85 ms more median delay.
COALESCE_AFTER = 4


def _ignore(_tag: object, _error: OSError) -> bool:
    return False


class _Source(Generic[T]):
    """One socket in the set."""

    __slots__ = (
        "eager",
        "handler",
        "last_round",
        "limit",
        "on_error",
        "probe",
        "recvfrom",
        "sock",
        "tag",
        "urgent",
    )

    def __init__(
        self,
        sock: socket.socket,
        handler: DatagramHandler[T],
        tag: T,
        limit: int,
        eager: bool,
        on_error: ErrorHandler[T],
        urgent: UrgentTest | None,
    ) -> None:
        self.sock = sock
        self.recvfrom = sock.recvfrom
        self.handler = handler
        self.tag = tag
        self.limit = limit
        self.eager = eager
        self.on_error = on_error
        self.urgent = urgent
        self.last_round = -2
        #: Eager sockets: an epoll set of this socket alone, asked after the round's first
        #: datagram whether another one is queued (see the module docstring).
        self.probe: select.epoll | None = None
        if eager:
            probe = select.epoll()
            try:
                probe.register(sock.fileno(), select.EPOLLIN)
            except BaseException:
                probe.close()
                raise
            self.probe = probe

    def close(self) -> None:
        if self.probe is not None:
            self.probe.close()
            self.probe = None


class DatagramPoller(Generic[T]):
    """Reads the non-blocking UDP sockets added with :meth:`add` on *loop*, in rounds (see
    the module docstring); *on_flush* runs after each chunk and round. :meth:`start` (until
    then rounds run only when :meth:`run_round` is called), :meth:`close`; :attr:`interval`
    0 turns coalescing off; *clock* gives the handlers' ``now`` (the loop's ``time()`` by
    default).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_flush: Callable[[], None],
        *,
        interval: float = INTERVAL,
        coalesce_after: int = COALESCE_AFTER,
        coalesce_while: int | None = None,
        chunk: int = CHUNK,
        size: int = MAX_DATAGRAM,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._loop = loop
        # The ``now`` handed to the handlers, read once per round (a data plane whose policy
        # runs on an injected clock passes it here).
        self._clock = clock if clock is not None else loop.time
        self._on_flush = on_flush
        #: Seconds between rounds under load (0: always wake on readiness).
        self.interval = interval
        #: Datagrams a round must read for the next one to wait for the timer.
        self.coalesce_after = coalesce_after
        #: Datagrams a timed round must read for the next one to stay on the timer (at least
        #: ``coalesce_after``): a higher bar to stay than to enter sends a poller that a burst
        #: put on the timer back to readiness unless the load stays high.
        self.coalesce_while = max(coalesce_after, coalesce_while or coalesce_after)
        self.chunk = chunk
        #: Receive buffer size (larger datagrams are truncated by the kernel).
        self.size = size
        self._epoll: select.epoll | None = select.epoll()
        # What the event loop watches: an epoll set holding only ``_epoll``. Rounds that run
        # from the timer mask ``_epoll`` in it (EPOLL_CTL_MOD, one cheap call) instead of
        # taking a descriptor out of the loop and putting it back: adding an epoll set to
        # another makes the kernel walk every socket in it (its loop and wake-up path
        # checks), which with thousands of relay ports cost more than the rounds saved, and
        # uvloop's add_reader/remove_reader cost some ten system calls more.
        self._gate: select.epoll | None = select.epoll()
        self._gate.register(self._epoll.fileno(), select.EPOLLIN)
        self._watched = False
        self._sources: dict[int, _Source[T]] = {}
        self._round = 0
        self._reading = False
        self._timer: asyncio.TimerHandle | None = None
        #: Datagrams the last round read that count toward coalescing (not the urgent ones).
        self._load = 0
        #: Rounds run, and those that ran from the timer (for tests and status).
        self.rounds = 0
        self.timed_rounds = 0

    def __len__(self) -> int:
        return len(self._sources)

    def start(self) -> None:
        """Run rounds from the loop: on readiness, or from the timer under load."""
        if self._gate is not None and not self._watched:
            self._watched = self._reading = True
            self._loop.add_reader(self._gate.fileno(), self._on_readable)

    def close(self) -> None:
        """Stop reading; the sockets stay open (they are the caller's)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        gate, self._gate = self._gate, None
        epoll, self._epoll = self._epoll, None
        self._reading = False
        if gate is not None:
            if self._watched:
                self._watched = False
                self._loop.remove_reader(gate.fileno())
            gate.close()
        if epoll is not None:
            epoll.close()
        for source in self._sources.values():
            source.close()
        self._sources.clear()

    def add(
        self,
        sock: socket.socket,
        handler: DatagramHandler[T],
        tag: T,
        *,
        limit: int = 8,
        eager: bool = False,
        on_error: ErrorHandler[T] | None = None,
        urgent: UrgentTest | None = None,
    ) -> None:
        """Read *sock* (non-blocking UDP): ``handler(data, source, tag, now)`` per datagram, at
        most *limit* datagrams per round (see the module docstring for *eager* and *urgent*)."""
        assert self._epoll is not None, "DatagramPoller closed"
        fd = sock.fileno()
        source = _Source(sock, handler, tag, limit, eager, on_error or _ignore, urgent)
        try:
            self._epoll.register(fd, select.EPOLLIN)
        except BaseException:
            source.close()
            raise
        old = self._sources.get(fd)
        if old is not None:
            old.close()
        self._sources[fd] = source

    def remove(self, sock: socket.socket) -> None:
        """Stop reading *sock* (before closing it)."""
        fd = sock.fileno()
        source = self._sources.pop(fd, None)
        if source is not None:
            source.close()
            if self._epoll is not None:
                self._epoll.unregister(fd)

    def discard(self, sock: socket.socket) -> None:
        """Stop reading *sock*, which the caller closes right away: closing a socket's only
        descriptor takes it out of the epoll set, so this saves the ``epoll_ctl`` call (and
        the GIL hand-over around it) that :meth:`remove` makes. A socket whose descriptor was
        duplicated (``dup``, a forked child) must be taken out with :meth:`remove` instead."""
        self._sources.pop(sock.fileno(), None)

    def set_limit(self, sock: socket.socket, limit: int) -> None:
        """Change how many datagrams a round reads from *sock* at most."""
        source = self._sources.get(sock.fileno())
        if source is not None:
            source.limit = limit

    # --- rounds -------------------------------------------------------------------------

    def _on_readable(self) -> None:
        self.run_round()
        # High load: the next round comes from the timer, not from the next datagram.
        busy = self._load >= self.coalesce_after and self.interval > 0
        if busy and self._reading and self._mask(0):
            self._reading = False
            self._timer = self._loop.call_later(self.interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.timed_rounds += 1
        self.run_round()
        epoll = self._epoll
        if epoll is None:
            return  # closed by a handler
        if self._load >= self.coalesce_while and self.interval > 0:
            self._timer = self._loop.call_later(self.interval, self._on_timer)
        else:
            self._reading = self._mask(select.EPOLLIN)

    def _mask(self, events: int) -> bool:
        """Let the loop wake on the sockets' readiness (EPOLLIN) or not (0); False if closed."""
        gate, epoll = self._gate, self._epoll
        if gate is None or epoll is None:
            return False
        gate.modify(epoll.fileno(), events)
        return True

    def run_round(self) -> int:
        """Read every ready socket once (see the module docstring); the datagrams read."""
        self._load = 0
        epoll = self._epoll
        if epoll is None:
            return 0
        sources = self._sources
        events = epoll.poll(0, len(sources) + 1)
        if not events:
            return 0
        self.rounds += 1
        self._round = current = self._round + 1
        previous = current - 1
        now = self._clock()
        size = self.size
        chunk = self.chunk
        flush_at = chunk
        count = 0
        urgent_count = 0
        for fd, _mask in events:
            source = sources.get(fd)
            if source is None:
                continue  # removed by a handler during this round
            budget = source.limit if source.eager or source.last_round == previous else 1
            source.last_round = current
            recvfrom = source.recvfrom
            handler = source.handler
            tag = source.tag
            urgent = source.urgent
            probe = source.probe
            while budget > 0:
                budget -= 1
                try:
                    data, address = recvfrom(size)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as error:
                    if sources.get(fd) is not source or not source.on_error(tag, error):
                        break
                    continue
                if len(address) != 2:
                    address = address[:2]
                if urgent is not None and urgent(data):
                    urgent_count += 1
                handler(data, address, tag, now)
                count += 1
                if count >= flush_at:
                    flush_at += chunk
                    self._on_flush()
                    if sources.get(fd) is not source:
                        break  # the flush's events released this socket
                if probe is not None:
                    # After the first datagram: read on only if another one is queued.
                    if source.probe is None or not probe.poll(0, 1):
                        break
                    probe = None
        self._on_flush()
        self._load = count - urgent_count
        return count
