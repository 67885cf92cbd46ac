"""Start Kamailio 5.6 as a record-routing proxy that drives a relay over the ng protocol.

The configuration is tests/interop/kamailio/proxy.cfg with its ``@@NAME@@`` placeholders filled
in (a plain marker, because Kamailio's own syntax is full of ``$`` and braces). Each instance
runs in the foreground (``-DD``) in its own process group, with its runtime directory, pid file
and working directory in the test's temporary directory, and logs to a file. It is ready when it
answers an OPTIONS sent to itself (the config answers those with 200).

Start the relay first: the rtpengine module pings its relays when its children start and, if one
does not answer, only retries after ``rtpengine_disable_tout`` (1 s in our config).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.process import read_log, spawn_logged, stop_group, wait_until

__all__ = [
    "CONFIG_DIR",
    "DEFAULT_FLAGS",
    "Kamailio",
    "binary",
    "command",
    "start_kamailio",
    "unavailable_reason",
]

#: Configs and SIPp scenarios of the Kamailio interop tests.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "interop" / "kamailio"
#: What Kamailio's rtpengine functions are given in practice.
DEFAULT_FLAGS = "replace-origin replace-session-connection"


def binary() -> str | None:
    found = shutil.which("kamailio")
    if found is None and os.access("/usr/sbin/kamailio", os.X_OK):
        # Debian installs it in /usr/sbin, which a non-root PATH may lack.
        found = "/usr/sbin/kamailio"
    return found


def unavailable_reason() -> str | None:
    """Why Kamailio can't run here (None when it can)."""
    path = binary()
    if path is None:
        return "kamailio not installed (Debian package kamailio; run scripts/install-debian-deps)"
    modules = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")
    if modules.is_dir() and not (modules / "rtpengine.so").exists():
        return "kamailio's rtpengine module is missing"
    return None


@dataclass
class Kamailio:
    """A running Kamailio."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    workdir: Path
    argv: list[str] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.workdir / "kamailio.log"

    def log(self) -> str:
        return read_log(self.log_path)

    def stop(self) -> None:
        """SIGTERM to the whole process group (main + children), SIGKILL after 5 s."""
        stop_group(self.process)


def render_config(
    *, sip_host: str, sip_port: int, ng_host: str, ng_port: int, flags: str = DEFAULT_FLAGS
) -> str:
    """proxy.cfg with the placeholders filled in."""
    text = (CONFIG_DIR / "proxy.cfg").read_text()
    values = {
        "SIP_HOST": sip_host,
        "SIP_PORT": str(sip_port),
        "NG_HOST": ng_host,
        "NG_PORT": str(ng_port),
        "FLAGS": flags,
    }
    for name, value in values.items():
        text = text.replace(f"@@{name}@@", value)
    if "@@" in text:
        raise ValueError("proxy.cfg has a placeholder render_config does not know")
    return text


def command(path: str, config: Path, workdir: Path) -> list[str]:
    """The argv that runs Kamailio ``path`` with ``config`` for a test, its state in ``workdir``.

    Creates ``workdir/run`` (its runtime directory).
    """
    rundir = workdir / "run"
    rundir.mkdir(exist_ok=True)
    return [
        path,
        "-f", str(config),
        "-DD",  # stay in the foreground (children still fork): the test owns the process
        "-E",  # log to stderr, i.e. our log file
        "-Y", str(rundir),  # runtime dir: not /run/kamailio, which a system instance may own
        "-P", str(rundir / "kamailio.pid"),
        "-w", str(workdir),
        "-m", "32",  # shared memory (MB): a proxy for a handful of calls needs little
        "-M", "8",  # private memory per process (MB)
    ]  # fmt: skip


def start_kamailio(
    workdir: Path,
    *,
    sip_port: int,
    ng_port: int,
    sip_host: str = "127.0.0.1",
    ng_host: str = "127.0.0.1",
    flags: str = DEFAULT_FLAGS,
    ready_timeout: float = 15.0,
) -> Kamailio:
    """Write ``workdir/kamailio.cfg``, start Kamailio with it, wait until it answers OPTIONS."""
    path = binary()
    if path is None:
        raise RuntimeError(unavailable_reason() or "kamailio not found")
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "kamailio.cfg"
    config.write_text(
        render_config(
            sip_host=sip_host, sip_port=sip_port, ng_host=ng_host, ng_port=ng_port, flags=flags
        )
    )
    argv = command(path, config, workdir)
    process = spawn_logged(argv, workdir / "kamailio.log", cwd=workdir)
    kamailio = Kamailio(process, sip_host, sip_port, workdir, argv)
    if wait_until(process, lambda: _answers_options(sip_host, sip_port), ready_timeout, 0.1):
        return kamailio
    kamailio.stop()
    raise RuntimeError(
        f"kamailio did not answer OPTIONS on {sip_host}:{sip_port} "
        f"(exit={process.returncode}); log:\n{kamailio.log()[-3000:]}"
    )


def _answers_options(host: str, port: int, timeout: float = 0.3) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        local_port = sock.getsockname()[1]
        branch = "z9hG4bK" + uuid.uuid4().hex[:16]
        request = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{local_port};branch={branch}\r\n"
            f"From: <sip:probe@{host}>;tag={uuid.uuid4().hex[:8]}\r\n"
            f"To: <sip:{host}:{port}>\r\n"
            f"Call-ID: {uuid.uuid4().hex}@{host}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Max-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        sock.settimeout(timeout)
        try:
            sock.sendto(request.encode(), (host, port))
            reply = sock.recv(65536)
        except OSError:
            return False
    return reply.startswith(b"SIP/2.0 200")
