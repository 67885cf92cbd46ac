"""Time to connected and checks sent: icerelay's ICE agent and aioice, side by side.

Each *run* starts two agents of the same implementation as separate processes
(:mod:`tests.interop.ice_agents.agent`), lets both gather, then hands each the other's
credentials and candidates at the same moment (no trickle) and records, on the machine-wide
monotonic clock:

- **time to connected**: from the moment the later of the two agents had the peer's candidates
  until both could send media. For icerelay that is ``connected`` (a valid pair, RFC 8445 lets
  media flow before nomination); aioice's ``connect()`` only returns after nomination, so its
  figure is also its *completed* time. icerelay's *completed* (nominated on both sides) is
  reported too, so the like-for-like comparison is visible;
- **checks sent**: Binding requests (retransmissions included) of both agents until then;
- the selected pair's candidate types, and for icerelay the RTT of the check that validated it.

The **physical floor** is one round trip on the best pair: the earliest either agent can know
that a pair works is when the answer to its first check on it returns. It is measured
independently with a UDP echo between the two agents' addresses (host setups) or, through a TURN
relay, taken as the RTT of icerelay's validating check on the relayed pair (the same path).

Setups (runs alternate between the implementations):

- ``loopback``: both agents on 127.0.0.1, host candidates;
- ``netns-50ms``: two namespaces joined by a router adding 25 ms each way (``tc netem`` where the
  kernel has it, else a userspace TUN delay line), host candidates;
- ``turn``: relay-only (icerelay ``relay_only``, aioice ``TransportPolicy.RELAY``) through one
  coturn on loopback, both agents allocating there;
- ``turn-50ms``: relay-only through coturn in namespace b of the 50 ms pair (the relayed path
  crosses the delay once each way, so its RTT is ~50 ms too).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.interop.ice_agents.session import AgentError, SessionResult, run_session, start_agent
from tests.interop.ice_agents.topology import DelayedPair, build_delayed_pair
from tests.support import coturn as coturn_support
from tests.support import netns
from tests.support.netns import Lab, Namespace

IMPLS = ("icerelay", "icerelay-aggressive", "aioice")
"""icerelay with its default regular nomination, with aggressive nomination (what aioice does:
USE-CANDIDATE in every check of the controlling agent), and aioice."""
SETUPS = ("loopback", "netns-50ms", "turn", "turn-50ms")
TURN_USER, TURN_PASSWORD = "bench", "bench-secret"
RTT_MS = 50.0


@dataclass
class Environment:
    """Where the two agents run and what they are told."""

    name: str
    a_host: str
    b_host: str
    a_ns: Namespace | None = None
    b_ns: Namespace | None = None
    extra: list[str] = field(default_factory=list)
    floor_ms: float | None = None
    floor_method: str = ""
    delay_method: str = ""


@dataclass
class Run:
    impl: str
    connected_ms: float
    completed_ms: float | None
    checks_connected: int
    checks_completed: int | None
    pair: str
    rtt_ms: float | None


def _run_once(env: Environment, impl: str, timeout: float) -> Run:
    options = [*env.extra, "--timeout", str(timeout)]
    agent_impl = impl
    if impl == "icerelay-aggressive":
        agent_impl = "icerelay"
        options += ["--nomination", "aggressive"]
    left = start_agent(
        "a", agent_impl, ["--role", "controlling", "--host", env.a_host, *options], env.a_ns
    )
    right = start_agent(
        "b", agent_impl, ["--role", "controlled", "--host", env.b_host, *options], env.b_ns
    )
    result: SessionResult = run_session(left, right, timeout=timeout + 5)
    start = result.started_at
    connected = result.connected_after() * 1000
    completed = None
    checks_completed = None
    if agent_impl == "icerelay":
        completed = (
            max(float(result.left["completed"]["t"]), float(result.right["completed"]["t"])) - start
        ) * 1000
        checks_completed = int(result.left["completed"]["checks_sent"]) + int(
            result.right["completed"]["checks_sent"]
        )
    report = result.left["connected"]
    rtt = report.get("rtt")
    return Run(
        impl=impl,
        connected_ms=connected,
        completed_ms=completed,
        checks_connected=int(result.left["connected"]["checks_sent"])
        + int(result.right["connected"]["checks_sent"]),
        checks_completed=checks_completed,
        pair=f"{report['local_type']}/{report['remote_type']}",
        rtt_ms=rtt * 1000 if rtt is not None else None,
    )


# --- floors ------------------------------------------------------------------------------------

_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
print(s.getsockname()[1], flush=True)
while True:
    data, address = s.recvfrom(2048)
    s.sendto(data, address)
"""

_PING = """
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
rtts = []
for _ in range(int(sys.argv[3])):
    start = time.monotonic()
    s.sendto(b"x" * 100, (sys.argv[1], int(sys.argv[2])))
    s.recvfrom(2048)
    rtts.append((time.monotonic() - start) * 1000)
    time.sleep(0.01)
print(json.dumps(rtts))
"""


def udp_rtt_ms(
    server_host: str, client_ns: Namespace | None, server_ns: Namespace | None, count: int = 20
) -> float:
    """Median RTT of a 100-byte UDP echo from ``client_ns`` to ``server_host`` in ``server_ns``."""
    argv = [sys.executable, "-c", _ECHO, server_host]
    echo = subprocess.Popen(
        server_ns.command(argv) if server_ns is not None else argv,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert echo.stdout is not None
        port = echo.stdout.readline().strip()
        argv = [sys.executable, "-c", _PING, server_host, port, str(count)]
        out = subprocess.run(
            client_ns.command(argv) if client_ns is not None else argv,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        return float(statistics.median(json.loads(out)))
    finally:
        echo.kill()
        echo.wait()


# --- setups ------------------------------------------------------------------------------------


@contextmanager
def environment(name: str, workdir: Path) -> Iterator[Environment]:
    """Build a setup; everything it started is stopped on exit."""
    if name == "loopback":
        env = Environment(name, "127.0.0.1", "127.0.0.1")
        env.floor_ms = udp_rtt_ms("127.0.0.1", None, None)
        env.floor_method = "UDP echo on 127.0.0.1"
        yield env
        return
    if name == "turn":
        server = coturn_support.start_coturn(
            workdir / "coturn-loopback", users=[(TURN_USER, TURN_PASSWORD)]
        )
        try:
            env = Environment(name, "127.0.0.1", "127.0.0.1", extra=_turn_options(server))
            env.floor_ms = 2 * udp_rtt_ms("127.0.0.1", None, None)
            env.floor_method = _TURN_FLOOR
            yield env
        finally:
            server.stop()
        return
    reason = netns.unavailable_reason()
    if reason is not None:
        raise Unavailable(reason)
    with Lab("icb") as lab:
        pair: DelayedPair = build_delayed_pair(lab, RTT_MS)
        env = Environment(
            name, pair.a_address, pair.b_address, pair.a, pair.b, delay_method=pair.method
        )
        if name == "netns-50ms":
            env.floor_ms = udp_rtt_ms(pair.b_address, pair.a, pair.b)
            env.floor_method = f"UDP echo a -> b ({pair.method})"
            yield env
            return
        server = coturn_support.start_coturn(
            workdir / "coturn-50ms",
            listening_ips=(pair.b_address,),
            users=[(TURN_USER, TURN_PASSWORD)],
            namespace=pair.b,
        )
        try:
            env.extra = _turn_options(server)
            env.floor_ms = udp_rtt_ms(pair.b_address, pair.a, pair.b) + udp_rtt_ms(
                pair.b_address, pair.b, pair.b
            )
            env.floor_method = _TURN_FLOOR
            yield env
        finally:
            server.stop()


_TURN_FLOOR = (
    "UDP echo RTT a <-> TURN server + b <-> TURN server: the relayed path's round trip "
    "(a -> server -> b -> server -> a), without the server's processing time"
)


class Unavailable(RuntimeError):
    """A setup cannot be built here (e.g. namespaces without root)."""


def _turn_options(server: coturn_support.Coturn) -> list[str]:
    address = f"{server.host}:{server.port}"
    return [
        "--turn", address, "--turn-user", TURN_USER, "--turn-password", TURN_PASSWORD,
        "--relay-only",
    ]  # fmt: skip


# --- the whole benchmark --------------------------------------------------------------------------


def summarize(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def run_setup(
    name: str, runs: int, workdir: Path, log: Callable[[str], None], timeout: float = 20.0
) -> dict[str, Any]:
    with environment(name, workdir) as env:
        results: dict[str, list[Run]] = {impl: [] for impl in IMPLS}
        failures: dict[str, list[str]] = {impl: [] for impl in IMPLS}
        for index in range(runs):
            # Alternate who goes first, so drift in machine load hits both alike.
            order = IMPLS if index % 2 == 0 else tuple(reversed(IMPLS))
            for impl in order:
                try:
                    run = _run_once(env, impl, timeout)
                except AgentError as exc:
                    failures[impl].append(str(exc)[:500])
                    log(f"  {name} {impl} run {index + 1}: FAILED {str(exc)[:200]}")
                    continue
                results[impl].append(run)
                log(
                    f"  {name} {impl} run {index + 1}: connected {run.connected_ms:.1f} ms"
                    + (f", completed {run.completed_ms:.1f} ms" if run.completed_ms else "")
                    + f", checks {run.checks_connected}, pair {run.pair}"
                )
        floor = env.floor_ms
        data: dict[str, Any] = {
            "setup": name,
            "floor_ms": floor,
            "floor_method": env.floor_method,
            "delay_method": env.delay_method,
            "runs": runs,
            "impls": {},
        }
        for impl, impl_runs in results.items():
            entry: dict[str, Any] = {
                "ok": len(impl_runs),
                "failed": len(failures[impl]),
                "failures": failures[impl],
                "raw": [run.__dict__ for run in impl_runs],
            }
            if impl_runs:
                entry["connected_ms"] = summarize([r.connected_ms for r in impl_runs])
                entry["checks_connected"] = summarize(
                    [float(r.checks_connected) for r in impl_runs]
                )
                entry["pairs"] = sorted({r.pair for r in impl_runs})
                rtts = [r.rtt_ms for r in impl_runs if r.rtt_ms is not None]
                if rtts:
                    entry["validating_check_rtt_ms"] = summarize(rtts)
                completed = [r.completed_ms for r in impl_runs if r.completed_ms is not None]
                if completed:
                    entry["completed_ms"] = summarize(completed)
                    entry["checks_completed"] = summarize(
                        [float(r.checks_completed or 0) for r in impl_runs]
                    )
            data["impls"][impl] = entry
        return data


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": sys.version.split()[0], "host": socket.gethostname()}
    with suppress(OSError):
        info["load_avg_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
    with suppress(OSError):
        info["cpus"] = os.cpu_count()
    with suppress(Exception):
        import aioice

        info["aioice"] = aioice.__version__
    return info


def run_all(setups: list[str], runs: int, log: Callable[[str], None]) -> dict[str, Any]:
    started = time.time()
    data: dict[str, Any] = {
        "started_unix": started,
        "machine": machine(),
        "runs_per_impl": runs,
        "setups": {},
        "skipped": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-ice-") as tmp:
        for name in setups:
            log(f"setup {name}")
            try:
                data["setups"][name] = run_setup(name, runs, Path(tmp), log)
            except Unavailable as exc:
                data["skipped"][name] = str(exc)
                log(f"  skipped: {exc}")
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                data["skipped"][name] = f"setup failed: {exc}"
                log(f"  setup failed: {exc}")
    data["seconds"] = time.time() - started
    return data
