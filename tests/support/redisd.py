"""A throwaway ``redis-server`` for cluster tests: free port, its own directory, no persistence.

Each test gets its own server (parallel runs share nothing); :meth:`RedisServer.restart` stops
it and starts it again on the same port with its data gone, as a Redis restart without
persistence does.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.ports import free_port
from tests.support.process import read_log, spawn_logged, stop_group

HOST = "127.0.0.1"


def available() -> bool:
    """Whether redis-server is installed."""
    return shutil.which("redis-server") is not None


@dataclass
class RedisServer:
    """A running redis-server."""

    directory: Path
    port: int = field(default_factory=lambda: free_port(HOST, kinds=("tcp",)))
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    def start(self, timeout: float = 10.0) -> None:
        argv = [
            "redis-server",
            "--port", str(self.port),
            "--bind", HOST,
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
        ]  # fmt: skip
        self.process = spawn_logged(argv, self.log, cwd=self.directory)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self.ping():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start:\n{read_log(self.log)[-2000:]}")

    def ping(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()
