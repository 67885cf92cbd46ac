"""Run icerelay's TURN service alone, with settings equivalent to the benchmark's coturn.

``python -m benchmarks.turn.run_ours --port 13478 ...``: the benchmark starts this as a
separate process so that its RSS and CPU time are the server's alone, as coturn's are.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from icerelay.aio.loop import loop_factory
from icerelay.daemon.logs import configure_logging
from icerelay.daemon.turn_config import TurnQuotasConfig, TurnServerConfig


def build_config(args: argparse.Namespace) -> TurnServerConfig:
    user, _, password = args.user.partition(":")
    return TurnServerConfig(
        enabled=True,
        listen=[(args.host, args.port)],
        transports=["udp"],  # coturn runs with no-tcp/no-tls/no-dtls in the benchmark too
        realm=args.realm,
        users={user: password},
        relay_ipv4=args.host,
        relay_port_min=args.min_port,
        relay_port_max=args.max_port,
        # The load generator and its peer are on loopback, which is denied by default.
        allow_peers=["127.0.0.0/8"],
        # coturn runs with user-quota=0 and total-quota=0 (unlimited); the remaining quotas
        # (permissions, channels, bandwidth per allocation) stay at their defaults, which an
        # RTP stream is far below, so ours pays for enforcing them as a deployment would.
        quotas=TurnQuotasConfig(allocations_per_user=1_000_000, total_allocations=1_000_000),
        workers=args.workers,
        offload=args.offload,
    )


async def serve(config: TurnServerConfig) -> None:
    from icerelay.daemon.turn_service import TurnService

    service = TurnService(config)
    await service.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await service.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.turn.run_ours")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=13478)
    parser.add_argument("--min-port", type=int, default=22000)
    parser.add_argument("--max-port", type=int, default=29999)
    parser.add_argument("--realm", default="bench.icerelay")
    parser.add_argument("--user", default="bench:bench-secret", help="name:password")
    parser.add_argument(
        "--workers",
        type=lambda text: text if text == "auto" else int(text),
        default="auto",
        help='processes (coturn: threads); "auto": one per CPU',
    )
    parser.add_argument("--offload", choices=("auto", "ebpf", "off"), default="off")
    parser.add_argument("--log-file", type=Path, help="INFO log here (coturn logs to a file too)")
    args = parser.parse_args(argv)
    if args.log_file is not None:
        # Like coturn in the benchmark: allocation lifecycle at INFO, to a file.
        with args.log_file.open("a") as log:
            configure_logging("info", "kv", log)
            return _run(args)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    config = build_config(args)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
