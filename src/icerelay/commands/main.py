"""The ``icerelay`` command.

``icerelay serve`` runs the daemon (today: the STUN server); ``icerelay stun-probe`` asks a STUN
server for our mapped address and, with ``--behavior``, classifies the NAT (RFC 5780).
Exit codes: 0 success, 1 runtime failure (cannot bind, no answer), 2 bad usage or configuration.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from icerelay.aio.loop import loop_factory
from icerelay.commands.ctl import ctl
from icerelay.commands.nat_matrix import nat_matrix
from icerelay.commands.ng import ng
from icerelay.commands.phone import phone
from icerelay.daemon.config import (
    STUN_PORT,
    Config,
    load_config,
    parse_set_options,
)
from icerelay.daemon.logs import configure_logging
from icerelay.errors import ConfigError
from icerelay.net import split_host_port

logger = logging.getLogger("icerelay.commands.main")

EXIT_FAILURE = 1
EXIT_USAGE = 2


def _fail(message: str, code: int = EXIT_FAILURE) -> None:
    for handler in logging.getLogger("icerelay").handlers:
        handler.flush()  # the log lines that led here come before the message
    click.echo(f"icerelay: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="icerelay")
def main() -> None:
    """icerelay: NAT traversal for SIP media (STUN/TURN server, ICE, media relay)."""


# --- serve -------------------------------------------------------------------------------------


def _flag_overrides(options: dict[str, Any]) -> dict[str, Any]:
    """Turn the ``serve`` flags that were given into configuration overrides."""
    overrides = parse_set_options(options["set_options"])
    stun: dict[str, Any] = overrides.setdefault("stun", {})
    if options["stun_listen"]:
        stun["listen"] = list(options["stun_listen"])
    if options["stun_alternate"] is not None:
        stun["alternate"] = options["stun_alternate"]
    if options["stun_transports"] is not None:
        stun["transports"] = options["stun_transports"]
    if options["stun_software"] is not None:
        stun["software"] = options["stun_software"]
    if options["no_stun"]:
        stun["enabled"] = False
    if not stun:
        del overrides["stun"]
    log: dict[str, Any] = {}
    if options["log_level"] is not None:
        log["level"] = options["log_level"]
    if options["log_format"] is not None:
        log["format"] = options["log_format"]
    if log:
        overrides.setdefault("log", {}).update(log)
    return overrides


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML configuration file (default: $ICERELAY_CONFIG).",
)
@click.option(
    "--stun-listen",
    multiple=True,
    metavar="IP:PORT",
    help="STUN listen address; repeat for several (default 127.0.0.1:3478).",
)
@click.option(
    "--stun-alternate",
    metavar="IP[:PORT]",
    help="RFC 5780 second address (port defaults to the listen port + 1).",
)
@click.option("--stun-transports", metavar="LIST", help="udp,tcp (default both).")
@click.option("--stun-software", metavar="TEXT", help="SOFTWARE attribute (default: none).")
@click.option("--no-stun", is_flag=True, help="Do not run the STUN service.")
@click.option(
    "--set",
    "set_options",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Set any configuration key, e.g. --set stun.log_interval=10.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default=None,
)
@click.option("--log-format", type=click.Choice(["kv", "json"]), default=None)
@click.option("--print-config", is_flag=True, help="Print the effective configuration and exit.")
def serve(config_path: str | None, print_config: bool, **options: Any) -> None:
    """Run the icerelay daemon until Ctrl-C: by default STUN on 127.0.0.1:3478 and the media relay
    (ng protocol on 127.0.0.1:2223); TURN when [turn] enables it."""
    try:
        config = load_config(path=config_path, overrides=_flag_overrides(options))
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)
        return
    if print_config:
        click.echo(json.dumps(config.model_dump(mode="json"), indent=2))
        return
    configure_logging(config.log.level, config.log.format)
    overrides = _flag_overrides(options)

    def reload_config() -> Config:
        # SIGHUP: the same file (or $ICERELAY_CONFIG), environment and flags as at start.
        return load_config(path=config_path, overrides=overrides)

    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(_serve(config, reload_config))
    except ConfigError as exc:
        # Some settings can only be checked when a service starts (e.g. TURN relay ranges).
        _fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        _fail(f"cannot start: {exc}")


async def _serve(config: Config, loader: Callable[[], Config] | None = None) -> None:
    from icerelay.daemon.compose import Daemon

    daemon = Daemon(config, loader=loader)
    # Before the services start: a SIGHUP or SIGUSR1 during start-up must not kill the process
    # (their default action) with calls about to be taken.
    daemon.add_signal_handlers(asyncio.get_running_loop())
    await daemon.run()
    logger.info("serve.stopped")


# --- stun-probe --------------------------------------------------------------------------------


@main.command("stun-probe")
@click.argument("server", metavar="HOST[:PORT]")
@click.option("--tcp", is_flag=True, help="One Binding over TCP instead of UDP.")
@click.option(
    "--behavior",
    is_flag=True,
    help="Classify NAT mapping and filtering (RFC 5780; UDP; server needs 2 IPs).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.05),
    default=3.0,
    show_default=True,
    help="Seconds to wait for each answer.",
)
@click.option("--local", metavar="IP[:PORT]", help="Local address to send from (UDP).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("-4", "family", flag_value=4, help="Resolve HOST to IPv4 only.")
@click.option("-6", "family", flag_value=6, help="Resolve HOST to IPv6 only.")
def stun_probe(
    server: str,
    tcp: bool,
    behavior: bool,
    timeout: float,
    local: str | None,
    as_json: bool,
    family: int | None,
) -> None:
    """Ask a STUN server for our mapped address and the round-trip time.

    HOST is a name, an IPv4 address or an IPv6 address in brackets ([::1]:3478); PORT defaults
    to 3478.
    """
    from icerelay.aio.probe import probe_tcp, probe_udp, resolve
    from icerelay.errors import ProbeError
    from icerelay.stun import Address

    if tcp and behavior:
        _fail(
            "--behavior needs UDP (RFC 5780 tests cannot change addresses on a stream)", EXIT_USAGE
        )
    try:
        host, port = split_host_port(server, STUN_PORT)
        if port == 0:
            raise ValueError(f"port 0 in {server!r}")
        local_address = None
        if local is not None:
            local_host, local_port = split_host_port(local, 0)
            local_address = Address(local_host, local_port)
    except ValueError as exc:
        _fail(f"bad address: {exc}", EXIT_USAGE)
        return

    async def run() -> Any:
        address = await resolve(host, port, family or 0)
        if tcp:
            return await probe_tcp(address, timeout=timeout)
        return await probe_udp(address, behavior=behavior, timeout=timeout, local=local_address)

    try:
        result = asyncio.run(run())
    except ProbeError as exc:
        if as_json:
            click.echo(json.dumps({"error": str(exc)}))
        _fail(str(exc))
        return
    click.echo(json.dumps(result.to_dict()) if as_json else result.to_text())


main.add_command(ctl)
main.add_command(nat_matrix)
main.add_command(ng)
main.add_command(phone)
