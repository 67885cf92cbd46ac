"""The HTTP listener in-process: /metrics, /api/..., the event stream, the CSRF/rebinding guard,
and the relay's command and latch logs, with a real relay, a real TURN server and real sockets."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tests.unit.relay.test_service import HOST, NgClient, Phone, config, rtp, sdp_for

from icerelay.aio.turn_client import TurnClient
from icerelay.daemon.compose import build_services
from icerelay.daemon.config import HttpConfig, load_config
from icerelay.daemon.http import REQUEST_HEADER, HttpService
from icerelay.daemon.relay_service import RelayService
from icerelay.daemon.turn_config import TurnServerConfig
from icerelay.daemon.turn_service import TurnService
from icerelay.sdp import SessionDescription
from icerelay.stun import Address

WRITE = {REQUEST_HEADER: "1"}


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


@asynccontextmanager
async def daemon(*services: Any) -> AsyncIterator[tuple[HttpService, aiohttp.ClientSession]]:
    http = HttpService(HttpConfig(listen=(HOST, 0), update_interval=0.1))  # type: ignore[arg-type]
    http.attach([*services, http])
    for service in services:
        await service.start()
    await http.start()
    try:
        async with aiohttp.ClientSession(http.url) as client:
            yield http, client
    finally:
        await http.stop()
        for service in reversed(services):
            await service.stop()


async def offer_answer(service: RelayService, call_id: str) -> tuple[Phone, Phone, int, int]:
    """A call alice -> bob through the relay; returns the phones and the relay ports."""
    alice, bob = Phone(), Phone()
    client = NgClient(service.ng_address)
    reply = await client.request(
        {"command": "offer", "call-id": call_id, "from-tag": "alice", "sdp": sdp_for(alice.port)}
    )
    assert reply[b"result"] == b"ok", reply
    bob_sends_to = SessionDescription.parse(reply[b"sdp"]).media[0].port  # type: ignore[arg-type]
    reply = await client.request(
        {
            "command": "answer", "call-id": call_id, "from-tag": "alice", "to-tag": "bob",
            "sdp": sdp_for(bob.port),
        }
    )  # fmt: skip
    assert reply[b"result"] == b"ok", reply
    alice_sends_to = SessionDescription.parse(reply[b"sdp"]).media[0].port  # type: ignore[arg-type]
    return alice, bob, alice_sends_to, bob_sends_to


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics:\n{text}")


def test_config_http_listen_default_and_off() -> None:
    assert str(load_config(environ={}).http.listen) == "127.0.0.1:9470"
    assert load_config(environ={}, overrides={"http": {"listen": ""}}).http.listen is None
    env = load_config(environ={"ICERELAY_HTTP__LISTEN": "[::1]:9999"}).http.listen
    assert env is not None and (env.host, env.port) == ("::1", 9999)
    assert load_config(environ={}, overrides={"http": {"listen": "127.0.0.1"}}).http.listen == (
        "127.0.0.1", 9470
    )  # fmt: skip
    services = build_services(
        load_config(environ={}, overrides={"http": {"listen": ""}, "stun": {"enabled": False}})
    )
    assert [s.name for s in services] == ["relay"]
    services = build_services(load_config(environ={}, overrides={"stun": {"enabled": False}}))
    assert [s.name for s in services] == ["relay", "http"]
    http = services[-1]
    assert isinstance(http, HttpService) and http.services == [services[0]]


def test_sessions_metrics_and_delete_through_http(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="icerelay")

    async def main() -> None:
        relay = RelayService(config())
        async with daemon(relay) as (_http, client):
            alice, bob, alice_to, bob_to = await offer_answer(relay, "web-1@test")
            for seq in range(5):
                alice.sock.sendto(rtp(seq), (HOST, alice_to))
                await bob.receive()
            bob.sock.sendto(rtp(1), (HOST, bob_to))
            await alice.receive()
            relay.ops.watch_latches()

            async with client.get("/api/sessions") as response:
                assert response.status == 200
                sessions = (await response.json())["sessions"]
            assert [s["call_id"] for s in sessions] == ["web-1@test"]
            stream = sessions[0]["streams"][0]
            assert sessions[0]["state"] == "answered" and sessions[0]["to_tag"] == "bob"
            assert stream["caller"]["packets"] == 5 and stream["callee"]["packets"] == 1
            assert stream["caller"]["latched_rtp"] == f"{HOST}:{alice.port}"
            assert stream["ice"]["state"] == "none" and stream["ice"]["step_aside"] is False

            async with client.get("/api/sessions/web-1@test") as response:
                assert response.status == 200
                assert (await response.json())["sessions"][0]["from_tag"] == "alice"
            async with client.get("/api/sessions/nope") as response:
                assert response.status == 404

            # A made-up command name is counted as "unknown", never as a label of its own.
            await NgClient(relay.ng_address).raw(b"evil1 d7:command12:x-evil-labele")
            async with client.get("/metrics") as response:
                assert response.status == 200
                text = await response.text()
            assert metric(text, "icerelay_relay_sessions") == 1
            assert metric(text, "icerelay_relay_packets_total") == 6
            assert 'icerelay_ng_commands_total{command="offer"} 1.0' in text
            assert 'icerelay_ng_commands_total{command="unknown"} 1.0' in text
            assert "x-evil-label" not in text
            assert 'icerelay_relay_streams{state="relaying"} 1.0' in text
            assert 'icerelay_relay_ice_decisions_total{decision="stepped_aside"} 0.0' in text
            assert "icerelay_accounting_journal_depth 0.0" in text
            assert "icerelay_process_resident_memory_bytes" in text

            async with client.get("/api/statistics") as response:
                statistics = await response.json()
            assert statistics["relay"]["sessions"] == 1
            assert statistics["relay"]["relayed"]["packets"] == 6

            # Deleting needs the request header (a cross-site form cannot add it).
            async with client.delete("/api/sessions/web-1@test") as response:
                assert response.status == 403
            async with client.delete("/api/sessions/web-1@test", headers=WRITE) as response:
                assert response.status == 200
                assert (await response.json())["deleted"] == 1
            async with client.delete("/api/sessions/web-1@test", headers=WRITE) as response:
                assert response.status == 404
            async with client.get("/api/sessions") as response:
                assert (await response.json())["sessions"] == []
            async with client.get("/metrics") as response:
                text = await response.text()
            # Totals survive the forwarding's removal.
            assert metric(text, "icerelay_relay_packets_total") == 6
            assert 'icerelay_relay_sessions_ended_total{reason="deleted"} 1.0' in text

    run(main)
    events = [(r.getMessage(), getattr(r, "command", None)) for r in caplog.records]
    assert ("relay.command", "offer") in events and ("relay.command", "answer") in events
    command = next(r for r in caplog.records if r.getMessage() == "relay.command")
    assert command.call_id == "web-1@test" and command.outcome == "ok"  # type: ignore[attr-defined]
    assert command.ms >= 0  # type: ignore[attr-defined]
    latched = [r for r in caplog.records if r.getMessage() == "relay.latched"]
    assert {r.side for r in latched} == {"caller", "callee"}  # type: ignore[attr-defined]
    assert any(r.getMessage() == "relay.call_deleted" for r in caplog.records)


def test_debug_logs_carry_the_sdps(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="icerelay")

    async def main() -> None:
        relay = RelayService(config())
        await relay.start()
        try:
            await offer_answer(relay, "sdp-log@test")
        finally:
            await relay.stop()

    run(main)
    sdps = [r for r in caplog.records if r.getMessage() == "relay.command_sdp"]
    assert sdps and "m=audio" in sdps[0].sdp_in and "m=audio" in sdps[0].sdp_out  # type: ignore[attr-defined]


def test_guard_refuses_foreign_host_and_unmarked_writes() -> None:
    """DNS rebinding (a hostile name resolving to 127.0.0.1) and cross-site POSTs are refused."""

    async def main() -> None:
        relay = RelayService(config())
        async with daemon(relay) as (http, client):
            async with client.get("/api/sessions", headers={"Host": "evil.example:9470"}) as r:
                assert r.status == 421
            async with client.get("/api/sessions", headers={"Host": "localhost:1"}) as r:
                assert r.status == 200
            async with client.post("/api/drain", data="x", headers={"Origin": "http://evil"}) as r:
                assert r.status == 403
            assert http.control is not None and not http.control.draining
            async with client.post("/api/reload", headers=WRITE) as r:
                # The fallback control has no reload: the composed daemon provides it.
                assert r.status == 501
            async with client.post("/api/drain", headers=WRITE) as r:
                assert r.status == 200
            assert http.control.draining

    run(main)


def test_event_stream_and_static_page() -> None:
    async def main() -> None:
        relay = RelayService(config())
        async with daemon(relay) as (http, client):
            await offer_answer(relay, "sse@test")
            async with client.get("/") as response:
                page = await response.text()
                assert response.status == 200 and "/static/app.js" in page
                # Nothing fetched from outside: no absolute URL in the page or its files.
                assert "//" not in page.replace("<!doctype", "")
            for name in ("app.js", "app.css"):
                async with client.get(f"/static/{name}") as response:
                    assert response.status == 200
                    assert "http:" not in await response.text()
            async with client.get("/static/../http.py") as response:
                assert response.status == 404
            async with client.get("/api/events") as response:
                assert response.headers["Content-Type"].startswith("text/event-stream")
                data = None
                async for line in response.content:
                    if line.startswith(b"data: "):
                        data = json.loads(line[6:])
                        break
            assert data is not None
            assert [s["call_id"] for s in data["sessions"]] == ["sse@test"]
            # Event streams are capped: a client opening them in a loop gets 503 past the cap.
            http.max_event_streams = 1
            async with client.get("/api/events") as first:
                await first.content.readline()
                async with client.get("/api/events") as second:
                    assert second.status == 503
            # A closed page frees its place once the server's next write finds it gone.
            for _ in range(50):
                async with client.get("/api/events") as again:
                    if again.status == 200:
                        break
                await asyncio.sleep(0.05)
            assert again.status == 200

    run(main)


def test_turn_allocations_view_and_metrics(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="icerelay")

    async def main() -> None:
        turn = TurnService(
            TurnServerConfig(
                enabled=True, listen=[(HOST, 0)], transports=["udp"],  # type: ignore[list-item]
                users={"alice": "wonderland"}, allow_peers=["127.0.0.0/8"],
            )
        )
        async with daemon(turn) as (_http, client):
            server = Address(*turn.listen_udp[0])
            async with await TurnClient.connect(server, "alice", "wonderland") as allocation:
                await allocation.create_permission([Address(HOST, 9)])
                async with client.get("/api/turn/allocations") as response:
                    allocations = (await response.json())["allocations"]
                assert len(allocations) == 1
                assert allocations[0]["username"] == "alice"
                assert allocations[0]["permissions"] == [HOST]
                assert allocations[0]["relayed"] == [str(allocation.relayed_address)]
                async with client.get("/metrics") as response:
                    text = await response.text()
                assert metric(text, "icerelay_turn_allocations") == 1
                assert metric(text, "icerelay_turn_permissions") == 1
                assert metric(text, "icerelay_turn_offloaded_packets_total") == 0
                assert 'icerelay_turn_events_total{event="allocations_created"} 1.0' in text
            async with client.get("/api/statistics") as response:
                assert (await response.json())["turn"]["allocations_created"] == 1

    run(main)
    # TURN logs like everything else: an event name and fields, no prose, no Python None.
    from icerelay.daemon.logs import KeyValueFormatter, record_fields

    turn = [r for r in caplog.records if r.name.startswith("icerelay.turn")]
    assert {r.getMessage() for r in turn} >= {
        "turn.started", "turn.allocation_created", "turn.allocation_deleted", "turn.stopping"
    }  # fmt: skip
    for record in turn:
        assert re.fullmatch(r"turn\.[a-z_]+", record.getMessage()), record.getMessage()
        assert None not in record_fields(record).values(), record_fields(record)
        assert "None" not in KeyValueFormatter().format(record)


def test_http_port_clash_names_the_socket() -> None:
    async def main() -> None:
        first = HttpService(HttpConfig(listen=(HOST, 0)))  # type: ignore[arg-type]
        await first.start()
        try:
            second = HttpService(HttpConfig(listen=(HOST, first.address.port)))  # type: ignore[arg-type]
            with pytest.raises(OSError, match=f"HTTP tcp on {HOST}:{first.address.port}"):
                await second.start()
        finally:
            await first.stop()

    run(main)


def ice_sdp(port: int, ufrag: str, pwd: str) -> bytes:
    return (
        f"v=0\r\no=- 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
        f"a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n"
        f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        f"a=candidate:1 1 UDP 2130706431 {HOST} {port} typ host\r\n"
    ).encode()


def test_step_aside_is_logged_counted_and_shown(caplog: pytest.LogCaptureFixture) -> None:
    """ICE checks cross the relay, then silence: the relay steps aside, says so once in the log,
    counts it for /metrics and shows the time on the stream."""
    from icerelay.stun import AttributeType, Message, MessageClass, Method

    caplog.set_level(logging.INFO, logger="icerelay")

    async def main() -> None:
        relay = RelayService(config(media_timeout=0.3))
        async with daemon(relay) as (http, client):
            alice, bob = Phone(), Phone()
            ng = NgClient(relay.ng_address)
            reply = await ng.request(
                {
                    "command": "offer", "call-id": "aside@test", "from-tag": "alice",
                    "sdp": ice_sdp(alice.port, "aliceufrag", "alicepassword0123456789"),
                }
            )  # fmt: skip
            assert reply[b"result"] == b"ok", reply
            reply = await ng.request(
                {
                    "command": "answer", "call-id": "aside@test", "from-tag": "alice",
                    "to-tag": "bob",
                    "sdp": ice_sdp(bob.port, "bobufrag", "bobpassword0123456789xx"),
                }
            )  # fmt: skip
            assert reply[b"result"] == b"ok", reply
            alice_to = SessionDescription.parse(reply[b"sdp"]).media[0].port  # type: ignore[arg-type]
            # A real connectivity check from alice to bob through the relay (RFC 8445 §7.1.2).
            check = Message(Method.BINDING, MessageClass.REQUEST, b"\x01" * 12)
            check.add(AttributeType.USERNAME, "bobufrag:aliceufrag")
            check.add(AttributeType.PRIORITY, 1853817087)
            check.add(AttributeType.ICE_CONTROLLING, 1)
            data = check.encode(integrity_key=b"bobpassword0123456789xx", fingerprint=True)
            alice.sock.sendto(data, (HOST, alice_to))
            await bob.receive()
            for _ in range(40):
                await asyncio.sleep(0.1)
                if relay.ops.ice_decisions["stepped_aside"]:
                    break
            assert relay.ops.ice_decisions["stepped_aside"] == 1
            async with client.get("/metrics") as response:
                text = await response.text()
            assert 'icerelay_relay_ice_decisions_total{decision="stepped_aside"} 1.0' in text
            sessions = http.sessions()
            if sessions:  # the session may stay (other streams) or end with its last stream
                ice = sessions[0]["streams"][0]["ice"]
                assert ice["step_aside"] and ice["step_aside_time"] is not None

    run(main)
    asides = [r for r in caplog.records if r.getMessage() == "relay.stepped_aside"]
    assert len(asides) == 1 and asides[0].call_id == "aside@test"  # type: ignore[attr-defined]


def test_mediaproxy_commands_are_logged(
    caplog: pytest.LogCaptureFixture, tmp_path: pytest.TempPathFactory
) -> None:
    from tests.unit.control.test_mediaproxy import update

    caplog.set_level(logging.INFO, logger="icerelay")
    path = f"{tmp_path}/dispatcher.sock"

    async def main() -> None:
        relay = RelayService(config(mediaproxy_socket=path))
        await relay.start()
        try:
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(update(media=f"audio:{HOST}:5000:sendrecv:ice=no", signaling_ip=HOST))
            writer.write(b"\r\n")
            await writer.drain()
            assert await asyncio.wait_for(reader.readline(), 5)
            writer.close()
        finally:
            await relay.stop()

    run(main)
    lines = [r for r in caplog.records if r.getMessage() == "relay.command"]
    assert [(r.protocol, r.command, r.call_id, r.outcome) for r in lines] == [  # type: ignore[attr-defined]
        ("mediaproxy", "update", "9f3b@192.0.2.10", "ok")
    ]


def test_refusals_and_refused_handovers_are_exported_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Per-reason refusals (latching's ``LegCounters.refusals``) reach /metrics, and a refused
    handover is logged once per increase and counted as an ICE decision."""
    import dataclasses

    from icerelay.dataplane.userspace import UserspaceDataPlane
    from icerelay.relay.forwarding import ForwardingCounters

    refusals = {"handover-refused": 0, "not-media": 3}

    class Plane(UserspaceDataPlane):
        def counters(self, key: str) -> ForwardingCounters | None:
            real = super().counters(key)
            if real is None:
                return None
            # The caller's leg refused what the latching policy would count.
            return ForwardingCounters(dataclasses.replace(real.a, refusals=dict(refusals)), real.b)

    caplog.set_level(logging.INFO, logger="icerelay")

    async def main() -> None:
        relay = RelayService(config(), dataplane=Plane())
        async with daemon(relay) as (_http, client):
            await offer_answer(relay, "refused@test")
            relay.ops.watch_latches()
            refusals["handover-refused"] = 2
            relay.ops.watch_latches()
            relay.ops.watch_latches()
            assert relay.ops.ice_decisions["handover_refused"] == 2
            async with client.get("/metrics") as response:
                text = await response.text()
            assert 'icerelay_relay_refusals_total{reason="not-media"} 3.0' in text
            assert 'icerelay_relay_refusals_total{reason="handover-refused"} 2.0' in text
            assert 'icerelay_relay_ice_decisions_total{decision="handover_refused"} 2.0' in text

    run(main)
    refused = [r for r in caplog.records if r.getMessage() == "relay.handover_refused"]
    assert len(refused) == 1 and refused[0].refused == 2  # type: ignore[attr-defined]


def test_accounting_journal_depth_is_read_from_the_journal(tmp_path: Path) -> None:
    """The gauge reads the durable journal at scrape time: records committed while the
    accounting target is absent wait there, and the gauge counts them."""
    from prometheus_client import generate_latest
    from tests.unit.relay.test_accounting import record

    from icerelay.daemon.accounting import Accounting
    from icerelay.daemon.journal import Journal
    from icerelay.daemon.metrics import new_registry

    relay = RelayService(config())
    journal = Journal(tmp_path)
    accounting = Accounting(journal, None)
    try:
        journal.commit([record(f"call-{n}") for n in range(4)])
        relay.records.accounting = accounting
        text = generate_latest(new_registry(lambda: [relay])).decode()
        assert metric(text, "icerelay_accounting_journal_depth") == 4
        assert metric(text, "icerelay_accounting_records_written_total") == 0
    finally:
        relay.records.accounting = None
        accounting.close()


def test_open_pages_share_one_snapshot_per_interval() -> None:
    """Ten pages open at once cost one snapshot, not ten (the snapshot walks every session)."""

    async def main() -> None:
        http = HttpService(HttpConfig(listen=(HOST, 0), update_interval=2.0))  # type: ignore[arg-type]
        relay = RelayService(config())
        http.attach([relay, http])
        await relay.start()
        await http.start()
        calls = 0
        snapshot = http.snapshot

        def counted() -> dict[str, Any]:
            nonlocal calls
            calls += 1
            return snapshot()

        http.snapshot = counted  # type: ignore[method-assign]
        try:
            async with aiohttp.ClientSession(http.url) as client:
                responses = [await client.get("/api/events") for _ in range(10)]
                for response in responses:
                    async for line in response.content:
                        if line.startswith(b"data: "):
                            break
                    response.close()
            assert calls == 1
        finally:
            await http.stop()
            await relay.stop()

    run(main)
