"""What the cluster adds to each ng command: ``python -m benchmarks.cluster.ngcost``.

One relay service in-process, 500 calls (offer, answer, delete) sent one at a time over UDP,
without a cluster and then with one (a local redis-server): the cluster looks up the owner of
every unknown call and writes each changed call before the reply leaves. Reports the mean and
p99 round trip per command, side by side (shared machine: compare the ratio, not the numbers).
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import tempfile
import time
from pathlib import Path

from tests.support import redisd
from tests.support.ports import free_ports

from icerelay import bencode
from icerelay.daemon.cluster import ClusterService
from icerelay.daemon.cluster_config import ClusterConfig
from icerelay.daemon.relay_config import RelayServiceConfig
from icerelay.daemon.relay_service import RelayService

CALLS = 500
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0\r\n"
)


async def run(redis_url: str | None) -> list[float]:
    block = free_ports(40, kinds=("udp",), consecutive=True)
    first = block[0] + (block[0] & 1)
    relay = RelayService(
        RelayServiceConfig(
            ng_listen=("127.0.0.1", 0),
            ng_tcp=False,
            mediaproxy_socket="",
            accounting="",
            port_min=first,
            port_max=first + 37,
            delete_delay=0,
        )
    )
    await relay.start()
    cluster = None
    if redis_url is not None:
        cluster = ClusterService(ClusterConfig(redis=redis_url, instance="bench"), relay)
        await cluster.start()
    loop = asyncio.get_running_loop()
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            replies.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(
        Client, remote_addr=relay.ng_address_tuple()
    )
    cookies = itertools.count()
    times: list[float] = []
    try:
        for number in range(CALLS):
            call = f"bench-{number}"
            for body in (
                {"command": "offer", "call-id": call, "from-tag": "a", "sdp": SDP},
                {"command": "answer", "call-id": call, "from-tag": "a", "to-tag": "b", "sdp": SDP},
                {"command": "delete", "call-id": call},
            ):
                started = time.perf_counter()
                transport.sendto(f"{next(cookies)} ".encode() + bencode.encode(body))  # type: ignore[arg-type]
                await replies.get()
                times.append(time.perf_counter() - started)
    finally:
        transport.close()
        if cluster is not None:
            await cluster.stop()
        await relay.stop()
    return times


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    p99 = ordered[int(len(ordered) * 0.99)]
    return f"mean {statistics.mean(times) * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms"


def main() -> None:
    alone = asyncio.run(run(None))
    with tempfile.TemporaryDirectory(prefix="cluster-ngcost-") as directory:
        server = redisd.RedisServer(Path(directory))
        server.start()
        try:
            clustered = asyncio.run(run(server.url))
        finally:
            server.stop()
    print(f"ng round trip, {len(alone)} commands (offer/answer/delete), shared machine")
    print(f"  no cluster:   {summary(alone)}")
    print(f"  with cluster: {summary(clustered)}")
    print(f"  ratio of means: {statistics.mean(clustered) / statistics.mean(alone):.2f}")


if __name__ == "__main__":
    main()
