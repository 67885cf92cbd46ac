"""The media relay daemon: ng control over UDP and TCP, the session engine, a data plane, timers.

This is the asyncio shell around the sans-I/O parts. Control requests and timer expiries are
handled one at a time, in arrival order, by a single worker: the engine is not meant to be
entered twice, and a retransmitted request queued behind its original then finds the cached
reply. Forwardings are installed before the reply leaves, so media can flow as soon as the proxy
forwards the rewritten SDP.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from icerelay import bencode
from icerelay.aio.addresses import bound_socket
from icerelay.aio.entropy import BufferedSystemRandom
from icerelay.aio.tasks import cancel_and_wait
from icerelay.aio.udp import UdpEndpoint
from icerelay.control.mediaproxy import MediaproxyFramer, MediaproxyHandler
from icerelay.control.ng import (
    Answer,
    Command,
    NgDropped,
    NgHandler,
    NgImmediateReply,
    NgProtocol,
    NgRequest,
    NgStreamFramer,
    Offer,
    ReplyValue,
    error_reply,
    reply_too_big,
)
from icerelay.daemon.accounting import Accounting
from icerelay.daemon.dataplanes import dataplane_name, dataplane_statistics, start_dataplane
from icerelay.daemon.fdlimit import raise_fd_limit
from icerelay.daemon.relay_config import RelayServiceConfig
from icerelay.daemon.relay_ops import RelayOperations, log_command, log_mediaproxy
from icerelay.daemon.relay_records import RecordSink, RelayRecords
from icerelay.daemon.relay_reload import reloaded_config
from icerelay.dataplane import DataPlane
from icerelay.dataplane.interface import PortUnavailable
from icerelay.dataplane.userspace import UserspaceDataPlane
from icerelay.errors import ControlError, RelayError
from icerelay.relay.forwarding import ForwardingCounters
from icerelay.relay.ports import PortPair, PortPool
from icerelay.relay.sessions import (
    ForwardingInstalled,
    ForwardingRemoved,
    SessionDeleting,
    SessionEnded,
    SessionEngine,
    SessionRecord,
    StreamEnded,
    StreamEndReason,
    TerminationReason,
)
from icerelay.stun import Address
from icerelay.stun.ratelimit import LogLimiter

__all__ = ["NgRouter", "RecordSink", "RelayService"]

logger = logging.getLogger("icerelay.relay")


#: The cluster's hook (issue 15): serves an ng request (parsed, raw datagram, now) for a call
#: this engine does not hold -- an adopted call, a call of another instance -- and returns the
#: reply to send, or None to handle the request here.
NgRouter = Callable[[NgRequest, bytes, float], Awaitable[bytes | None]]

# Offers of new calls whose ports turn out to be taken by another program are retried this often.
_BIND_ATTEMPTS = 3

# Seconds a pair found held by another program stays out of circulation.
_QUARANTINE = 300.0

# What ``drain`` answers a new call with (ng ``error-reason``; mediaproxy says "error").
DRAINING_REASON = "draining: this relay takes no new calls, try another"

# Descriptors beyond the relay ports and control connections (listeners, the accounting
# database, logs, the event loop's own).
_FD_MARGIN = 256

# A queued unit of work: the protocol ("ng" or "mediaproxy"), a control message, how to answer
# it (None: nothing to answer) and the largest reply the transport carries (None: any), or a
# timer tick (None).
_Work = tuple[str, bytes, Callable[[bytes | None], None], int | None] | None


class RelayService:
    """``icerelay serve``'s media relay (``name = "relay"``): async :meth:`start` / :meth:`stop`.

    :param dataplane: the forwarder; the userspace one by default.
    :param records: where ended sessions' records go (they are logged in any case).
    """

    name = "relay"

    def __init__(
        self,
        config: RelayServiceConfig | None = None,
        *,
        dataplane: DataPlane | None = None,
        records: RecordSink | None = None,
    ) -> None:
        self.config = config or RelayServiceConfig()
        #: Replaced at start as ``config.dataplane`` says, unless a plane is given here.
        self.dataplane: DataPlane = dataplane if dataplane is not None else UserspaceDataPlane()
        self._choose_dataplane = dataplane is None
        # A CSPRNG: relay ports and the relay's ICE passwords must be hard to guess (the kernel's,
        # read in blocks: one getrandom call per draw was a measurable part of an offer).
        rng = BufferedSystemRandom()
        self.pool = PortPool(self.config.port_min, self.config.port_max, rng=rng)
        self.engine = SessionEngine(
            self.config.engine_config(),
            self.pool,
            rng=rng,
            counters=self._counters,
            # Unique per process start: a record's id never repeats across restarts.
            record_prefix=uuid.uuid4().hex[:16] + "-",
        )
        self.protocol = NgProtocol(
            cache_size=self.config.ng_cache_size,
            cache_ttl=self.config.ng_cache_ttl,
            cache_bytes=self.config.ng_cache_bytes,
        )
        self.handler = NgHandler(
            self.engine,
            self.protocol.counters,
            service_statistics=self._statistics,
            max_streams=self.config.max_streams_per_call,
        )
        self.mediaproxy = MediaproxyHandler(
            self.engine, max_streams=self.config.max_streams_per_call
        )
        #: Refusals and failures of the control listeners (``ng_tcp_too_many_connections``,
        #: ``ng_tcp_idle_timeout``, ``mediaproxy_too_many_connections``, ``internal_errors``...).
        self.counters = self.protocol.counters
        # One log line per kind of refusal or internal error per interval: a hostile client
        # must not turn the log into a disk-filling attack.
        self._log_limiter = LogLimiter(self.config.log_interval)
        self._ng_clients = 0
        self._mediaproxy_clients = 0
        self.records = RelayRecords(records)
        #: SIGUSR1: no new calls; :meth:`wait_drained` returns when the last one has ended.
        self.draining = False
        self._drained = asyncio.Event()
        #: New calls refused while draining.
        self.refused_draining = 0
        # The request the worker is on was answered from the ng reply cache.
        self._retransmission = False
        self._udp: UdpEndpoint | None = None
        self._tcp: asyncio.Server | None = None
        self._unix: asyncio.Server | None = None
        self._unix_path: Path | None = None
        self._tcp_clients: set[asyncio.Task[None]] = set()
        self._queue: asyncio.Queue[_Work] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        # The deadline the timer task sleeps until (None: none), so that a request wakes it
        # only when it brought a deadline forward, not after every request.
        self._timer_deadline: float | None = None
        self._wall_offset = 0.0
        #: Forwardings the data plane refused (port already bound by someone else, ...).
        self.install_failures = 0
        #: Pairs found held by another program, kept out of the pool until the time given.
        self._quarantined: dict[PortPair, float] = {}
        self._held: set[PortPair] = set()
        self.ports_quarantined = 0
        #: Views, totals and ICE decisions for operators (HTTP, metrics, ctl; issue 14).
        self.ops = RelayOperations(self)

        #: Set by the cluster service when the relay runs in a cluster (see :data:`NgRouter`),
        #: and what it runs after a command this engine handled (writes the call to Redis).
        self.router: NgRouter | None = None
        #: Set when the relay runs in a cluster: the Call-IDs of this instance's calls that a
        #: peer adopted (None: unknown), asked once at start before the journal's recovery.
        self.adopted_elsewhere: Callable[[], Awaitable[set[str] | None]] | None = None
        self.after_command: Callable[[Command], Awaitable[None]] | None = None
        #: The same for MediaProxy commands (calls adopted here; the dispatcher socket is local,
        #: so nothing is forwarded): the reply line, or None to handle the command here.
        self.mediaproxy_router: Callable[[bytes, float], Awaitable[bytes | None]] | None = None

    def reload_limits(self, config: RelayServiceConfig) -> None:
        """Apply the resource limits of ``config`` (for SIGHUP): they are read where they are
        enforced, so new connections and requests follow them at once; connections over a
        lowered cap are not cut. Listen addresses and the port range need a restart."""
        self.config = self.config.model_copy(
            update={
                name: getattr(config, name)
                for name in (
                    "ng_tcp_max_connections",
                    "ng_tcp_idle_timeout",
                    "ng_tcp_max_message",
                    "ng_max_udp_reply",
                    "ng_queue_max",
                    "max_streams_per_call",
                    "max_sessions",
                    "mediaproxy_max_connections",
                    "log_interval",
                )
            }
        )
        self.handler.max_streams = config.max_streams_per_call
        self.mediaproxy.max_streams = config.max_streams_per_call
        self.engine.config = dataclasses.replace(
            self.engine.config, max_sessions=config.max_sessions
        )
        self._log_limiter.interval = config.log_interval

    def _counters(self, key: str) -> ForwardingCounters | None:
        # Through the attribute: the plane is chosen at start, after the engine is built.
        return self.dataplane.counters(key)

    @property
    def dataplane_name(self) -> str:
        """The plane's name: kernel, userspace, or the class of a plane given in code."""
        return dataplane_name(self.dataplane)

    def _statistics(self) -> dict[str, ReplyValue]:
        """The shell's counters, for the ng ``statistics`` reply."""
        accounting = self.accounting
        return {
            "journal_errors": self.records.journal_errors,
            **dataplane_statistics(self.dataplane),
            "forwardings_failed": self.install_failures,
            "ports_quarantined": len(self._quarantined),
            # Step-aside (issue 11): streams the relay left because ICE went around it, and
            # their pairs still held out of the pool against late packets.
            "streams_stepped_aside": self.engine.stepped_aside,
            "ports_after_step_aside": self.pool.quarantined,
            "mediaproxy_errors": self.mediaproxy.errors,
            "ng_tcp_connections": self._ng_clients,
            "records_written": accounting.delivered if accounting is not None else 0,
            "records_failed": accounting.failures if accounting is not None else 0,
            "records_recovered": accounting.recovered if accounting is not None else 0,
            "accounting": accounting.location if accounting is not None else "",
            "accounting_error": accounting.last_error if accounting is not None else "",
            "draining": int(self.draining),
            "refused_draining": self.refused_draining,
        }

    # -- read-only views (HTTP, ctl) -----------------------------------------------------------

    def sessions_view(self) -> list[dict[str, Any]]:
        """Every live session with its streams, as JSON-ready dicts (oldest first)."""
        return self.ops.sessions_view()

    def session_view(self, call_id: str) -> list[dict[str, Any]]:
        """The live sessions of one call (empty if the call is unknown)."""
        return self.ops.sessions_view(call_id)

    @property
    def quarantined_pairs(self) -> int:
        """Port pairs currently held out of the pool (another program had them)."""
        return len(self._quarantined)

    async def delete_call(self, call_id: str) -> int:
        """End every session of ``call_id`` now (HTTP/ctl ``delete``); how many ended.

        It goes through the worker as an ng ``delete`` (with ``delete-delay`` 0), so it gets
        exactly what a proxy's delete gets: one caller in the engine at a time, the records
        written before the answer, the command counted and logged.
        """
        sessions = len(self.session_view(call_id))
        if not sessions:
            return 0
        body: dict[str, bencode.Encodable] = {
            "command": "delete", "call-id": call_id, "delete-delay": 0
        }
        message = b"http-" + secrets.token_hex(8).encode() + b" " + bencode.encode(body)
        done: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(("ng", message, _resolver(done), None))
        payload = await done
        reply = bencode.decode(payload.partition(b" ")[2]) if payload else None
        ok = isinstance(reply, dict) and reply.get(b"result") == b"ok"
        logger.info(
            "relay.call_deleted",
            extra={"call_id": call_id, "sessions": sessions if ok else 0, "via": "http"},
        )
        return sessions if ok else 0

    @property
    def ng_address(self) -> Address:
        """Where the ng protocol listens (the real port when configured with port 0)."""
        if self._udp is not None:
            return self._udp.local_address
        return Address(*self.config.ng_listen)

    def ng_address_tuple(self) -> tuple[str, int]:
        """:attr:`ng_address` as a (host, port) pair, for socket APIs."""
        address = self.ng_address
        return (address.host, address.port)

    async def _open_ng_sockets(self, listen: Address) -> socket.socket | None:
        """Bind the ng UDP endpoint and, with ``ng_tcp``, a TCP socket on the same port.

        With port 0 the kernel picks the UDP port, and that port may already be taken for
        TCP by an unrelated socket; the pair is then retried on a new port rather than
        failing the start (the test suite's parallel daemons met this once in a few
        hundred starts)."""
        attempts = 20 if listen.port == 0 and self.config.ng_tcp else 1
        for attempt in range(attempts):
            try:
                self._udp = await UdpEndpoint.open(listen, self._on_datagram)
            except OSError as exc:
                # Name the socket: "address in use" alone does not say which of the daemon's.
                raise OSError(exc.errno, f"relay ng udp on {listen}: {exc.strerror}") from None
            if not self.config.ng_tcp:
                return None
            # The same port as UDP, as rtpengine's ng listeners share one.
            tcp_address = Address(listen.host, self._udp.local_address.port)
            try:
                return bound_socket(tcp_address, socket.SOCK_STREAM)
            except OSError as exc:
                self._udp.close()
                self._udp = None
                if exc.errno == errno.EADDRINUSE and attempt + 1 < attempts:
                    continue
                raise OSError(
                    exc.errno, f"relay ng tcp on {tcp_address}: {exc.strerror}"
                ) from None
        raise AssertionError("unreachable")

    async def start(self) -> None:
        """Bind the ng listeners and start the worker and the timer."""
        loop = asyncio.get_running_loop()
        self._wall_offset = time.time() - loop.time()
        self.handler.wall_offset = self._wall_offset
        if self.config.raise_fd_limit:
            # One socket per relay port (RTP and RTCP of every stream), plus the control
            # connections: under the usual soft limit of 1024 the relay failed at call 251.
            config = self.config
            raise_fd_limit(
                config.port_max - config.port_min + 1
                + config.ng_tcp_max_connections
                + config.mediaproxy_max_connections
                + _FD_MARGIN,
                logger,
                "relay",
            )
        self.records.wall_offset = self._wall_offset
        # First, so that a store that cannot work at all (ConfigError) fails the start before
        # any socket is bound.
        skip: set[str] = set()
        if self.adopted_elsewhere is not None:
            # Calls a cluster peer adopted after this instance died: the peer records them.
            adopted = await self.adopted_elsewhere()
            if adopted is None:
                logger.warning("relay.recovery_unfiltered", extra={"reason": "redis unreachable"})
            else:
                skip = adopted
        await self.records.open(self.config, skip)
        try:
            self.dataplane = await start_dataplane(
                self.config, self.dataplane, choose=self._choose_dataplane
            )
        except BaseException:
            await self.records.close()
            raise
        listen = Address(*self.config.ng_listen)
        try:
            sock = await self._open_ng_sockets(listen)
            if sock is not None:
                self._tcp = await asyncio.start_server(self._on_tcp_client, sock=sock)
        except BaseException:
            if self._udp is not None:
                self._udp.close()
                self._udp = None
            await self.dataplane.close()
            await self.records.close()
            raise
        if self.config.mediaproxy_socket:
            await self._open_mediaproxy(Path(self.config.mediaproxy_socket))
        self._tasks = [
            asyncio.create_task(self._worker(), name="relay-worker"),
            asyncio.create_task(self._timer(), name="relay-timer"),
            asyncio.create_task(self.ops.watch(), name="relay-watch"),
        ]
        if self.records.journaled:
            interval = lambda: self.config.checkpoint_interval  # noqa: E731 - reloadable
            self._tasks += [
                asyncio.create_task(
                    self.records.run_checkpointer(self.engine, interval), name="relay-checkpoint"
                ),
                asyncio.create_task(
                    self.records.run_committer(self._check_drained), name="relay-journal"
                ),
            ]
        logger.info(
            "relay.started",
            extra={
                "ng": str(self.ng_address),
                "ports": f"{self.config.port_min}-{self.config.port_max}",
                "mediaproxy": str(self._unix_path or ""),
                "accounting": self.accounting.location if self.accounting else "",
                "dataplane": self.dataplane_name,
            },
        )

    @property
    def accounting(self) -> Accounting | None:
        """The journal and its replayer (None when ``accounting`` is empty: log only)."""
        return self.records.accounting

    async def _open_mediaproxy(self, path: Path) -> None:
        """Listen on MediaProxy's dispatcher socket; without the rights to, go on without it."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_socket():
                _remove_stale_socket(path)
            # Local control: the proxy runs as its own user, which must share the relay's group
            # (0660 by default); any other local user must not create and delete calls.
            mode = self.config.socket_mode
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                # Linux creates the socket file with the socket inode's mode (less the umask):
                # set before bind, the file never exists with wider permissions, not even for
                # the moment before the chmod below (which other systems need).
                os.fchmod(sock.fileno(), mode)
                sock.bind(str(path))
                path.chmod(mode)
                self._unix = await asyncio.start_unix_server(self._on_mediaproxy_client, sock=sock)
            except BaseException:
                sock.close()
                raise
            self._unix_path = path
        except OSError as error:
            # Typically an ordinary user (make run) who may not create /run/mediaproxy: the ng
            # control still works; set relay.mediaproxy_socket to a writable path for OpenSIPS.
            logger.warning(
                "relay.mediaproxy_disabled",
                extra={
                    "path": str(path),
                    "reason": error.strerror or str(error),
                    "hint": "set relay.mediaproxy_socket to a writable path, or run as root",
                },
            )

    async def stop(self) -> None:
        """End every session (records are written), close listeners and the data plane."""
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            self._tcp = None
        if self._unix is not None:
            self._unix.close()
            self._unix = None
            if self._unix_path is not None:
                with contextlib.suppress(OSError):
                    self._unix_path.unlink()
                self._unix_path = None
        # Cancelled until done: the worker may be in a Redis call (cluster) that swallows one.
        await cancel_and_wait([*self._tasks, *self._tcp_clients])
        self._tasks = []
        self._tcp_clients.clear()
        loop = asyncio.get_running_loop()
        self.engine.shutdown(loop.time())
        await self._apply_events(ignore_errors=True)
        await self.records.commit()
        self._release_quarantine(loop.time(), everything=True)
        await self.dataplane.close()
        # Every record is in the journal by now: a graceful stop loses none, and what the
        # database does not take in time is delivered by the next start.
        await self.records.close()

    # -- control input ------------------------------------------------------------------------

    def _on_datagram(self, data: bytes, source: Address, local: Address) -> None:
        udp = self._udp

        def reply(payload: bytes | None) -> None:
            if udp is not None and payload is not None:
                udp.send(payload, source)

        if self._queue.qsize() >= self.config.ng_queue_max:
            # A flood faster than the worker: drop, not queue without end (the proxy
            # retransmits what mattered). Counted and logged at a bounded rate.
            self._refuse("ng_queue_full", source)
            return
        self._queue.put_nowait(("ng", data, reply, self.config.ng_max_udp_reply))

    def _refuse(self, counter: str, peer: object, detail: str = "") -> None:
        """Count a refusal and log it at most once per interval per kind."""
        self.counters.drop(counter)
        self._log_limited("relay.refused", counter, reason=counter, peer=str(peer), detail=detail)

    def _log_limited(
        self,
        event: str,
        kind: str,
        *,
        exc_info: bool = False,
        info: bool = False,
        **extra: object,
    ) -> None:
        """Log ``event`` unless one of the same ``kind`` was logged less than
        ``log_interval`` ago (the line then says how many were suppressed in between)."""
        now = asyncio.get_running_loop().time()
        suppressed = self._log_limiter.allow(kind, now)
        if suppressed is None:
            return
        log = logger.error if exc_info else logger.info if info else logger.warning
        log(event, exc_info=exc_info, extra={**extra, "suppressed": suppressed})

    def _idle_timeout(self) -> float | None:
        return self.config.ng_tcp_idle_timeout or None

    async def _on_tcp_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        if self._ng_clients >= self.config.ng_tcp_max_connections:
            # Closed at once: a client that opens connections without end holds nothing.
            writer.transport.abort()
            self._refuse("ng_tcp_too_many_connections", peer)
            return
        self._ng_clients += 1
        framer = NgStreamFramer(self.config.ng_tcp_max_message)
        loop = asyncio.get_running_loop()
        try:
            async with self._stream_client(writer):
                while True:
                    try:
                        async with asyncio.timeout(self._idle_timeout()):
                            data = await reader.read(65536)
                    except TimeoutError:
                        self._refuse("ng_tcp_idle_timeout", peer)
                        return
                    if not data:
                        return
                    try:
                        messages = framer.feed(data)
                    except ControlError as error:
                        self._refuse("ng_tcp_unframable", peer, detail=str(error))
                        return
                    for message, prefixed in messages:
                        done: asyncio.Future[bytes | None] = loop.create_future()
                        # A stream carries replies of any size.
                        self._queue.put_nowait(("ng", message, _resolver(done), None))
                        payload = await done
                        if payload is None:
                            # Not even a cookie: the stream is out of step, nothing to answer.
                            return
                        writer.write(NgStreamFramer.frame(payload, prefixed))
                        try:
                            # A client that never reads its replies must not hold the
                            # connection (and its slot) for ever.
                            async with asyncio.timeout(self._idle_timeout()):
                                await writer.drain()
                        except TimeoutError:
                            self._refuse("ng_tcp_idle_timeout", peer)
                            return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._ng_clients -= 1

    async def _on_mediaproxy_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._mediaproxy_clients >= self.config.mediaproxy_max_connections:
            writer.transport.abort()
            self._refuse("mediaproxy_too_many_connections", "unix")
            return
        self._mediaproxy_clients += 1
        framer = MediaproxyFramer()
        loop = asyncio.get_running_loop()
        try:
            async with self._stream_client(writer):
                while data := await reader.read(65536):
                    try:
                        commands = framer.feed(data)
                    except ControlError as error:
                        self._refuse("mediaproxy_unframable", "unix", detail=str(error))
                        break
                    for command in commands:
                        done: asyncio.Future[bytes | None] = loop.create_future()
                        self._queue.put_nowait(("mediaproxy", command, _resolver(done), None))
                        payload = await done
                        writer.write(payload if payload is not None else b"error\r\n")
                        await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._mediaproxy_clients -= 1

    @contextlib.asynccontextmanager
    async def _stream_client(self, writer: asyncio.StreamWriter) -> AsyncIterator[None]:
        """One ng TCP or mediaproxy socket client: tracked while it runs (stop() cancels it),
        its connection closed however it ends."""
        task = asyncio.current_task()
        if task is not None:
            self._tcp_clients.add(task)
        try:
            yield
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            if task is not None:
                self._tcp_clients.discard(task)

    # -- the worker ---------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            work = await self._queue.get()
            try:
                if work is None:
                    self.engine.handle_timer(asyncio.get_running_loop().time())
                    await self._apply_events()
                    self.records.hand_over(None, None)
                else:
                    protocol, data, reply, max_reply = work
                    self._retransmission = False
                    if protocol == "ng":
                        payload = await self._request(data, max_reply)
                    else:
                        payload = await self._mediaproxy_request(data)
                    # A retransmitted delete answered from the cache must not overtake the
                    # commit of its original's records.
                    self.records.hand_over(reply, payload, after_commits=self._retransmission)
                self._check_drained()
            except Exception:
                # A bug must not take the relay down with every call on it; it is logged loudly,
                # but at a bounded rate (a packet that triggers it may be sent in a loop).
                self.counters.count("internal_errors")
                self._log_limited("relay.worker_error", "worker_error", exc_info=True)
                if work is not None:
                    work[2](None)
            if work is None:
                self._wake.set()  # the timer waits for its tick to be done
            else:
                deadline = self.engine.next_timer()
                current = self._timer_deadline
                if deadline is not None and (current is None or deadline < current):
                    self._wake.set()

    async def _request(self, data: bytes, max_reply: int | None = None) -> bytes | None:
        """Run one ng request; ``max_reply``: the most bytes the reply may take (UDP)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        outcome = self.protocol.receive(data, now)
        if isinstance(outcome, NgDropped):
            return None
        if isinstance(outcome, NgImmediateReply):
            self._retransmission = outcome.retransmission
            if outcome.reason is not None:
                # A misbehaving client may send these at any rate: counted (by the protocol),
                # logged once per interval.
                self._log_limited(
                    "relay.ng_rejected", "ng_rejected", reason=outcome.reason[:200], info=True
                )
            if max_reply is not None and len(outcome.data) > max_reply:
                # A reply cached for the same cookie sent over TCP, retransmitted over UDP:
                # say so rather than send nothing.
                cookie = outcome.data.partition(b" ")[0]
                refusal = error_reply(reply_too_big(len(outcome.data), max_reply), self.counters)
                return cookie + b" " + bencode.encode(refusal)
            return outcome.data
        self._release_quarantine(now)
        started = time.perf_counter()
        command = outcome.command
        if self.router is not None:
            routed = await self.router(outcome, data, now)
            if routed is not None:
                return routed
        fresh = isinstance(command, Offer) and not self.engine.has_call(command.call_id)
        if fresh and self.draining:
            self.refused_draining += 1
            return self.protocol.reply(outcome, error_reply(DRAINING_REASON), now)
        held: list[SessionRecord] = []
        for attempt in range(_BIND_ATTEMPTS):
            try:
                result = self.handler.handle(command, now, max_reply=max_reply)
            except Exception as error:
                # A bug must cost one request, not the proxy's wait for an answer.
                self.counters.count("internal_errors")
                self._log_limited(
                    "relay.ng_internal_error",
                    f"ng_internal_error.{outcome.name}",
                    exc_info=True,
                    command=outcome.name,
                )
                result = error_reply(f"internal error: {type(error).__name__}")
            try:
                await self._apply_events()
                break
            except RelayError as error:
                if isinstance(error, PortUnavailable):
                    self._quarantine(error.port, now)
                if not isinstance(command, Offer | Answer):
                    break
                # Media for this call cannot flow: end it instead of handing out dead ports.
                # A new call is tried again on other ports, so its record waits for the last
                # attempt (one call, one record).
                held = self.engine.discard(
                    command.call_id,
                    now,
                    TerminationReason.RELAY_FAILURE,
                    from_tag=command.from_tag,
                )
                if not fresh:
                    for record in held:
                        self.engine.account(record)
                    held = []
                await self._apply_events(ignore_errors=True)
                self._release_quarantine(now)
                result = error_reply(str(error))
                # A port of the range held by another program: a new call simply tries other
                # (random) ports; an existing call cannot be replayed, so it fails.
                if not fresh:
                    break
                logger.info("relay.retry_ports", extra={"attempt": attempt + 1})
        if held and isinstance(command, Offer) and not self.engine.has_call(command.call_id):
            # Every attempt failed: the call's one record is its last failure.
            self.engine.account(held[-1])
            await self._apply_events(ignore_errors=True)
        if result.get("result") == "error":
            # Refusals (too many streams, unknown call...) are the proxy's business, but an
            # operator wants to see them: one line per command per interval.
            self._log_limited(
                "relay.ng_error",
                f"ng_error.{outcome.name}",
                command=outcome.name,
                reason=str(result.get("error-reason", ""))[:200],
                info=True,
            )
        call_id, sdp = getattr(command, "call_id", None), getattr(command, "sdp", None)
        payload = self.protocol.encode(outcome, result)
        if max_reply is None or len(payload) <= max_reply:
            if self.after_command is not None:
                # The cluster writes the call's new state before the proxy hears the reply.
                await self.after_command(command)
            log_command("ng", outcome.name, call_id, result, time.perf_counter() - started, sdp)
            return self.protocol.keep(outcome, payload, result.get("result") == "error", now)
        # The estimate before allocating let it through, yet the reply does not fit: take back
        # what a new call allocated and say why, instead of a reply the socket cannot send.
        if fresh and isinstance(command, Offer):
            with contextlib.suppress(RelayError):
                self.engine.delete(
                    command.call_id,
                    now,
                    from_tag=command.from_tag,
                    delay=0,
                    reason=TerminationReason.RELAY_FAILURE,
                )
            await self._apply_events(ignore_errors=True)
        if self.after_command is not None:
            await self.after_command(command)
        self._log_limited(
            "relay.refused", "reply_too_big", reason="reply_too_big", size=len(payload)
        )
        refusal = error_reply(reply_too_big(len(payload), max_reply), self.counters)
        log_command("ng", outcome.name, call_id, refusal, time.perf_counter() - started, sdp)
        return self.protocol.reply(outcome, refusal, now)

    def _quarantine(self, port: int, now: float) -> None:
        """Keep a pair another program holds out of circulation for a while."""
        pair = PortPair(port - (port & 1))
        self._quarantined[pair] = now + _QUARANTINE
        self.ports_quarantined += 1

    def _release_quarantine(self, now: float, *, everything: bool = False) -> None:
        """Take quarantined pairs out of the pool, and give back those whose time is up."""
        if not self._quarantined:  # nearly always (it runs before every request)
            return
        for pair, until in list(self._quarantined.items()):
            if until <= now or everything:
                del self._quarantined[pair]
                if pair in self._held:
                    self._held.discard(pair)
                    self.pool.release(pair)
            elif pair not in self._held and not self.pool.is_allocated(pair):
                # The failed call gave the pair back when it ended; hold it now.
                self.pool.reserve(pair)
                self._held.add(pair)

    async def _mediaproxy_request(self, data: bytes) -> bytes:
        started = time.perf_counter()
        reply = await self._mediaproxy_run(data)
        log_mediaproxy(data, reply, time.perf_counter() - started)
        return reply

    async def _mediaproxy_run(self, data: bytes) -> bytes:
        now = asyncio.get_running_loop().time()
        if self.mediaproxy_router is not None:
            routed = await self.mediaproxy_router(data, now)
            if routed is not None:
                return routed
        before = set(self.engine.call_ids()) if self.draining else None
        try:
            reply = self.mediaproxy.handle(data, now)
            if before is not None:
                # MediaProxy's "update" does not say whether the call is new: undo a new one.
                for call_id in set(self.engine.call_ids()) - before:
                    self.engine.discard(call_id, now, TerminationReason.RELAY_FAILURE)
                    self.refused_draining += 1
                    reply = b"error\r\n"
        except Exception:
            self.counters.count("internal_errors")
            self._log_limited(
                "relay.mediaproxy_internal_error", "mediaproxy_internal_error", exc_info=True
            )
            reply = b"error\r\n"
        error = self.mediaproxy.last_error
        if error is not None:
            self.mediaproxy.last_error = None
            self._log_limited(
                "relay.mediaproxy_error",
                f"mediaproxy.{error.counter or 'relay'}",
                reason=str(error)[:200],
            )
        try:
            await self._apply_events()
        except RelayError:
            # The ports could not be opened: answer "error" so the proxy does not use them.
            reply = b"error\r\n"
        return reply

    async def _apply_events(self, *, ignore_errors: bool = False) -> None:
        """Carry out the engine's events; the first data-plane failure is raised at the end."""
        failure: RelayError | None = None
        while (event := self.engine.next_event()) is not None:
            if isinstance(event, ForwardingInstalled):
                try:
                    await self.dataplane.install(event.forwarding)
                except RelayError as error:
                    self.install_failures += 1
                    logger.warning(
                        "relay.install_failed",
                        extra={"key": event.forwarding.key, "reason": str(error)},
                    )
                    failure = failure or error
            elif isinstance(event, ForwardingRemoved):
                # Its counters go into the totals before the data plane forgets them.
                counters = self.dataplane.counters(event.key)
                self._log_refusals(event.key, counters)
                self.ops.forwarding_gone(event.key, counters)
                await self.dataplane.remove(event.key)
            elif isinstance(event, StreamEnded):
                logger.info(
                    "relay.stream_ended",
                    extra={
                        "call_id": event.call_id,
                        "index": event.index,
                        "reason": str(event.reason),
                        # Step-aside: seconds the relay pair was unused before the ports went.
                        "relay_idle": "" if event.idle is None else round(event.idle, 3),
                    },
                )
                if event.reason is StreamEndReason.ICE_DIRECT:
                    self.ops.stepped_aside(event.call_id, event.index)
            elif isinstance(event, SessionEnded):
                self.records.ended(event.record)
            elif isinstance(event, SessionDeleting):
                self.records.deleting(event.record)
        if failure is not None and not ignore_errors:
            raise failure

    def session_ended(self, record: SessionRecord) -> None:
        """Account for a session of another engine of this process (a call the cluster
        adopted): its record goes where this relay's records go, committed now (that engine's
        timers do not pass through this relay's worker)."""
        self.records.ended(record)
        self.records.hand_over(None, None)

    def session_deleting(self, record: SessionRecord) -> None:
        """The same for a session of another engine deleted with a grace period."""
        self.records.deleting(record)
        self.records.hand_over(None, None)

    def _log_refusals(self, key: str, counters: ForwardingCounters | None) -> None:
        """One line per stream that refused packets (latching: garbage, strangers, forged
        checks), when it ends: a bounded rate however hard the stream was attacked."""
        if counters is None or not (counters.a.refusals or counters.b.refusals):
            return
        logger.info(
            "relay.stream_refusals",
            extra={
                "key": key,
                "caller_leg": _reasons(counters.a.refusals),
                "callee_leg": _reasons(counters.b.refusals),
            },
        )

    # -- reload and drain -----------------------------------------------------------------------

    def reload(self, config: RelayServiceConfig) -> list[str]:
        """Apply what can change on a running relay (timeouts, ICE policy, latching settings,
        the accounting target...); live calls keep going. Returns one line per change, and one
        per setting that needs a restart (left as it was)."""
        new, report = reloaded_config(self.config, config, self.accounting)
        self.config = new
        self.engine.config = new.engine_config()
        # The limits are also held where they are enforced (handlers, the log limiter).
        self.reload_limits(new)
        self._wake.set()  # timeouts may have moved
        return report

    def drain(self) -> None:
        """Take no new calls (ng offers get :data:`DRAINING_REASON`); existing calls go on.
        :meth:`wait_drained` returns when the last has ended."""
        if not self.draining:
            self.draining = True
            logger.info("relay.draining", extra={"calls": self.engine.call_count})
        self._check_drained()

    async def wait_drained(self) -> None:
        """Return once draining and no call is left."""
        await self._drained.wait()

    def _check_drained(self) -> None:
        # Not before the last records are committed and their replies sent.
        if (
            self.draining
            and self.engine.session_count == 0
            and not self.records.waiting
            and not self._drained.is_set()
        ):
            logger.info("relay.drained")
            self._drained.set()

    # -- timers -------------------------------------------------------------------------------

    async def _timer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            deadline = self.engine.next_timer()
            self._timer_deadline = deadline
            delay = None if deadline is None else max(0.0, deadline - loop.time())
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that arrives as the event fires, and stop() would then wait for this task forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
                continue
            self._queue.put_nowait(None)
            # Let the worker run the tick before computing the next deadline.
            await self._wake.wait()


def _remove_stale_socket(path: Path) -> None:
    """Unlink a socket file left by a relay that died; refuse one that another process serves."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise OSError(f"{path} is served by another process")


def _resolver(future: asyncio.Future[bytes | None]) -> Callable[[bytes | None], None]:
    def resolve(payload: bytes | None) -> None:
        if not future.done():
            future.set_result(payload)

    return resolve


def _reasons(counts: dict[str, int]) -> str:
    """``reason:count,...`` for one log field (e.g. ``not-media:12,handover-refused:3``)."""
    return ",".join(f"{reason}:{count}" for reason, count in sorted(counts.items()))
