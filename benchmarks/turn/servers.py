"""Start, probe and stop the two TURN servers under test, with equivalent settings.

Both listen on UDP 127.0.0.1 only, relay on 127.0.0.1 from a port range kept clear of Linux's
ephemeral range (so a relay port never collides with a client socket), accept loopback peers
(the load generator is on loopback), use one static long-term-credential user, and have quotas
high enough not to be what is measured.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.turn import wire

USERNAME = "bench"
PASSWORD = "bench-secret"
REALM = "bench.icerelay"


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 13478
    # 22000-29999: below Linux's default ephemeral range (32768-60999) and clear of the
    # 20000-20999 range the interop tests give coturn, should they run at the same time.
    min_port: int = 22000
    max_port: int = 29999


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (a server may run worker processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def _status_field(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def rss_kib(pid: int) -> int:
    """Resident set size (VmRSS) of a process and its descendants, in KiB."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, RuntimeError):
            total += _status_field(member, "VmRSS")
    return total


def threads(pid: int) -> int:
    """Threads of a process and its descendants."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{member}/task"))
    return total


def cpu_seconds(pid: int) -> float:
    """User+system CPU time so far of a process (all threads) and its live descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / ticks


class Server:
    """A TURN server process; subclasses say how to start it."""

    name = "server"

    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout_s: float = 15.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # A leftover server on the port would answer the readiness probe and be measured
        # in place of this one.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((self.settings.host, self.settings.port))
            except OSError as exc:
                raise RuntimeError(
                    f"UDP {self.settings.host}:{self.settings.port} is already in use: {exc}"
                ) from exc
        log = (self.workdir / f"{self.name}.out").open("ab")
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}; see {self.workdir}"
                )
            if self._answers():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer on {self.settings.port}")

    def _answers(self) -> bool:
        """True once an unauthenticated Allocate gets its 401 (the server is really serving)."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.2)
            tid = wire.new_transaction_id()
            try:
                sock.sendto(wire.allocate_request(tid), (self.settings.host, self.settings.port))
                response = wire.decode(sock.recv(2048))
            except OSError:
                return False
            return response is not None and response.transaction_id == tid

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        tree = process_tree(self.process.pid)
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        # Workers the server started should have gone with it; if one did not, it would
        # keep its listening socket and take a share of the next server's clients.
        for pid in tree[1:]:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


class Coturn(Server):
    name = "coturn"

    def version(self) -> str:
        out = subprocess.run(["turnserver", "--version"], capture_output=True, text=True)
        return f"coturn {out.stdout.strip() or out.stderr.strip()}"

    def command(self) -> list[str]:
        s = self.settings
        conf = self.workdir / "turnserver.conf"
        conf.write_text(
            "\n".join(
                [
                    f"listening-ip={s.host}",
                    f"listening-port={s.port}",
                    f"relay-ip={s.host}",
                    f"min-port={s.min_port}",
                    f"max-port={s.max_port}",
                    f"realm={REALM}",
                    "lt-cred-mech",
                    f"user={USERNAME}:{PASSWORD}",
                    "allow-loopback-peers",
                    "user-quota=0",  # 0 = unlimited
                    "total-quota=0",
                    "no-tcp",
                    "no-tls",
                    "no-dtls",
                    "no-cli",
                    "no-rfc5780",
                    "no-tcp-relay",
                    f"pidfile={self.workdir / 'turnserver.pid'}",
                    f"log-file={self.workdir / 'turnserver.log'}",
                    "simple-log",
                    "no-stdout-log",
                    "",
                ]
            )
        )
        return ["turnserver", "-c", str(conf)]


class Icerelay(Server):
    """Our server, run by benchmarks.turn.run_ours with settings equivalent to coturn's: its
    defaults (one worker process per CPU, as coturn has one relay thread per CPU), the kernel
    offload off."""

    name = "icerelay"
    workers: int | str = "auto"
    offload = "off"

    def version(self) -> str:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        # The work tree is shared with other work in progress: say whether the server's own
        # code (not just any file) differed from the commit when it was measured.
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "src/icerelay/turn", "src/icerelay/stun"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        return f"icerelay {commit}" + (" + uncommitted TURN/STUN changes" if dirty else "")

    def command(self) -> list[str]:
        s = self.settings
        return [
            sys.executable,
            "-m",
            "benchmarks.turn.run_ours",
            "--host",
            s.host,
            "--port",
            str(s.port),
            "--min-port",
            str(s.min_port),
            "--max-port",
            str(s.max_port),
            "--realm",
            REALM,
            "--user",
            f"{USERNAME}:{PASSWORD}",
            "--log-file",
            str(self.workdir / "icerelay.log"),
            "--workers",
            str(self.workers),
            "--offload",
            self.offload,
        ]

    def offloaded_packets(self) -> int | None:
        """Packets the kernel relayed in the last run, from the stop lines of the server
        (its log file) and of its worker processes (their stderr, in NAME.out)."""
        if self.offload == "off":
            return None
        total = 0
        for log in (self.workdir / "icerelay.log", self.workdir / f"{self.name}.out"):
            if not log.exists():
                continue
            lines = log.read_text(errors="replace").splitlines()
            starts = [i for i, line in enumerate(lines) if "turn server started" in line]
            for line in lines[starts[-1] if starts else 0 :]:
                if "turn server stopping" in line:
                    for part in line.split():
                        if part.startswith("offloaded_packets="):
                            total += int(part.split("=", 1)[1])
        return total


class IcerelayOne(Icerelay):
    """Our server in one process (the default before workers = "auto")."""

    name = "icerelay-one"
    workers = 1


class IcerelayOffload(Icerelay):
    """Our server with the eBPF ChannelData offload (needs root and `make bpf`)."""

    name = "icerelay-offload"
    offload = "ebpf"


SERVERS: dict[str, type[Server]] = {
    "coturn": Coturn,
    "icerelay": Icerelay,
    "icerelay-one": IcerelayOne,
    "icerelay-offload": IcerelayOffload,
}
