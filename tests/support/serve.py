"""Run ``icerelay serve`` as a real subprocess (loopback or inside a namespace).

The server is started with ``python -m icerelay`` from this interpreter (so the checkout under test
is what runs), waited for with an independent STUN Binding poll, and stopped with SIGINT (what
Ctrl-C sends) so that tests also exercise the clean shutdown path.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO

from tests.support import stunraw
from tests.support.netns import Namespace


@dataclass
class ServeProcess:
    """A running ``icerelay serve``."""

    process: subprocess.Popen[str]
    host: str
    port: int
    argv: list[str]
    namespace: Namespace | None = None
    #: Where the daemon's stdout and stderr go: a file, not a pipe. A pipe nobody reads fills
    #: up (64 KiB) and then blocks the daemon in its next log write, in the middle of a test.
    log: IO[str] | None = None
    _output: str | None = None

    def stop(self, timeout: float = 5.0) -> int:
        """SIGINT and wait; returns the exit status (SIGKILL if it does not stop in time)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        if self._output is None and self.log is not None:
            self.log.seek(0)
            self._output = self.log.read()
            self.log.close()
        return self.process.returncode

    def output(self) -> str:
        """stdout + stderr (only after :meth:`stop`)."""
        return self._output or ""


def icerelay_command(*args: str) -> list[str]:
    """The argv that runs the icerelay CLI of this checkout."""
    return [sys.executable, "-m", "icerelay", *args]


def start_serve(
    args: Sequence[str],
    *,
    host: str,
    port: int,
    namespace: Namespace | None = None,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 10.0,
) -> ServeProcess:
    """Start ``icerelay serve ARGS`` and wait until ``host:port`` answers a Binding over UDP."""
    argv = icerelay_command("serve", *args)
    command = namespace.command(argv) if namespace is not None else argv
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ICERELAY_")}
    full_env.update(env or {})
    # The media relay is on by default in serve; tests that want it say so (ICERELAY_RELAY__...),
    # the others must not all bind 127.0.0.1:2223 or, as root, create /run and /var/lib paths.
    full_env.setdefault("ICERELAY_RELAY__ENABLED", "0")
    # Likewise the HTTP listener (127.0.0.1:9470 by default): tests that want it set a port.
    full_env.setdefault("ICERELAY_HTTP__LISTEN", "")
    # Closed by ServeProcess.stop, once the output is read.
    log = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")  # noqa: SIM115
    process = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env=full_env,
        start_new_session=True,
    )
    server = ServeProcess(process, host, port, argv, namespace, log)
    if namespace is not None:
        namespace.lab.processes.append(process)
    try:
        ready = stunraw.wait_until_answers(process, host, port, ready_timeout, namespace)
    except BaseException:
        server.stop()
        raise
    if not ready:
        server.stop()
        raise RuntimeError(
            f"icerelay serve did not answer on {host}:{port} "
            f"(exit={process.returncode}); output:\n{server.output()[-3000:]}"
        )
    return server
