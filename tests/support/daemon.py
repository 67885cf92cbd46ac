"""``icerelay serve`` with the relay and the HTTP listener on free ports, as a subprocess.

For tests of what an operator sees: the live page in a browser, ``icerelay ctl`` and
``icerelay ng`` against a running daemon. Nothing on fixed ports (tests run in parallel).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from icerelay import bencode
from tests.support.ports import free_ports

HOST = "127.0.0.1"

SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


@dataclass
class Daemon:
    """A running ``icerelay serve``: its HTTP base URL and its ng port."""

    process: subprocess.Popen[str]
    url: str
    ng_port: int
    log: Path
    config: Path

    def ng(self, body: dict[str, bencode.Encodable], cookie: bytes = b"") -> dict[bytes, object]:
        """One ng request over UDP; the decoded reply."""
        cookie = cookie or f"t{time.monotonic_ns()}".encode()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(3)
            sock.sendto(cookie + b" " + bencode.encode(body), (HOST, self.ng_port))
            data = sock.recv(65536)
        reply = bencode.decode(data.partition(b" ")[2])
        assert isinstance(reply, dict)
        return reply

    def get(self, path: str) -> object:
        with urllib.request.urlopen(self.url + path, timeout=3) as response:
            return json.loads(response.read())

    def stop(self) -> int:
        """SIGINT and wait (SIGKILL after 10 s); the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=5)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_daemon(workdir: Path, *, extra: str = "", ready_timeout: float = 15.0) -> Daemon:
    """Start ``icerelay serve`` with only the relay and HTTP; wait until /api/statistics answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    ng_port, http_port = free_ports(2, kinds=("udp", "tcp"))
    block = free_ports(41, kinds=("udp",), consecutive=True)
    first = block[0] + (block[0] & 1)
    config = workdir / "icerelay.toml"
    config.write_text(
        "[stun]\nenabled = false\n\n"
        f'[http]\nlisten = "{HOST}:{http_port}"\nupdate_interval = 0.2\n\n'
        "[relay]\nenabled = true\n"
        f'ng_listen = "{HOST}:{ng_port}"\n'
        'mediaproxy_socket = ""\n'
        'accounting = ""\n'
        f"port_min = {first}\nport_max = {first + 39}\n"
        "delete_delay = 0\n" + extra
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICERELAY_")}
    log = workdir / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "icerelay", "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
    daemon = Daemon(process, f"http://{HOST}:{http_port}", ng_port, log, config)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            daemon.get("/api/statistics")
            return daemon
        except OSError:
            time.sleep(0.05)
    daemon.stop()
    raise RuntimeError(f"icerelay serve did not come up; output:\n{daemon.output()[-3000:]}")
