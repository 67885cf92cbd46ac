"""What every launcher in tests/support does with the daemon it starts.

Each daemon runs in a process group of its own (``start_new_session=True``), so signals sent to
the group reach the daemon and its children (Kamailio forks) and nothing else on the machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def spawn_logged(
    argv: Sequence[str],
    log_path: Path,
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    stdin: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own process group, stdout and stderr both to ``log_path``."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=stdin,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )


def read_log(path: Path) -> str:
    """The file's text so far, "" when it does not exist (for assertion messages)."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def wait_until(
    process: subprocess.Popen[Any],
    ready: Callable[[], bool],
    timeout: float,
    interval: float = 0.05,
) -> bool:
    """Poll ``ready()`` until it is true (True), the process exits or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if ready():
            return True
        time.sleep(interval)
    return False


def stop_group(
    process: subprocess.Popen[Any],
    *,
    sig: signal.Signals = signal.SIGTERM,
    timeout: float = 5.0,
    kill_timeout: float = 5.0,
) -> int:
    """``sig`` to the process group, SIGKILL if it has not exited after ``timeout`` s.

    Idempotent; returns the exit status.
    """
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=kill_timeout)
    return process.returncode
