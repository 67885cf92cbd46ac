"""``icerelay serve`` with the ``[turn]`` section: coturn's uclient through it, then drain.

The daemon runs as a real subprocess (the checkout under test), configured from a TOML file.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support.ports import free_port, free_ports
from tests.support.serve import start_serve

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        shutil.which("turnutils_uclient") is None or shutil.which("turnutils_peer") is None,
        reason="coturn's turnutils_uclient/turnutils_peer not installed (apt-get install coturn)",
    ),
]

USER, PASSWORD = "ninefingers", "youhavetoberealistic"


def _config(tmp_path: Path, port: int, workers: int = 1) -> Path:
    relay_low = random.randrange(20000, 28000, 2)
    path = tmp_path / "icerelay.toml"
    path.write_text(
        f"""
[stun]
enabled = false

[turn]
enabled = true
listen = ["127.0.0.1:{port}"]
realm = "north.gov"
users = {{ {USER} = "{PASSWORD}" }}
relay_port_min = {relay_low}
relay_port_max = {relay_low + 999}
allow_peers = ["127.0.0.0/8"]
workers = {workers}
"""
    )
    return path


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_relays_uclient_traffic_and_drains_on_sigusr1(tmp_path: Path, workers: int) -> None:
    port = free_port()
    serve = start_serve(
        ["--config", str(_config(tmp_path, port, workers))], host="127.0.0.1", port=port
    )
    peer_port = free_ports(2, consecutive=True, kinds=("udp",))[0]
    peer = subprocess.Popen(
        ["turnutils_peer", "-L", "127.0.0.1", "-p", str(peer_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        result = subprocess.run(
            ["turnutils_uclient", "-c", "-n", "10", "-m", "4", "-u", USER, "-w", PASSWORD,
             "-e", "127.0.0.1", "-r", str(peer_port), "-p", str(port), "127.0.0.1"],
            capture_output=True, text=True, timeout=40,
        )  # fmt: skip
        output = result.stdout + result.stderr
        lost = re.search(r"Total lost packets (\d+)", output)
        totals = re.findall(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", output)
        assert lost is not None and int(lost.group(1)) == 0, output[-3000:]
        assert totals and totals[-1] == ("40", "40"), output[-3000:]
    finally:
        peer.kill()
        peer.wait()
    # Drain: uclient leaves some allocations open (they would last 777 s), so the daemon must
    # still be running a moment after SIGUSR1 ...
    os.killpg(serve.process.pid, signal.SIGUSR1)
    with pytest.raises(subprocess.TimeoutExpired):
        serve.process.wait(timeout=1.0)
    assert serve.stop() == 0
    assert "event=turn.draining" in serve.output()


def test_serve_exits_after_drain_when_nothing_is_allocated(tmp_path: Path) -> None:
    port = free_port()
    serve = start_serve(["--config", str(_config(tmp_path, port))], host="127.0.0.1", port=port)
    os.killpg(serve.process.pid, signal.SIGUSR1)
    assert serve.process.wait(timeout=10) == 0
    serve.stop()
    assert "event=turn.drained" in serve.output()
