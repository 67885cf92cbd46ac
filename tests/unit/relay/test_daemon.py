"""The composed daemon: reload (SIGHUP's work) keeps calls and applies new settings; drain
(SIGUSR1's) refuses new calls, lets existing ones finish and stops after the last."""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from icerelay.daemon.compose import Daemon
from icerelay.daemon.config import Config, load_config

from .test_service import HOST, NgClient, config, run, sdp_for


def write_config(path: Path, relay: dict[str, object], level: str = "info") -> None:
    lines = ["[stun]", "enabled = false", "", "[turn]", "enabled = false", "", "[log]",
             f'level = "{level}"', "", "[relay]"]  # fmt: skip
    for key, value in relay.items():
        if isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        elif isinstance(value, tuple):
            lines.append(f'{key} = "{value[0]}:{value[1]}"')
        else:
            lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else value}")
    path.write_text("\n".join(lines) + "\n")


def relay_settings(tmp_path: Path) -> dict[str, object]:
    settings = config(accounting=f"sqlite:{tmp_path}/sessions.sqlite3").model_dump()
    return {
        key: settings[key]
        for key in ("ng_listen", "port_min", "port_max", "mediaproxy_socket", "accounting")
    } | {"ng_listen": (HOST, 0), "ng_tcp": False}


async def call(client: NgClient, call_id: str) -> None:
    for command, extra in (("offer", {}), ("answer", {"to-tag": "b"})):
        body: dict[str, object] = {"command": command, "call-id": call_id, "from-tag": "a"}
        reply = await client.request(body | {"sdp": sdp_for(4000)} | extra)  # type: ignore[arg-type]
        assert reply[b"result"] == b"ok", reply


@pytest.fixture
def restore_logging() -> Iterator[None]:
    # reload() reconfigures the "icerelay" logger: give the next tests theirs back.
    root = logging.getLogger("icerelay")
    saved = (list(root.handlers), root.level, root.propagate)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    root.propagate = saved[2]


@pytest.mark.usefixtures("restore_logging")
def test_reload_keeps_calls_and_applies_settings(tmp_path: Path) -> None:
    path = tmp_path / "icerelay.toml"
    settings = relay_settings(tmp_path)
    write_config(path, settings)

    async def main() -> None:
        daemon = Daemon(load_config(path=path), loader=lambda: load_config(path=path))
        runner = asyncio.create_task(daemon.run())
        while daemon.relay is None or daemon.relay._udp is None:
            await asyncio.sleep(0.01)
        relay = daemon.relay
        client = NgClient(relay.ng_address)
        try:
            await call(client, "kept")
            write_config(path, settings | {"media_timeout": 7, "port_max": 65000}, level="debug")
            summary = await daemon.reload()
            assert "relay.media_timeout: 60.0 -> 7.0" in summary
            assert "relay.port_max: restart needed" in summary
            assert "log: info/kv -> debug/kv" in summary
            assert logging.getLogger("icerelay").level == logging.DEBUG
            assert relay.engine.config.media_timeout == 7.0
            assert relay.config.port_max == settings["port_max"]
            assert relay.engine.call_ids() == ["kept"]
            write_config(path, settings | {"accounting": "mysql://x/y"})
            assert "reload failed, nothing changed" in await daemon.reload()
            assert relay.engine.config.media_timeout == 7.0
        finally:
            client.sock.close()
            daemon.stop()
            await runner

    run(main)
    with sqlite3.connect(tmp_path / "sessions.sqlite3") as db:
        assert db.execute("SELECT call_id, reason FROM sessions").fetchall() == [
            ("kept", "shutdown")
        ]


def test_drain_refuses_new_calls_and_stops_after_the_last(tmp_path: Path) -> None:
    path = tmp_path / "icerelay.toml"
    write_config(path, relay_settings(tmp_path))

    async def main() -> None:
        daemon = Daemon(load_config(path=path))
        runner = asyncio.create_task(daemon.run())
        while daemon.relay is None or daemon.relay._udp is None:
            await asyncio.sleep(0.01)
        client = NgClient(daemon.relay.ng_address)
        try:
            await call(client, "old")
            await daemon.drain()
            assert daemon.draining
            refused = await client.request(
                {"command": "offer", "call-id": "new", "from-tag": "a", "sdp": sdp_for(4002)}
            )
            assert refused[b"result"] == b"error"
            assert b"draining" in refused[b"error-reason"]  # type: ignore[operator]
            # The call that was up goes on (a re-INVITE works) ...
            await call(client, "old")
            await asyncio.sleep(0.2)
            assert not runner.done()
            # ... and the daemon stops once it has ended.
            await client.request({"command": "delete", "call-id": "old", "delete delay": 0})
            await asyncio.wait_for(runner, 5)
        finally:
            client.sock.close()
            if not runner.done():
                daemon.stop()
                await runner

    run(main)
    with sqlite3.connect(tmp_path / "sessions.sqlite3") as db:
        assert db.execute("SELECT call_id, reason FROM sessions").fetchall() == [
            ("old", "deleted")
        ]


def test_default_config_builds_a_daemon() -> None:
    daemon = Daemon(Config())
    assert not daemon.draining
    assert [service.name for service in daemon.services] == ["stun", "relay", "http"]


def test_reload_switches_the_accounting_target(tmp_path: Path) -> None:
    path = tmp_path / "icerelay.toml"
    settings = relay_settings(tmp_path) | {"state_dir": str(tmp_path / "state")}
    write_config(path, settings)
    second = tmp_path / "second.sqlite3"

    async def main() -> None:
        daemon = Daemon(load_config(path=path), loader=lambda: load_config(path=path))
        runner = asyncio.create_task(daemon.run())
        while daemon.relay is None or daemon.relay._udp is None:
            await asyncio.sleep(0.01)
        client = NgClient(daemon.relay.ng_address)
        try:
            await call(client, "first")
            await client.request({"command": "delete", "call-id": "first", "delete delay": 0})
            write_config(path, settings | {"accounting": f"sqlite:{second}"})
            assert "relay.accounting" in await daemon.reload()
            await call(client, "second")
            await client.request({"command": "delete", "call-id": "second", "delete delay": 0})
        finally:
            client.sock.close()
            daemon.stop()
            await runner

    run(main)
    rows = {
        name: sqlite3.connect(db).execute("SELECT call_id FROM sessions").fetchall()
        for name, db in (("first", tmp_path / "sessions.sqlite3"), ("second", second))
    }
    # Every record is in exactly one of them, and the one made after the reload in the new one.
    assert sorted(rows["first"] + rows["second"]) == [("first",), ("second",)]
    assert ("second",) in rows["second"]


@pytest.mark.usefixtures("restore_logging")
def test_reload_applies_turn_quotas(tmp_path: Path) -> None:
    from tests.support.ports import free_port

    path = tmp_path / "icerelay.toml"
    low = random.randrange(20000, 29000, 2)  # no relay port is bound: no allocation is made
    base = (
        "[stun]\nenabled = false\n\n[relay]\nenabled = false\n\n"
        f'[turn]\nenabled = true\nlisten = ["127.0.0.1:{free_port()}"]\n'
        'realm = "test"\nusers = {alice = "secret"}\n'
        # One process: quotas of several worker processes need a restart to change.
        "workers = 1\n"
        f"relay_port_min = {low}\nrelay_port_max = {low + 99}\n"
    )
    path.write_text(base)

    async def main() -> None:
        daemon = Daemon(load_config(path=path), loader=lambda: load_config(path=path))
        runner = asyncio.create_task(daemon.run())
        while daemon.turn is None or daemon.turn._engine is None:
            await asyncio.sleep(0.01)
        try:
            path.write_text(base + "\n[turn.quotas]\ntotal_allocations = 7\n")
            assert "turn.quotas: applied" in await daemon.reload()
            assert daemon.turn.engine.state.quotas.total_allocations == 7
            path.write_text(base.replace('realm = "test"', 'realm = "other"'))
            assert "turn: restart needed" in await daemon.reload()
        finally:
            daemon.stop()
            await runner

    run(main)
