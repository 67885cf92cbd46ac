"""ng offer+answer pairs and deletes per second, and the server's CPU per pair and per delete,
for icerelay and rtpengine in the same run (the control path alone: no media is sent)::

    PYTHONPATH=$PWD/src python -m benchmarks.relay.ngrate icerelay,rtpengine 2000 3

Each round sets up ``calls`` calls with ``window`` requests in flight (:class:`.bench.NgPipeline`,
as the report's ng figures), then deletes them; the CPU is the server process's user + system
time from /proc (all its threads), so "us/pair" is what one offer+answer costs the server
whatever the load generator does. On a shared machine the rates vary a lot between runs; the
CPU per pair much less, and a ratio between servers means something only within one run.

``--spy FILE`` records the last round of each server with py-spy (raw format, FILE.<server>).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.relay import bench


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.relay.ngrate")
    parser.add_argument("servers", help="comma-separated: icerelay, icerelay-kernel, rtpengine")
    parser.add_argument("calls", type=int, nargs="?", default=2000)
    parser.add_argument("rounds", type=int, nargs="?", default=3)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--ng-port", type=int, default=61223, help="and the two next ones")
    parser.add_argument("--ports", default="30000-59999", help="the servers' relay port range")
    parser.add_argument("--spy", metavar="FILE", help="py-spy raw profile of the last round")
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy executable")
    args = parser.parse_args()
    plan = bench.Plan.full()
    low, _, high = args.ports.partition("-")
    plan.port_min, plan.port_max = int(low), int(high)
    plan.ng_port, plan.src_port, plan.sink_port = args.ng_port, args.ng_port + 1, args.ng_port + 3
    for name in args.servers.split(","):
        with tempfile.TemporaryDirectory() as workdir, bench.running(
            name, plan, Path(workdir)
        ) as server:
            for round_ in range(args.rounds):
                ng = bench.NgPipeline(
                    plan.ng_port, plan.src_port, plan.sink_port, window=args.window
                )
                spy = None
                if args.spy and round_ == args.rounds - 1:
                    spy = subprocess.Popen(
                        [args.py_spy, "record", "-r", "400", "-f", "raw", "--nonblocking",
                         "-o", f"{args.spy}.{name}", "-p", str(server.pid)],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                    time.sleep(1.0)
                first = round_ * args.calls
                before = bench.cpu_seconds(server.pid)
                seconds, _ = ng.setup(first, args.calls)
                set_up = bench.cpu_seconds(server.pid)
                delete_seconds = ng.delete(first, args.calls)
                deleted = bench.cpu_seconds(server.pid)
                if spy is not None:
                    spy.send_signal(2)
                    spy.wait()
                calls = args.calls
                print(
                    f"{name} round {round_}: {calls / seconds:,.0f} pairs/s,"
                    f" {1e6 * (set_up - before) / calls:.0f} us CPU per pair;"
                    f" {calls / delete_seconds:,.0f} deletes/s,"
                    f" {1e6 * (deleted - set_up) / calls:.0f} us CPU per delete;"
                    f" failures {len(ng.failures)}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
