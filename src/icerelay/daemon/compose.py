"""What ``icerelay serve`` runs: a list of services built from the configuration.

A service is anything with a ``name`` and ``async start()`` / ``async stop()`` (see
:class:`Service`). :data:`SERVICE_FACTORIES` maps the configuration to services, one factory per
section; a factory returns None when its section is disabled. To add a service (TURN, relay,
control, metrics): write ``def _turn(config: Config) -> Service | None`` and append it to the
tuple. :func:`run_services` starts them in order, stops them in reverse order, and if one fails
to start, stops the ones already running before re-raising.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from icerelay.daemon.cluster import ClusterService
from icerelay.daemon.config import Config, HostPort
from icerelay.daemon.relay_service import RelayService
from icerelay.daemon.stun_service import StunService
from icerelay.daemon.turn_service import TurnService

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
    # daemon=True: SIGUSR1 drains it, and once drained it stops the whole daemon (SIGTERM).
    return TurnService(config.turn, daemon=True) if config.turn.enabled else None


def _relay(config: Config) -> Service | None:
    return RelayService(config.relay) if config.relay.enabled else None


ServiceFactory = Callable[[Config], Service | None]

#: One factory per configuration section, in start order.
SERVICE_FACTORIES: tuple[ServiceFactory, ...] = (_stun, _turn, _relay)


def build_services(
    config: Config, factories: Sequence[ServiceFactory] = SERVICE_FACTORIES
) -> list[Service]:
    """The enabled services for ``config``, in start order."""
    services = [s for s in (factory(config) for factory in factories) if s is not None]
    # The cluster member (issue 15) goes after the relay it shares: it starts once the relay's
    # ng port is known and stops first, leaving the cluster before the relay ends its calls.
    relay = next((s for s in services if isinstance(s, RelayService)), None)
    turn = next((s for s in services if isinstance(s, TurnService)), None)
    if config.cluster.enabled and relay is not None:
        shared_turn = turn if config.cluster.turn_users else None
        if shared_turn is not None:
            shared_turn.external_users = True
        services.append(ClusterService(config.cluster, relay, turn=shared_turn))
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
