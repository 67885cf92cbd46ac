"""Relay accounting in a real PostgreSQL server (a throwaway cluster the test creates).

Checks the schema and values, that records survive the server going away for a while (the batch
is kept and written once it is back), and that the relay service writes to it by URL.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from icerelay.daemon.accounting import PostgresAccounting, open_accounting
from icerelay.relay.sessions import (
    SessionRecord,
    StreamEndReason,
    StreamRecord,
    TerminationReason,
)
from icerelay.stun import Address
from tests.support.ports import free_ports

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (the 'postgres' extra)")

pytestmark = pytest.mark.interop

BINDIR = Path("/usr/lib/postgresql/15/bin")


def _binary(name: str) -> str | None:
    candidate = BINDIR / name
    return str(candidate) if candidate.exists() else shutil.which(name)


@dataclass
class Cluster:
    """A running throwaway PostgreSQL server on a UNIX socket."""

    directory: Path
    port: int
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql:///postgres?host={self.directory}&port={self.port}&user=postgres"

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.argv,
            stdout=subprocess.DEVNULL,
            stderr=(self.directory / "server.log").open("ab"),
            start_new_session=True,
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=1):
                    return
            except psycopg.OperationalError:
                assert self.process.poll() is None, (self.directory / "server.log").read_text()
                assert time.monotonic() < deadline, "PostgreSQL did not start"
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # SIGINT: PostgreSQL's "fast" shutdown (clients are disconnected at once).
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self.process = None


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    initdb, postgres = _binary("initdb"), _binary("postgres")
    if initdb is None or postgres is None:
        pytest.skip("PostgreSQL server binaries are not installed (Debian package 'postgresql')")
    as_user: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        # initdb refuses to run as root: the cluster belongs to the postgres user.
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to own the cluster")
        as_user = ["runuser", "-u", "postgres", "--"]
    directory = Path(tempfile.mkdtemp(prefix="icerelay-pg-"))
    try:
        if owner is not None:
            os.chown(directory, owner.pw_uid, owner.pw_gid)
        subprocess.run(
            [*as_user, initdb, "-D", str(directory / "data"), "-A", "trust", "-U", "postgres",
             "--no-sync", "--no-instructions"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        port = free_ports(1, kinds=("tcp",))[0]
        argv = [*as_user, postgres, "-D", str(directory / "data"), "-k", str(directory),
                "-p", str(port), "-c", "listen_addresses=", "-c", "fsync=off"]  # fmt: skip
        server = Cluster(directory, port, argv)
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def record(call_id: str) -> SessionRecord:
    return SessionRecord(
        call_id=call_id,
        from_tag="a",
        to_tag="b",
        via_branch="z9hG4bK1",
        created=1_700_000_000.25,
        answered=1_700_000_001.0,
        ended=1_700_000_031.0,
        reason=TerminationReason.DELETED,
        streams=(
            StreamRecord(
                index=0,
                media="audio",
                codec="opus",
                caller=Address("10.0.0.2", 4000),
                callee=Address("2001:db8::2", 5000),
                caller_latched=Address("198.51.100.1", 61000),
                callee_latched=Address("2001:db8::2", 5000),
                packets_from_caller=1500,
                bytes_from_caller=258000,
                packets_from_callee=1499,
                bytes_from_callee=257828,
                relay_ports=(30000, 30002),
                end_reason=StreamEndReason.ICE_DIRECT,
            ),
        ),
        caller_user_agent="Blink",
        callee_user_agent="Linphone",
        metadata=(("from_uri", "alice@example.com"), ("dialog_id", "7:9")),
    )


def test_records_in_postgres(cluster: Cluster) -> None:
    store = open_accounting(cluster.url)
    assert isinstance(store, PostgresAccounting)
    assert store.location.startswith("postgresql://postgres@")
    for index in range(20):
        store.write(record(f"pg{index}"))
    store.close()
    assert (store.written, store.failed) == (20, 0)
    with psycopg.connect(cluster.url) as connection:
        (count,) = connection.execute("SELECT count(*) FROM sessions").fetchone()
        assert count == 20
        row = connection.execute(
            "SELECT from_uri, caller_user_agent, callee_user_agent, created, duration, reason,"
            " metadata FROM sessions WHERE call_id = 'pg3'"
        ).fetchone()
        assert row == ("alice@example.com", "Blink", "Linphone", 1_700_000_000.25, 30.0,
                       "deleted", '{"dialog_id": "7:9"}')  # fmt: skip
        stream = connection.execute(
            "SELECT codec, caller_address, callee_address, caller_latched, packets_from_callee,"
            " bytes_from_caller, relay_port_callee, end_reason FROM streams JOIN sessions"
            " ON sessions.id = streams.session_id WHERE call_id = 'pg3'"
        ).fetchone()
        assert stream == ("opus", "10.0.0.2:4000", "[2001:db8::2]:5000", "198.51.100.1:61000",
                          1499, 258000, 30002, "ice-direct-path")  # fmt: skip


def test_records_survive_the_server_going_away(cluster: Cluster) -> None:
    store = PostgresAccounting(cluster.url)
    store.write(record("before"))
    deadline = time.monotonic() + 5
    while store.written < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    cluster.stop()
    store.write(record("during"))  # the server is down: kept, not lost
    time.sleep(0.3)
    cluster.start()
    store.write(record("after"))
    store.close()
    with psycopg.connect(cluster.url) as connection:
        rows = connection.execute("SELECT call_id FROM sessions ORDER BY id").fetchall()
    assert [row[0] for row in rows] == ["before", "during", "after"]
    assert store.failed == 0


def test_the_relay_service_writes_by_url(cluster: Cluster) -> None:
    import asyncio
    import socket

    from icerelay import bencode
    from icerelay.daemon.relay_config import RelayServiceConfig
    from icerelay.daemon.relay_service import RelayService

    block = free_ports(21, kinds=("udp",), consecutive=True)
    first = block[0] + (block[0] & 1)
    sdp = (
        b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        b"m=audio 4000 RTP/AVP 0\r\n"
    )

    async def main() -> None:
        config = RelayServiceConfig(
            ng_listen=("127.0.0.1", 0),
            port_min=first,
            port_max=first + 19,
            mediaproxy_socket="",
            accounting=cluster.url,
        )
        service = RelayService(config)
        await service.start()
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            for cookie, body in (
                (b"1", {"command": "offer", "call-id": "svc", "from-tag": "a", "sdp": sdp}),
                (b"2", {"command": "answer", "call-id": "svc", "from-tag": "a", "to-tag": "b",
                        "sdp": sdp}),
            ):  # fmt: skip
                message = cookie + b" " + bencode.encode(body)  # type: ignore[arg-type]
                await loop.sock_sendto(sock, message, service.ng_address_tuple())
                await asyncio.wait_for(loop.sock_recv(sock, 65536), 2)
        await service.stop()  # the call is still up: its record ("shutdown") must be written

    asyncio.run(main())
    with psycopg.connect(cluster.url) as connection:
        rows = connection.execute(
            "SELECT call_id, from_tag, to_tag, reason FROM sessions"
        ).fetchall()
    assert rows == [("svc", "a", "b", "shutdown")]
