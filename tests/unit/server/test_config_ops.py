"""Configuration and documentation that hold (issue 14): TOML values in --set and the
environment, clear errors for bad files and addresses, start checks, README defaults, the tour,
the systemd unit and the licence."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from tests.support.ports import free_ports

from icerelay.commands.main import main
from icerelay.daemon.compose import build_services
from icerelay.daemon.config import Config, load_config, parse_set_options
from icerelay.daemon.preflight import check_turn, exposure_warnings
from icerelay.daemon.relay_config import RelayServiceConfig
from icerelay.daemon.relay_service import RelayService
from icerelay.daemon.turn_config import TurnServerConfig
from icerelay.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
# TEST-NET-1: documentation addresses no host has.
FOREIGN = "192.0.2.77"


def serve(*args: str) -> Any:
    return CliRunner().invoke(main, ["serve", *args])


# -- --set and environment values ---------------------------------------------------------------


def test_set_accepts_toml_values_as_the_readme_shows() -> None:
    overrides = parse_set_options(
        ["turn.users={alice=\"wonderland\"}", 'turn.allow_peers=["10.0.0.0/8"]', "stun.software=x"]
    )
    config = load_config(environ={}, overrides=overrides)
    assert config.turn.users == {"alice": "wonderland"}
    assert config.turn.allow_peers == ["10.0.0.0/8"]
    assert config.stun.software == "x"
    result = serve("--print-config", "--set", 'turn.users={alice="wonderland"}')
    assert result.exit_code == 0, result.output
    assert '"alice": "wonderland"' in result.output


def test_environment_accepts_toml_values_and_keeps_addresses_as_text() -> None:
    config = load_config(
        environ={
            "ICERELAY_TURN__USERS": '{bob = "builder"}',
            "ICERELAY_STUN__LISTEN": "[::1]:3478,127.0.0.1:3479",
            "ICERELAY_RELAY__ENABLED": "false",
        }
    )
    assert config.turn.users == {"bob": "builder"}
    assert [str(a) for a in config.stun.listen] == ["[::1]:3478", "127.0.0.1:3479"]
    assert config.relay.enabled is False


def test_broken_toml_value_is_a_config_error_naming_its_source() -> None:
    with pytest.raises(ConfigError, match=r"--set 'turn.users=\{alice='"):
        parse_set_options(["turn.users={alice="])
    with pytest.raises(ConfigError, match="environment variable ICERELAY_TURN__USERS"):
        load_config(environ={"ICERELAY_TURN__USERS": "{x"})


# -- files and addresses ------------------------------------------------------------------------


def test_non_utf8_config_file_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"[stun]\n# caf\xe9\nenabled = true\n")
    result = serve("--config", str(path), "--print-config")
    assert result.exit_code == 2
    assert "is not UTF-8" in result.output and "0xe9" in result.output
    assert "Traceback" not in result.output


def test_unknown_section_says_where_it_came_from(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text("[stunn]\nenabled = true\n")
    with pytest.raises(ConfigError, match=rf"stunn: unknown section .*\(from file {path}\)"):
        load_config(path=path, environ={})
    with pytest.raises(ConfigError, match="from environment variable ICERELAY_NOPE__X"):
        load_config(environ={"ICERELAY_NOPE__X": "1"})


@pytest.mark.parametrize(
    "args",
    [
        ["--stun-listen", "::1:3478"],
        ["--set", "relay.ng_listen=::1:2223"],
        ["--set", "turn.listen=::1:3478"],
        ["--set", "http.listen=::1:9470"],
    ],
)
def test_ipv6_without_brackets_is_a_config_error(args: list[str]) -> None:
    result = serve("--print-config", *args)
    assert result.exit_code == 2, result.output
    assert "write an IPv6 address in brackets" in result.output


def test_ng_port_clash_names_the_socket() -> None:
    (port,) = free_ports(1, kinds=("udp",))

    async def main() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as blocker:
            blocker.bind(("127.0.0.1", port))
            relay = RelayService(
                RelayServiceConfig(
                    ng_listen=("127.0.0.1", port), mediaproxy_socket="", accounting=""
                )
            )
            with pytest.raises(OSError, match=f"relay ng udp on 127.0.0.1:{port}"):
                await relay.start()

    asyncio.run(main())


# -- start checks -------------------------------------------------------------------------------


def turn(**settings: object) -> TurnServerConfig:
    base: dict[str, object] = {"enabled": True, "users": {"a": "b"}}
    base.update(settings)
    return TurnServerConfig.model_validate(base)


def test_turn_on_ipv6_loopback_only_gets_an_ipv4_relay() -> None:
    checked = check_turn(turn(listen=["[::1]:3478"]))
    assert checked.relay_host(4) == "127.0.0.1" and checked.relay_host(6) == "::1"


def test_turn_on_public_ipv6_only_refuses_to_start() -> None:
    with pytest.raises(ConfigError, match=r"no IPv4 relay address.*440.*relay_ipv4"):
        check_turn(turn(listen=["[2001:db8::1]:3478"]))
    # With the IPv4 relay given it is fine (the address must be local: loopback here).
    assert check_turn(turn(listen=["[::1]:3478"], relay_ipv4="127.0.0.1")).relay_ipv4


def test_relay_addresses_the_host_lacks_are_refused_at_start() -> None:
    config = load_config(
        environ={},
        overrides={
            "turn": {"enabled": True, "users": {"a": "b"}, "relay_ipv4": FOREIGN},
            "http": {"listen": ""},
        },
    )
    with pytest.raises(ConfigError, match=rf"turn.relay_ipv4 = {FOREIGN} is not an address"):
        build_services(config)
    config = load_config(
        environ={}, overrides={"relay": {"address_ipv4": FOREIGN}, "http": {"listen": ""}}
    )
    with pytest.raises(ConfigError, match=rf"relay.address_ipv4 = {FOREIGN} is not an address"):
        build_services(config)


def test_serve_exits_2_for_a_foreign_relay_address() -> None:
    result = serve(
        "--no-stun", "--set", "http.listen=", "--set", "relay.enabled=false",
        "--set", "turn.enabled=true", "--set", "turn.users={a=\"b\"}",
        "--set", f"turn.relay_ipv4={FOREIGN}",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "is not an address of this host" in result.output


def test_exposure_warnings(caplog: pytest.LogCaptureFixture) -> None:
    assert exposure_warnings(Config()) == []
    exposed = load_config(
        environ={}, overrides={"relay": {"ng_listen": "0.0.0.0:2223"}, "http": {"listen": "[::]"}}
    )
    events = [event for event, _fields in exposure_warnings(exposed)]
    assert events == ["relay.loopback_media_for_remote_proxy", "http.exposed"]
    # A proper public relay address: only the HTTP warning is left.
    fine = load_config(
        environ={},
        overrides={"relay": {"ng_listen": "0.0.0.0:2223", "advertised_ipv4": "203.0.113.10"}},
    )
    assert exposure_warnings(fine) == []
    # Logged once when serve builds its services (relay and STUN off: nothing is bound here).
    caplog.set_level(logging.WARNING, logger="icerelay")
    quiet = load_config(
        environ={},
        overrides={"relay": {"enabled": False}, "stun": {"enabled": False},
                   "http": {"listen": "0.0.0.0:0"}},
    )  # fmt: skip
    build_services(quiet)
    assert [r.getMessage() for r in caplog.records] == ["http.exposed"]


# -- documentation ------------------------------------------------------------------------------


def _readme_toml_blocks() -> dict[str, dict[str, Any]]:
    text = (ROOT / "README.md").read_text()
    blocks: dict[str, dict[str, Any]] = {}
    for block in re.findall(r"```toml\n(.*?)```", text, flags=re.S):
        if block.startswith("# example"):
            continue  # a setting changed on purpose, not the defaults
        data = tomllib.loads(block)
        for section, values in data.items():
            blocks.setdefault(section, {}).update(values)
    return blocks


@pytest.mark.parametrize("section", ["stun", "relay", "http", "log"])
def test_readme_defaults_match_the_code(section: str) -> None:
    """Each README block said to show defaults shows the code's defaults (the [turn] block is
    marked as an example)."""
    shown = _readme_toml_blocks()[section]
    # Read through the model, so "127.0.0.1:2223" and ("127.0.0.1", 2223) compare equal.
    parsed = getattr(Config.model_validate({section: shown}), section)
    defaults = getattr(Config(), section)
    for key in shown:
        value, expected = getattr(parsed, key), getattr(defaults, key)
        assert value == expected, f"[{section}] {key}: README {value!r}, code {expected!r}"


def test_readme_tour_runs_after_make_run() -> None:
    """The tour activates .venv first, and the command it then calls is where make puts it."""
    text = (ROOT / "README.md").read_text()
    tour = text.split("A tour in five commands", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [line.split("#")[0].strip() for line in tour.splitlines() if line.strip()]
    assert lines[0] == ". .venv/bin/activate"
    assert all(line.startswith("icerelay ") for line in lines[1:])
    command = Path(sys.executable).parent / "icerelay"
    assert command.exists(), "make installs the icerelay command next to the venv's python"
    for line in lines[1:]:
        subcommand = line.split()[1]
        result = subprocess.run(
            [str(command), subcommand, "--help"], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, (line, result.stderr)


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    unit = (ROOT / "contrib" / "icerelay.service").read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    # Point ExecStart at this checkout's command: verify checks that it is executable.
    command = Path(sys.executable).parent / "icerelay"
    installed = tmp_path / "icerelay.service"
    installed.write_text(unit.replace("/opt/icerelay/bin/icerelay", str(command)))
    result = subprocess.run(
        [analyze, "verify", str(installed)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
    # And it does check: a unit whose command is missing fails.
    missing = tmp_path / "missing" / "icerelay.service"
    missing.parent.mkdir()
    missing.write_text(unit.replace("/opt/icerelay/bin/icerelay", str(tmp_path / "nothing")))
    failed = subprocess.run(
        [analyze, "verify", str(missing)], capture_output=True, text=True, timeout=60
    )
    assert failed.returncode != 0


def test_licence_is_apache_2() -> None:
    licence = (ROOT / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "END OF TERMS AND CONDITIONS" in licence
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
