"""What a scrape of /metrics and a live-page update cost, against the number of live calls.

Everything operators see is computed when asked (nothing per packet), so the cost moves to the
scrape: this measures it. An in-process relay gets N calls (offer + answer over ng on loopback);
then ``/metrics`` (Prometheus text), ``/api/sessions`` (JSON) and one server-sent-event snapshot
are timed in-process (median of repeats), with their sizes. Not a test; figures depend on the
machine (and on its load: say so when quoting them).

    .venv/bin/python -m benchmarks.ops                 # 0, 100, 1000 calls
    .venv/bin/python -m benchmarks.ops --calls 10 --calls 5000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import time

from prometheus_client import generate_latest

from icerelay import bencode
from icerelay.daemon.config import HttpConfig
from icerelay.daemon.http import HttpService
from icerelay.daemon.relay_config import RelayServiceConfig
from icerelay.daemon.relay_service import RelayService

HOST = "127.0.0.1"
SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


async def ng(
    sock: socket.socket, server: tuple[str, int], cookie: str, body: dict[str, str]
) -> None:
    loop = asyncio.get_running_loop()
    await loop.sock_sendto(sock, f"{cookie} ".encode() + bencode.encode(body), server)
    await asyncio.wait_for(loop.sock_recvfrom(sock, 65536), 5)


def timed(function: object, repeats: int) -> tuple[float, int]:
    samples, size = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()  # type: ignore[operator]
        samples.append(time.perf_counter() - started)
        size = len(result)
    return statistics.median(samples) * 1000, size


async def measure(calls: int, repeats: int) -> dict[str, float]:
    ports = 4 * calls + 100
    relay = RelayService(
        RelayServiceConfig(
            ng_listen=(HOST, 0), ng_tcp=False, mediaproxy_socket="", accounting="",
            port_min=20000, port_max=min(65535, 20000 + ports),
        )
    )  # fmt: skip
    http = HttpService(HttpConfig(listen=None))
    http.attach([relay, http])
    await relay.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        server = relay.ng_address_tuple()
        for n in range(calls):
            base = {"call-id": f"bench-{n}", "from-tag": "a", "sdp": SDP}
            await ng(sock, server, f"o{n}", {"command": "offer", **base})
            await ng(sock, server, f"a{n}", {"command": "answer", "to-tag": "b", **base})
        metrics_ms, metrics_size = timed(lambda: generate_latest(http.registry), repeats)
        sessions_ms, sessions_size = timed(
            lambda: json.dumps({"sessions": http.sessions()}), repeats
        )
        snapshot_ms, _size = timed(lambda: json.dumps(http.snapshot()), repeats)
    finally:
        sock.close()
        await relay.stop()
    return {
        "calls": calls,
        "metrics_ms": round(metrics_ms, 2),
        "metrics_bytes": metrics_size,
        "sessions_ms": round(sessions_ms, 2),
        "sessions_bytes": sessions_size,
        "snapshot_ms": round(snapshot_ms, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ops", description=__doc__)
    parser.add_argument("--calls", type=int, action="append", help="live calls (repeatable)")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    print(f"{'calls':>6} {'/metrics ms':>12} {'bytes':>8} {'/api/sessions ms':>17} "
          f"{'bytes':>9} {'SSE snapshot ms':>16}")  # fmt: skip
    for calls in args.calls or [0, 100, 1000]:
        row = asyncio.run(measure(calls, args.repeats))
        print(
            f"{row['calls']:>6} {row['metrics_ms']:>12} {row['metrics_bytes']:>8} "
            f"{row['sessions_ms']:>17} {row['sessions_bytes']:>9} {row['snapshot_ms']:>16}"
        )


if __name__ == "__main__":
    main()
