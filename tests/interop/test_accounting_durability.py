"""Accounting under attack-like conditions, with ``icerelay serve`` as a real process:

- 1000 calls while PostgreSQL restarts mid-run: exactly 1000 records;
- kill -9 with 50 live calls: 50 ``interrupted`` records (with their last counters) after the
  next start;
- kill -9 right after deletes were acknowledged: none lost, all ``deleted`` (also those still
  in their grace period);
- the journal and the SQLite database pass ``PRAGMA integrity_check`` after the kills;
- SIGHUP keeps the calls and changes the log level; SIGUSR1 refuses new offers and exits when
  the last call is deleted.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.ports import free_ports
from tests.support.postgres import Cluster, postgres_cluster
from tests.support.process import read_log, spawn_logged, stop_group, wait_until
from tests.support.rtpengine import NgClient, NgError

pytestmark = pytest.mark.interop

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[2]


def sdp(port: int) -> bytes:
    return (
        f"v=0\r\no=- 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
    ).encode()


@dataclass
class Relay:
    """``icerelay serve`` with only the relay, its config file and state directory."""

    workdir: Path
    ng_port: int
    accounting: str
    extra: str = ""
    level: str = "info"
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def config(self) -> Path:
        return self.workdir / "icerelay.toml"

    @property
    def state(self) -> Path:
        return self.workdir / "state"

    def log(self) -> str:
        return "".join(read_log(path) for path in sorted(self.workdir.glob("relay-*.log")))

    def write_config(self) -> None:
        block = free_ports(201, kinds=("udp",), consecutive=True)[0]
        block += block & 1
        self.config.write_text(
            "[stun]\nenabled = false\n\n[turn]\nenabled = false\n\n"
            f'[log]\nlevel = "{self.level}"\n\n'
            "[relay]\n"
            f'ng_listen = "{HOST}:{self.ng_port}"\n'
            "ng_tcp = false\n"
            'mediaproxy_socket = ""\n'
            f"port_min = {block}\nport_max = {block + 199}\n"
            f'accounting = "{self.accounting}"\n'
            f'state_dir = "{self.state}"\n'
            "checkpoint_interval = 0.2\n" + self.extra
        )

    def start(self) -> None:
        if not self.config.exists():
            self.write_config()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ICERELAY_")}
        # No HTTP listener: tests run in parallel, and its default port is a fixed one.
        env["ICERELAY_HTTP__LISTEN"] = ""
        self.starts += 1
        self.process = spawn_logged(
            [sys.executable, "-m", "icerelay", "serve", "--config", str(self.config)],
            self.workdir / f"relay-{self.starts}.log",
            cwd=ROOT,
            env=env,
        )
        with NgClient(HOST, self.ng_port, timeout=0.2, retries=1) as client:
            assert wait_until(self.process, client.ping, 20), self.log()[-3000:]

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int:
        assert self.process is not None
        return stop_group(self.process, timeout=15)

    def client(self) -> NgClient:
        client = NgClient(HOST, self.ng_port, timeout=2.0)
        # Its cookies must differ from the readiness pings' (a client made at the same address
        # would repeat them, and the relay would answer from its retransmission cache).
        client._counter = random.randrange(1 << 40)
        return client


@pytest.fixture
def relays() -> Iterator[list[Relay]]:
    started: list[Relay] = []
    yield started
    for relay in started:
        if relay.process is not None and relay.process.poll() is None:
            relay.stop()


def make_relay(relays: list[Relay], workdir: Path, accounting: str) -> Relay:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_ports(1, kinds=("udp",))[0]
    relay = Relay(workdir, port, accounting)
    relays.append(relay)
    return relay


def call(client: NgClient, call_id: str, media_port: int = 4000) -> bytes:
    """Offer and answer; returns the SDP the caller got (the relay port it must send to)."""
    offer = {"command": "offer", "call-id": call_id, "from-tag": "a", "sdp": sdp(media_port)}
    client.request(offer)  # type: ignore[arg-type]
    reply = client.request(
        {"command": "answer", "call-id": call_id, "from-tag": "a", "to-tag": "b",
         "sdp": sdp(media_port + 2)}
    )  # fmt: skip
    body = reply.get(b"sdp")
    assert isinstance(body, bytes), reply
    return body


def delete(client: NgClient, call_id: str, delay: int | None = 0) -> None:
    message: dict[str, object] = {"command": "delete", "call-id": call_id, "from-tag": "a"}
    if delay is not None:
        message["delete delay"] = delay
    client.request(message)  # type: ignore[arg-type]


def sqlite_rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as connection:
        return connection.execute(sql).fetchall()


def wait_for_rows(path: Path, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            (got,) = sqlite_rows(path, "SELECT count(*) FROM sessions")[0]
        except sqlite3.Error:
            got = -1
        if got == count:
            return
        assert got <= count and time.monotonic() < deadline, f"{got} records, want {count}"
        time.sleep(0.05)


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as connection:
        return str(connection.execute("PRAGMA integrity_check").fetchone()[0])


# -- PostgreSQL restarting mid-run ----------------------------------------------------------------


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with postgres_cluster() as server:
        yield server


def test_1000_calls_while_postgresql_restarts(
    cluster: Cluster, relays: list[Relay], tmp_path: Path
) -> None:
    relay = make_relay(relays, tmp_path / "relay", cluster.url)
    relay.start()
    calls = 1000
    with relay.client() as client:
        for index in range(calls):
            if index == 300:
                cluster.stop()  # the database goes away ...
            if index == 700:
                cluster.start()  # ... and comes back
            call(client, f"pg-{index}")
            delete(client, f"pg-{index}")
    deadline = time.monotonic() + 45
    while True:
        (count,) = cluster.query("SELECT count(*) FROM sessions")[0]
        if count == calls or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert count == calls
    (distinct, deleted) = cluster.query(
        "SELECT count(DISTINCT call_id), count(*) FILTER (WHERE reason = 'deleted') FROM sessions"
    )[0]
    assert (distinct, deleted) == (calls, calls)
    assert relay.stop() == 0
    log = relay.log()
    assert "accounting.target_unreachable" in log and "accounting.target_back" in log
    assert integrity(relay.state / "journal.sqlite3") == "ok"
    # Nothing left behind: a restart delivers nothing more.
    assert cluster.query("SELECT count(*) FROM sessions")[0] == (calls,)


def test_postgresql_down_at_start_is_not_accounting_off(
    cluster: Cluster, relays: list[Relay], tmp_path: Path
) -> None:
    cluster.stop()
    relay = make_relay(relays, tmp_path / "relay", cluster.url)
    relay.start()
    with relay.client() as client:
        for index in range(20):
            call(client, f"early-{index}")
            delete(client, f"early-{index}")
    assert "relay.accounting_unreachable" in relay.log()
    cluster.start()
    import psycopg

    deadline = time.monotonic() + 45
    while True:
        try:
            if cluster.query("SELECT count(*) FROM sessions")[0] == (20,):
                break
        except psycopg.errors.UndefinedTable:
            pass  # the relay has not reconnected (and created its tables) yet
        assert time.monotonic() < deadline, relay.log()[-2000:]
        time.sleep(0.1)
    assert relay.stop() == 0


# -- kill -9 ------------------------------------------------------------------------------------


def rtp(seq: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 8, seq, seq * 160, 0x1234) + b"\xd5" * 160


def relay_port(body: bytes) -> int:
    for line in body.split(b"\r\n"):
        if line.startswith(b"m=audio "):
            return int(line.split()[1])
    raise AssertionError(body)


def test_kill_9_with_50_live_calls_gives_50_interrupted_records(
    relays: list[Relay], tmp_path: Path
) -> None:
    database = tmp_path / "db" / "sessions.sqlite3"
    relay = make_relay(relays, tmp_path / "relay", f"sqlite://{database}")
    relay.start()
    phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    phone.bind((HOST, 0))
    try:
        with relay.client() as client:
            for index in range(50):
                body = call(client, f"live-{index}", phone.getsockname()[1] if index == 0 else 4000)
                if index == 0:
                    first_port = relay_port(body)
            # Five packets from the first call's caller: its record must carry them.
            for seq in range(5):
                phone.sendto(rtp(seq), (HOST, first_port))
        time.sleep(0.8)  # a few checkpoints
        relay.kill()
    finally:
        phone.close()
    assert integrity(relay.state / "journal.sqlite3") == "ok"
    relay.start()  # the next start records them
    wait_for_rows(database, 50)
    rows = sqlite_rows(database, "SELECT reason, count(*) FROM sessions GROUP BY reason")
    assert rows == [("interrupted", 50)]
    (packets,) = sqlite_rows(
        database,
        "SELECT packets_from_caller FROM streams JOIN sessions ON id = session_id"
        " WHERE call_id = 'live-0'",
    )[0]
    assert packets == 5
    assert "relay.calls_recovered" in relay.log()
    assert relay.stop() == 0
    # Recorded once: a further start recovers nothing.
    relay.start()
    assert relay.stop() == 0
    assert sqlite_rows(database, "SELECT count(*) FROM sessions") == [(50,)]
    assert integrity(database) == "ok"


def test_kill_9_right_after_deletes_loses_none(relays: list[Relay], tmp_path: Path) -> None:
    database = tmp_path / "db" / "sessions.sqlite3"
    relay = make_relay(relays, tmp_path / "relay", f"sqlite://{database}")
    relay.start()
    with relay.client() as client:
        for index in range(50):
            call(client, f"gone-{index}")
        for index in range(50):
            # Half end at once, half keep relaying for the default 30 s grace period.
            delete(client, f"gone-{index}", 0 if index % 2 else None)
        relay.kill()  # right after the last acknowledgement
    relay.start()
    wait_for_rows(database, 50)
    rows = sqlite_rows(database, "SELECT reason, count(*), max(duration) FROM sessions GROUP BY 1")
    assert len(rows) == 1 and rows[0][:2] == ("deleted", 50)
    assert rows[0][2] < 10  # talk time, not the grace period
    assert relay.stop() == 0
    assert integrity(database) == "ok"
    assert integrity(relay.state / "journal.sqlite3") == "ok"


# -- signals ------------------------------------------------------------------------------------


def test_sighup_keeps_calls_and_changes_the_log_level(
    relays: list[Relay], tmp_path: Path
) -> None:
    database = tmp_path / "sessions.sqlite3"
    relay = make_relay(relays, tmp_path / "relay", f"sqlite://{database}")
    relay.start()
    assert relay.process is not None
    with relay.client() as client:
        call(client, "held")
        text = relay.config.read_text().replace('level = "info"', 'level = "debug"')
        relay.config.write_text(text)
        os.killpg(relay.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "serve.reloaded" not in relay.log():
            assert relay.process.poll() is None, relay.log()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert relay.process.poll() is None
        reply = client.request({"command": "query", "call-id": "held"})
        assert reply[b"result"] == b"ok"
        # Debug lines now appear (a malformed request is logged at debug).
        client.send(b"x1", {"nocommand": "x"})
        client.receive()
        # Deleted with the default 30 s grace period, then the relay stops within it: the
        # call says "deleting" meanwhile, and is recorded as deleted (not shutdown).
        delete(client, "held", None)
        reply = client.request({"command": "query", "call-id": "held"})
        tags = reply[b"tags"]
        assert isinstance(tags, dict)
        states = {media[b"state"] for tag in tags.values() for media in tag[b"medias"]}  # type: ignore[index, union-attr]
        assert states == {b"deleting"}
    assert relay.stop() == 0
    log = relay.log()
    assert "log: info/kv -> debug/kv" in log
    assert "relay.ng_rejected" in log or "level=debug" in log
    assert sqlite_rows(database, "SELECT call_id, reason FROM sessions") == [("held", "deleted")]


def test_sigusr1_drains_and_exits_after_the_last_call(
    relays: list[Relay], tmp_path: Path
) -> None:
    database = tmp_path / "sessions.sqlite3"
    relay = make_relay(relays, tmp_path / "relay", f"sqlite://{database}")
    relay.start()
    assert relay.process is not None
    with relay.client() as client:
        call(client, "last")
        os.killpg(relay.process.pid, signal.SIGUSR1)
        time.sleep(0.3)
        with pytest.raises(NgError, match="draining"):
            client.request(
                {"command": "offer", "call-id": "late", "from-tag": "a", "sdp": sdp(4000)}
            )
        with pytest.raises(subprocess.TimeoutExpired):
            relay.process.wait(0.5)  # the call is still up
        reply = client.request({"command": "query", "call-id": "last"})
        assert reply[b"result"] == b"ok"
        delete(client, "last")
    assert relay.process.wait(10) == 0
    assert sqlite_rows(database, "SELECT call_id, reason FROM sessions") == [("last", "deleted")]
