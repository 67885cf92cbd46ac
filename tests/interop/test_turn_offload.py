"""The TURN kernel offload (eBPF at TC ingress of lo) on real loopback traffic, as root.

A hand-made client binds a channel and exchanges ChannelData with a peer: the kernel's
per-channel counters must account for every packet (none reached userspace), the payload
and addresses must be exactly what userspace would produce (padding cut, header added),
and what the engine would refuse stays refused (a peer without permission, a peer port
without a channel, an expired permission). Refresh 0 and expiry empty the maps. coturn's
``turnutils_uclient`` runs through the offload with zero loss, over IPv4 and IPv6.
Each test loads its own program instance (own maps, own TC filter on lo) and detaches it.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from icerelay.daemon.turn_config import TurnServerConfig
from icerelay.daemon.turn_service import TurnService
from icerelay.dataplane.turn_offload_bpf import LoadedProgram, OffloadUnavailable
from icerelay.stun import Address, Method
from tests.interop.turn_offload_client import PASSWORD, REALM, USER, Client
from tests.support.ports import free_port, free_ports, ipv6_loopback


def _offload_available() -> str:
    if os.geteuid() != 0:
        return "needs root (BPF, TC)"
    try:
        LoadedProgram().close()
    except OffloadUnavailable as error:
        return str(error)
    return ""


_REASON = _offload_available()
pytestmark = [pytest.mark.interop, pytest.mark.skipif(bool(_REASON), reason=_REASON)]


def _attached(program_id: int) -> bool:
    """Whether the program hangs on lo's ingress: as a tcx link (Linux 6.6+) or as a
    cls_bpf filter (older kernels)."""
    links = subprocess.run(["bpftool", "link", "show"], capture_output=True, text=True).stdout
    filters = subprocess.run(
        ["tc", "filter", "show", "dev", "lo", "ingress"], capture_output=True, text=True
    ).stdout
    return f"prog {program_id} " in links or f" id {program_id} " in filters


def _loaded(program_id: int) -> bool:
    shown = subprocess.run(
        ["bpftool", "prog", "show", "id", str(program_id)], capture_output=True, text=True
    )
    return shown.returncode == 0


@asynccontextmanager
async def _service(
    host: str, offload: str = "ebpf", **overrides: Any
) -> AsyncIterator[TurnService]:
    low = random.randrange(20000, 29000, 2)
    family = 6 if ":" in host else 4
    config = TurnServerConfig(
        listen=[f"[{host}]:{free_port(host)}" if family == 6 else f"{host}:{free_port(host)}"],
        relay_ipv4=host if family == 4 else None,
        relay_ipv6=host if family == 6 else None,
        realm=REALM,
        users={USER: PASSWORD},
        relay_port_min=low,
        relay_port_max=low + 99,
        allow_peers=["127.0.0.0/8", "::1/128"],
        workers=1,
        offload=offload,  # type: ignore[arg-type]
        **overrides,
    )
    service = TurnService(config)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def _peer(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(1.0)
    return sock


def _recvfrom(sock: socket.socket) -> tuple[bytes, tuple[str, int]] | None:
    try:
        data, source = sock.recvfrom(65535)
    except TimeoutError:
        return None
    return data, (source[0], source[1])


async def _until(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


HOSTS = ["127.0.0.1"] + (["::1"] if ipv6_loopback() else [])


@pytest.mark.parametrize("host", HOSTS)
def test_channel_data_goes_through_the_kernel_and_policy_still_holds(host: str) -> None:
    family = 6 if ":" in host else 4

    async def scenario() -> None:
        async with _service(host) as service:
            assert service.offload is not None and service._program is not None
            assert _attached(service._program.program_id)
            offload = service.offload
            server = service.listen_udp[0]
            client = Client(server)
            peer, stranger, other_port = _peer(host), _peer(host), _peer(host)
            try:
                relay = await asyncio.to_thread(client.allocate, family)
                peer_address = peer.getsockname()[:2]
                await asyncio.to_thread(
                    client.request,
                    Method.CHANNEL_BIND,
                    CHANNEL_NUMBER=0x4001,
                    XOR_PEER_ADDRESS=Address(*peer_address),
                )
                await _until(lambda: len(offload.entries) == 1)
                c2p, p2c = offload.kernel_keys()
                assert len(c2p) == 1 and len(p2c) == 1

                def exchange(count: int) -> None:
                    for n in range(count):
                        # Odd length with zero padding (RFC 8656 §12.5): the kernel cuts it.
                        payload = bytes([n % 256]) * (5 + n % 7)
                        padding = b"\0" * (-len(payload) % 4)
                        client.sock.send(
                            struct.pack("!HH", 0x4001, len(payload)) + payload + padding
                        )
                        got = _recvfrom(peer)
                        assert got is not None, f"packet {n} to the peer lost"
                        assert got == (payload, relay), got
                        peer.sendto(payload[::-1], relay)
                        back = client.recv()
                        assert back == struct.pack("!HH", 0x4001, len(payload)) + payload[::-1]

                await asyncio.to_thread(exchange, 50)
                entry = next(iter(offload.entries.values()))
                raw = offload.maps.lookup("stats", struct.pack("=I", entry.slot), 32)
                assert raw is not None
                to_peer, bytes_to_peer, to_client, _bytes = struct.unpack("=QQQQ", raw)
                # Every packet went through the kernel; userspace relayed none of them.
                assert (to_peer, to_client) == (50, 50)
                assert bytes_to_peer == sum(5 + n % 7 for n in range(50))
                allocation = next(iter(service.engine.allocations.values()))
                assert allocation.packets_to_peers == 0  # not yet read
                offload.sync(service.loop.time())
                assert allocation.packets_to_peers == 50 and allocation.packets_to_client == 50
                assert service.status()["offloaded_packets"] == 100

                # A peer without permission: not relayed (userspace drops and counts it).
                dropped = service.engine.counters["dropped_no_permission"]
                if family == 4:
                    # Another address on lo: 127.0.0.2 has no permission.
                    stranger.close()
                    stranger = _peer("127.0.0.2")
                    stranger.sendto(b"let me in", relay)
                    assert await asyncio.to_thread(client.recv, 0.3) is None
                    await _until(lambda: service.engine.counters["dropped_no_permission"] > dropped)
                # The permitted peer from a port without a channel: userspace relays it in a
                # Data indication, not the kernel.
                other_port.sendto(b"no channel", relay)
                indication = await asyncio.to_thread(client.recv)
                assert indication is not None and indication[:2] == b"\x00\x17"

                # The permission expires: the entries go, and nothing is relayed any more.
                allocation.permissions[peer_address[0]] = service.loop.time() + 0.1
                await _until(lambda: not offload.entries)
                assert offload.kernel_keys() == ([], [])
                peer.sendto(b"too late", relay)
                assert await asyncio.to_thread(client.recv, 0.3) is None

                # ChannelBind again (refresh: permission back): back in the kernel.
                await asyncio.to_thread(
                    client.request,
                    Method.CHANNEL_BIND,
                    CHANNEL_NUMBER=0x4001,
                    XOR_PEER_ADDRESS=Address(*peer_address),
                )
                await _until(lambda: len(offload.entries) == 1)
                await asyncio.to_thread(exchange, 3)

                # Refresh 0: the allocation ends, the maps are empty, its record counts all.
                deleted = service.engine.counters["allocations_deleted"]
                await asyncio.to_thread(client.request, Method.REFRESH, LIFETIME=0)
                await _until(lambda: service.engine.counters["allocations_deleted"] > deleted)
                assert offload.kernel_keys() == ([], []) and not offload.entries
                assert allocation.packets_to_peers >= 53
            finally:
                for sock in (client.sock, peer, stranger, other_port):
                    sock.close()

    asyncio.run(scenario())


@pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool not installed")
def test_stop_detaches_and_unloads_the_program() -> None:
    async def scenario() -> int:
        async with _service("127.0.0.1") as service:
            assert service._program is not None
            assert service._program.interfaces == [socket.if_nametoindex("lo")]
            program_id = service._program.program_id
            assert program_id and _attached(program_id) and _loaded(program_id)
        return program_id

    program_id = asyncio.run(scenario())
    assert not _attached(program_id) and not _loaded(program_id)


def test_the_cls_bpf_fallback_attaches_and_detaches() -> None:
    # Kernels before 6.6 have no tcx links: a filter on the clsact qdisc instead.
    program = LoadedProgram()
    try:
        program.attach(socket.if_nametoindex("lo"), link=False)
        program_id = program.program_id
        assert program.filters and _attached(program_id)
    finally:
        assert program.close() == []
    assert not _attached(program_id)


def test_a_killed_server_leaves_nothing_attached() -> None:
    # A tcx link goes with the last descriptor: SIGKILL, no clean-up, nothing left behind.
    code = (
        "from icerelay.dataplane.turn_offload_bpf import LoadedProgram; import os, sys, time\n"
        "p = LoadedProgram(); p.attach(1); print(p.program_id, len(p._links), flush=True)\n"
        "time.sleep(60)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        program_id, links = map(int, process.stdout.readline().split())
        if not links:
            pytest.skip("no tcx links on this kernel (< 6.6): a cls_bpf filter would stay")
        assert _attached(program_id)
    finally:
        process.kill()
        process.wait()
    for _ in range(50):
        if not _loaded(program_id):
            break
        time.sleep(0.05)
    assert not _attached(program_id) and not _loaded(program_id)


def test_offload_off_relays_in_userspace_as_before() -> None:
    async def scenario() -> None:
        async with _service("127.0.0.1", offload="off") as service:
            assert service.offload is None and service.status()["offload"] == "off"
            client = Client(service.listen_udp[0])
            peer = _peer("127.0.0.1")
            try:
                relay = await asyncio.to_thread(client.allocate, 4)
                await asyncio.to_thread(
                    client.request,
                    Method.CHANNEL_BIND,
                    CHANNEL_NUMBER=0x4002,
                    XOR_PEER_ADDRESS=Address(*peer.getsockname()[:2]),
                )
                client.sock.send(struct.pack("!HH", 0x4002, 3) + b"abc\0")
                got = await asyncio.to_thread(_recvfrom, peer)
                assert got == (b"abc", relay)
                allocation = next(iter(service.engine.allocations.values()))
                assert allocation.packets_to_peers == 1  # counted by userspace at once
                assert service.status()["offloaded_packets"] == 0
            finally:
                client.sock.close()
                peer.close()

    asyncio.run(scenario())


def _bind_channel(service: TurnService, client: Client, peer: socket.socket, number: int) -> None:
    client.request(
        Method.CHANNEL_BIND,
        CHANNEL_NUMBER=number,
        XOR_PEER_ADDRESS=Address(*peer.getsockname()[:2]),
    )


def test_drain_takes_the_channels_back_to_userspace() -> None:
    async def scenario() -> None:
        async with _service("127.0.0.1") as service:
            offload = service.offload
            assert offload is not None
            client, peer = Client(service.listen_udp[0]), _peer("127.0.0.1")
            try:
                relay = await asyncio.to_thread(client.allocate, 4)
                await asyncio.to_thread(_bind_channel, service, client, peer, 0x4003)
                await _until(lambda: len(offload.entries) == 1)
                service.drain()
                assert offload.kernel_keys() == ([], []) and not offload.entries
                # The allocation still works, relayed by userspace.
                client.sock.send(struct.pack("!HH", 0x4003, 4) + b"late")
                assert await asyncio.to_thread(_recvfrom, peer) == (b"late", relay)
                allocation = next(iter(service.engine.allocations.values()))
                assert allocation.packets_to_peers == 1
                # And a new ChannelBind is not offloaded any more.
                await asyncio.to_thread(_bind_channel, service, client, peer, 0x4003)
                await asyncio.sleep(0.1)
                assert not offload.entries
            finally:
                client.sock.close()
                peer.close()

    asyncio.run(scenario())


def test_bandwidth_quota_holds_for_offloaded_traffic() -> None:
    # 4,000 bytes/s with a one-second burst: 100 packets of 100 bytes go through the kernel
    # at once; the next reading of the counters finds the bucket overdrawn, the channel goes
    # back to userspace, which then drops what exceeds the quota.
    quotas = {"bandwidth_per_allocation": 4000, "bandwidth_burst_seconds": 1.0}

    async def scenario() -> None:
        async with _service("127.0.0.1", quotas=quotas) as service:
            offload = service.offload
            assert offload is not None
            client, peer = Client(service.listen_udp[0]), _peer("127.0.0.1")
            try:
                await asyncio.to_thread(client.allocate, 4)
                await asyncio.to_thread(_bind_channel, service, client, peer, 0x4004)
                await _until(lambda: len(offload.entries) == 1)

                def burst() -> int:
                    for _ in range(100):
                        client.sock.send(struct.pack("!HH", 0x4004, 100) + b"x" * 100)
                    received = 0
                    while _recvfrom(peer) is not None:
                        received += 1
                    return received

                peer.settimeout(0.3)
                assert await asyncio.to_thread(burst) == 100  # the kernel overshoots once
                offload.sync(service.loop.time())
                assert offload.counters["offload_quota_withdrawn"] == 1
                assert not offload.entries and offload.kernel_keys() == ([], [])
                dropped = service.engine.counters["dropped_bandwidth"]
                assert await asyncio.to_thread(burst) < 100
                assert service.engine.counters["dropped_bandwidth"] > dropped
            finally:
                client.sock.close()
                peer.close()

    asyncio.run(scenario())


UCLIENT = shutil.which("turnutils_uclient") is not None and shutil.which("turnutils_peer")


@pytest.mark.skipif(not UCLIENT, reason="coturn's turnutils_uclient/turnutils_peer not installed")
@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("padding", [False, True], ids=["plain", "padded"])
def test_uclient_through_channels_with_the_offload(host: str, padding: bool) -> None:
    messages, clients = 20, 2

    async def scenario() -> tuple[str, dict[str, Any]]:
        async with _service(host) as service:
            hosts = (host,)
            relay = service.config.relay_port_min
            peer_port = relay
            while relay - 2 <= peer_port <= relay + 101:
                peer_port = free_ports(1, hosts=hosts, kinds=("udp",))[0]
            peer = await asyncio.create_subprocess_exec(
                "turnutils_peer", "-L", host, "-p", str(peer_port),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            try:
                await asyncio.sleep(0.3)
                flags = ["-u", USER, "-w", PASSWORD, "-c", "-n", str(messages)]
                flags += ["-m", str(clients), "-l", "120", "-e", host, "-r", str(peer_port)]
                flags += ["-x"] if ":" in host else []
                flags += ["-D"] if padding else []
                process = await asyncio.create_subprocess_exec(
                    "turnutils_uclient", *flags, "-p", str(service.listen_udp[0][1]), host,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                )  # fmt: skip
                try:
                    output, _ = await asyncio.wait_for(process.communicate(), 40)
                except TimeoutError:
                    process.kill()
                    output, _ = await process.communicate()
            finally:
                peer.kill()
                await peer.wait()
        # uclient leaves its allocations to expire; stopping withdrew their entries and read
        # their counters.
        return output.decode(errors="replace"), service.status()

    text, status = asyncio.run(scenario())
    lost = re.search(r"Total lost packets (\d+)", text)
    totals = re.findall(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", text)
    assert lost is not None and totals, text[-3000:]
    assert int(lost.group(1)) == 0, text[-3000:]
    sent, received = map(int, totals[-1])
    assert sent == received == messages * clients, text[-3000:]
    # Both directions of (nearly) every message went through the kernel: uclient may send
    # its first message before our install follows the ChannelBind answer.
    assert status["offloaded_packets"] >= 2 * messages * clients - 2 * clients, status
    assert status["offload_installed"] >= clients, status


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


@pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 not installed")
def test_client_and_peer_in_namespaces_are_redirected_between_interfaces() -> None:
    # client ns --veth-- [server: listen 10.213.K.1, relay 10.214.K.1] --veth-- peer ns
    # Neither end is local: the program rewrites on the ingress veth and redirects out of the
    # other one (bpf_redirect_neigh); the datagrams the namespaces send carry partial
    # checksums (veth offload), which must arrive valid.
    tag = f"{os.getpid() % 100000}{random.randrange(100)}"
    k = random.randrange(1, 250)
    client_ns, peer_ns = f"ebpfc{tag}", f"ebpfp{tag}"
    client_if, peer_if = f"ebc{tag}", f"ebp{tag}"
    listen, relay_host = f"10.213.{k}.1", f"10.214.{k}.1"
    client_host, peer_host = f"10.213.{k}.2", f"10.214.{k}.2"
    count = 40
    try:
        for ns, link, host, inner in (
            (client_ns, client_if, listen, client_host),
            (peer_ns, peer_if, relay_host, peer_host),
        ):
            _ip("netns", "add", ns)
            _ip("link", "add", link, "type", "veth", "peer", "name", "inner", "netns", ns)
            _ip("addr", "add", f"{host}/30", "dev", link)
            _ip("link", "set", link, "up")
            _ip("-n", ns, "addr", "add", f"{inner}/30", "dev", "inner")
            _ip("-n", ns, "link", "set", "inner", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

        async def scenario() -> tuple[dict[str, Any], dict[str, Any], tuple[int, int]]:
            low = random.randrange(20000, 29000, 2)
            config = TurnServerConfig(
                listen=[f"{listen}:{free_port(listen)}"],
                relay_ipv4=relay_host,
                realm=REALM,
                users={USER: PASSWORD},
                relay_port_min=low,
                relay_port_max=low + 99,
                allow_peers=["10.0.0.0/8"],
                workers=1,
                offload="ebpf",
            )
            service = TurnService(config)
            await service.start()
            agent = [sys.executable, "-m", "tests.interop.turn_offload_agent"]
            try:
                assert service._program is not None
                attached = set(service._program.interfaces)
                assert attached == {
                    socket.if_nametoindex(client_if),
                    socket.if_nametoindex(peer_if),
                }
                peer = await asyncio.create_subprocess_exec(
                    "ip", "netns", "exec", peer_ns, *agent, "peer", peer_host, "40000", str(count),
                    stdout=asyncio.subprocess.PIPE,
                )  # fmt: skip
                assert peer.stdout is not None
                assert (await asyncio.wait_for(peer.stdout.readline(), 10)).strip() == b"ready"
                client = await asyncio.create_subprocess_exec(
                    "ip", "netns", "exec", client_ns, *agent, "client",
                    service.listen_udp[0][0], str(service.listen_udp[0][1]), peer_host, "40000",
                    str(count),
                    stdout=asyncio.subprocess.PIPE,
                )  # fmt: skip
                out, _ = await asyncio.wait_for(client.communicate(), 30)
                peer_out, _ = await asyncio.wait_for(peer.communicate(), 10)
                offload = service.offload
                assert offload is not None
                entry = next(iter(offload.entries.values()))
                raw = offload.maps.lookup("stats", struct.pack("=I", entry.slot), 32)
                assert raw is not None
                to_peer, _b, to_client, _c = struct.unpack("=QQQQ", raw)
                return json.loads(out), json.loads(peer_out), (to_peer, to_client)
            finally:
                await service.stop()

        result, peer_result, kernel = asyncio.run(scenario())
        assert result["received"] == count
        relay = f"{result['relay'][0]}:{result['relay'][1]}"
        assert peer_result["sources"] == [relay]  # the peer only ever saw the relayed address
        assert kernel == (count, count)  # every datagram both ways went through the kernel
    finally:
        for ns in (client_ns, peer_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
