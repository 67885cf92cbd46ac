"""The asyncio shell around :class:`~.engine.TurnServerEngine`.

- UDP listeners and relayed addresses are plain non-blocking sockets, all read by one
  :class:`~icerelay.aio.poller.DatagramPoller` (one epoll set, read in rounds, wake-ups
  coalesced under load) and written with ``sendto`` once per round: no transport or
  protocol object and no event-loop callback per packet. One UDP socket per relayed address
  (RFC 8656 §7.2), which the engine asks for through the
  :class:`~icerelay.turn.server.events.RelayBinder` interface.
- TCP and TLS listeners (TLS when ``tls_cert``/``tls_key`` are configured) use asyncio
  protocols; :class:`~.framing.StreamFramer` cuts the stream into frames.
- A one-second tick runs the engine's timers (expiry) and closes idle TCP connections that
  have no allocation. Exactness is not needed there: the engine compares expiry times on every
  packet anyway.
- :meth:`TurnService.drain` (``SIGUSR1`` under ``icerelay serve``) puts the engine in drain
  mode; :meth:`TurnService.wait_drained` returns when the last allocation has ended. SIGUSR2
  logs every non-zero counter.
- more than one worker (``workers``, "auto" by default: one per CPU): the service also
  starts the other worker processes (spawned, each with
  its own event loop and engine). Every worker binds the same listening addresses with
  SO_REUSEPORT, so the kernel spreads clients over them and keeps each client (its 5-tuple) on
  one worker; each has its own slice of the relay range and share of the quotas
  (:meth:`TurnServerConfig.worker_share`), and all share one nonce key. Drain and stop are
  forwarded to the workers. Python relays one packet per core at a time: this is how the
  service uses more than one.

Nothing is logged per packet; allocation lifecycle events are logged at INFO.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import itertools
import json
import logging
import os
import random
import signal
import socket
import ssl
import struct
import sys
import time
from typing import TYPE_CHECKING, Any, cast

from icerelay.aio.poller import DatagramPoller
from icerelay.daemon.fdlimit import raise_fd_limit
from icerelay.daemon.turn_config import TurnServerConfig
from icerelay.daemon.turn_log import format_addresses, log_created, log_deleted
from icerelay.daemon.turn_sockets import IP_RECVERR, IPV6_RECVERR, relay_socket
from icerelay.daemon.turn_workers import (
    MAX_ALLOCATIONS_REPORTED,
    REPORT_LINE_LIMIT,
    WorkerReports,
    merge_counts,
    publish_reports,
)
from icerelay.daemon.views import allocation_view
from icerelay.dataplane.turn_offload import TurnOffload, interfaces_for
from icerelay.dataplane.turn_offload_bpf import LoadedProgram, Maps, OffloadUnavailable
from icerelay.errors import ConfigError, TurnError
from icerelay.stun.demux import is_stun_request
from icerelay.turn.server.allocation import HostPort
from icerelay.turn.server.engine import (
    AllocationCreated,
    AllocationDeleted,
    ChannelBound,
    Drained,
    TurnServerEngine,
)
from icerelay.turn.server.framing import StreamFramer
from icerelay.turn.server.ports import check_relay_range

if TYPE_CHECKING:
    from icerelay.daemon.cluster.turn_users import DirectorySync

logger = logging.getLogger("icerelay.turn.server")

#: Datagrams read from one relayed socket per round when it has a backlog (the poller reads
#: one from a socket that was not ready in the round before). A relayed address carries one
#: stream, so at normal load there is one datagram to read; above capacity a backlog builds,
#: and one read per wake-up against the listening socket's large batch starved the peer ->
#: client direction (benchmarks/turn: at 500 streams two thirds of it arrived > 0.5 s late
#: while client -> peer was on time). A small batch lets a relayed socket catch up (and a
#: high-rate stream keep up with rounds a millisecond apart) without letting one busy peer
#: hold the loop.
_RELAY_BATCH = 8
#: Datagrams read from a listening socket per round, at least. Every client shares it, so
#: it reads _RELAY_BATCH per relayed socket: under overload each stream then gets about the
#: same turn in both directions.
_LISTEN_BATCH = 1024
#: ICMP errors read from one relay socket's error queue per wake-up.
_BATCH = 64
_RECV_SIZE = 65535
_TICK = 1.0
#: SO_RCVBUF/SO_SNDBUF of a listening socket. Room for a scheduling hiccup, not more: the
#: kernel doubles it, ~2,500 voice packets, 0.1-0.2 s of what one process relays. 4 MiB
#: held ~0.4 s above capacity, and the client -> peer direction arrived that late instead of
#: part of it being dropped (benchmarks/turn, 800 streams).
_SOCKET_BUFFER = 1 << 20
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
# ICMP errors on relayed sockets (Linux IP_RECVERR / IPV6_RECVERR and struct sock_extended_err).
_MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
_RECVERR_CMSGS = {(socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR)}
_EXTENDED_ERR = struct.Struct("=IBBBBII")
_SO_EE_ORIGIN_ICMP = 2
_SO_EE_ORIGIN_ICMP6 = 3


def _tcp_listener(address: HostPort, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(512)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _listen_socket(address: HostPort, reuse_port: bool = False) -> socket.socket:
    """A listening UDP socket (relayed ones: :func:`~.turn_sockets.relay_socket`)."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # Keep the families apart: an IPv6 relay must not receive IPv4-mapped traffic.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        # The listening socket carries every client's traffic: give it room to absorb a
        # scheduling hiccup. SO_RCVBUFFORCE passes net.core.rmem_max when we may (root).
        for force, plain in (
            (_SO_RCVBUFFORCE, socket.SO_RCVBUF),
            (_SO_SNDBUFFORCE, socket.SO_SNDBUF),
        ):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, _SOCKET_BUFFER)
            except OSError:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, plain, _SOCKET_BUFFER)
        sock.bind(address)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _StreamProtocol(asyncio.Protocol):
    """One TCP or TLS client connection."""

    def __init__(self, service: TurnService, kind: str) -> None:
        self.service = service
        self.kind = kind
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.local: HostPort = ("", 0)
        self.remote: HostPort = ("", 0)
        self.last_activity = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not registered asyncio.Transport subclasses: cast, not check.
        self.transport = cast(asyncio.Transport, transport)
        self.local = tuple(transport.get_extra_info("sockname")[:2])
        self.remote = tuple(transport.get_extra_info("peername")[:2])
        self.last_activity = self.service.loop.time()
        service = self.service
        config = service.config
        per_source = service.stream_sources.get(self.remote[0], 0)
        if (
            len(service.streams) >= config.max_tcp_connections
            or per_source >= config.max_tcp_connections_per_source
        ):
            service.engine.counters["refused_tcp_connections"] += 1
            self.transport.abort()
            return
        service.streams[(self.local, self.remote)] = self
        service.stream_sources[self.remote[0]] = per_source + 1

    def data_received(self, data: bytes) -> None:
        service = self.service
        now = service.loop.time()
        self.last_activity = now
        try:
            frames = self.framer.feed(data)
        except TurnError:
            service.engine.counters["dropped_malformed"] += 1
            if self.transport is not None:
                self.transport.abort()
            return
        receive = service.engine.receive
        for frame in frames:
            receive(frame, self.remote, self.local, self.kind, now)
        service.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        service = self.service
        if service.streams.get((self.local, self.remote)) is self:
            del service.streams[(self.local, self.remote)]
            count = service.stream_sources.get(self.remote[0], 1) - 1
            if count > 0:
                service.stream_sources[self.remote[0]] = count
            else:
                service.stream_sources.pop(self.remote[0], None)
            service.engine.connection_lost(self.remote, self.local, self.kind, service.loop.time())
            service.flush()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


class TurnService:
    """Runs a TURN server on the current event loop: ``await start()`` ... ``await stop()``."""

    #: Service name under ``icerelay serve``.
    name = "turn"

    def __init__(
        self,
        config: TurnServerConfig,
        *,
        worker_index: int = 0,
        nonce_key: bytes | None = None,
        inherited: list[tuple[str, socket.socket]] | None = None,
        daemon: bool = False,
        offload_maps: dict[str, int] | None = None,
    ) -> None:
        self.config = config
        #: Under ``icerelay serve``: SIGUSR1 drains, and once drained the service sends the
        #: process SIGTERM, which serve turns into a clean stop of every service.
        self.daemon = daemon
        #: Listening sockets made by the parent (worker processes only).
        self._inherited = inherited
        #: 0 for the service ``icerelay serve`` runs; 1.. in worker processes.
        self.worker_index = worker_index
        self._nonce_key = nonce_key
        self._workers: list[asyncio.subprocess.Process] = []
        self._workers_lost: set[int] = set()
        #: The other workers' latest figures (parent only), for /metrics, the page and ctl.
        self.worker_reports = WorkerReports()
        self.udp: dict[HostPort, socket.socket] = {}
        #: Reads every socket in :attr:`udp` (made in start()).
        self._poller: DatagramPoller[HostPort] | None = None
        #: The listening sockets' read limit, as last set (see _update_listen_budget).
        self._listen_budget = 0
        # Bound once: every relayed socket shares them (no closure per socket).
        self._relay_error = self._on_relay_error
        self._receive: Any = None  # the engine's receive(), looked up once
        self.streams: dict[tuple[HostPort, HostPort], _StreamProtocol] = {}
        #: Open TCP/TLS connections per client IP address.
        self.stream_sources: dict[str, int] = {}
        self.listen_udp: list[HostPort] = []
        self.listen_tcp: list[HostPort] = []
        self.listen_tls: list[HostPort] = []
        self.send_errors = 0
        self._servers: list[asyncio.Server] = []
        self._tick: asyncio.TimerHandle | None = None
        self._drained = asyncio.Event()
        self._stopped = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._engine: TurnServerEngine | None = None
        # --- the kernel offload (issue 13) ---
        #: The loaded program (the service icerelay serve runs); workers get only its maps.
        self._program: LoadedProgram | None = None
        #: Map descriptors inherited from the parent (worker processes only).
        self._offload_maps = offload_maps
        #: This engine's entries in the kernel; None when the offload is off or unavailable.
        self.offload: TurnOffload | None = None
        #: Why the offload is not in use ("" when it is, or when it is off by configuration).
        self.offload_reason = ""
        #: The offload's counters once it is closed (the stop line still tells its totals).
        self._offload_totals: dict[str, int] = {}
        #: Users come from elsewhere too (the cluster's Redis directory, issue 15): starting
        #: without configured users is then fine.
        self.external_users = False
        #: Where those users are (``[cluster] turn_users``; DirectorySettings' JSON): every
        #: worker process reads them, and publishes its counts, with its own Redis connection.
        self.directory: dict[str, Any] | None = None
        self.directory_sync: DirectorySync | None = None

    # --- properties ---------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the service runs on (after start)."""
        assert self._loop is not None, "TurnService not started"
        return self._loop

    @property
    def engine(self) -> TurnServerEngine:
        """The protocol engine (after start): counters, allocations."""
        assert self._engine is not None, "TurnService not started"
        return self._engine

    @property
    def running_engine(self) -> TurnServerEngine | None:
        """The protocol engine once started, else None (for metrics that may run any time)."""
        return self._engine

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Check the configuration, bind every listener; raise ConfigError/OSError on failure."""
        config = self.config
        check_relay_range(
            config.relay_port_min, config.relay_port_max, force=config.force_relay_port_range
        )
        if config.relay_host(4) is None and config.relay_host(6) is None:
            raise ConfigError(
                "turn: no relay address: set relay_ipv4/relay_ipv6 or listen on a concrete IP"
            )
        if not config.users and not config.auth_secrets and not self.external_users:
            raise ConfigError("turn: no credentials: set users or auth_secrets")
        raise_fd_limit(
            config.quotas.total_allocations + config.max_tcp_connections + 256, logger, "turn"
        )
        multi = config.worker_count() > 1
        if multi and any(port == 0 for _host, port in config.listen + config.tls_endpoints()):
            raise ConfigError("turn: workers > 1 needs fixed listening ports (not 0)")
        rng = random.SystemRandom()
        if multi and self._nonce_key is None:
            self._nonce_key = rng.randbytes(32)
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._engine = TurnServerEngine(
            config.worker_share(self.worker_index).settings(),
            self,
            rng=rng,
            wall_clock_offset=time.time() - loop.time(),
            nonce_key=self._nonce_key,
        )
        self._start_offload()
        await self._start_directory()
        self._receive = self._engine.receive
        poller: DatagramPoller[HostPort] = DatagramPoller(loop, self.flush, size=_RECV_SIZE)
        self._poller = poller
        poller.start()
        context: ssl.SSLContext | None = None
        if config.tls_cert is not None and config.tls_key is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(config.tls_cert, config.tls_key)
        try:
            if self._inherited is not None:
                mine = self._inherited
            elif multi:
                # Every worker's listening sockets are made here, at once, before anything is
                # read: SO_REUSEPORT maps a client to a socket by hashing over the group, and a
                # socket joining later would move existing clients to a worker that does not
                # know their allocation. The workers inherit theirs.
                sets = [self._make_listeners(reuse_port=True) for _ in range(config.worker_count())]
                mine = sets[0]
                await self._start_workers(sets[1:])
            else:
                mine = self._make_listeners(reuse_port=False)
            for kind, sock in mine:
                local: HostPort = sock.getsockname()[:2]
                if kind == "udp":
                    self.udp[local] = sock
                    self.listen_udp.append(local)
                    poller.add(
                        sock,
                        self._on_listen_datagram,
                        local,
                        limit=_LISTEN_BATCH,
                        eager=True,
                        # STUN requests are answered at once, never after the coalescing timer.
                        urgent=is_stun_request,
                    )
                else:
                    await self._stream_server(sock, kind, context if kind == "tls" else None)
        except BaseException:
            await self.stop()
            raise
        self._tick = loop.call_later(_TICK, self._on_tick)
        if self.daemon or self.worker_index:
            # Everything allocated so far (modules, configuration) lives as long as the
            # process: keep it out of the cyclic collector, whose full passes would otherwise
            # walk it and pause the relay for milliseconds.
            gc.freeze()
        if self.daemon:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                self.add_signal_handlers()
        logger.info(
            "turn.started",
            extra={
                "udp": format_addresses(self.listen_udp),
                "tcp": format_addresses(self.listen_tcp),
                "tls": format_addresses(self.listen_tls),
                "realm": config.realm,
                "relay_ipv4": config.relay_host(4) or "-",
                "relay_ipv6": config.relay_host(6) or "-",
            },
        )

    async def _start_directory(self) -> None:
        """The cluster's Redis users, synced before anything is read (else: 401)."""
        if self.directory is None:
            return
        from icerelay.daemon.cluster.turn_users import DirectorySync  # (cycle at the top)

        self.directory_sync = DirectorySync.from_json(
            self.directory, self.engine, self.worker_index
        )
        await self.directory_sync.start()

    def _start_offload(self) -> None:
        """Load and attach the eBPF program (``offload = "auto"|"ebpf"``), or use the maps a
        worker inherited. "auto" goes on without it and says why once; "ebpf" refuses to
        start."""
        config = self.config
        if config.offload == "off":
            return
        count = config.worker_count()
        share = 65536 // count
        slots = range(self.worker_index * share, (self.worker_index + 1) * share)
        try:
            if self._offload_maps is not None:
                maps = Maps(self._offload_maps)
            elif self.worker_index == 0:
                program = LoadedProgram()
                self._program = program
                hosts = [host for host, _port in config.listen + config.tls_endpoints()]
                hosts += [h for h in (config.relay_host(4), config.relay_host(6)) if h]
                interfaces = interfaces_for(hosts, list(config.offload_interfaces))
                if not interfaces:
                    raise OffloadUnavailable("no interface holds the listening addresses")
                for ifindex in interfaces:
                    program.attach(ifindex)
                maps = program.maps
            else:
                raise OffloadUnavailable("worker without the parent's maps")
            offload = TurnOffload(maps, slots)
            offload.heartbeat(self.loop.time())
            self.offload = offload
        except (OffloadUnavailable, OSError) as error:
            self._close_offload()
            self.offload_reason = str(error)
            if config.offload == "ebpf":
                raise ConfigError(f'turn: offload = "ebpf" but {error}') from error
            if self.worker_index == 0:
                # Userspace relays everything then.
                logger.warning("turn.offload_unavailable", extra={"reason": str(error)})
            return
        if self._program is not None:
            logger.info(
                "turn.offload_active",
                extra={
                    "hook": "tc-ingress",
                    "interfaces": ",".join(
                        socket.if_indextoname(i) for i in self._program.interfaces
                    ),
                },
            )

    def _close_offload(self) -> None:
        """Withdraw this engine's entries; the loading process also detaches and unloads."""
        offload, self.offload = self.offload, None
        if offload is not None and self._loop is not None:
            with contextlib.suppress(OSError):
                offload.withdraw_all(self._loop.time())
            self._offload_totals = dict(offload.counters)
        program, self._program = self._program, None
        if program is not None:
            for error in program.close():
                logger.warning("turn.offload_detach_failed", extra={"reason": str(error)})

    def _make_listeners(self, reuse_port: bool) -> list[tuple[str, socket.socket]]:
        """Bound listening sockets for one worker: ("udp"|"tcp"|"tls", socket)."""
        config = self.config
        specs: list[tuple[str, HostPort]] = [
            (kind, address)
            for address in config.listen
            for kind in ("udp", "tcp")
            if kind in config.transports
        ]
        specs += [("tls", address) for address in config.tls_endpoints()]
        made: list[tuple[str, socket.socket]] = []
        try:
            for kind, address in specs:
                if kind == "udp":
                    made.append((kind, _listen_socket(address, reuse_port=reuse_port)))
                else:
                    made.append((kind, _tcp_listener(address, reuse_port)))
        except BaseException:
            for _kind, sock in made:
                sock.close()
            raise
        return made

    async def _stream_server(
        self, sock: socket.socket, kind: str, context: ssl.SSLContext | None
    ) -> None:
        server = await self.loop.create_server(
            lambda: _StreamProtocol(self, kind), sock=sock, ssl=context
        )
        self._servers.append(server)
        bound: HostPort = sock.getsockname()[:2]
        (self.listen_tls if kind == "tls" else self.listen_tcp).append(bound)

    async def _start_workers(self, sets: list[list[tuple[str, socket.socket]]]) -> None:
        # Plain subprocesses (not multiprocessing): nothing depends on how the parent's
        # __main__ was started; the setup travels as JSON on stdin, the sockets as inherited
        # file descriptors.
        assert self._nonce_key is not None
        # icerelay's own logger: `icerelay serve` sets the level there, not on the root logger
        # (whose WARNING kept the workers' INFO lines, their stop line included, silent).
        level = logging.getLogger("icerelay").getEffectiveLevel()
        try:
            for index, sockets in enumerate(sets, start=1):
                fds = [sock.fileno() for _kind, sock in sockets]
                map_fds = self._program.maps.fds if self._program is not None else {}
                fds += list(map_fds.values())
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "icerelay.daemon.turn_service",
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    pass_fds=fds,
                    limit=REPORT_LINE_LIMIT,
                )
                self._workers.append(process)
                assert process.stdin is not None
                setup = {
                    "config": self.config.model_dump(mode="json"),
                    "index": index,
                    "nonce_key": self._nonce_key.hex(),
                    "level": level,
                    "sockets": [[kind, sock.fileno()] for kind, sock in sockets],
                    "offload_maps": map_fds,
                    "directory": self.directory,
                }
                process.stdin.write(json.dumps(setup).encode() + b"\n")
                await process.stdin.drain()
                process.stdin.close()
        finally:
            # The workers hold their own descriptors now.
            for sockets in sets:
                for _kind, sock in sockets:
                    sock.close()
        for index, process in enumerate(self._workers, start=1):
            assert process.stdout is not None
            try:
                line = await asyncio.wait_for(process.stdout.readline(), 30)
            except TimeoutError:
                line = b""
            if line.strip() != b"ready":
                raise ConfigError(f"turn: worker {index} failed to start")
            # From now on the worker's stdout carries its reports; reading them also keeps
            # the pipe from filling up and blocking the worker.
            self.worker_reports.follow(index, process.stdout)

    async def _stop_workers(self) -> None:
        for process in self._workers:
            if process.returncode is None:
                process.terminate()
        for process in self._workers:
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
        self._workers.clear()
        await self.worker_reports.close()

    async def stop(self) -> None:
        """Close every socket and connection (allocations end without Refresh); log counters."""
        if self._engine is not None and not self._stopped:
            self._stopped = True
            if self.offload is not None:
                with contextlib.suppress(OSError):
                    self.offload.sync(self.loop.time())  # the kernel's latest counts
            counters = {key: value for key, value in self.own_status().items() if value}
            logger.info("turn.stopping", extra={"worker": self.worker_index, **counters})
        if self.daemon and self._loop is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                self._loop.remove_signal_handler(signal.SIGUSR1)
                self._loop.remove_signal_handler(signal.SIGUSR2)
        if self._workers:
            await self._stop_workers()
        if self.directory_sync is not None:
            await self.directory_sync.stop()
            self.directory_sync = None
        # Before the relayed sockets close: no packet is rewritten towards a closed port.
        self._close_offload()
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        for server in self._servers:
            server.close()
        for stream in list(self.streams.values()):
            if stream.transport is not None:
                stream.transport.abort()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._servers.clear()
        for address in list(self.udp):
            self._close_udp(address)
        if self._poller is not None:
            self._poller.close()

    def drain(self) -> None:
        """Stop taking allocations; :meth:`wait_drained` returns once the last one is gone."""
        logger.info(
            "turn.draining",
            extra={"worker": self.worker_index, "allocations": len(self.engine.allocations)},
        )
        for process in self._workers:
            if process.returncode is None:
                process.send_signal(signal.SIGUSR1)
        if self.offload is not None:
            # Draining: what is left runs in userspace, which sees the allocations end.
            self.offload.withdraw_all(self.loop.time())
        self.engine.start_drain()
        self._handle_events()

    async def wait_drained(self) -> None:
        """Wait until drain mode is on and no allocation is left (in every worker)."""
        await self._drained.wait()
        for process in self._workers:
            await process.wait()

    async def _exit_when_workers_drained(self) -> None:
        await self.wait_drained()
        logger.info("turn.drained_stopping_daemon")
        os.kill(os.getpid(), signal.SIGTERM)

    def add_signal_handlers(self, signum: int = signal.SIGUSR1) -> None:
        """Drain on *signum* (SIGUSR1 by default); log the counters on SIGUSR2."""
        self.loop.add_signal_handler(signum, self.drain)
        self.loop.add_signal_handler(signal.SIGUSR2, self.log_status)

    def log_status(self) -> None:
        """One log line with every non-zero counter (SIGUSR2 under ``icerelay serve``); each
        worker process logs its own."""
        for process in self._workers:
            if process.returncode is None:
                process.send_signal(signal.SIGUSR2)
        counters = {key: value for key, value in self.own_status().items() if value}
        logger.info("turn.status", extra={"worker": self.worker_index, **counters})

    # --- RelayBinder --------------------------------------------------------------------

    def bind(self, address: HostPort, dont_fragment: bool) -> bool:
        """Open the UDP socket of a relayed address (called by the engine)."""
        try:
            sock = relay_socket(address, dont_fragment)
        except OSError:
            return False
        self.udp[address] = sock
        assert self._poller is not None
        self._poller.add(
            sock,
            self.engine.receive_relayed,
            address,
            limit=_RELAY_BATCH,
            on_error=self._relay_error,
        )
        self._update_listen_budget()
        return True

    def release(self, address: HostPort) -> None:
        """Close the socket of a relayed address (called by the engine)."""
        if self.offload is not None:
            # Before the engine makes the allocation's record: the kernel's counts go in.
            self.offload.release_relay(address, self.loop.time())
        self._close_udp(address)

    def _close_udp(self, address: HostPort) -> None:
        sock = self.udp.pop(address, None)
        if sock is not None:
            if self._poller is not None:
                self._poller.remove(sock)
            sock.close()
            if address not in self.listen_udp:
                self._update_listen_budget()

    def _update_listen_budget(self) -> None:
        """A listening socket reads _RELAY_BATCH per relayed socket per round (at least
        _LISTEN_BATCH): under overload each stream gets about the same turn both ways."""
        poller = self._poller
        if poller is None:
            return
        budget = max(_LISTEN_BATCH, _RELAY_BATCH * (len(self.udp) - len(self.listen_udp)))
        if budget == self._listen_budget:
            return  # (the first 128 relayed sockets, on every bind)
        self._listen_budget = budget
        for local in self.listen_udp:
            sock = self.udp.get(local)
            if sock is not None:
                poller.set_limit(sock, budget)

    # --- the data path ------------------------------------------------------------------

    # The poller calls the engine per datagram (relayed sockets: engine.receive_relayed
    # itself) and flush() after each chunk and round: what a round produced goes out at once.

    def _on_listen_datagram(
        self, data: bytes, source: HostPort, local: HostPort, now: float
    ) -> None:
        self._receive(data, source, local, "udp", now)

    def _on_relay_error(self, relay: HostPort, _error: OSError) -> bool:
        # An ICMP error for something we relayed: read it from the error queue. (Also a socket
        # the engine released meanwhile: then nothing is done.)
        sock = self.udp.get(relay)
        if sock is not None:
            self._read_icmp(sock, relay)
        return False

    def _read_icmp(self, sock: socket.socket, relay: HostPort) -> None:
        """Drain the socket's error queue (IP_RECVERR) and hand ICMP errors to the engine,
        which tells the client in a Data indication with an ICMP attribute (RFC 8656 §11)."""
        now = self.loop.time()
        for _ in range(_BATCH):
            try:
                _data, ancillary, _flags, peer = sock.recvmsg(1, 512, _MSG_ERRQUEUE)
            except OSError:
                break
            for level, kind, payload in ancillary:
                if (level, kind) not in _RECVERR_CMSGS or len(payload) < _EXTENDED_ERR.size:
                    continue
                _errno, origin, icmp_type, icmp_code, _pad, info, _unused = (
                    _EXTENDED_ERR.unpack_from(payload)
                )
                if origin in (_SO_EE_ORIGIN_ICMP, _SO_EE_ORIGIN_ICMP6) and peer:
                    self.engine.receive_icmp(
                        tuple(peer[:2]), relay, icmp_type, icmp_code, info, now
                    )
        self.flush()

    def flush(self) -> None:
        """Put what the engine queued on the wire, then look at its events."""
        engine = self.engine
        udp = self.udp
        state = engine.state
        if not state.out:
            if state.events:
                self._handle_events()
            return
        for data, source, destination, transport in engine.datagrams_to_send():
            if transport == "udp":
                sock = udp.get(source)
                if sock is None:
                    continue
                try:
                    sock.sendto(data, destination)
                except OSError:
                    # Full buffer or an unreachable peer: UDP may drop, counting is enough.
                    self.send_errors += 1
            else:
                stream = self.streams.get((source, destination))
                if stream is not None:
                    stream.write(data)
        if state.events:
            self._handle_events()

    def _handle_events(self) -> None:
        engine = self.engine
        while (event := engine.next_event()) is not None:
            if isinstance(event, AllocationCreated):
                log_created(logger, event)
            elif isinstance(event, AllocationDeleted):
                log_deleted(logger, event)
            elif isinstance(event, ChannelBound):
                offload = self.offload
                if offload is not None:
                    allocation = engine.allocations.get(event.five_tuple)
                    if allocation is not None:
                        channel = allocation.channels.get(event.number)
                        if channel is not None:
                            offload.install(allocation, channel, self.loop.time())
            elif isinstance(event, Drained):
                logger.info("turn.drained", extra={"worker": self.worker_index})
                self._drained.set()
                if self.daemon:
                    self.loop.create_task(self._exit_when_workers_drained())

    def _on_tick(self) -> None:
        now = self.loop.time()
        engine = self.engine
        engine.handle_timer(now)
        if self.offload is not None:
            self.offload.sync(now)
        idle = now - self.config.tcp_idle_timeout
        for key, stream in list(self.streams.items()):
            five_tuple = (stream.kind, key[1], key[0])
            if (
                stream.last_activity < idle
                and five_tuple not in engine.allocations
                and stream.transport is not None
            ):
                stream.transport.abort()
        for index, process in enumerate(self._workers, start=1):
            if process.returncode is not None and index not in self._workers_lost:
                self._workers_lost.add(index)
                if not engine.draining:
                    # Its clients lost their allocations, and the kernel now spreads clients
                    # over fewer sockets, moving some of the other workers' clients too.
                    logger.error(
                        "turn.worker_exited",
                        extra={
                            "worker": index,
                            "status": process.returncode,
                            "hint": "restart the service",
                        },
                    )
        self.flush()
        self._handle_events()
        self._tick = self.loop.call_later(_TICK, self._on_tick)

    def allocations_view(self) -> list[dict[str, Any]]:
        """Live allocations as JSON-ready dicts: this process's, then those the other worker
        processes listed in their last reports (at most MAX_ALLOCATIONS_REPORTED each, up to
        a second old; each says which ``worker`` holds it)."""
        return self.own_allocations_view() + self.worker_reports.allocations()

    def own_allocations_view(self, limit: int | None = None) -> list[dict[str, Any]]:
        """This process's allocations (``limit``: at most that many)."""
        if self._engine is None or self._loop is None:
            return []
        now = self._loop.time()
        offset = time.time() - now
        allocations = itertools.islice(self._engine.allocations.values(), limit)
        worker = self.worker_index
        return [{**allocation_view(a, now, offset), "worker": worker} for a in allocations]

    def status(self) -> dict[str, Any]:
        """Counters and sizes of every worker process together, for a status endpoint."""
        return merge_counts([self.own_status(), *self.worker_reports.status()])

    def own_status(self) -> dict[str, Any]:
        """Counters and sizes of this process, for its log lines."""
        engine = self.engine
        return {
            "allocations": len(engine.allocations),
            "tcp_connections": len(self.streams),
            "send_errors": self.send_errors,
            # Read rounds of the UDP sockets, and those run from the coalescing timer: packets
            # relayed per round is the batching the load allowed (see aio.poller).
            "udp_rounds": self._poller.rounds if self._poller is not None else 0,
            "udp_timed_rounds": self._poller.timed_rounds if self._poller is not None else 0,
            "draining": engine.draining,
            **engine.counters,
            **self._offload_status(),
        }

    def gauges(self) -> dict[str, int]:
        """Allocations, permissions and channels installed now, over every worker process."""
        return merge_counts([self.own_gauges(), *self.worker_reports.gauges()])

    def own_gauges(self) -> dict[str, int]:
        engine = self._engine
        if engine is None:
            return {"allocations": 0, "permissions": 0, "channels": 0}
        allocations = engine.allocations.values()
        return {
            "allocations": len(allocations),
            "permissions": sum(len(a.permissions) for a in allocations),
            "channels": sum(len(a.channels) for a in allocations),
        }

    def worker_report(self) -> dict[str, Any]:
        """What a worker process sends its parent every second (see daemon.turn_workers)."""
        return {
            "status": self.own_status(),
            "gauges": self.own_gauges(),
            "allocations": self.own_allocations_view(MAX_ALLOCATIONS_REPORTED),
        }

    def _offload_status(self) -> dict[str, Any]:
        offload = self.offload
        if offload is None:
            return {"offload": "off", "offloaded_packets": 0, **self._offload_totals}
        return {"offload": "ebpf", "offload_entries": len(offload.entries), **offload.counters}


def _worker_main() -> None:
    """Entry point of a worker process: ``python -m icerelay.daemon.turn_service`` with its
    setup (configuration, index, nonce key, log level) as one JSON line on stdin."""
    from icerelay.aio.loop import loop_factory

    # Ctrl-C goes to the whole process group: the parent decides, workers follow SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(Exception):
        # Linux: die with the parent even if it is killed without a chance to stop us.
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    setup = json.loads(sys.stdin.readline())
    # The same structured lines as the parent (event names and key=value fields).
    from icerelay.daemon.logs import configure_logging

    configure_logging(logging.getLevelName(int(setup["level"])).lower())
    config = TurnServerConfig.model_validate(setup["config"])
    sockets = [(str(kind), socket.socket(fileno=int(fd))) for kind, fd in setup["sockets"]]
    for _kind, sock in sockets:
        sock.setblocking(False)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(
            _worker(
                config,
                int(setup["index"]),
                bytes.fromhex(setup["nonce_key"]),
                sockets,
                {str(name): int(fd) for name, fd in setup.get("offload_maps", {}).items()} or None,
                setup.get("directory"),
            )
        )


async def _worker(
    config: TurnServerConfig,
    index: int,
    nonce_key: bytes,
    sockets: list[tuple[str, socket.socket]],
    offload_maps: dict[str, int] | None,
    directory: dict[str, Any] | None = None,
) -> None:
    service = TurnService(
        config,
        worker_index=index,
        nonce_key=nonce_key,
        inherited=sockets,
        offload_maps=offload_maps,
    )
    service.directory, service.external_users = directory, directory is not None
    await service.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, service.drain)
    loop.add_signal_handler(signal.SIGUSR2, service.log_status)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    reports = asyncio.create_task(publish_reports(service.worker_report, sys.stdout))
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(service.wait_drained())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
        reports.cancel()
        await service.stop()


if __name__ == "__main__":
    _worker_main()
