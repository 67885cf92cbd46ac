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
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from icerelay.aio.addresses import bound_socket
from icerelay.aio.entropy import BufferedSystemRandom
from icerelay.aio.udp import UdpEndpoint
from icerelay.control.mediaproxy import MediaproxyFramer, MediaproxyHandler
from icerelay.control.ng import (
    Answer,
    NgDropped,
    NgHandler,
    NgImmediateReply,
    NgProtocol,
    NgStreamFramer,
    Offer,
    ReplyValue,
    error_reply,
)
from icerelay.daemon.accounting import AccountingStore, open_accounting
from icerelay.daemon.dataplanes import dataplane_name, dataplane_statistics, start_dataplane
from icerelay.daemon.relay_config import (
    DEFAULT_ACCOUNTING,
    RelayServiceConfig,
    user_state_accounting,
)
from icerelay.dataplane import DataPlane
from icerelay.dataplane.interface import PortUnavailable
from icerelay.dataplane.userspace import UserspaceDataPlane
from icerelay.errors import ControlError, RelayError
from icerelay.relay.forwarding import ForwardingCounters
from icerelay.relay.ports import PortPair, PortPool
from icerelay.relay.sessions import (
    ForwardingInstalled,
    ForwardingRemoved,
    SessionEnded,
    SessionEngine,
    SessionRecord,
    StreamEnded,
    TerminationReason,
)
from icerelay.stun import Address

__all__ = ["RecordSink", "RelayService"]

logger = logging.getLogger("icerelay.relay")

#: Receives each session's accounting record when it ends (with wall-clock times).
RecordSink = Callable[[SessionRecord], None]

# Offers of new calls whose ports turn out to be taken by another program are retried this often.
_BIND_ATTEMPTS = 3

# Seconds a pair found held by another program stays out of circulation.
_QUARANTINE = 300.0

# A queued unit of work: the protocol ("ng" or "mediaproxy"), a control message and how to answer
# it (None: nothing to answer), or a timer tick (None).
_Work = tuple[str, bytes, Callable[[bytes | None], None]] | None


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
            self.config.engine_config(), self.pool, rng=rng, counters=self._counters
        )
        self.protocol = NgProtocol(
            cache_size=self.config.ng_cache_size, cache_ttl=self.config.ng_cache_ttl
        )
        self.handler = NgHandler(
            self.engine, self.protocol.counters, service_statistics=self._statistics
        )
        self.mediaproxy = MediaproxyHandler(self.engine)
        self._records = records
        self.accounting: AccountingStore | None = None
        self._udp: UdpEndpoint | None = None
        self._tcp: asyncio.Server | None = None
        self._unix: asyncio.Server | None = None
        self._unix_path: Path | None = None
        self._tcp_clients: set[asyncio.Task[None]] = set()
        self._queue: asyncio.Queue[_Work] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._wall_offset = 0.0
        #: Forwardings the data plane refused (port already bound by someone else, ...).
        self.install_failures = 0
        #: Pairs found held by another program, kept out of the pool until the time given.
        self._quarantined: dict[PortPair, float] = {}
        self._held: set[PortPair] = set()
        self.ports_quarantined = 0

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
            **dataplane_statistics(self.dataplane),
            "forwardings_failed": self.install_failures,
            "ports_quarantined": len(self._quarantined),
            "mediaproxy_errors": self.mediaproxy.errors,
            "records_written": accounting.written if accounting is not None else 0,
            "records_failed": accounting.failed if accounting is not None else 0,
            "accounting": accounting.location if accounting is not None else "",
        }

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

    async def start(self) -> None:
        """Bind the ng listeners and start the worker and the timer."""
        loop = asyncio.get_running_loop()
        self._wall_offset = time.time() - loop.time()
        self.handler.wall_offset = self._wall_offset
        # First, so that a store that cannot work at all (ConfigError) fails the start before
        # any socket is bound.
        self.accounting = await asyncio.to_thread(self._open_accounting)
        try:
            self.dataplane = await start_dataplane(
                self.config, self.dataplane, choose=self._choose_dataplane
            )
        except BaseException:
            if self.accounting is not None:
                await asyncio.to_thread(self.accounting.close)
                self.accounting = None
            raise
        listen = Address(*self.config.ng_listen)
        try:
            self._udp = await UdpEndpoint.open(listen, self._on_datagram)
            if self.config.ng_tcp:
                # The same port as UDP, as rtpengine's ng listeners share one.
                tcp_address = Address(listen.host, self._udp.local_address.port)
                sock = bound_socket(tcp_address, socket.SOCK_STREAM)
                self._tcp = await asyncio.start_server(self._on_tcp_client, sock=sock)
        except BaseException:
            if self._udp is not None:
                self._udp.close()
                self._udp = None
            await self.dataplane.close()
            if self.accounting is not None:
                await asyncio.to_thread(self.accounting.close)
                self.accounting = None
            raise
        if self.config.mediaproxy_socket:
            await self._open_mediaproxy(Path(self.config.mediaproxy_socket))
        self._tasks = [
            asyncio.create_task(self._worker(), name="relay-worker"),
            asyncio.create_task(self._timer(), name="relay-timer"),
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

    def _open_accounting(self) -> AccountingStore | None:
        """The configured store; as an ordinary user, the default falls back to the user's
        state directory. Never fatal: without a store, records go to the log only."""
        url = self.config.accounting
        try:
            return open_accounting(url)
        except RelayError as error:
            if url != DEFAULT_ACCOUNTING:
                logger.warning("relay.accounting_disabled", extra={"reason": str(error)})
                return None
            fallback = user_state_accounting()
            try:
                store = open_accounting(fallback)
            except RelayError as second:
                logger.warning("relay.accounting_disabled", extra={"reason": str(second)})
                return None
            logger.info(
                "relay.accounting_fallback",
                extra={"wanted": url, "using": fallback, "reason": str(error)},
            )
            return store

    async def _open_mediaproxy(self, path: Path) -> None:
        """Listen on MediaProxy's dispatcher socket; without the rights to, go on without it."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_socket():
                _remove_stale_socket(path)
            self._unix = await asyncio.start_unix_server(self._on_mediaproxy_client, path=path)
            # Local control, like the ng port on 127.0.0.1: any local user may drive it (the
            # proxy runs as its own user), nobody remote can.
            path.chmod(0o666)
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
        for task in [*self._tasks, *self._tcp_clients]:
            task.cancel()
        for task in [*self._tasks, *self._tcp_clients]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._tcp_clients.clear()
        loop = asyncio.get_running_loop()
        self.engine.shutdown(loop.time())
        await self._apply_events(ignore_errors=True)
        self._release_quarantine(loop.time(), everything=True)
        await self.dataplane.close()
        if self.accounting is not None:
            # Waits for the queued records: a graceful stop loses none.
            await asyncio.to_thread(self.accounting.close)
            self.accounting = None

    # -- control input ------------------------------------------------------------------------

    def _on_datagram(self, data: bytes, source: Address, local: Address) -> None:
        udp = self._udp

        def reply(payload: bytes | None) -> None:
            if udp is not None and payload is not None:
                udp.send(payload, source)

        self._queue.put_nowait(("ng", data, reply))

    async def _on_tcp_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        framer = NgStreamFramer()
        loop = asyncio.get_running_loop()
        async with self._stream_client(writer):
            try:
                while data := await reader.read(65536):
                    try:
                        messages = framer.feed(data)
                    except ControlError as error:
                        logger.warning("relay.ng_stream_error", extra={"reason": str(error)})
                        break
                    for message, prefixed in messages:
                        done: asyncio.Future[bytes | None] = loop.create_future()
                        self._queue.put_nowait(("ng", message, _resolver(done)))
                        payload = await done
                        if payload is None:
                            # Not even a cookie: the stream is out of step, nothing to answer.
                            return
                        writer.write(NgStreamFramer.frame(payload, prefixed))
                        await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass

    async def _on_mediaproxy_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        framer = MediaproxyFramer()
        loop = asyncio.get_running_loop()
        async with self._stream_client(writer):
            try:
                while data := await reader.read(65536):
                    try:
                        commands = framer.feed(data)
                    except ControlError as error:
                        logger.warning(
                            "relay.mediaproxy_stream_error", extra={"reason": str(error)}
                        )
                        break
                    for command in commands:
                        done: asyncio.Future[bytes | None] = loop.create_future()
                        self._queue.put_nowait(("mediaproxy", command, _resolver(done)))
                        payload = await done
                        writer.write(payload if payload is not None else b"error\r\n")
                        await writer.drain()
            except ConnectionError:
                pass

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
                else:
                    protocol, data, reply = work
                    if protocol == "ng":
                        reply(await self._request(data))
                    else:
                        reply(await self._mediaproxy_request(data))
            except Exception:
                # A bug must not take the relay down with every call on it; it is logged loudly.
                logger.exception("relay.worker_error")
                if work is not None:
                    work[2](None)
            self._wake.set()

    async def _request(self, data: bytes) -> bytes | None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        outcome = self.protocol.receive(data, now)
        if isinstance(outcome, NgDropped):
            return None
        if isinstance(outcome, NgImmediateReply):
            if outcome.reason is not None:
                # A misbehaving client may send these at any rate: counted, logged at debug.
                logger.debug("relay.ng_rejected", extra={"reason": outcome.reason})
            return outcome.data
        self._release_quarantine(now)
        command = outcome.command
        fresh = isinstance(command, Offer) and not self.engine.has_call(command.call_id)
        for attempt in range(_BIND_ATTEMPTS):
            try:
                result = self.handler.handle(command, now)
            except Exception as error:
                # A bug must cost one request, not the proxy's wait for an answer.
                logger.exception("relay.ng_internal_error", extra={"command": outcome.name})
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
                with contextlib.suppress(RelayError):
                    self.engine.delete(
                        command.call_id,
                        now,
                        from_tag=command.from_tag,
                        delay=0,
                        reason=TerminationReason.RELAY_FAILURE,
                    )
                await self._apply_events(ignore_errors=True)
                self._release_quarantine(now)
                result = error_reply(str(error))
                # A port of the range held by another program: a new call simply tries other
                # (random) ports; an existing call cannot be replayed, so it fails.
                if not fresh:
                    break
                logger.info("relay.retry_ports", extra={"attempt": attempt + 1})
        return self.protocol.reply(outcome, result, now)

    def _quarantine(self, port: int, now: float) -> None:
        """Keep a pair another program holds out of circulation for a while."""
        pair = PortPair(port - (port & 1))
        self._quarantined[pair] = now + _QUARANTINE
        self.ports_quarantined += 1

    def _release_quarantine(self, now: float, *, everything: bool = False) -> None:
        """Take quarantined pairs out of the pool, and give back those whose time is up."""
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
        now = asyncio.get_running_loop().time()
        try:
            reply = self.mediaproxy.handle(data, now)
        except Exception:
            logger.exception("relay.mediaproxy_internal_error")
            reply = b"error\r\n"
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
                await self.dataplane.remove(event.key)
            elif isinstance(event, StreamEnded):
                logger.info(
                    "relay.stream_ended",
                    extra={
                        "call_id": event.call_id,
                        "index": event.index,
                        "reason": str(event.reason),
                    },
                )
            elif isinstance(event, SessionEnded):
                self._session_ended(event.record)
        if failure is not None and not ignore_errors:
            raise failure

    def _session_ended(self, record: SessionRecord) -> None:
        offset = self._wall_offset
        # The engine runs on the loop's monotonic clock; records carry wall-clock times.
        record = dataclasses.replace(
            record,
            created=record.created + offset,
            answered=None if record.answered is None else record.answered + offset,
            ended=record.ended + offset,
        )
        logger.info(
            "relay.session_ended",
            extra={
                "call_id": record.call_id,
                "from_tag": record.from_tag,
                "to_tag": record.to_tag or "",
                "reason": str(record.reason),
                "duration": round(record.duration, 3),
                "packets": sum(
                    s.packets_from_caller + s.packets_from_callee for s in record.streams
                ),
            },
        )
        if self.accounting is not None:
            self.accounting.write(record)
        if self._records is not None:
            try:
                self._records(record)
            except Exception:
                logger.exception("relay.record_sink_failed")

    # -- timers -------------------------------------------------------------------------------

    async def _timer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            deadline = self.engine.next_timer()
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
