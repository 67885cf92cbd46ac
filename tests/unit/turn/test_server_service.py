"""TurnService on real loopback sockets: drain, signals, TCP handling, start-up checks."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from tests.support.ports import free_port

from icerelay.daemon.metrics import new_registry
from icerelay.daemon.turn_config import TurnServerConfig
from icerelay.daemon.turn_service import TurnService
from icerelay.errors import ConfigError
from icerelay.stun import Address, AttributeType, Message, MessageClass, Method, decode_message
from icerelay.stun.credentials import long_term_key

A = AttributeType
USER, PASSWORD, REALM = "alice", "wonderland", "example.org"
KEY = long_term_key(USER, REALM, PASSWORD)


def _config(**overrides: object) -> TurnServerConfig:
    low = random.randrange(20000, 29000, 2)
    settings: dict[str, object] = {
        "listen": [f"127.0.0.1:{free_port()}"],
        "realm": REALM,
        "users": {USER: PASSWORD},
        "relay_port_min": low,
        "relay_port_max": low + 99,
        "allow_peers": ["127.0.0.0/8"],
        # One process: these tests look at the service's own sockets and engine.
        "workers": 1,
    }
    settings.update(overrides)
    return TurnServerConfig.model_validate(settings)


def _exchange(sock: socket.socket, request: Message, nonce: str | None) -> Message:
    """Send *request* (signed when a nonce is known) and return the answer (blocking)."""
    if nonce is not None:
        request.add(A.USERNAME, USER)
        request.add(A.REALM, REALM)
        request.add(A.NONCE, nonce)
        data = request.encode(KEY)
    else:
        data = request.encode()
    sock.send(data)
    return decode_message(sock.recv(4096))


def _allocate_blocking(server: tuple[str, int]) -> tuple[socket.socket, Message, str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(3)
    sock.connect(server)
    challenge = _exchange(
        sock, Message(Method.ALLOCATE, MessageClass.REQUEST, os.urandom(12)), None
    )
    nonce = challenge.get(A.NONCE)
    assert nonce is not None
    request = Message(Method.ALLOCATE, MessageClass.REQUEST, os.urandom(12))
    request.add(A.REQUESTED_TRANSPORT, 17)
    return sock, _exchange(sock, request, nonce), nonce


def _error(message: Message) -> int | None:
    error = message.get(A.ERROR_CODE)
    return None if error is None else error.code


def test_drain_on_sigusr1_refuses_new_allocations_and_ends_with_the_last_one() -> None:
    async def scenario() -> None:
        service = TurnService(_config())
        await service.start()
        try:
            service.add_signal_handlers()
            server = service.listen_udp[0]
            sock, response, nonce = await asyncio.to_thread(_allocate_blocking, server)
            assert _error(response) is None
            relayed = response.get(A.XOR_RELAYED_ADDRESS)
            assert relayed is not None and (relayed.host, relayed.port) in service.udp
            os.kill(os.getpid(), signal.SIGUSR1)
            await asyncio.sleep(0.05)
            assert service.engine.draining
            _, refused, _ = await asyncio.to_thread(_allocate_blocking, server)
            assert _error(refused) == 508
            assert not service._drained.is_set()
            refresh = Message(Method.REFRESH, MessageClass.REQUEST, os.urandom(12))
            refresh.add(A.LIFETIME, 0)
            deleted = await asyncio.to_thread(_exchange, sock, refresh, nonce)
            assert _error(deleted) is None
            await asyncio.wait_for(service.wait_drained(), 2)
            assert (relayed.host, relayed.port) not in service.udp  # socket closed
            sock.close()
        finally:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGUSR1)
            await service.stop()

    asyncio.run(scenario())


def test_binding_on_the_turn_port_and_tcp_close_ends_the_allocation() -> None:
    async def scenario() -> None:
        service = TurnService(_config())
        await service.start()
        try:
            server = service.listen_udp[0]

            def binding() -> Message:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.settimeout(3)
                    sock.connect(server)
                    return _exchange(
                        sock, Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12)), None
                    )

            answer = await asyncio.to_thread(binding)
            assert answer.message_class == MessageClass.SUCCESS_RESPONSE
            assert answer.get(A.XOR_MAPPED_ADDRESS) is not None

            reader, writer = await asyncio.open_connection(*service.listen_tcp[0])
            writer.write(Message(Method.ALLOCATE, MessageClass.REQUEST, os.urandom(12)).encode())
            header = await reader.readexactly(20)
            challenge = decode_message(
                header + await reader.readexactly(header[3] | header[2] << 8)
            )
            request = Message(Method.ALLOCATE, MessageClass.REQUEST, os.urandom(12))
            request.add(A.REQUESTED_TRANSPORT, 17)
            request.add(A.USERNAME, USER)
            request.add(A.REALM, REALM)
            request.add(A.NONCE, challenge.get(A.NONCE))
            writer.write(request.encode(KEY))
            header = await reader.readexactly(20)
            response = decode_message(header + await reader.readexactly(header[3] | header[2] << 8))
            assert _error(response) is None
            assert len(service.engine.allocations) == 1
            writer.close()
            for _ in range(100):
                if not service.engine.allocations:
                    break
                await asyncio.sleep(0.01)
            assert not service.engine.allocations
            assert len(service.udp) == 1  # only the listener is left
        finally:
            await service.stop()

    asyncio.run(scenario())


def test_a_tcp_stream_that_is_not_turn_is_closed() -> None:
    async def scenario() -> None:
        service = TurnService(_config())
        await service.start()
        try:
            reader, writer = await asyncio.open_connection(*service.listen_tcp[0])
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await asyncio.wait_for(reader.read(), 2) == b""
            writer.close()
        finally:
            await service.stop()

    asyncio.run(scenario())


def test_a_taken_relay_port_is_skipped() -> None:
    async def scenario() -> None:
        config = _config()
        low = config.relay_port_min
        config = config.model_copy(update={"relay_port_max": low + 1})
        blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        blocker.bind(("127.0.0.1", low))
        service = TurnService(config)
        await service.start()
        try:
            _, response, _ = await asyncio.to_thread(_allocate_blocking, service.listen_udp[0])
            relayed = response.get(A.XOR_RELAYED_ADDRESS)
            assert relayed is not None and relayed.port == low + 1
        finally:
            blocker.close()
            await service.stop()

    asyncio.run(scenario())


def test_start_refuses_an_ephemeral_overlap_and_missing_credentials(tmp_path: Path) -> None:
    async def scenario(config: TurnServerConfig) -> None:
        service = TurnService(config)
        try:
            await service.start()
        finally:
            await service.stop()

    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range")
    if ephemeral.exists():
        low = int(ephemeral.read_text().split()[0])
        with pytest.raises(ConfigError, match="ephemeral"):
            asyncio.run(scenario(_config(relay_port_min=low, relay_port_max=low + 10)))
    with pytest.raises(ConfigError, match="credentials"):
        asyncio.run(scenario(_config(users={})))
    with pytest.raises(ConfigError, match="relay address"):
        asyncio.run(scenario(_config(listen=["0.0.0.0:0"])))


def test_two_workers_share_the_load_and_drain_together() -> None:
    async def scenario() -> None:
        service = TurnService(_config(workers=2))
        await service.start()
        try:
            assert len(service._workers) == 1
            server = service.listen_udp[0]
            results = await asyncio.gather(
                *(asyncio.to_thread(_allocate_blocking, server) for _ in range(12))
            )
            assert all(_error(response) is None for _, response, _ in results)
            relayed = {
                (r.host, r.port)
                for _, response, _ in results
                if (r := response.get(A.XOR_RELAYED_ADDRESS)) is not None
            }
            assert len(relayed) == 12
            # The kernel spread the clients: this process holds only some of them.
            assert 0 < len(service.engine.allocations) < 12
            # ... but what the operator sees (status, /metrics, the page) covers every worker,
            # once the other worker's next report (every second) has come in.
            for _ in range(40):
                if service.gauges()["allocations"] == 12:
                    break
                await asyncio.sleep(0.1)
            assert service.gauges() == {"allocations": 12, "permissions": 0, "channels": 0}
            assert service.status()["allocations"] == 12
            assert service.status()["allocations_created"] == 12
            views = service.allocations_view()
            assert {tuple(v["relayed"]) for v in views} == {(f"{h}:{p}",) for h, p in relayed}
            assert {v["worker"] for v in views} == {0, 1}
            scrape = generate_latest(new_registry(lambda: [service])).decode()
            assert "\nicerelay_turn_allocations 12.0\n" in scrape
            assert 'icerelay_turn_events_total{event="allocations_created"} 12.0' in scrape
            for sock, _, _ in results:
                sock.close()
            service.drain()
            with pytest.raises(TimeoutError):
                # Allocations are still alive in both workers: not drained yet.
                await asyncio.wait_for(asyncio.shield(service.wait_drained()), 0.3)
        finally:
            await service.stop()
        assert not service._workers

    asyncio.run(scenario())


def test_drain_with_workers_ends_when_every_worker_is_empty() -> None:
    async def scenario() -> None:
        service = TurnService(_config(workers=2))
        await service.start()
        try:
            worker = service._workers[0]
            service.drain()
            await asyncio.wait_for(service.wait_drained(), 10)
            assert worker.returncode == 0
        finally:
            await service.stop()

    asyncio.run(scenario())


def test_daemon_mode_drains_on_sigusr1_and_then_asks_the_process_to_stop() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        terminated = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, terminated.set)
        service = TurnService(_config(), daemon=True)
        await service.start()
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            await asyncio.wait_for(terminated.wait(), 3)
            assert service.engine.draining
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
            await service.stop()

    asyncio.run(scenario())


def test_icmp_port_unreachable_reaches_the_client_in_a_data_indication() -> None:
    async def scenario() -> None:
        service = TurnService(_config())
        await service.start()
        try:
            closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            closed.bind(("127.0.0.1", 0))
            dead_peer = closed.getsockname()
            closed.close()  # nothing listens there: the kernel answers port unreachable

            def exchange() -> Message:
                sock, response, nonce = _allocate_blocking(service.listen_udp[0])
                assert _error(response) is None
                permit = Message(Method.CREATE_PERMISSION, MessageClass.REQUEST, os.urandom(12))
                permit.add(A.XOR_PEER_ADDRESS, Address(*dead_peer))
                assert _error(_exchange(sock, permit, nonce)) is None
                send = Message(Method.SEND, MessageClass.INDICATION, os.urandom(12))
                send.add(A.XOR_PEER_ADDRESS, Address(*dead_peer))
                send.add(A.DATA, b"anyone?")
                sock.send(send.encode())
                indication = decode_message(sock.recv(4096))
                sock.close()
                return indication

            indication = await asyncio.to_thread(exchange)
            assert indication.method == Method.DATA
            assert indication.get(A.XOR_PEER_ADDRESS) == Address(*dead_peer)
            icmp = indication.get(A.ICMP)
            assert icmp is not None and (icmp.type, icmp.code) == (3, 3)
            assert indication.get(A.DATA) is None
            assert service.engine.counters["icmp_relayed"] == 1
        finally:
            await service.stop()

    asyncio.run(scenario())


def test_a_burst_from_a_peer_is_relayed_in_order_through_a_short_relay_queue() -> None:
    # A relayed socket reads a few datagrams per wake-up and the rest on the next turns; its
    # receive buffer is kept below Linux's default so that overload drops instead of queueing
    # for seconds.
    async def scenario() -> None:
        service = TurnService(_config())
        await service.start()
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        try:

            def allocate() -> tuple[socket.socket, Address]:
                sock, response, nonce = _allocate_blocking(service.listen_udp[0])
                relayed = response.get(A.XOR_RELAYED_ADDRESS)
                assert _error(response) is None and relayed is not None
                permit = Message(Method.CREATE_PERMISSION, MessageClass.REQUEST, os.urandom(12))
                permit.add(A.XOR_PEER_ADDRESS, Address(*peer.getsockname()))
                assert _error(_exchange(sock, permit, nonce)) is None
                return sock, relayed

            client, relayed = await asyncio.to_thread(allocate)
            relay_socket = service.udp[(relayed.host, relayed.port)]
            # Shorter than Linux's default queue (seconds of voice above capacity).
            default = int(Path("/proc/sys/net/core/rmem_default").read_text())
            assert relay_socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < default
            # Sent while the loop cannot read: all of them wait in the relay socket at once.
            burst = [bytes([n]) * 172 for n in range(7)]
            for payload in burst:
                peer.sendto(payload, (relayed.host, relayed.port))

            def receive() -> list[bytes | None]:
                got = [decode_message(client.recv(4096)).get(A.DATA) for _ in burst]
                client.close()
                return got

            assert await asyncio.to_thread(receive) == burst
        finally:
            peer.close()
            await service.stop()

    asyncio.run(scenario())


def test_tcp_connections_per_source_are_capped() -> None:
    async def scenario() -> None:
        service = TurnService(_config(max_tcp_connections_per_source=2))
        await service.start()
        try:
            host, port = service.listen_tcp[0]
            streams = [await asyncio.open_connection(host, port) for _ in range(3)]
            # The third is closed by the server at once.
            assert await asyncio.wait_for(streams[2][0].read(), 2) == b""
            assert service.engine.counters["refused_tcp_connections"] == 1
            assert service.stream_sources == {"127.0.0.1": 2}
            for _reader, writer in streams:
                writer.close()
            for _ in range(100):
                if not service.stream_sources:
                    break
                await asyncio.sleep(0.01)
            assert service.stream_sources == {}
        finally:
            await service.stop()

    asyncio.run(scenario())
