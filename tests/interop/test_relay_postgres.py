"""Relay accounting in a real PostgreSQL server (a throwaway cluster the test creates).

Checks the schema and values, that records survive the server going away for a while (the batch
is kept and written once it is back), and that the relay service writes to it by URL.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from icerelay.daemon.accounting import Accounting, PostgresTarget, open_target
from icerelay.daemon.journal import Journal
from icerelay.relay.sessions import (
    SessionRecord,
    StreamEndReason,
    StreamRecord,
    TerminationReason,
)
from icerelay.stun import Address
from tests.support.ports import free_ports
from tests.support.postgres import Cluster, postgres_cluster

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (the 'postgres' extra)")

pytestmark = pytest.mark.interop

@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with postgres_cluster() as server:
        yield server


def record(call_id: str) -> SessionRecord:
    return SessionRecord(
        record_id=f"boot-{call_id}",
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
    store = open_target(cluster.url)
    assert isinstance(store, PostgresTarget)
    assert store.insert([record(f"pg{index}") for index in range(20)]) == 20
    assert store.location.startswith("postgresql://postgres@")
    # Delivered again (a crash between the two commits): stored once.
    assert store.insert([record("pg3"), record("pg20")]) == 1
    store.disconnect()
    with psycopg.connect(cluster.url) as connection:
        (count,) = connection.execute("SELECT count(*) FROM sessions").fetchone()
        assert count == 21
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


def test_records_survive_the_server_going_away(cluster: Cluster, tmp_path: Path) -> None:
    accounting = Accounting(Journal(tmp_path), PostgresTarget(cluster.url))

    def commit(call_id: str) -> None:
        accounting.journal.commit([record(call_id)])
        accounting.wake()

    commit("before")
    deadline = time.monotonic() + 5
    while accounting.delivered < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    cluster.stop()
    commit("during")  # the server is down: kept in the journal, not lost
    deadline = time.monotonic() + 5
    while accounting.failures < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    cluster.start()
    commit("after")
    deadline = time.monotonic() + 40
    while accounting.delivered < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    accounting.close()
    with psycopg.connect(cluster.url) as connection:
        rows = connection.execute("SELECT call_id FROM sessions ORDER BY id").fetchall()
    assert [row[0] for row in rows] == ["before", "during", "after"]
    assert accounting.failures >= 1


def test_the_relay_service_writes_by_url(cluster: Cluster, tmp_path: Path) -> None:
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
            state_dir=str(tmp_path / "state"),
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
