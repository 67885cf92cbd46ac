"""``icerelay ctl`` and ``icerelay ng`` as an operator runs them, against a running daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from icerelay import bencode
from icerelay.commands.ctl import format_table
from tests.support.daemon import HOST, SDP, Daemon, start_daemon

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    running = start_daemon(tmp_path_factory.mktemp("ctl"))
    try:
        yield running
    finally:
        assert running.stop() == 0, running.output()


def icerelay(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICERELAY_")}
    return subprocess.run(
        [sys.executable, "-m", "icerelay", *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip


def ctl(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return icerelay("ctl", "--url", daemon.url, *args)


def offer(daemon: Daemon, call_id: str) -> None:
    sdp = SDP.format(port=40000)
    reply = daemon.ng({"command": "offer", "call-id": call_id, "from-tag": "ft", "sdp": sdp})
    assert reply[b"result"] == b"ok", reply


def test_format_table_aligns_columns_and_hides_control_characters() -> None:
    text = format_table(("NAME", "N"), [("a\x1b[2Jb", 5), (None, 123)])
    assert text.splitlines() == ["NAME      N", "a?[2Jb    5", "-       123"]


def test_ctl_list_show_statistics_delete(daemon: Daemon) -> None:
    offer(daemon, "ctl-1@test")
    listed = ctl(daemon, "list")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()[:2]
    assert header.split() == [
        "CALL-ID", "FROM-TAG", "TO-TAG", "STATE", "STREAMS", "AGE", "PKTS-A", "PKTS-B"
    ]  # fmt: skip
    assert row.split()[:5] == ["ctl-1@test", "ft", "-", "offered", "1"]

    shown = ctl(daemon, "show", "ctl-1@test")
    assert shown.returncode == 0, shown.stderr
    assert "RELAY-PORT" in shown.stdout and "caller" in shown.stdout
    as_json = json.loads(ctl(daemon, "--json", "show", "ctl-1@test").stdout)
    assert as_json["sessions"][0]["streams"][0]["media"] == "audio"

    statistics = ctl(daemon, "statistics")
    assert statistics.returncode == 0
    assert any(line.split() == ["relay.sessions", "1"] for line in statistics.stdout.splitlines())

    deleted = ctl(daemon, "delete", "ctl-1@test")
    assert deleted.returncode == 0, deleted.stderr
    assert "deleted 1 session(s)" in deleted.stdout
    again = ctl(daemon, "delete", "ctl-1@test")
    assert again.returncode == 1 and "404" in again.stderr
    assert "0 session(s)" in ctl(daemon, "list").stdout
    # The daemon's own configuration file says where its API is.
    by_config = icerelay("ctl", "--config", str(daemon.config), "list")
    assert by_config.returncode == 0 and "0 session(s)" in by_config.stdout, by_config.stderr
    assert ctl(daemon, "allocations").returncode == 0


def test_ctl_reload_drain_and_unreachable(daemon: Daemon) -> None:
    reload = ctl(daemon, "reload")
    # Until the composed daemon offers reload (SIGHUP), the API says so plainly.
    assert reload.returncode in (0, 1)
    if reload.returncode == 1:
        assert "501" in reload.stderr
    unreachable = icerelay("ctl", "--url", "http://127.0.0.1:9", "--timeout", "1", "list")
    assert unreachable.returncode == 1
    assert "cannot reach the daemon at http://127.0.0.1:9" in unreachable.stderr


def test_ng_sends_bencode_and_json(daemon: Daemon, tmp_path: Path) -> None:
    address = f"{HOST}:{daemon.ng_port}"
    ping = icerelay("ng", "-a", address, "-", stdin=b"d7:command4:pinge")
    assert ping.returncode == 0, ping.stderr
    assert json.loads(ping.stdout) == {"result": "pong"}

    command = tmp_path / "offer.json"
    command.write_text(
        json.dumps({"command": "offer", "call-id": "ng-cli@test", "from-tag": "x",
                    "sdp": SDP.format(port=40002)})
    )  # fmt: skip
    reply = icerelay("ng", "--address", address, str(command))
    assert reply.returncode == 0, reply.stderr
    data = json.loads(reply.stdout)
    assert data["result"] == "ok" and "m=audio" in data["sdp"]

    over_tcp = icerelay("ng", "--tcp", "-a", address, "-", stdin=b'{"command": "ping"}')
    assert over_tcp.returncode == 0, over_tcp.stderr
    assert json.loads(over_tcp.stdout) == {"result": "pong"}

    raw = icerelay("ng", "--raw", "-a", address, "-", stdin=b"d7:command4:pinge")
    cookie, _, payload = raw.stdout.strip().partition(" ")
    assert cookie and bencode.decode(payload.encode()) == {b"result": b"pong"}

    error = icerelay("ng", "-a", address, "-", stdin=b"d7:command5:boguse")
    assert error.returncode == 0
    assert json.loads(error.stdout)["result"] == "error"

    bad = icerelay("ng", "-a", address, "-", stdin=b"not bencode")
    assert bad.returncode == 2 and "not valid bencode" in bad.stderr
    daemon.ng({"command": "delete", "call-id": "ng-cli@test"})


def test_ng_without_answer_fails(tmp_path: Path) -> None:
    from tests.support.ports import free_ports

    (port,) = free_ports(1, kinds=("udp",))
    result = icerelay(
        "ng", "--timeout", "0.2", "-a", f"{HOST}:{port}", "-", stdin=b"d7:command4:pinge"
    )
    assert result.returncode == 1 and "no answer" in result.stderr


def test_sighup_for_log_rotation_does_not_kill_the_daemon(tmp_path: Path) -> None:
    """A logrotate postrotate or `systemctl reload` sends SIGHUP: the daemon reloads and
    keeps serving (its default action would end the process)."""
    import signal
    import time

    from icerelay.daemon import compose

    if not hasattr(compose, "Daemon"):
        pytest.skip("SIGHUP handling comes with compose.Daemon (records helper, issue 10)")
    running = start_daemon(tmp_path / "hup")
    try:
        offer(running, "hup@test")
        running.process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert running.process.poll() is None, running.output()
        listed = ctl(running, "list")
        assert listed.returncode == 0 and "hup@test" in listed.stdout
    finally:
        assert running.stop() == 0, running.output()
