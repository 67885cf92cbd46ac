"""The measurements: relayed streams (stepped load), allocation rate, memory per allocation."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.turn import servers
from benchmarks.turn.allocate import CHANNEL, allocate_many

TOOLS = Path(__file__).resolve().parent.parent / "tools"
PPS_PER_STREAM = 50.0  # one RTP stream at 20 ms packetisation
PAYLOAD = 172  # 12-byte RTP header + 160 bytes of G.711 (20 ms at 8 kHz)
LOSS_LIMIT_PCT = 0.1
# A packet not delivered within this time of being sent counts as lost: the generator reads
# this much longer after its last send, and later arrivals are counted as late, not received.
DEADLINE_S = 0.5
# Before each measurement, wait up to QUIET_MAX_WAIT_S for the machine to be at most QUIET_PCT
# busy (see wait_for_quiet).
QUIET_PCT = 25.0
QUIET_MAX_WAIT_S = 15.0

Result = dict[str, Any]


@dataclass(frozen=True)
class Plan:
    """How hard and how long to push; ``smoke`` only checks the harness works end to end."""

    seconds: float
    steps: tuple[int, ...]
    alloc_window: int  # in-flight clients while setting up the streams' allocations
    # (clients, window) of each allocation-rate run: a few in flight (latency-bound, like
    # clients arriving one by one) and many in flight (what the server can take).
    alloc_runs: tuple[tuple[int, int], ...]
    alloc_repeats: int  # each allocation run, servers taking turns; the best counts
    quiet_wait_s: float  # how long to wait for a quiet machine before each measurement
    max_streams: int

    @classmethod
    def full(cls) -> Plan:
        return cls(
            seconds=10.0,
            # Fine steps at first: on a 2-core machine shared with the generator the limit
            # may be a few hundred streams.
            steps=(
                50,
                100,
                150,
                200,
                300,
                400,
                500,
                600,
                700,
                800,
                900,
                1000,
                1250,
                1500,
                2000,
                2500,
                3000,
                4000,
                5000,
                6000,
                7000,
            ),
            alloc_window=32,
            alloc_runs=((2000, 8), (4000, 128)),
            alloc_repeats=3,
            quiet_wait_s=QUIET_MAX_WAIT_S,
            max_streams=7000,
        )

    @classmethod
    def smoke(cls) -> Plan:
        return cls(
            seconds=1.5,
            steps=(20, 100),
            alloc_window=16,
            alloc_runs=((200, 8), (200, 64)),
            alloc_repeats=1,
            quiet_wait_s=0.0,
            max_streams=100,
        )


def build_turnload(outdir: Path) -> Path:
    """Compile the C load generator (it is small; always rebuild so edits are never stale)."""
    outdir.mkdir(parents=True, exist_ok=True)
    binary = outdir / "turnload"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-o", str(binary), str(TOOLS / "turnload.c")], check=True
    )
    return binary


def raise_fd_limit() -> int:
    """Each stream holds one client socket in this process and in the generator."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def udp_drops() -> dict[int, int]:
    """Per local UDP port, the kernel's receive-buffer drop counter (summed over sockets).

    Drops on the generator's own sockets are the generator's fault, drops on the server's
    relay and listening sockets are the server's: /proc/net/udp tells them apart.
    """
    drops: dict[int, int] = {}
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        port = int(fields[1].split(":")[1], 16)
        drops[port] = drops.get(port, 0) + int(fields[-1])
    return drops


def _peer_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # The peer socket carries the whole client->peer direction: give it a deep queue so a
    # scheduling hiccup of the generator does not show up as the server's loss.
    for option, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):  # *BUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, 32 << 20)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, option, 8 << 20)
    sock.bind(("127.0.0.1", 0))
    return sock


def run_streams(
    server: servers.Server, streams: int, plan: Plan, turnload: Path, workdir: Path
) -> Result:
    """One load step on a freshly started server: ``streams`` allocations, both directions."""
    settings = server.settings
    quiet = wait_for_quiet(max_wait_s=plan.quiet_wait_s)
    server.start()
    peer = _peer_socket()
    result: Result = {"streams": streams, "machine_busy_before_pct": quiet}
    run = None
    try:
        peer_address = peer.getsockname()
        run = allocate_many(
            (settings.host, settings.port),
            streams,
            servers.USERNAME,
            servers.PASSWORD,
            window=plan.alloc_window,
            peer=(peer_address[0], peer_address[1]),
        )
        ok = run.succeeded
        result["allocated"] = len(ok)
        result["allocation_failures"] = run.failures
        if len(ok) < streams:
            result["error"] = f"only {len(ok)} of {streams} allocations: {run.failures}"
            return result
        spec = workdir / f"{server.name}-{streams}.spec"
        lines = [str(peer.fileno())]
        lines += [f"{c.sock.fileno()} {CHANNEL} {c.relayed_port}" for c in ok]
        spec.write_text("\n".join(lines) + "\n")
        result["server_rss_kib"] = servers.rss_kib(server.pid)
        generator_ports = {c.sock.getsockname()[1] for c in ok} | {peer_address[1]}
        drops0 = udp_drops()
        machine0 = _machine_cpu()
        cpu0, t0 = servers.cpu_seconds(server.pid), time.monotonic()
        proc = subprocess.run(
            [
                str(turnload),
                str(spec),
                settings.host,
                str(PPS_PER_STREAM),
                str(plan.seconds),
                str(PAYLOAD),
                "both",
                str(DEADLINE_S),
            ],
            capture_output=True,
            text=True,
            pass_fds=[peer.fileno()] + [c.sock.fileno() for c in ok],
            preexec_fn=_generator_priority,
            check=False,
        )
        wall = time.monotonic() - t0
        server_cpu = servers.cpu_seconds(server.pid) - cpu0
        machine1 = _machine_cpu()
        drops1 = udp_drops()
        if proc.returncode != 0:
            result["error"] = f"turnload failed: {proc.stderr.strip()}"
            return result
        load = json.loads(proc.stdout)
        result.update(load)
        gen_drops = listen_drops = relay_drops = other_drops = 0
        for port, count in drops1.items():
            delta = count - drops0.get(port, 0)
            if port in generator_ports:
                gen_drops += delta
            elif port == settings.port:
                listen_drops += delta
            elif settings.min_port <= port <= settings.max_port:
                relay_drops += delta
            else:
                other_drops += delta
        # Where packets were dropped tells whose queue overflowed: the server's listening
        # socket (client -> peer direction), its relay sockets (peer -> client), the generator.
        result["generator_socket_drops"] = gen_drops
        result["server_listen_socket_drops"] = listen_drops
        result["server_relay_socket_drops"] = relay_drops
        result["other_socket_drops"] = other_drops
        result["server_cpu_pct"] = round(100.0 * server_cpu / wall, 1)
        # CPU per relayed packet is the figure least disturbed by other load on a shared
        # machine: a server starved of CPU loses packets, but does not spend more per packet.
        relayed = sum(d["received"] for d in load["directions"].values())
        result["server_cpu_us_per_packet"] = (
            round(1e6 * server_cpu / relayed, 2) if relayed else None
        )
        # With the kernel offload the relaying happens in softirq context, mostly charged to
        # the generator's sending threads rather than to the server: the whole cost of a
        # relayed packet on this machine (server + generator) is the fair comparison.
        everything = server_cpu + load["sender_cpu_s"] + load["receiver_cpu_s"]
        result["total_cpu_us_per_packet"] = (
            round(1e6 * everything / relayed, 2) if relayed else None
        )
        result["server_threads"] = servers.threads(server.pid)
        busy, steal = _cpu_pcts(machine0, machine1)
        result["machine_busy_pct"], result["steal_pct"] = busy, steal
        # What neither the server nor the generator used: other processes on the machine.
        ours = server_cpu + load["sender_cpu_s"] + load["receiver_cpu_s"]
        capacity = wall * (os.cpu_count() or 1)
        result["background_cpu_pct"] = round(max(0.0, busy - 100.0 * ours / capacity), 1)
        _summarise_step(result, plan)
        return result
    finally:
        peer.close()
        if run is not None:
            for c in run.clients:
                c.sock.close()
        server.stop()
        offloaded = getattr(server, "offloaded_packets", None)
        if offloaded is not None:
            result["offloaded_packets"] = offloaded()


def _generator_priority() -> None:
    """Run the load generator a little ahead of other processes (when allowed).

    On a 2-CPU machine shared with other work, a generator that waits for the CPU sends late
    and reads late: its delays would show up as the server's latency, or stop the stepping
    early. A modest boost (not real-time: other work keeps running) keeps its schedule;
    both servers get the same treatment.
    """
    with contextlib.suppress(OSError):
        os.nice(-5)


def _summarise_step(result: Result, plan: Plan) -> None:
    directions = result["directions"]
    sent = sum(d["sent"] for d in directions.values())
    received = sum(d["received"] for d in directions.values())
    expected = 2 * result["streams"] * PPS_PER_STREAM * plan.seconds
    result["relayed_pps"] = round(received / plan.seconds)
    result["offered_pps"] = round(expected / plan.seconds)
    result["loss_pct"] = round(100.0 * (sent - received) / sent, 4) if sent else 100.0
    result["p99_us"] = max(d["latency_us"]["p99"] for d in directions.values())
    result["p50_us"] = max(d["latency_us"]["p50"] for d in directions.values())
    # The generator is the limit (not the server) when it could not keep its own schedule,
    # when its receiver was busy all the time, or when its own sockets dropped packets.
    reasons = []
    if sent < 0.995 * expected:
        reasons.append(f"sender fell behind ({sent} of {int(expected)} sent)")
    if result["receiver_cpu_s"] > 0.9 * (plan.seconds + DEADLINE_S + 0.2):
        reasons.append(f"receiver CPU-bound ({result['receiver_cpu_s']:.1f} s)")
    if result["generator_socket_drops"] > 0.5 * max(sent - received, 0) > 0:
        reasons.append(f"generator sockets dropped {result['generator_socket_drops']}")
    result["generator_saturated"] = reasons


def step_streams(
    server_classes: list[type[servers.Server]],
    settings: servers.Settings,
    plan: Plan,
    turnload: Path,
    workdir: Path,
    log: Any,
) -> dict[str, Result]:
    """Raise the stream count until loss exceeds the limit or the generator saturates.

    The servers take turns at each step (A at n, B at n, A at the next n, ...) so that both
    meet the same background load on a shared machine, rather than one getting a quiet
    minute and the other a busy one.
    """
    state: dict[str, Result] = {
        cls.name: {"steps": [], "stop_reason": "reached the plan's largest step"}
        for cls in server_classes
    }
    active = list(server_classes)
    for streams in plan.steps:
        if streams > plan.max_streams or not active:
            break
        for server_class in list(active):
            entry = state[server_class.name]
            server = server_class(settings, workdir / server_class.name)
            for attempt in (1, 2):
                try:
                    step = run_streams(server, streams, plan, turnload, workdir)
                except (RuntimeError, OSError) as exc:
                    step = {"streams": streams, "error": str(exc)}
                step["attempt"] = attempt
                entry["steps"].append(step)
                log(f"  {server_class.name} {streams} streams: {_step_line(step)}")
                # One retry of a lossy step: on a shared 2-core VM a single burst of steal
                # or of another process can cost 0.1% of a 10 s run; a server's real limit
                # fails twice. Both attempts stay in the report.
                if "error" in step or step["loss_pct"] <= LOSS_LIMIT_PCT or attempt == 2:
                    break
            stop = None
            if "error" in step:
                stop = f"error at {streams} streams: {step['error']}"
            elif step["loss_pct"] > LOSS_LIMIT_PCT:
                stop = f"loss {step['loss_pct']:.3f}% > {LOSS_LIMIT_PCT}% at {streams} streams"
            elif step["generator_saturated"]:
                stop = f"generator saturated at {streams} streams: " + "; ".join(
                    step["generator_saturated"]
                )
            if stop:
                entry["stop_reason"] = stop
                active.remove(server_class)
    for entry in state.values():
        # A step whose generator fell a little behind still counts if the server relayed what
        # it was offered without loss (the figure is what was really relayed); but then the
        # server's own limit was not reached, which `limited_by` says.
        good = [s for s in entry["steps"] if "error" not in s and s["loss_pct"] <= LOSS_LIMIT_PCT]
        best = max(good, key=lambda s: s["relayed_pps"]) if good else None
        reason = entry["stop_reason"]
        entry["limited_by"] = (
            "generator"
            if reason.startswith("generator saturated")
            else "server loss"
            if reason.startswith("loss")
            else "plan"
            if reason.startswith("reached")
            else "error"
        )
        entry["sustained_streams"] = best["streams"] if best else 0
        entry["sustained_relayed_pps"] = best["relayed_pps"] if best else 0
        entry["p99_us_at_sustained"] = best["p99_us"] if best else None
    return state


def wait_for_quiet(threshold_pct: float = QUIET_PCT, max_wait_s: float = QUIET_MAX_WAIT_S) -> float:
    """Wait (a little) for a moment when the machine is mostly idle; return how busy it was.

    Other work on a shared machine comes in bursts. Starting every measurement in a quiet
    moment, when there is one, makes the servers' runs comparable with each other; the
    measurement still records how busy the machine was while it ran.
    """
    deadline = time.monotonic() + max_wait_s
    busy = 100.0
    while True:
        before = _machine_cpu()
        time.sleep(0.5)
        busy = _cpu_pcts(before, _machine_cpu())[0]
        if busy <= threshold_pct or time.monotonic() >= deadline:
            return busy


def _machine_cpu() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies over all CPUs, to show how loaded the machine was.

    Steal is time the hypervisor gave to other guests: on a shared VM it, not the server,
    can be what a latency tail measures.
    """
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle, steal = fields[3] + fields[4], fields[7]
    return sum(fields) - idle - steal, steal, sum(fields)


def _cpu_pcts(before: tuple[int, int, int], after: tuple[int, int, int]) -> tuple[float, float]:
    total = after[2] - before[2]
    if not total:
        return 0.0, 0.0
    return (
        round(100.0 * (after[0] - before[0]) / total, 1),
        round(100.0 * (after[1] - before[1]) / total, 1),
    )


def _step_line(step: Result) -> str:
    if "error" in step:
        return f"ERROR {step['error']}"
    sat = " GENERATOR-SATURATED" if step["generator_saturated"] else ""
    return (
        f"relayed {step['relayed_pps']} pps of {step['offered_pps']}, loss {step['loss_pct']}%, "
        f"p50 {step['p50_us']:.0f} us p99 {step['p99_us']:.0f} us, "
        f"server CPU {step['server_cpu_pct']}%, machine busy {step['machine_busy_pct']}% "
        f"(other processes {step['background_cpu_pct']}%), steal {step['steal_pct']}%{sat}"
    )


def allocation_rate(
    server_class: type[servers.Server],
    settings: servers.Settings,
    count: int,
    window: int,
    workdir: Path,
    quiet_wait_s: float = QUIET_MAX_WAIT_S,
) -> Result:
    """Allocate+401+Allocate round trips from many clients, and RSS growth per allocation."""
    server = server_class(settings, workdir / server_class.name)
    quiet = wait_for_quiet(max_wait_s=quiet_wait_s)
    server.start()
    run = None
    try:
        # A few allocations first, so one-off lazy set-up is not charged to the measured ones.
        warm = allocate_many(
            (settings.host, settings.port), 20, servers.USERNAME, servers.PASSWORD, window=4
        )
        time.sleep(0.3)
        rss0 = servers.rss_kib(server.pid)
        cpu0 = servers.cpu_seconds(server.pid)
        run = allocate_many(
            (settings.host, settings.port),
            count,
            servers.USERNAME,
            servers.PASSWORD,
            window=window,
        )
        server_cpu = servers.cpu_seconds(server.pid) - cpu0
        time.sleep(0.3)
        rss1 = servers.rss_kib(server.pid)
        done = len(run.succeeded)
        for c in warm.clients:
            c.sock.close()
        return {
            "clients": count,
            "window": window,
            "machine_busy_before_pct": quiet,
            "succeeded": done,
            "failures": run.failures,
            "elapsed_s": round(run.elapsed_s, 3),
            "allocations_per_s": round(done / run.elapsed_s, 1) if run.elapsed_s else 0,
            "server_cpu_pct": round(100.0 * server_cpu / run.elapsed_s, 1),
            "generator_cpu_pct": round(100.0 * run.generator_cpu_s / run.elapsed_s, 1),
            "rss_before_kib": rss0,
            "rss_after_kib": rss1,
            "bytes_per_allocation": round((rss1 - rss0) * 1024 / done) if done else None,
        }
    finally:
        if run is not None:
            for c in run.clients:
                with contextlib.suppress(OSError):
                    c.sock.close()
        server.stop()


def allocation_rates(
    server_classes: list[type[servers.Server]],
    settings: servers.Settings,
    plan: Plan,
    workdir: Path,
    log: Any,
) -> dict[str, Result]:
    """Every allocation run ``plan.alloc_repeats`` times, servers taking turns; best counts.

    Runs last a few seconds, so one burst of other load on a shared machine can halve one;
    the best of a few, taken the same way for both servers, is the capacity figure.
    """
    out: dict[str, Result] = {cls.name: {"runs": []} for cls in server_classes}
    failed: set[str] = set()
    for count, window in plan.alloc_runs:
        for _ in range(plan.alloc_repeats):
            for cls in server_classes:
                if cls.name in failed:
                    continue
                try:
                    run = allocation_rate(cls, settings, count, window, workdir, plan.quiet_wait_s)
                except (RuntimeError, OSError) as exc:
                    out[cls.name]["error"] = str(exc)
                    failed.add(cls.name)
                    log(f"  {cls.name} allocations: ERROR {exc}")
                    continue
                out[cls.name]["runs"].append(run)
                log(
                    f"  {cls.name} allocations: {count} clients, window {window}: "
                    f"{run['allocations_per_s']}/s, {run['bytes_per_allocation']} B/allocation, "
                    f"server CPU {run['server_cpu_pct']}%, failures {run['failures']}"
                )
    for entry in out.values():
        best: dict[str, Result] = {}
        for run in entry["runs"]:
            key = str(run["window"])
            if key not in best or run["allocations_per_s"] > best[key]["allocations_per_s"]:
                best[key] = run
        entry["best_by_window"] = best
        # Memory from the largest runs (RSS moves in allocator-sized steps; many allocations
        # average that out); the median of those runs.
        largest = max((r["succeeded"] for r in entry["runs"]), default=0)
        sizes = sorted(
            r["bytes_per_allocation"]
            for r in entry["runs"]
            if r["succeeded"] == largest and r["bytes_per_allocation"] is not None
        )
        entry["bytes_per_allocation"] = sizes[len(sizes) // 2] if sizes else None
    return out


def environment(coturn_threads: int | None) -> Result:
    uname = os.uname()
    return {
        "cpus": os.cpu_count(),
        "kernel": f"{uname.sysname} {uname.release}",
        "machine": uname.machine,
        "cpu_model": _cpu_model(),
        "coturn_threads": coturn_threads,
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"
