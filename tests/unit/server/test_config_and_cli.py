"""Configuration loading (defaults < file < environment < flags) and the CLI's handling of it."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
from click.testing import CliRunner

from icerelay.commands.main import main
from icerelay.daemon.config import (
    Config,
    HostPort,
    env_overrides,
    load_config,
    parse_set_options,
    split_host_port,
)
from icerelay.daemon.logs import configure_logging
from icerelay.errors import ConfigError


def test_defaults_run_on_a_laptop() -> None:
    config = load_config(environ={})
    assert config.stun.enabled
    assert config.stun.listen == [HostPort("127.0.0.1", 3478)]
    assert config.stun.transports == ["udp", "tcp"]
    assert config.stun.alternate is None
    assert config.stun.software is None
    assert config.log.level == "info" and config.log.format == "kv"


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    path = tmp_path / "icerelay.toml"
    path.write_text(
        '[stun]\nlisten = ["127.0.0.1:4000"]\nsoftware = "from-file"\nlog_interval = 5\n'
        '[log]\nlevel = "warning"\n'
    )
    environ = {"ICERELAY_STUN__SOFTWARE": "from-env", "ICERELAY_LOG__LEVEL": "DEBUG"}
    config = load_config(path=path, environ=environ, overrides={"log": {"level": "error"}})
    assert config.stun.listen == [HostPort("127.0.0.1", 4000)]  # file
    assert config.stun.log_interval == 5.0  # file
    assert config.stun.software == "from-env"  # env beats file
    assert config.log.level == "error"  # flag beats env


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[stun]\ntransports = ["udp"]\n')
    assert load_config(environ={"ICERELAY_CONFIG": str(path)}).stun.transports == ["udp"]


def test_env_lists_are_comma_separated() -> None:
    config = load_config(
        environ={"ICERELAY_STUN__LISTEN": "127.0.0.1:3478, [::1]:3478", "OTHER": "x"}
    )
    assert config.stun.listen == [HostPort("127.0.0.1", 3478), HostPort("::1", 3478)]
    assert env_overrides({"ICERELAY_CONFIG": "x", "ICERELAY_STUN__ENABLED": "0"}) == {
        "stun": {"enabled": "0"}
    }


def test_alternate_defaults_to_the_next_port() -> None:
    config = load_config(environ={}, overrides={"stun": {"alternate": "127.0.0.2"}})
    assert config.stun.alternate == HostPort("127.0.0.2", 3479)
    assert config.stun.rfc5780_primary == HostPort("127.0.0.1", 3478)
    explicit = load_config(environ={}, overrides={"stun": {"alternate": "127.0.0.2:4000"}})
    assert explicit.stun.alternate == HostPort("127.0.0.2", 4000)


@pytest.mark.parametrize(
    ("overrides", "environ", "fragment"),
    [
        ({"stun": {"listen": ["localhost:3478"]}}, {}, "stun.listen.0: 'localhost' is not an IP"),
        ({}, {"ICERELAY_STUN__LISTN": "x"}, "stun.listn: unknown setting (from environment "
         "variable ICERELAY_STUN__LISTN)"),
        ({"stun": {"alternate": "127.0.0.1"}}, {}, "different IP address"),
        ({"stun": {"alternate": "::2"}}, {}, "needs exactly one listen address of IPv6"),
        ({"stun": {"listen": ["0.0.0.0:3478"], "alternate": "127.0.0.2"}}, {}, "wildcard"),
        ({"stun": {"transports": "udp,sctp"}}, {}, "stun.transports.1"),
        ({"turn": {"x": 1}}, {}, "turn.x: unknown setting"),
        ({"turm": {"x": 1}}, {}, "turm: unknown section"),
        ({"log": {"level": "loud"}}, {}, "log.level"),
        ({"stun": {"listen": ["127.0.0.1:70000"]}}, {}, "invalid port"),
        ({"stun": {"listen": ["127.0.0.1:3478", "127.0.0.1:3478"]}}, {}, "duplicate"),
    ],
)  # fmt: skip
def test_bad_configuration_is_explained(
    overrides: dict[str, object], environ: dict[str, str], fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ=environ, overrides=overrides)
    assert fragment in str(info.value)


def test_bad_file_is_explained(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(path=tmp_path / "missing.toml", environ={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[stun\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path=broken, environ={})
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[stun]\nlisten = 5\n")
    with pytest.raises(ConfigError, match=r"stun\.listen.*from file"):
        load_config(path=wrong, environ={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1:5", ("192.0.2.1", 5)),
        ("192.0.2.1", ("192.0.2.1", 3478)),
        ("[::1]:9", ("::1", 9)),
        ("[::1]", ("::1", 3478)),
        ("::1", ("::1", 3478)),
        ("stun.example.org:3479", ("stun.example.org", 3479)),
    ],
)
def test_split_host_port(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text, 3478) == expected


@pytest.mark.parametrize("text", ["", "[::1", "[::1]x", ":5", "h:-1", "h:x", "h:99999"])
def test_split_host_port_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        split_host_port(text, 3478)


def test_set_options() -> None:
    assert parse_set_options(["stun.software=a=b", "log.level=debug"]) == {
        "stun": {"software": "a=b"},
        "log": {"level": "debug"},
    }
    with pytest.raises(ConfigError):
        parse_set_options(["nodot=1"])


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(ValueError):
        config.stun.enabled = False


def test_cli_bad_config_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ICERELAY_CONFIG", raising=False)
    result = CliRunner().invoke(main, ["serve", "--stun-listen", "nonsense"])
    assert result.exit_code == 2
    assert "invalid configuration" in result.output
    assert "stun.listen.0" in result.output


def test_cli_print_config_applies_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICERELAY_STUN__SOFTWARE", "env-software")
    result = CliRunner().invoke(
        main,
        ["serve", "--print-config", "--stun-listen", "[::1]:5000", "--stun-transports", "udp",
         "--set", "stun.log_interval=7", "--log-format", "json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["stun"]["listen"] == ["[::1]:5000"]
    assert data["stun"]["transports"] == ["udp"]
    assert data["stun"]["software"] == "env-software"
    assert data["stun"]["log_interval"] == 7.0
    assert data["log"]["format"] == "json"


def test_cli_probe_rejects_tcp_behavior() -> None:
    result = CliRunner().invoke(main, ["stun-probe", "127.0.0.1", "--tcp", "--behavior"])
    assert result.exit_code == 2


@pytest.fixture
def restore_icerelay_logger() -> Iterator[None]:
    """configure_logging changes the 'icerelay' logger; put it back for the tests that follow."""
    root = logging.getLogger("icerelay")
    saved = (list(root.handlers), root.propagate, root.level)
    yield
    root.handlers[:] = saved[0]
    root.propagate, root.level = saved[1], saved[2]


@pytest.mark.usefixtures("restore_icerelay_logger")
def test_structured_log_formats() -> None:
    stream = StringIO()
    configure_logging("debug", "kv", stream)
    log = logging.getLogger("icerelay.test")
    log.info("stun.dropped", extra={"source": "192.0.2.1:5", "detail": "bad length 3"})
    configure_logging("info", "json", stream)
    log.debug("hidden")
    log.warning("event.two", extra={"count": 3})
    logging.getLogger("icerelay").handlers[0].flush()
    first, second = stream.getvalue().splitlines()
    assert "level=info logger=icerelay.test event=stun.dropped source=192.0.2.1:5" in first
    assert 'detail="bad length 3"' in first
    data = json.loads(second)
    assert data["event"] == "event.two" and data["count"] == 3 and data["level"] == "warning"
