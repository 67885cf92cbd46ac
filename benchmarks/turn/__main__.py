"""python -m benchmarks.turn [--smoke] [--servers icerelay,coturn]

Measures our TURN server and coturn side by side and writes benchmarks/turn/REPORT.md and
report.json (the full run) or results/REPORT-smoke.md (the smoke run, which only shows that the
harness works and finishes in well under a minute).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
from pathlib import Path

from benchmarks.turn import bench, report, servers

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.turn", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny loads, < 1 minute")
    parser.add_argument(
        "--servers",
        default="icerelay-offload,icerelay,coturn",
        help="comma-separated: " + ", ".join(servers.SERVERS),
    )
    parser.add_argument("--seconds", type=float, help="length of each load step")
    parser.add_argument(
        "--steps", help="comma-separated stream counts to step through (instead of the plan's)"
    )
    parser.add_argument("--port", type=int, default=servers.Settings.port)
    args = parser.parse_args(argv)

    plan = bench.Plan.smoke() if args.smoke else bench.Plan.full()
    if args.seconds:
        plan = dataclasses.replace(plan, seconds=args.seconds)
    if args.steps:
        steps = tuple(int(step) for step in args.steps.split(","))
        plan = dataclasses.replace(plan, steps=steps, max_streams=max(steps))
    results_dir = HERE / "results"
    workdir = results_dir / ("smoke" if args.smoke else "full")
    workdir.mkdir(parents=True, exist_ok=True)
    settings = servers.Settings(port=args.port)
    fd_limit = bench.raise_fd_limit()
    # Relay ports bound the number of allocations, and so does the fd limit (one client
    # socket each in this process, and coturn holds two descriptors per UDP allocation).
    max_streams = min(plan.max_streams, settings.max_port - settings.min_port, fd_limit // 2 - 100)
    plan = dataclasses.replace(plan, max_streams=max_streams)
    turnload = bench.build_turnload(results_dir / "bin")

    def log(line: str) -> None:
        print(line, flush=True)

    started = datetime.datetime.now(datetime.UTC)
    data: bench.Result = {
        "started_utc": started.isoformat(timespec="seconds"),
        "mode": "smoke" if args.smoke else "full",
        "plan": {
            "seconds_per_step": plan.seconds,
            "steps": [s for s in plan.steps if s <= plan.max_streams],
            "pps_per_stream_each_way": bench.PPS_PER_STREAM,
            "payload_bytes": bench.PAYLOAD,
            "loss_limit_pct": bench.LOSS_LIMIT_PCT,
            "allocation_runs": [list(run) for run in plan.alloc_runs],
        },
        "servers": {},
    }
    classes = [servers.SERVERS[n.strip()] for n in args.servers.split(",") if n.strip()]
    runnable = []
    for server_class in classes:
        name = server_class.name
        data["servers"][name] = {"version": server_class(settings, workdir / name).version()}
    log("allocation rate and memory:")
    allocations = bench.allocation_rates(classes, settings, plan, workdir, log)
    for server_class in classes:
        name = server_class.name
        entry = data["servers"][name]
        entry["allocation"] = allocations[name]
        if "error" in allocations[name]:
            entry["error"] = allocations[name]["error"]
            log(f"{name} could not be measured: {entry['error']}")
        else:
            runnable.append(server_class)
    log("relayed streams:")
    streams = bench.step_streams(runnable, settings, plan, turnload, workdir, log)
    coturn_threads = None
    for name, result in streams.items():
        data["servers"][name]["streams"] = result
        log(f"{name} stopped: {result['stop_reason']}")
        threads = [s["server_threads"] for s in result["steps"] if "server_threads" in s]
        if name == "coturn" and threads:
            coturn_threads = threads[0]
    data["environment"] = bench.environment(coturn_threads)
    data["finished_utc"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")

    if args.smoke:
        json_path, md_path = results_dir / "report-smoke.json", results_dir / "REPORT-smoke.md"
        history_path = results_dir / "history-smoke.jsonl"
    else:
        json_path, md_path = HERE / "report.json", HERE / "REPORT.md"
        history_path = HERE / "history.jsonl"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    # Every run is kept as one summary line: on a shared machine one run is one sample.
    with history_path.open("a") as history_file:
        history_file.write(json.dumps(report.summary(data)) + "\n")
    history = [json.loads(line) for line in history_path.read_text().splitlines() if line]
    md_path.write_text(report.render(data, history))
    log(f"wrote {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
