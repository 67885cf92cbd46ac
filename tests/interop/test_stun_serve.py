"""``icerelay serve`` as a real process: answers over UDP and TCP, shrugs off garbage, stops on
Ctrl-C (SIGINT) with status 0."""

from __future__ import annotations

import json
import random
import socket
import struct
import subprocess
import time
from collections.abc import Callable

import pytest

from tests.support import stunraw
from tests.support.ports import free_port, free_ports, ipv6_loopback
from tests.support.serve import ServeProcess, icerelay_command

pytestmark = pytest.mark.interop

ServeFactory = Callable[..., ServeProcess]


def tcp_binding(host: str, port: int, timeout: float = 2.0) -> tuple[str, int] | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.sendall(stunraw.binding_request())
        data = b""
        while len(data) < 20 or len(data) < 20 + struct.unpack_from("!H", data, 2)[0]:
            chunk = sock.recv(4096)
            if not chunk:
                return None
            data += chunk
    return stunraw.xor_mapped_address(data)


def garbage_burst(host: str, port: int, rng: random.Random) -> None:
    """Random bytes, truncated and lying STUN over UDP; junk and half-open streams over TCP."""
    valid = stunraw.binding_request()
    udp_payloads = [rng.randbytes(rng.randrange(0, 1500)) for _ in range(300)]
    udp_payloads += [valid[: rng.randrange(0, 20)] for _ in range(50)]
    udp_payloads += [valid[:2] + b"\xff\xfc" + valid[4:] + rng.randbytes(40) for _ in range(50)]
    udp_payloads += [b"\x00\x01\x00\x08" + valid[4:20] + b"\x00\x20\xff\xff" + bytes(4)] * 50
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for payload in udp_payloads:
            sock.sendto(payload, (host, port))
    half_open = []
    for i in range(20):
        conn = socket.create_connection((host, port), timeout=2)
        if i % 4 == 0:
            conn.sendall(rng.randbytes(500))  # unframeable: server must close it
        elif i % 4 == 1:
            conn.sendall(valid[:2] + b"\xff\xfc" + valid[4:])  # huge length, then silence
        elif i % 4 == 2:
            conn.sendall(valid[:10])  # half a header
        half_open.append(conn)
    for conn in half_open[::2]:
        conn.close()
    return None


def test_serve_answers_udp_and_tcp_and_survives_garbage(serve_factory: ServeFactory) -> None:
    port = free_port()
    server = serve_factory(
        ["--stun-listen", f"127.0.0.1:{port}", "--set", "stun.tcp_idle_timeout=2"],
        host="127.0.0.1",
        port=port,
    )
    mapped = stunraw.udp_binding("127.0.0.1", port)
    assert mapped is not None and mapped[0] == "127.0.0.1"
    assert tcp_binding("127.0.0.1", port) is not None

    garbage_burst("127.0.0.1", port, random.Random(5780))

    # Still alive and answering both ways, with garbage connections still open.
    assert stunraw.wait_for_udp_binding("127.0.0.1", port, timeout=5) is not None
    tcp_mapped = tcp_binding("127.0.0.1", port)
    assert tcp_mapped is not None and tcp_mapped[0] == "127.0.0.1"
    assert server.process.poll() is None
    assert server.stop() == 0
    output = server.output()
    assert "Traceback" not in output
    assert "event=stun.stopped" in output
    assert "dropped.not_stun=" in output and "dropped.malformed=" in output
    assert "tcp_unframeable_stream=" in output


def test_serve_ipv6_loopback(serve_factory: ServeFactory) -> None:
    if not ipv6_loopback():
        pytest.skip("no IPv6 loopback (::1) on this host")
    port = free_ports(1, hosts=("::1",))[0]
    serve_factory(["--stun-listen", f"[::1]:{port}"], host="::1", port=port)
    assert stunraw.udp_binding("::1", port) is not None
    assert tcp_binding("::1", port) is not None
    result = subprocess.run(
        icerelay_command("stun-probe", f"[::1]:{port}", "--json"),
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["mapped"] == data["local"] and data["mapped"].startswith("[::1]:")


def test_serve_rfc5780_with_probe(serve_factory: ServeFactory) -> None:
    port = free_ports(2, hosts=("127.0.0.1", "127.0.0.2"), consecutive=True)[0]
    serve_factory(
        ["--stun-listen", f"127.0.0.1:{port}", "--stun-alternate", "127.0.0.2"],
        host="127.0.0.1",
        port=port,
    )
    result = subprocess.run(
        icerelay_command("stun-probe", f"127.0.0.1:{port}", "--behavior", "--json",
                         "--timeout", "1"),
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["other_address"] == f"127.0.0.2:{port + 1}"
    assert data["response_origin"] == f"127.0.0.1:{port}"
    assert data["behind_nat"] is False
    assert data["mapping"] == "endpoint-independent"
    assert data["filtering"] == "endpoint-independent"


def test_serve_port_in_use_fails_clearly() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as blocker:
        blocker.bind(("127.0.0.1", port))
        result = subprocess.run(
            icerelay_command("serve", "--stun-listen", f"127.0.0.1:{port}"),
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"STUN udp on 127.0.0.1:{port}" in result.stderr


def test_probe_timeout_exits_nonzero() -> None:
    port = free_port()  # nobody listens there
    started = time.monotonic()
    result = subprocess.run(
        icerelay_command("stun-probe", f"127.0.0.1:{port}", "--timeout", "0.5"),
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert result.returncode == 1
    assert "no response from" in result.stderr
    assert time.monotonic() - started < 10
