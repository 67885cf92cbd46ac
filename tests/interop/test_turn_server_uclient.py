"""coturn 4.6.1's ``turnutils_uclient`` against our TURN server, through ``turnutils_peer``.

Every case must end with zero loss in uclient's summary. The cases run concurrently against one
server (each uclient run takes a few seconds of its own pacing), then each test reads its result.
Loopback peers need ``allow_peers = 127.0.0.0/8``: denied by default.
"""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from icerelay.aio.loop import loop_factory
from icerelay.daemon.turn_config import TurnServerConfig
from icerelay.daemon.turn_service import TurnService
from tests.support.ports import free_ports, ipv6_loopback

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        shutil.which("turnutils_uclient") is None or shutil.which("turnutils_peer") is None,
        reason="coturn's turnutils_uclient/turnutils_peer not installed (apt-get install coturn)",
    ),
]

USER, PASSWORD = "ninefingers", "youhavetoberealistic"
SECRET = "logen"
MESSAGES, CLIENTS = 10, 2

#: name -> uclient flags (credentials, server and peer are added). Cases whose flags carry
#: "@v6-peer" / "@v6-server" use ::1 for the peer / the server (skipped without IPv6 loopback).
CASES: dict[str, list[str]] = {
    "udp-channels-static": ["-u", USER, "-w", PASSWORD],
    "udp-send-static": ["-s", "-u", USER, "-w", PASSWORD],
    "tcp-channels-static": ["-t", "-u", USER, "-w", PASSWORD],
    "tcp-send-static": ["-t", "-s", "-u", USER, "-w", PASSWORD],
    "udp-channels-rest": ["-W", SECRET],
    "tcp-send-rest": ["-t", "-s", "-W", SECRET],
    "udp-channels-padding-dontfragment": ["-D", "-g", "-u", USER, "-w", PASSWORD],
    "tls-channels-static": ["-t", "-S", "-u", USER, "-w", PASSWORD],
    # IPv6: a requested IPv6 relay over IPv4, the default IPv4 relay for a client over IPv6,
    # and dual allocations (coturn sends the draft's ADDITIONAL-ADDRESS-FAMILY 0x8032).
    "ipv6-relay-over-ipv4": ["-x", "@v6-peer", "-u", USER, "-w", PASSWORD],
    "ipv4-relay-over-ipv6": ["@v6-server", "-u", USER, "-w", PASSWORD],
    "dual-allocation-ipv6-peer": ["-Z", "@v6-peer", "-u", USER, "-w", PASSWORD],
    "dual-allocation-send-ipv6-peer": ["-Z", "-s", "@v6-peer", "-W", SECRET],
}


@dataclass
class Outcome:
    returncode: int
    output: str


def _make_certificate(directory: Path) -> tuple[Path, Path] | None:
    if shutil.which("openssl") is None:
        return None
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


async def _run_all(tmp: Path) -> dict[str, Outcome]:
    ipv6 = ipv6_loopback()
    hosts = ("127.0.0.1", "::1") if ipv6 else ("127.0.0.1",)
    port, tls_port = free_ports(2, hosts=hosts)
    relay_low = random.randrange(20000, 29000, 2)
    # The peer must not sit in our relay range: relaying to the server's own ports is refused.
    peer_port = relay_low
    while relay_low - 2 <= peer_port <= relay_low + 1000:
        peer_port = free_ports(2, hosts=hosts, consecutive=True, kinds=("udp",))[0]
    certificate = _make_certificate(tmp)
    config = TurnServerConfig(
        listen=[f"127.0.0.1:{port}"] + ([f"[::1]:{port}"] if ipv6 else []),
        relay_ipv6="::1" if ipv6 else None,
        tls_listen=[f"127.0.0.1:{tls_port}"] if certificate else [],
        tls_cert=certificate[0] if certificate else None,
        tls_key=certificate[1] if certificate else None,
        realm="north.gov",
        users={USER: PASSWORD},
        auth_secrets=[SECRET],
        relay_port_min=relay_low,
        relay_port_max=relay_low + 999,
        allow_peers=["127.0.0.0/8", "::1/128"],
    )
    service = TurnService(config)
    await service.start()
    listen_flags = [part for host in hosts for part in ("-L", host)]
    peer = await asyncio.create_subprocess_exec(
        "turnutils_peer",
        *listen_flags,
        "-p",
        str(peer_port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await asyncio.sleep(0.3)  # let the peer bind

        async def one(name: str, flags: list[str]) -> tuple[str, Outcome]:
            if "-S" in flags and certificate is None:
                return name, Outcome(-1, "SKIP: openssl not installed")
            if any(flag.startswith("@v6") for flag in flags) and not ipv6:
                return name, Outcome(-1, "SKIP: no IPv6 loopback")
            server_port = tls_port if "-S" in flags else port
            peer_host = "::1" if "@v6-peer" in flags else "127.0.0.1"
            server_host = "::1" if "@v6-server" in flags else "127.0.0.1"
            flags = [flag for flag in flags if not flag.startswith("@")]
            process = await asyncio.create_subprocess_exec(
                "turnutils_uclient",
                *flags,
                "-c",
                "-n",
                str(MESSAGES),
                "-m",
                str(CLIENTS),
                "-l",
                "120",
                "-e",
                peer_host,
                "-r",
                str(peer_port),
                "-p",
                str(server_port),
                server_host,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            try:
                output, _ = await asyncio.wait_for(process.communicate(), 40)
            except TimeoutError:
                process.kill()
                output, _ = await process.communicate()
                return name, Outcome(-9, output.decode(errors="replace"))
            return name, Outcome(process.returncode or 0, output.decode(errors="replace"))

        results = await asyncio.gather(*(one(name, flags) for name, flags in CASES.items()))
    finally:
        peer.kill()
        await peer.wait()
        await service.stop()
    return dict(results)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    # The loop `icerelay serve` uses (uvloop when installed).
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        yield runner.run(_run_all(tmp_path_factory.mktemp("turn-uclient")))


@pytest.mark.parametrize("case", list(CASES))
def test_uclient_zero_loss(outcomes: dict[str, Outcome], case: str) -> None:
    outcome = outcomes[case]
    if outcome.output.startswith("SKIP:"):
        pytest.skip(outcome.output[5:])
    text = outcome.output
    assert outcome.returncode == 0, text[-3000:]
    lost = re.search(r"Total lost packets (\d+)", text)
    totals = re.findall(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", text)
    assert lost is not None and totals, text[-3000:]
    sent, received = map(int, totals[-1])
    assert int(lost.group(1)) == 0, text[-3000:]
    assert sent == received == MESSAGES * CLIENTS, text[-3000:]
