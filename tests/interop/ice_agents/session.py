"""Run two :mod:`.agent` processes against each other and relay their signalling.

The parent plays the SIP proxy: it waits for both agents' ``local`` reports, hands each one the
other's credentials and candidates at the same moment (no trickle: both start checking with
everything in hand, which is what the benchmark's physical floor assumes), then collects the
``connected`` / ``completed`` / ``data`` reports and tells both to quit.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.support.netns import Namespace

from .topology import ROOT


class AgentError(RuntimeError):
    """An agent failed, exited early or did not report in time (message has its stderr)."""


@dataclass
class AgentProcess:
    """A running agent; ``reports`` keeps every JSON line it printed, by event name."""

    name: str
    impl: str
    process: subprocess.Popen[str]
    lines: queue.Queue[dict[str, Any] | None] = field(default_factory=queue.Queue)
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    stderr: list[str] = field(default_factory=list)

    def start_readers(self) -> None:
        def read_stdout() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                try:
                    self.lines.put(json.loads(line))
                except json.JSONDecodeError:
                    self.stderr.append(f"(stdout) {line}")
            self.lines.put(None)

        def read_stderr() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                self.stderr.append(line)

        threading.Thread(target=read_stdout, daemon=True).start()
        threading.Thread(target=read_stderr, daemon=True).start()

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """Wait for ``event`` (earlier reports are kept); AgentError on failure or timeout."""
        deadline = time.monotonic() + timeout
        while event not in self.reports:
            remaining = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(remaining, 0.0))
            except queue.Empty:
                raise AgentError(self._explain(f"no {event!r} within {timeout} s")) from None
            if line is None:
                raise AgentError(self._explain(f"exited before {event!r}"))
            key = line["event"]
            if key == "data":
                key = f"data{line['component']}"  # one report per component
            self.reports.setdefault(key, line)
            if key == "failed":
                raise AgentError(self._explain(f"failed: {line}"))
        return self.reports[event]

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def quit(self, timeout: float = 10.0) -> None:
        """Ask the agent to close, wait for it; killed if it hangs."""
        try:
            self.send({"cmd": "quit"})
            self.process.stdin.close()  # type: ignore[union-attr]
        except (BrokenPipeError, OSError):
            pass
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    def _explain(self, what: str) -> str:
        tail = "".join(self.stderr[-40:])
        return f"agent {self.name} {what}; reports={list(self.reports)}; stderr:\n{tail}"


def start_agent(
    name: str, impl: str, options: Sequence[str], namespace: Namespace | None = None
) -> AgentProcess:
    """Start ``python -m tests.interop.ice_agents.agent --impl IMPL OPTIONS`` (in ``namespace``
    if given); ``impl`` is ``icerelay`` or ``aioice``."""
    argv = [sys.executable, "-m", "tests.interop.ice_agents.agent", "--impl", impl, *options]
    kwargs: dict[str, Any] = {
        "stdin": subprocess.PIPE,
        "stdout": subprocess.PIPE,
        "stderr": subprocess.PIPE,
        "cwd": str(ROOT),
        "bufsize": 1,
    }
    if namespace is not None:
        process = namespace.popen(*argv, **kwargs)
    else:
        process = subprocess.Popen(argv, text=True, **kwargs)
    agent = AgentProcess(name, impl, process)
    agent.start_readers()
    return agent


@dataclass
class SessionResult:
    """Both agents' reports."""

    left: dict[str, dict[str, Any]]
    right: dict[str, dict[str, Any]]

    @property
    def started_at(self) -> float:
        """When the later agent had the peer's candidates (the benchmark's time zero)."""
        return max(float(self.left["remote_set"]["t"]), float(self.right["remote_set"]["t"]))

    def connected_after(self) -> float:
        """Seconds from :attr:`started_at` until both agents were connected."""
        connected = max(float(self.left["connected"]["t"]), float(self.right["connected"]["t"]))
        return connected - self.started_at


def run_session(
    left: AgentProcess,
    right: AgentProcess,
    *,
    timeout: float = 30.0,
    components: int = 1,
    wait_completed: bool = True,
) -> SessionResult:
    """Signal, wait until both are connected and media arrived both ways, then quit both."""
    try:
        left_local = left.expect("local", timeout)
        right_local = right.expect("local", timeout)
        for agent, peer in ((left, right_local), (right, left_local)):
            agent.send({key: peer[key] for key in ("ufrag", "pwd", "candidates")})
        for agent in (left, right):
            agent.expect("connected", timeout)
        for agent in (left, right):
            for component in range(1, components + 1):
                agent.expect(f"data{component}", timeout)
            if wait_completed and agent.impl == "icerelay":
                # icerelay reports nomination on its own; aioice's connect() returns only then,
                # so its "connected" already is that moment.
                agent.expect("completed", timeout)
    finally:
        left.quit()
        right.quit()
    return SessionResult(left.reports, right.reports)
