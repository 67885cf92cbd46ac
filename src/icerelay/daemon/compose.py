"""What ``icerelay serve`` runs: a list of services built from the configuration.

A service is anything with a ``name`` and ``async start()`` / ``async stop()`` (see
:class:`Service`). :data:`SERVICE_FACTORIES` maps the configuration to services, one factory per
section; a factory returns None when its section is disabled. To add a service (TURN, relay,
control, metrics): write ``def _turn(config: Config) -> Service | None`` and append it to the
tuple. :func:`run_services` starts them in order, stops them in reverse order, and if one fails
to start, stops the ones already running before re-raising.

:class:`Daemon` is what ``icerelay serve`` runs: the services, plus what the signals (and the
HTTP API) ask of the whole daemon: :meth:`Daemon.reload` (SIGHUP: re-read the configuration and
apply what can change without dropping a call) and :meth:`Daemon.drain` (SIGUSR1: refuse new
calls and allocations, let the existing ones finish, exit after the last).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import signal
from collections.abc import Callable, Coroutine, Sequence
from typing import Protocol

from icerelay.daemon.cluster import ClusterService
from icerelay.daemon.config import Config, HostPort
from icerelay.daemon.http import HttpService
from icerelay.daemon.logs import configure_logging
from icerelay.daemon.preflight import check_relay, check_turn, log_exposure_warnings
from icerelay.daemon.relay_service import RelayService
from icerelay.daemon.stun_service import StunService
from icerelay.daemon.turn_service import TurnService
from icerelay.errors import ConfigError

logger = logging.getLogger("icerelay.server")


class Service(Protocol):
    """A long-running part of the daemon."""

    name: str

    async def start(self) -> None:
        """Open sockets and begin serving; raise (OSError, IcerelayError) if it cannot."""

    async def stop(self) -> None:
        """Stop serving and release everything; must not raise, may be called twice."""


def _stun(config: Config) -> Service | None:
    if not config.stun.enabled:
        return None
    stun = config.stun
    if config.turn.enabled and stun.alternate is None:
        # The TURN server answers Binding on its own ports (RFC 8656 §4): leave them to it,
        # including addresses a wildcard on either side would make collide.
        remaining = [address for address in stun.listen if not _shared_with_turn(address, config)]
        if not remaining:
            return None
        if len(remaining) != len(stun.listen):
            stun = stun.model_copy(update={"listen": remaining})
    return StunService(stun)


def _shared_with_turn(address: HostPort, config: Config) -> bool:
    for host, port in config.turn.listen:
        if port != address.port or (":" in host) != (address.family == 6):
            continue
        if host == address.host or ipaddress.ip_address(host).is_unspecified:
            return True
        if ipaddress.ip_address(address.host).is_unspecified:
            return True
    return False


def _turn(config: Config) -> Service | None:
    # Not daemon=True: the Daemon owns the signals and drains TURN with the relay, so that a
    # drained TURN server does not stop the daemon while relay calls are still up.
    if not config.turn.enabled:
        return None
    turn = config.turn
    # Refuses relay addresses this host lacks; IPv6-loopback-only gets an IPv4 relay default.
    return TurnService(check_turn(turn))


def _relay(config: Config) -> Service | None:
    if not config.relay.enabled:
        return None
    check_relay(config.relay)
    return RelayService(config.relay)


def _http(config: Config) -> Service | None:
    # Last: it shows the others (build_services attaches them), starts after and stops before.
    return HttpService(config.http) if config.http.listen is not None else None


ServiceFactory = Callable[[Config], Service | None]

#: One factory per configuration section, in start order.
SERVICE_FACTORIES: tuple[ServiceFactory, ...] = (_stun, _turn, _relay, _http)


def build_services(
    config: Config, factories: Sequence[ServiceFactory] = SERVICE_FACTORIES
) -> list[Service]:
    """The enabled services for ``config``, in start order.

    A service with an ``attach(services)`` method (HTTP: metrics and views of the others) is
    handed the whole list once it is built.
    """
    log_exposure_warnings(config)
    services = [s for s in (factory(config) for factory in factories) if s is not None]
    # The cluster member goes after the relay it shares: it starts once the relay's ng port is
    # known and stops first, leaving the cluster before the relay ends its calls.
    relay = next((s for s in services if isinstance(s, RelayService)), None)
    turn = next((s for s in services if isinstance(s, TurnService)), None)
    if config.cluster.enabled and relay is not None:
        # Given the cluster's TURN directory (users, quotas) before it starts: every worker.
        shared_turn = turn if config.cluster.turn_users else None
        member = ClusterService(config.cluster, relay, turn=shared_turn)
        services.append(member)
        relay.adopted_elsewhere = member.recovery_skip
    for service in services:
        attach = getattr(service, "attach", None)
        if callable(attach):
            attach(services)
    return services


async def start_services(services: Sequence[Service]) -> None:
    """Start each service in order; on failure stop the started ones (reverse) and re-raise."""
    started: list[Service] = []
    try:
        for service in services:
            await service.start()
            started.append(service)
    except BaseException:
        await stop_services(started)
        raise


async def stop_services(services: Sequence[Service]) -> None:
    """Stop services in reverse order; a failing stop is logged and does not stop the others."""
    for service in reversed(services):
        try:
            await service.stop()
        except Exception:
            logger.exception("service.stop_failed", extra={"service": service.name})


async def run_services(services: Sequence[Service], stop: asyncio.Event) -> None:
    """Start ``services``, log ``serve.ready``, wait for ``stop``, then stop them all."""
    await start_services(services)
    logger.info("serve.ready", extra={"services": ",".join(s.name for s in services) or "none"})
    try:
        await stop.wait()
    finally:
        await stop_services(services)


#: Re-reads the configuration the daemon was started with (file, environment, flags).
ConfigLoader = Callable[[], Config]


class Daemon:
    """``icerelay serve``: the services, and reload/drain over all of them.

    :param loader: re-reads the configuration for :meth:`reload` (None: nothing to reload).
    """

    def __init__(
        self,
        config: Config,
        *,
        loader: ConfigLoader | None = None,
        factories: Sequence[ServiceFactory] = SERVICE_FACTORIES,
    ) -> None:
        self.config = config
        self._loader = loader
        self.services: list[Service] = build_services(config, factories)
        for service in self.services:
            # The HTTP API's drain and reload are the daemon's, over every service.
            if isinstance(service, HttpService):
                service.control = self
        #: SIGUSR1 was received: no new calls or allocations; the daemon exits after the last.
        self.draining = False
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def relay(self) -> RelayService | None:
        """The media relay service, if it runs."""
        return next((s for s in self.services if isinstance(s, RelayService)), None)

    @property
    def turn(self) -> TurnService | None:
        """The TURN service, if it runs."""
        return next((s for s in self.services if isinstance(s, TurnService)), None)

    def stop(self) -> None:
        """Ask :meth:`run` to stop every service (SIGTERM, SIGINT): live calls are recorded
        as ``shutdown``."""
        self._stop.set()

    async def run(self) -> None:
        """Start the services, serve until :meth:`stop` (or the end of a drain), stop them."""
        await start_services(self.services)
        if self.turn is not None or self.relay is not None:
            # What was allocated so far lives as long as the process: keep it out of the cyclic
            # collector, whose full passes would otherwise pause relaying for milliseconds
            # (and cost the relay's ng path ~7% of its CPU walking the same objects again).
            gc.freeze()
        logger.info(
            "serve.ready", extra={"services": ",".join(s.name for s in self.services) or "none"}
        )
        try:
            await self._stop.wait()
        finally:
            for task in self._tasks:
                task.cancel()
            await stop_services(self.services)

    def add_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        """SIGTERM/SIGINT stop, SIGHUP reloads, SIGUSR1 drains, SIGUSR2 logs TURN counters."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self._spawn, self._reload_logged)
        loop.add_signal_handler(signal.SIGUSR1, self._spawn, self.drain)
        turn = self.turn
        if turn is not None:
            loop.add_signal_handler(signal.SIGUSR2, turn.log_status)

    def _spawn(self, work: Callable[[], Coroutine[object, object, None]]) -> None:
        task = asyncio.ensure_future(work())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload_logged(self) -> None:
        await self.reload()

    async def reload(self) -> str:
        """Re-read the configuration and apply what a running daemon can change: the log
        level and format, the relay's timeouts, limits, ICE policy, latching settings and
        accounting target. Live calls and allocations are untouched. Returns what changed
        (and what would need a restart), also logged as ``serve.reloaded``."""
        if self._loader is None:
            return "nothing to reload: the daemon was not started from a configuration"
        try:
            new = await asyncio.to_thread(self._loader)
        except (ConfigError, OSError) as error:
            logger.warning("serve.reload_failed", extra={"reason": str(error)})
            return f"reload failed, nothing changed: {error}"
        old = self.config
        changes: list[str] = []
        applied: dict[str, object] = {}
        if new.log != old.log:
            configure_logging(new.log.level, new.log.format)
            changes.append(
                f"log: {old.log.level}/{old.log.format} -> {new.log.level}/{new.log.format}"
            )
            applied["log"] = new.log
        relay = self.relay
        if new.relay != old.relay:
            if relay is not None and new.relay.enabled:
                changes += relay.reload(new.relay)
                applied["relay"] = relay.config
            else:
                changes.append("relay: restart needed (enabled changed)")
        if new.turn != old.turn:
            changes.append(self._reload_turn(old, new, applied))
        if new.stun != old.stun:
            changes.append("stun: restart needed")
        self.config = old.model_copy(update=applied)
        summary = "; ".join(changes) or "no change"
        logger.info("serve.reloaded", extra={"changes": summary})
        return summary

    def _reload_turn(self, old: Config, new: Config, applied: dict[str, object]) -> str:
        """TURN quotas apply to new allocations at once (existing ones keep theirs); the other
        TURN settings, and quotas spread over worker processes, need a restart."""
        turn = self.turn
        only_quotas = new.turn.model_copy(update={"quotas": old.turn.quotas}) == old.turn
        if turn is None or not only_quotas or old.turn.workers != 1:
            return "turn: restart needed"
        turn.engine.state.quotas = new.turn.worker_share(0).settings().quotas
        turn.config = new.turn
        applied["turn"] = new.turn
        return "turn.quotas: applied to new allocations"

    async def drain(self) -> None:
        """Put every service in drain mode (returns at once): new ng offers are refused with
        an ``error-reason``, new TURN allocations with 508; existing calls and allocations go
        on, and the daemon stops when the last has ended."""
        if self.draining:
            return
        self.draining = True
        logger.info("serve.draining")
        waits = []
        relay, turn = self.relay, self.turn
        if relay is not None:
            relay.drain()
            waits.append(relay.wait_drained())
        if turn is not None:
            turn.drain()
            waits.append(turn.wait_drained())

        async def finish() -> None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*waits)
                logger.info("serve.drained")
                self.stop()

        self._spawn(finish)
