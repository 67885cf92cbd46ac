"""Start a real rtpengine 10.5 (userspace only) for a test or benchmark, and talk ng to any relay.

rtpengine reads /etc/rtpengine/rtpengine.conf (``table = 0``, ``interface = any``, ng on
localhost:2223) unless it is given a config file of its own, and ``any`` leaves out loopback: every
instance here gets its own file in the test's directory with ``table = -1`` (no kernel module,
pure userspace forwarding), ``interface = 127.0.0.1``, a private ng port and port range, no CLI or
HTTP listener and no recording. It runs in the foreground, logging to a file, in its own process
group so that :meth:`Rtpengine.stop` reaches it and nothing else.

:class:`NgClient` speaks the ng protocol (cookie + bencoded dictionary over UDP) to rtpengine or to
icerelay alike; tests and the benchmark drive both through the same client.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from icerelay import bencode
from tests.support.process import read_log, spawn_logged, stop_group, wait_until

__all__ = [
    "NgClient",
    "NgError",
    "Rtpengine",
    "start_rtpengine",
    "text",
    "unavailable_reason",
]

BINARY = "rtpengine"


def unavailable_reason() -> str | None:
    """Why rtpengine can't run here (None when it can)."""
    if shutil.which(BINARY) is None:
        return (
            "rtpengine not installed (Debian package rtpengine-daemon; "
            "run scripts/install-debian-deps)"
        )
    return None


class NgError(Exception):
    """No reply, or a reply with ``result`` other than what the request expects."""


def text(value: bencode.BencodeValue | None) -> str:
    """A decoded bencode string as text (ng strings are bytes on the wire)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None:
        return ""
    return str(value)


@dataclass
class NgClient:
    """A blocking ng client over UDP: one request at a time, retransmitted like Kamailio does.

    For pipelined load (the benchmark) use :meth:`send` / :meth:`receive` directly.
    """

    host: str
    port: int
    timeout: float = 2.0
    retries: int = 3
    _sock: socket.socket = field(init=False, repr=False)
    _counter: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.connect((self.host, self.port))

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> NgClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def next_cookie(self) -> bytes:
        self._counter += 1
        return f"{os.getpid()}_{id(self) & 0xFFFF:x}_{self._counter}".encode()

    def send(self, cookie: bytes, message: Mapping[str, bencode.Encodable]) -> None:
        self._sock.send(cookie + b" " + bencode.encode(message))

    def receive(
        self, timeout: float | None = None
    ) -> tuple[bytes, dict[bytes, bencode.BencodeValue]]:
        """One reply: (cookie, dictionary)."""
        self._sock.settimeout(self.timeout if timeout is None else timeout)
        data = self._sock.recv(65536)
        cookie, _, payload = data.partition(b" ")
        value = bencode.decode(payload)
        if not isinstance(value, dict):
            raise NgError(f"reply is not a dictionary: {data[:200]!r}")
        return cookie, value

    def request(
        self, message: Mapping[str, bencode.Encodable]
    ) -> dict[bytes, bencode.BencodeValue]:
        """Send ``message`` and return the reply dictionary; NgError on timeout or ``error``."""
        cookie = self.next_cookie()
        for _ in range(self.retries):
            self.send(cookie, message)
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                try:
                    got, reply = self.receive(max(0.01, deadline - time.monotonic()))
                except TimeoutError:
                    break
                if got != cookie:
                    continue  # a late reply to an earlier, retransmitted request
                if reply.get(b"result") == b"error":
                    raise NgError(text(reply.get(b"error-reason")))
                return reply
        raise NgError(f"no ng reply from {self.host}:{self.port} to {message.get('command')}")

    def ping(self) -> bool:
        try:
            return self.request({"command": "ping"}).get(b"result") == b"pong"
        except (NgError, OSError):
            return False


@dataclass
class Rtpengine:
    """A running rtpengine daemon."""

    process: subprocess.Popen[bytes]
    ng_port: int
    port_range: tuple[int, int]
    workdir: Path
    interface: str = "127.0.0.1"
    argv: list[str] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.workdir / "rtpengine.log"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return read_log(self.log_path)

    def client(self, timeout: float = 2.0) -> NgClient:
        return NgClient(self.interface, self.ng_port, timeout=timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s. Idempotent."""
        stop_group(self.process)


def start_rtpengine(
    workdir: Path,
    *,
    ng_port: int,
    port_min: int,
    port_max: int,
    interface: str = "127.0.0.1",
    threads: int = 2,
    delete_delay: int = 0,
    log_level: int = 6,
    extra: Mapping[str, str] | None = None,
    ready_timeout: float = 10.0,
) -> Rtpengine:
    """Write ``workdir/rtpengine.conf``, start rtpengine with it, wait until it answers ``ping``."""
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    workdir.mkdir(parents=True, exist_ok=True)
    settings = {
        "table": "-1",  # userspace only: no kernel module on these machines, nor wanted
        "interface": interface,
        "listen-ng": f"{interface}:{ng_port}",
        "port-min": str(port_min),
        "port-max": str(port_max),
        "num-threads": str(threads),
        "delete-delay": str(delete_delay),
        "log-level": str(log_level),
        "timeout": "60",
        "tos": "0",
        **(extra or {}),
    }
    config = workdir / "rtpengine.conf"
    config.write_text(
        "[rtpengine]\n" + "".join(f"{key} = {value}\n" for key, value in settings.items())
    )
    argv = [
        BINARY,
        f"--config-file={config}",
        "--config-section=rtpengine",
        "--foreground",
        "--log-stderr",
        f"--pidfile={workdir / 'rtpengine.pid'}",
    ]
    process = spawn_logged(argv, workdir / "rtpengine.log", cwd=workdir)
    engine = Rtpengine(process, ng_port, (port_min, port_max), workdir, interface, argv)
    with NgClient(interface, ng_port, timeout=0.2, retries=1) as client:
        if wait_until(process, client.ping, ready_timeout):
            return engine
    engine.stop()
    raise RuntimeError(
        f"rtpengine did not answer ng ping on {interface}:{ng_port} "
        f"(exit={process.returncode}); log:\n{engine.log()[-3000:]}"
    )
