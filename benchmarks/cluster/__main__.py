"""Failover gap: how long media stops when the relay instance carrying a call is killed.

``python -m benchmarks.cluster [--trials N] [--heartbeat S --ttl S]``: per trial, a fresh
redis-server and two ``icerelay serve`` instances sharing a relay address (as a floating IP is
shared), one call with 50 packets/s through instance A, ``kill -9`` A, and the longest silence
at the callee until media flows through B. Default timings are ``[cluster]``'s defaults.
Writes ``benchmarks/cluster/REPORT.md``. There is no peer to compare with here: rtpengine's
Redis failover needs a keyspace-notification setup and a keepalived IP move that a loopback
bench cannot reproduce faithfully.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tests.interop.test_cluster_failover import (
    HOST,
    Instance,
    ng_answers,
    place_call,
    redis_call,
    wait_for,
)
from tests.support import redisd
from tests.support.ports import free_ports
from tests.support.serve import start_serve


def trial(heartbeat: float, ttl: float) -> float:
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as directory:
        tmp = Path(directory)
        redis = redisd.RedisServer(tmp)
        redis.start()
        servers = []
        try:
            block = free_ports(80, kinds=("udp",), consecutive=True)
            first = block[0] + (block[0] & 1)
            instances = []
            for index, name in enumerate(("bench-a", "bench-b")):
                stun_port, ng_port = free_ports(2)
                low = first + 38 * index
                server = start_serve(
                    ["--stun-listen", f"{HOST}:{stun_port}"],
                    host=HOST,
                    port=stun_port,
                    env={
                        "ICERELAY_RELAY__ENABLED": "1",
                        "ICERELAY_RELAY__NG_LISTEN": f"{HOST}:{ng_port}",
                        "ICERELAY_RELAY__PORT_MIN": str(low),
                        "ICERELAY_RELAY__PORT_MAX": str(low + 37),
                        "ICERELAY_RELAY__MEDIAPROXY_SOCKET": "",
                        "ICERELAY_RELAY__ACCOUNTING": f"sqlite://{tmp / name}.sqlite3",
                        "ICERELAY_CLUSTER__REDIS": redis.url,
                        "ICERELAY_CLUSTER__INSTANCE": name,
                        "ICERELAY_CLUSTER__HEARTBEAT_INTERVAL": str(heartbeat),
                        "ICERELAY_CLUSTER__HEARTBEAT_TTL": str(ttl),
                    },
                )
                servers.append(server)
                wait_for(lambda: ng_answers(ng_port), 10, "the ng port")  # noqa: B023
                instances.append(Instance(name, ng_port, server, tmp / f"{name}.sqlite3"))
            a = instances[0]
            media, relay_port = place_call(a, "bench")
            media.start(relay_port)
            try:
                wait_for(lambda: len(media.arrivals) >= 25, 5, "media through A")
                wait_for(
                    lambda: redis_call(redis.url, "bench-a", "bench") is not None,
                    5,
                    "the call in Redis",
                )
                killed = time.monotonic()
                a.kill()
                wait_for(lambda: media.received_after(killed + 0.05) >= 25, 15, "media via B")
                return media.longest_gap(killed)
            finally:
                media.stop()
                media.caller.close()
                media.callee.close()
        finally:
            for server in servers:
                server.stop()
            redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--heartbeat", type=float, default=0.3)
    parser.add_argument("--ttl", type=float, default=1.0)
    args = parser.parse_args()
    gaps = []
    for number in range(args.trials):
        gap = trial(args.heartbeat, args.ttl)
        gaps.append(gap)
        print(f"trial {number + 1}: gap {gap:.3f} s", flush=True)
    report = (
        "# Failover gap (shared 2-core machine, other work running)\n\n"
        f"`python -m benchmarks.cluster --trials {args.trials} --heartbeat {args.heartbeat} "
        f"--ttl {args.ttl}`\n\n"
        "Longest silence at the callee (RTP at 50 packets/s) from `kill -9` of the instance "
        "carrying the call until media flows through the adopting instance.\n\n"
        "| trials | median | min | max |\n| --- | --- | --- | --- |\n"
        f"| {len(gaps)} | {statistics.median(gaps):.3f} s | {min(gaps):.3f} s | "
        f"{max(gaps):.3f} s |\n\n"
        "Per trial: " + ", ".join(f"{gap:.3f}" for gap in gaps) + " s\n"
    )
    path = Path(__file__).with_name("REPORT.md")
    path.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
