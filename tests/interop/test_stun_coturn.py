"""STUN interop with coturn 4.6.1, both directions.

- coturn's ``turnutils_stunclient`` against ``icerelay serve`` (plain, and RFC 5780 mode);
- ``icerelay stun-probe`` against coturn's ``turnserver`` on 127.0.0.1 + 127.0.0.2 (RFC 5780):
  mapped address and RTT, over UDP and TCP, and ``--behavior`` (loopback: no NAT, endpoint-
  independent mapping and filtering).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable

import pytest

from tests.support.coturn import Coturn
from tests.support.ports import free_ports
from tests.support.serve import ServeProcess, icerelay_command

pytestmark = pytest.mark.interop

ServeFactory = Callable[..., ServeProcess]


def stunclient(*args: str) -> str:
    if shutil.which("turnutils_stunclient") is None:
        pytest.skip("turnutils_stunclient not installed (coturn; run scripts/install-debian-deps)")
    # turnutils_stunclient has no timeout of its own (PEERS.md).
    result = subprocess.run(
        ["timeout", "10", "turnutils_stunclient", *args], capture_output=True, text=True
    )
    return result.stdout + result.stderr


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        icerelay_command("stun-probe", *args), capture_output=True, text=True, timeout=30
    )


def test_turnutils_stunclient_against_icerelay(serve_factory: ServeFactory) -> None:
    port = free_ports(1)[0]
    serve_factory(["--stun-listen", f"127.0.0.1:{port}"], host="127.0.0.1", port=port)
    output = stunclient("-p", str(port), "127.0.0.1")
    mapped = re.findall(r"UDP reflexive addr: (127\.0\.0\.1):(\d+)", output)
    assert mapped, output
    # The client's own socket is on 127.0.0.1, so the mapped port is a real ephemeral port.
    assert all(1024 < int(p) < 65536 for _, p in mapped)


def test_turnutils_stunclient_rfc5780_against_icerelay(serve_factory: ServeFactory) -> None:
    port = free_ports(2, hosts=("127.0.0.1", "127.0.0.2"), consecutive=True)[0]
    serve_factory(
        ["--stun-listen", f"127.0.0.1:{port}", "--stun-alternate", "127.0.0.2"],
        host="127.0.0.1",
        port=port,
    )
    output = stunclient("-f", "-p", str(port), "127.0.0.1")
    assert re.search(r"UDP reflexive addr: 127\.0\.0\.1:\d+", output), output
    assert f"Other addr: : 127.0.0.2:{port + 1}" in output, output
    assert f"Response origin: : 127.0.0.1:{port}" in output, output
    # stunclient's change-IP+port request is answered from the alternate address.
    assert f"Response origin: : 127.0.0.2:{port + 1}" in output, output


def test_probe_against_coturn_udp(coturn_rfc5780: Coturn) -> None:
    result = probe(f"127.0.0.1:{coturn_rfc5780.port}")
    assert result.returncode == 0, result.stderr
    fields = dict(
        re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in result.stdout.splitlines()
    )
    assert fields["mapped"] == fields["local"]
    assert fields["mapped"].startswith("127.0.0.1:")
    assert re.fullmatch(r"\d+\.\d{3} ms", fields["rtt"])
    assert fields["other address"] == f"127.0.0.2:{coturn_rfc5780.alt_port}"


def test_probe_against_coturn_tcp_json(coturn_rfc5780: Coturn) -> None:
    result = probe(f"127.0.0.1:{coturn_rfc5780.port}", "--tcp", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["transport"] == "tcp"
    assert data["mapped"] == data["local"]
    assert data["rtt_ms"] > 0


def test_probe_behavior_against_coturn(coturn_rfc5780: Coturn) -> None:
    result = probe(f"127.0.0.1:{coturn_rfc5780.port}", "--behavior", "--json", "--timeout", "1")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["behind_nat"] is False
    assert data["mapping"] == "endpoint-independent"
    assert data["filtering"] == "endpoint-independent"
    assert data["other_address"] == f"127.0.0.2:{coturn_rfc5780.alt_port}"
    assert data["notes"] == []


def test_probe_behavior_against_single_address_coturn(coturn: Coturn) -> None:
    """One listening IP: coturn does no RFC 5780, and the probe says so instead of guessing."""
    result = probe(f"127.0.0.1:{coturn.port}", "--behavior", "--timeout", "1")
    assert result.returncode == 0, result.stderr
    assert "mapping          unknown" in result.stdout
    assert "does not do RFC 5780" in result.stdout
