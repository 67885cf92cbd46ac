"""Start coturn's ``turnserver`` for a test, wait until it answers, stop it.

Every instance is isolated: no config file is read (``-n``; /etc/turnserver.conf stays out of it),
its own pidfile and log file in the test's temporary directory, no CLI/telnet port, no TLS/DTLS,
random free listening ports, a relay port range of its own, and loopback peers allowed (coturn
refuses 127.x peers otherwise). With two listening IPs (e.g. 127.0.0.1 and 127.0.0.2) coturn does
RFC 5780: its alternate port is the listening port + 1.

Use :func:`start_coturn` / :class:`Coturn` directly or the ``coturn`` / ``coturn_factory`` fixtures.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import stunraw
from tests.support.netns import Namespace
from tests.support.ports import free_ports
from tests.support.process import read_log, stop_group


def unavailable_reason() -> str | None:
    """Why coturn can't run here (None when it can)."""
    for tool in ("turnserver", "turnutils_stunclient"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (Debian package coturn; run scripts/install-debian-deps)"
    return None


@dataclass
class Coturn:
    """A running turnserver."""

    process: subprocess.Popen[bytes]
    listening_ips: tuple[str, ...]
    port: int
    alt_port: int
    relay_range: tuple[int, int]
    workdir: Path
    namespace: Namespace | None = None
    argv: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        """The first listening IP."""
        return self.listening_ips[0]

    @property
    def log_path(self) -> Path:
        return self.workdir / "turnserver.log"

    def log(self) -> str:
        """The log so far (for assertion messages)."""
        return read_log(self.log_path)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 3 s. Idempotent."""
        stop_group(self.process, timeout=3, kill_timeout=3)


def start_coturn(
    workdir: Path,
    *,
    listening_ips: Sequence[str] = ("127.0.0.1",),
    port: int | None = None,
    relay_range: tuple[int, int] | None = None,
    users: Sequence[tuple[str, str]] = (),
    relay_ips: Sequence[str] = (),
    realm: str = "icerelay.test",
    extra_args: Sequence[str] = (),
    namespace: Namespace | None = None,
    ready_timeout: float = 10.0,
) -> Coturn:
    """Start ``turnserver`` and return once it answers a STUN Binding request over UDP.

    Without ``users`` it runs with ``--no-auth``; with users, long-term credentials in ``realm``.
    ``relay_ips``: addresses for relayed transports (default: coturn picks the listening IPs).
    ``extra_args``: any other turnserver options (e.g. ``["--fingerprint"]``).
    ``namespace``: run it (and the readiness check) inside that network namespace; ports are then
    chosen without a bind check (the namespace is private to the test).
    """
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    workdir.mkdir(parents=True, exist_ok=True)
    if port is None:
        if namespace is None:
            port = free_ports(2, hosts=listening_ips, consecutive=True)[0]
        else:
            port = 3478
    if relay_range is None:
        # 100 ports between our listening ports (10000-29999) and Linux's ephemeral range
        # (32768-); coturn skips ports it cannot bind, so overlapping a parallel run is harmless.
        base = random.randrange(300, 327) * 100
        relay_range = (base, base + 99)
    argv = [
        "turnserver",
        "-n",
        "--listening-port", str(port),
        "--alt-listening-port", str(port + 1),
        "--min-port", str(relay_range[0]),
        "--max-port", str(relay_range[1]),
        "--pidfile", str(workdir / "turnserver.pid"),
        "--log-file", str(workdir / "turnserver.log"),
        "--simple-log",
        "--no-stdout-log",
        "--no-cli",
        "--no-tls",
        "--no-dtls",
        "--allow-loopback-peers",
        "--realm", realm,
    ]  # fmt: skip
    for ip in listening_ips:
        argv += ["--listening-ip", ip]
    for ip in relay_ips:
        argv += ["--relay-ip", ip]
    if users:
        argv.append("--lt-cred-mech")
        for user, password in users:
            argv += ["--user", f"{user}:{password}"]
    else:
        argv.append("--no-auth")
    argv += list(extra_args)
    command = namespace.command(argv) if namespace is not None else argv
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    server = Coturn(
        process=process,
        listening_ips=tuple(listening_ips),
        port=port,
        alt_port=port + 1,
        relay_range=relay_range,
        workdir=workdir,
        namespace=namespace,
        argv=argv,
    )
    try:
        ready = stunraw.wait_until_answers(process, server.host, port, ready_timeout, namespace)
    except BaseException:
        server.stop()
        raise
    if not ready:
        error = RuntimeError(
            f"turnserver did not answer on {server.host}:{port} "
            f"(exit={process.poll()}); log:\n{server.log()[-3000:]}"
        )
        server.stop()
        raise error
    return server
