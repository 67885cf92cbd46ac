"""The relay service end to end on loopback: ng over UDP and TCP, media through the relay."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from tests.support.ports import free_ports

from icerelay import bencode
from icerelay.daemon.relay_config import RelayServiceConfig
from icerelay.daemon.relay_service import RelayService
from icerelay.relay.sessions import SessionRecord, TerminationReason
from icerelay.sdp import SessionDescription
from icerelay.stun import Address

HOST = "127.0.0.1"


def sdp_for(port: int, version: int = 1) -> bytes:
    return (
        f"v=0\r\no=- 1 {version} IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
    ).encode()


def rtp(seq: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 8, seq, seq * 160, 0x99) + b"\xd5" * 160


def config(**overrides: object) -> RelayServiceConfig:
    # A block of ports nobody holds right now (other test suites bind ports in 10000-29999 too).
    start = free_ports(201, kinds=("udp",), consecutive=True)[0]
    start += start & 1
    settings: dict[str, object] = {
        "ng_listen": (HOST, 0),
        "port_min": start,
        "port_max": start + 199,
        # Not the system-wide default paths: tests must not touch /run or /var/lib.
        "mediaproxy_socket": "",
        "accounting": "",
    }
    settings.update(overrides)
    return RelayServiceConfig(**settings)  # type: ignore[arg-type]


class NgClient:
    """A tiny ng client over UDP, as a proxy's rtpengine module would be."""

    def __init__(self, server: Address) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.count = 0

    async def raw(self, message: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        await loop.sock_sendto(self.sock, message, (self.server.host, self.server.port))
        data, _ = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 65536), 2.0)
        return data

    async def request(
        self, body: dict[str, bencode.Encodable]
    ) -> dict[bytes, bencode.BencodeValue]:
        self.count += 1
        cookie = b"%d_test" % self.count
        data = await self.raw(cookie + b" " + bencode.encode(body))
        got_cookie, _, payload = data.partition(b" ")
        assert got_cookie == cookie
        reply = bencode.decode(payload)
        assert isinstance(reply, dict)
        return reply


class Phone:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    async def receive(self) -> tuple[bytes, tuple[str, int]]:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.sock_recvfrom(self.sock, 2048), 2.0)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 20))


def test_call_through_the_relay() -> None:
    async def main() -> None:
        records: list[SessionRecord] = []
        service = RelayService(config(), records=records.append)
        await service.start()
        alice, bob = Phone(), Phone()
        client = NgClient(service.ng_address)
        try:
            assert await client.request({"command": "ping"}) == {b"result": b"pong"}
            offer_body: dict[str, bencode.Encodable] = {
                "command": "offer",
                "call-id": "c1@test",
                "from-tag": "alice",
                "sdp": sdp_for(alice.port),
                "replace": ["origin", "session-connection"],
                "received-from": ["IP4", HOST],
                "flags": ["trust-address"],
            }
            first = await client.raw(b"77_1 " + bencode.encode(offer_body))
            assert await client.raw(b"77_1 " + bencode.encode(offer_body)) == first
            reply = bencode.decode(first.partition(b" ")[2])
            assert isinstance(reply, dict) and reply[b"result"] == b"ok", reply
            sdp_to_bob = SessionDescription.parse(reply[b"sdp"])  # type: ignore[arg-type]
            bob_sends_to = sdp_to_bob.media[0].port

            # The answer goes over TCP, length-prefixed.
            reader, writer = await asyncio.open_connection(*service.ng_address_tuple())
            answer = bencode.encode(
                {
                    "command": "answer",
                    "call-id": "c1@test",
                    "from-tag": "alice",
                    "to-tag": "bob",
                    "sdp": sdp_for(bob.port),
                }
            )
            message = b"9_tcp " + answer
            writer.write(b"%d:%s" % (len(message), message))
            await writer.drain()
            header = await reader.readuntil(b":")
            payload = await reader.readexactly(int(header[:-1]))
            writer.close()
            cookie, _, body = payload.partition(b" ")
            assert cookie == b"9_tcp"
            reply = bencode.decode(body)
            assert isinstance(reply, dict) and reply[b"result"] == b"ok", reply
            alice_sends_to = SessionDescription.parse(reply[b"sdp"]).media[0].port  # type: ignore[arg-type]

            loop = asyncio.get_running_loop()
            for seq in range(3):
                await loop.sock_sendto(alice.sock, rtp(seq), (HOST, alice_sends_to))
                data, source = await bob.receive()
                assert data == rtp(seq) and source == (HOST, bob_sends_to)
            await loop.sock_sendto(bob.sock, rtp(100), (HOST, bob_sends_to))
            data, source = await alice.receive()
            assert data == rtp(100) and source == (HOST, alice_sends_to)

            query = await client.request({"command": "query", "call-id": "c1@test"})
            # Unix times, as rtpengine reports them (monitoring computes call ages from them).
            created = query[b"created"]
            assert isinstance(created, int) and abs(created - time.time()) < 60
            totals = query[b"totals"]
            assert isinstance(totals, dict)
            assert totals[b"RTP"] == {b"packets": 4, b"bytes": 4 * 172, b"errors": 0}
            listing = await client.request({"command": "list"})
            assert listing == {b"result": b"ok", b"calls": [b"c1@test"]}
            stats = await client.request({"command": "statistics"})
            statistics = stats[b"statistics"]
            assert isinstance(statistics, dict)
            current = statistics[b"currentstatistics"]
            assert isinstance(current, dict)
            assert current[b"sessionsown"] == 1 and current[b"streams"] == 1
            own = statistics[b"service"]
            assert isinstance(own, dict) and own[b"forwardings_failed"] == 0

            deleted = await client.request(
                {"command": "delete", "call-id": "c1@test", "from-tag": "alice", "delete delay": 0}
            )
            assert deleted[b"result"] == b"ok"
            (record,) = records
            assert record.reason is TerminationReason.DELETED
            assert record.created > 1_000_000_000  # wall-clock time
            (stream,) = record.streams
            assert (stream.packets_from_caller, stream.packets_from_callee) == (3, 1)
            assert stream.caller_latched == Address(HOST, alice.port)
            missing = await client.request({"command": "query", "call-id": "c1@test"})
            assert missing[b"result"] == b"error"
            assert b"unknown call" in missing[b"error-reason"]  # type: ignore[operator]
        finally:
            await service.stop()
            alice.sock.close()
            bob.sock.close()
            client.sock.close()

    run(main)


def test_media_timeout_ends_the_call() -> None:
    async def main() -> None:
        records: list[SessionRecord] = []
        service = RelayService(config(media_timeout=0.3), records=records.append)
        await service.start()
        client = NgClient(service.ng_address)
        try:
            for command, extra in (("offer", {}), ("answer", {"to-tag": "b"})):
                reply = await client.request(
                    {
                        "command": command,
                        "call-id": "t",
                        "from-tag": "a",
                        "sdp": sdp_for(4000),
                        **extra,
                    }
                )
                assert reply[b"result"] == b"ok"
            for _ in range(50):
                if records:
                    break
                await asyncio.sleep(0.05)
            (record,) = records
            assert record.reason is TerminationReason.NO_MEDIA
            # No media at all: the call ended with its answer (the timeout is not talk time).
            assert record.duration == 0.0
            assert record.ended == record.answered
            assert service.pool.in_use == 0
        finally:
            await service.stop()
            client.sock.close()

    run(main)


def test_stop_ends_sessions_and_errors_are_answered() -> None:
    async def main() -> None:
        records: list[SessionRecord] = []
        service = RelayService(config(), records=records.append)
        await service.start()
        client = NgClient(service.ng_address)
        try:
            reply = await client.request({"command": "answer", "call-id": "x", "from-tag": "a"})
            assert reply[b"result"] == b"error"
            reply = await client.request(
                {"command": "offer", "call-id": "x", "from-tag": "a", "sdp": sdp_for(4000)}
            )
            assert reply[b"result"] == b"ok"
        finally:
            await service.stop()
            client.sock.close()
        (record,) = records
        assert record.reason is TerminationReason.SHUTDOWN
        assert service.pool.in_use == 0

    run(main)


def test_mediaproxy_over_the_unix_socket(tmp_path: Path) -> None:
    async def main() -> None:
        path = tmp_path / "mediaproxy" / "dispatcher.sock"
        path.parent.mkdir()
        path.touch()  # not a socket: must not be mistaken for a stale one
        path.unlink()
        records: list[SessionRecord] = []
        service = RelayService(config(mediaproxy_socket=str(path)), records=records.append)
        await service.start()
        alice, bob = Phone(), Phone()
        try:
            assert path.is_socket()
            reader, writer = await asyncio.open_unix_connection(str(path))

            async def command(text: str) -> bytes:
                writer.write(text.replace("\n", "\r\n").encode() + b"\r\n")
                await writer.drain()
                return await asyncio.wait_for(reader.readuntil(b"\r\n"), 2.0)

            common = (
                "call_id: mp1\nfrom_tag: a\nfrom_uri: alice@example.com\nto_uri: bob@example.com\n"
            )
            offer = await command(
                f"update\ntype: request\n{common}to_tag: \n"
                f"media: audio:{HOST}:{alice.port}:sendrecv:ice=no\nsignaling_ip: {HOST}\n"
            )
            relay_ip, bob_sends_to = offer.decode().split()
            assert relay_ip == HOST
            answer = await command(
                f"update\ntype: reply\n{common}to_tag: b\nuser_agent: bob-phone\n"
                f"media: audio:{HOST}:{bob.port}:sendrecv\n"
            )
            _, alice_sends_to = answer.decode().split()
            loop = asyncio.get_running_loop()
            await loop.sock_sendto(alice.sock, rtp(1), (HOST, int(alice_sends_to)))
            data, source = await bob.receive()
            assert data == rtp(1) and source == (HOST, int(bob_sends_to))
            assert await command("remove\ncall_id: mp1\nfrom_tag: a\nto_tag: b\n") == b"removed\r\n"
            assert await command("bogus\n") == b"error\r\n"
            writer.close()
        finally:
            await service.stop()
            alice.sock.close()
            bob.sock.close()
        assert not path.exists()
        (record,) = records
        assert record.callee_user_agent == "bob-phone"
        assert dict(record.metadata)["from_uri"] == "alice@example.com"
        assert record.streams[0].packets_from_caller == 1

    run(main)


def test_mediaproxy_socket_without_rights_is_skipped(tmp_path: Path) -> None:
    async def main() -> None:
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        service = RelayService(config(mediaproxy_socket=str(blocker / "dispatcher.sock")))
        await service.start()  # logs a warning, serves ng anyway
        try:
            client = NgClient(service.ng_address)
            assert await client.request({"command": "ping"}) == {b"result": b"pong"}
            client.sock.close()
        finally:
            await service.stop()

    run(main)


def test_records_are_stored_in_sqlite(tmp_path: Path) -> None:
    database = tmp_path / "db" / "sessions.sqlite3"

    async def main() -> None:
        service = RelayService(config(accounting=f"sqlite://{database}"))
        await service.start()
        client = NgClient(service.ng_address)
        try:
            for index in range(3):
                for command, extra in (("offer", {}), ("answer", {"to-tag": "b"})):
                    reply = await client.request(
                        {
                            "command": command,
                            "call-id": f"db{index}",
                            "from-tag": "a",
                            "sdp": sdp_for(4000 + 2 * index),
                            **extra,
                        }
                    )
                    assert reply[b"result"] == b"ok"
            await client.request({"command": "delete", "call-id": "db0", "delete delay": 0})
        finally:
            client.sock.close()
            await service.stop()  # the other two end with "shutdown" and must be stored too

    run(main)
    import sqlite3

    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "SELECT call_id, reason, to_tag FROM sessions ORDER BY call_id"
        ).fetchall()
        assert rows == [("db0", "deleted", "b"), ("db1", "shutdown", "b"), ("db2", "shutdown", "b")]
        streams = connection.execute(
            "SELECT media, codec, caller_address, packets_from_caller FROM streams"
            " JOIN sessions ON sessions.id = streams.session_id WHERE call_id = 'db1'"
        ).fetchall()
        assert streams == [("audio", "PCMA", f"{HOST}:4002", 0)]


def test_ports_held_by_another_program_are_avoided() -> None:
    async def main() -> None:
        settings = config()
        # A range of three pairs, one of which another program holds (its RTCP port).
        small = settings.model_copy(update={"port_max": settings.port_min + 5})
        blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        blocker.bind((HOST, small.port_min + 3))
        service = RelayService(small)
        await service.start()
        client = NgClient(service.ng_address)
        try:
            # Two pairs per call: one of the three is taken, so any attempt may hit it; with
            # quarantine the retry cannot, and the call gets the two free pairs.
            for attempt in range(3):
                reply = await client.request(
                    {
                        "command": "offer",
                        "call-id": f"q{attempt}",
                        "from-tag": "a",
                        "sdp": sdp_for(4000),
                    }
                )
                assert reply[b"result"] == b"ok", reply
                await client.request(
                    {"command": "delete", "call-id": f"q{attempt}", "delete delay": 0}
                )
            assert service.pool.in_use in (0, 1)  # the quarantined pair, if it was ever picked
        finally:
            client.sock.close()
            await service.stop()
            blocker.close()
        assert service.pool.in_use == 0

    run(main)


def test_a_bug_costs_one_request_not_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        service = RelayService(config())
        await service.start()
        client = NgClient(service.ng_address)

        def broken(*args: object, **kwargs: object) -> bytes:
            raise ValueError("simulated bug")

        # Stands in for a programming error deep in the engine.
        monkeypatch.setattr(service.engine, "offer", broken)
        try:
            reply = await client.request(
                {"command": "offer", "call-id": "bug", "from-tag": "a", "sdp": sdp_for(4000)}
            )
            assert reply == {b"result": b"error", b"error-reason": b"internal error: ValueError"}
            assert await client.request({"command": "ping"}) == {b"result": b"pong"}
        finally:
            client.sock.close()
            await service.stop()

    run(main)


def test_stop_right_after_a_request_never_hangs() -> None:
    """A stop that lands as the worker wakes the timer must still end every task (this once
    hung on Python 3.11, where asyncio.wait_for can swallow a cancellation)."""

    def blocking_offer(address: tuple[str, int]) -> bytes:
        # uvloop has no loop.sock_sendto: a plain socket in a worker thread does the client.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2)
            body = {"command": "offer", "call-id": "s", "from-tag": "a", "sdp": sdp_for(4000)}
            sock.sendto(b"c " + bencode.encode(body), address)  # type: ignore[arg-type]
            return sock.recv(65536)

    async def main() -> None:
        for _ in range(5):
            service = RelayService(config(ng_tcp=False))
            await service.start()
            try:
                reply = await asyncio.to_thread(blocking_offer, service.ng_address_tuple())
                assert b"result2:ok" in reply
            finally:
                async with asyncio.timeout(1):
                    await service.stop()

    try:
        import uvloop
    except ImportError:  # pragma: no cover - the fast extra is installed for the tests
        run(main)
    else:
        uvloop.run(asyncio.wait_for(main(), 60))


def test_start_failure_leaves_nothing_behind(tmp_path: Path) -> None:
    async def main() -> None:
        blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        blocker.bind((HOST, 0))
        port = blocker.getsockname()[1]
        database = tmp_path / "a.sqlite3"
        service = RelayService(config(ng_listen=(HOST, port), accounting=f"sqlite://{database}"))
        try:
            with pytest.raises(OSError):
                await service.start()
            assert service.accounting is None  # closed again: no writer thread left running
        finally:
            blocker.close()

    run(main)


def test_default_accounting_falls_back_to_the_user_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from icerelay.daemon import relay_records as service_module

    # A default the user may not write (as /var/lib/icerelay is for anyone but root).
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    unwritable = f"sqlite://{blocker}/sessions.sqlite3"
    monkeypatch.setattr(service_module, "DEFAULT_ACCOUNTING", unwritable)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))

    async def main() -> None:
        service = RelayService(config(accounting=unwritable))
        await service.start()
        try:
            assert service.accounting is not None
            assert service.accounting.location == str(
                tmp_path / "state" / "icerelay" / "sessions.sqlite3"
            )
        finally:
            await service.stop()

    run(main)


def test_unsupported_accounting_url_is_a_configuration_error() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="'mysql' is not supported"):
        RelayServiceConfig(accounting="mysql://localhost/x")


def test_a_failed_offer_writes_one_relay_failure_record() -> None:
    records: list[SessionRecord] = []

    async def main() -> None:
        settings = config()
        # Four pairs, three with a port another program holds: a call takes two pairs, so each
        # of the three attempts (the quarantine takes one bad pair out each time) fails.
        small = settings.model_copy(update={"port_max": settings.port_min + 7})
        blockers = []
        for port in (small.port_min + 1, small.port_min + 3, small.port_min + 5):
            blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            blocker.bind((HOST, port))
            blockers.append(blocker)
        service = RelayService(small, records=records.append)
        await service.start()
        client = NgClient(service.ng_address)
        try:
            reply = await client.request(
                {"command": "offer", "call-id": "f", "from-tag": "a", "sdp": sdp_for(4000)}
            )
            assert reply[b"result"] == b"error", reply
        finally:
            client.sock.close()
            await service.stop()
            for blocker in blockers:
                blocker.close()
        assert service.engine.ended_by_reason[TerminationReason.RELAY_FAILURE] == 1

    run(main)
    assert [(r.call_id, r.reason) for r in records] == [("f", TerminationReason.RELAY_FAILURE)]


def test_draining_refuses_new_mediaproxy_calls(tmp_path: Path) -> None:
    records: list[SessionRecord] = []

    async def main() -> None:
        path = tmp_path / "dispatcher.sock"
        # No grace period after "remove": draining waits for it (media still flows then).
        settings = config(mediaproxy_socket=str(path), delete_delay=0)
        service = RelayService(settings, records=records.append)
        await service.start()
        try:
            reader, writer = await asyncio.open_unix_connection(str(path))

            async def command(text: str) -> bytes:
                writer.write(text.replace("\n", "\r\n").encode() + b"\r\n")
                await writer.drain()
                return await asyncio.wait_for(reader.readuntil(b"\r\n"), 2.0)

            def update(call_id: str) -> str:
                return (
                    f"update\ntype: request\ncall_id: {call_id}\nfrom_tag: a\nto_tag: \n"
                    f"media: audio:{HOST}:4000:sendrecv:ice=no\nsignaling_ip: {HOST}\n"
                )

            assert (await command(update("old"))).startswith(HOST.encode())
            service.drain()
            assert await command(update("new")) == b"error\r\n"
            assert service.engine.call_ids() == ["old"]
            assert service.refused_draining == 1
            # The existing call goes on (a re-INVITE is answered) until it is removed.
            assert (await command(update("old"))).startswith(HOST.encode())
            assert not service._drained.is_set()
            assert await command("remove\ncall_id: old\nfrom_tag: a\n") == b"removed\r\n"
            await asyncio.wait_for(service.wait_drained(), 2)
            writer.close()
        finally:
            await service.stop()

    run(main)
    # The refused call leaves no record; the drained one has its own.
    assert [(r.call_id, r.reason) for r in records] == [("old", TerminationReason.DELETED)]
