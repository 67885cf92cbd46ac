"""python -m benchmarks.ice [--runs N] [--setups loopback,netns-50ms,turn,turn-50ms] [--smoke]

Measures icerelay's ICE agent and aioice side by side (see :mod:`benchmarks.ice.bench`) and writes
benchmarks/ice/REPORT.md and benchmarks/ice/report.json (``--smoke``: one run per setup, written
to benchmarks/ice/results/ only). The namespace setups need root, ip and nft; the TURN setups
need coturn. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.ice import bench, report

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ice", description=__doc__)
    parser.add_argument("--runs", type=int, default=9, help="runs per implementation and setup")
    parser.add_argument("--setups", default=",".join(bench.SETUPS))
    parser.add_argument("--smoke", action="store_true", help="1 run each; results/ only")
    parser.add_argument(
        "--render", action="store_true", help="only rewrite REPORT.md from report.json"
    )
    args = parser.parse_args(argv)
    if args.render:
        data = json.loads((HERE / "report.json").read_text())
        (HERE / "REPORT.md").write_text(report.render(data))
        return 0
    setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    unknown = set(setups) - set(bench.SETUPS)
    if unknown:
        parser.error(f"unknown setups: {', '.join(sorted(unknown))}")
    runs = 1 if args.smoke else args.runs
    data = bench.run_all(setups, runs, lambda line: print(line, flush=True))
    out_dir = HERE / "results" if args.smoke else HERE
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "smoke" if args.smoke else "report"
    (out_dir / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    markdown = report.render(data)
    (out_dir / ("REPORT-smoke.md" if args.smoke else "REPORT.md")).write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
