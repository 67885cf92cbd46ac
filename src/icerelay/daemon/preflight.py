"""Checks made when ``icerelay serve`` builds its services, before any socket serves a client.

Settings that pass the model can still describe a server that cannot work on this host: a
relay address the host does not have (every TURN Allocate would then fail with 508, with
nothing in the log), a TURN server that listens only on IPv6 and so has no IPv4 relay (browsers
ask for IPv4 relays and would get 440), or a relay whose control port faces the network while its
media ports are on loopback (calls set up, media never arrives). The first two refuse to start
(:class:`~icerelay.errors.ConfigError`, exit status 2); the last is a warning, since a local
proxy in front may be exactly what was meant.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket

from icerelay.daemon.config import Config
from icerelay.daemon.relay_config import RelayServiceConfig
from icerelay.daemon.turn_config import TurnServerConfig
from icerelay.errors import ConfigError

__all__ = ["check_relay", "check_turn", "exposure_warnings", "is_local_address"]

logger = logging.getLogger("icerelay.server")


def is_local_address(ip: str) -> bool:
    """Whether this host has ``ip`` (a socket can be bound to it)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((ip, 0))
        except OSError as error:
            if error.errno == errno.EADDRNOTAVAIL:
                return False
            raise
    return True


def _require_local(setting: str, ip: str | None, hint: str) -> None:
    if ip is None or ipaddress.ip_address(ip).is_unspecified or is_local_address(ip):
        return
    raise ConfigError(f"{setting} = {ip} is not an address of this host: {hint}")


def check_turn(config: TurnServerConfig) -> TurnServerConfig:
    """The TURN settings to run with; ConfigError when they cannot work here.

    Listening only on IPv6 loopback without ``relay_ipv4``: IPv4 relays default to 127.0.0.1
    (a local test, where the clients are local too). Listening only on other IPv6 addresses
    without ``relay_ipv4``: refused, there is no IPv4 address to guess.
    """
    for family in (4, 6):
        explicit = config.relay_ipv4 if family == 4 else config.relay_ipv6
        _require_local(
            f"turn.relay_ipv{family}",
            explicit,
            "relayed sockets cannot be bound there and every Allocate would fail (508); "
            f"behind a 1:1 NAT set relay_ipv{family} to the local address and "
            f"relay_advertised_ipv{family} to the public one",
        )
    if config.relay_host(4) is None and config.relay_host(6) is not None:
        hosts = [ipaddress.ip_address(host) for host, _port in config.listen]
        if hosts and all(host.version == 6 and host.is_loopback for host in hosts):
            logger.info(
                "turn.relay_ipv4_defaulted",
                extra={"relay_ipv4": "127.0.0.1", "reason": "listening on IPv6 loopback only"},
            )
            return config.model_copy(update={"relay_ipv4": "127.0.0.1"})
        raise ConfigError(
            "turn listens only on IPv6 and has no IPv4 relay address: clients asking for an "
            "IPv4 relay (browsers do by default) would be refused with 440; set "
            "turn.relay_ipv4 to this host's IPv4 address"
        )
    return config


def check_relay(config: RelayServiceConfig) -> None:
    """ConfigError when the relay's media addresses are not this host's."""
    for family, ip in ((4, config.address_ipv4), (6, config.address_ipv6)):
        _require_local(
            f"relay.address_ipv{family}",
            ip,
            "relay ports cannot be bound there; behind a 1:1 NAT set address_ipv"
            f"{family} to the local address and advertised_ipv{family} to the public one",
        )


def _faces_network(host: str) -> bool:
    address = ipaddress.ip_address(host)
    return address.is_unspecified or not address.is_loopback


def exposure_warnings(config: Config) -> list[tuple[str, dict[str, str]]]:
    """Warnings (event, fields) about listeners that face other hosts in a way that will not
    work or should not be: logged by :func:`log_exposure_warnings` at start."""
    warnings: list[tuple[str, dict[str, str]]] = []
    relay = config.relay
    if relay.enabled and _faces_network(relay.ng_listen[0]):
        media = relay.advertised_ipv4 or relay.address_ipv4
        if media is not None and ipaddress.ip_address(media).is_loopback:
            warnings.append(
                (
                    "relay.loopback_media_for_remote_proxy",
                    {
                        "ng_listen": f"{relay.ng_listen[0]}:{relay.ng_listen[1]}",
                        "address_ipv4": media,
                        "hint": "the ng port is reachable from other hosts but relay ports are "
                        "on loopback: SDP will point callers at 127.0.0.1; set "
                        "relay.address_ipv4 (and advertised_ipv4 behind NAT)",
                    },
                )
            )
    listen = config.http.listen
    if listen is not None and _faces_network(listen.host):
        warnings.append(
            (
                "http.exposed",
                {
                    "listen": str(listen),
                    "hint": "the HTTP API can delete calls and drain the daemon; keep it on "
                    "loopback or behind a firewall or an authenticating reverse proxy",
                },
            )
        )
    return warnings


def log_exposure_warnings(config: Config) -> None:
    """Log :func:`exposure_warnings` (once, at start)."""
    for event, fields in exposure_warnings(config):
        logger.warning(event, extra=fields)
