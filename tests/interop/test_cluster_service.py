"""The cluster service in-process, beside a relay service, against a real redis-server: what it
writes, its view for ctl and metrics, and a relay whose Redis is down from the start."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from icerelay import bencode
from icerelay.daemon.cluster import ClusterService
from icerelay.daemon.cluster_config import ClusterConfig
from icerelay.daemon.relay_config import RelayServiceConfig
from icerelay.daemon.relay_service import RelayService
from tests.support import redisd
from tests.support.ports import free_port, free_ports

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not redisd.available(), reason="needs redis-server (Debian redis-server)"),
]

HOST = "127.0.0.1"
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0\r\n"
)


_COOKIES = itertools.count(1)


def relay_config() -> RelayServiceConfig:
    block = free_ports(12, kinds=("udp",), consecutive=True)
    first = block[0] + (block[0] & 1)
    return RelayServiceConfig(
        ng_listen=(HOST, 0),
        ng_tcp=False,
        mediaproxy_socket="",
        accounting="",
        port_min=first,
        port_max=first + 9,
    )


async def ng(
    relay: RelayService, body: dict[str, bencode.Encodable]
) -> dict[bytes, bencode.BencodeValue]:
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[bytes] = loop.create_future()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            if not reply.done():
                reply.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(
        Client, remote_addr=relay.ng_address_tuple()
    )
    try:
        transport.sendto(f"c{next(_COOKIES)} ".encode() + bencode.encode(body))
        async with asyncio.timeout(5):
            data = await reply
    finally:
        transport.close()
    decoded = bencode.decode(data.partition(b" ")[2])
    assert isinstance(decoded, dict)
    return decoded


def test_calls_in_redis_and_the_cluster_view(tmp_path: Path) -> None:
    server = redisd.RedisServer(tmp_path)
    server.start()

    async def scenario() -> None:
        relay = RelayService(relay_config())
        cluster = ClusterService(
            ClusterConfig(redis=server.url, instance="solo", write_interval=0.05), relay
        )
        await relay.start()
        await cluster.start()
        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        try:
            offer = await ng(
                relay, {"command": "offer", "call-id": "c-1", "from-tag": "f", "sdp": SDP}
            )
            assert offer[b"result"] == b"ok"
            # Written before the reply left.
            document = json.loads(str(await client.hget("icerelay:calls:solo", "c-1")))
            assert document["origin"] == "solo"
            assert await client.hget("icerelay:owner", "c-1") == "solo"
            await asyncio.sleep(0.7)  # a watcher round
            view = cluster.cluster_view()
            json.dumps(view)  # JSON-ready, as ctl and HTTP serve it
            assert view["redis"] == "up" and view["calls"]["own"] == 1
            assert view["instances"]["solo"]["alive"] is True
            assert view["owners"] == {"solo": 1}
            assert await cluster.call_owner("c-1") == "solo"
            assert await cluster.call_owner("nope") is None
            deleted = await ng(relay, {"command": "delete", "call-id": "c-1", "delete-delay": 0})
            assert deleted[b"result"] == b"ok"
            assert await client.hget("icerelay:calls:solo", "c-1") is None
        finally:
            await cluster.stop()
            await relay.stop()
            # A graceful stop leaves the cluster: nothing of it to adopt.
            assert not await client.exists("icerelay:alive:solo", "icerelay:calls:solo")
            await client.aclose()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_redis_down_from_the_start_the_relay_works_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        relay = RelayService(relay_config())
        cluster = ClusterService(
            ClusterConfig(
                redis=f"redis://{HOST}:{free_port(kinds=('tcp',))}/0",
                instance="alone",
                heartbeat_interval=0.05,
                heartbeat_ttl=0.2,
                log_interval=60,
            ),
            relay,
        )
        await relay.start()
        await cluster.start()
        try:
            offer = await ng(
                relay, {"command": "offer", "call-id": "c-2", "from-tag": "f", "sdp": SDP}
            )
            assert offer[b"result"] == b"ok"
            await asyncio.sleep(0.5)  # ten heartbeats fail
            assert cluster.cluster_view()["redis"] == "down"
            query = await ng(relay, {"command": "query", "call-id": "c-2"})
            assert query[b"result"] == b"ok"
        finally:
            await cluster.stop()
            await relay.stop()

    with caplog.at_level(logging.WARNING, logger="icerelay.cluster"):
        asyncio.run(scenario())
    # Said once per log_interval, not once per failed heartbeat.
    said = [r for r in caplog.records if r.getMessage() == "cluster.redis_unreachable"]
    assert len(said) == 1


def test_cluster_in_metrics_and_the_http_api(tmp_path: Path) -> None:
    """The daemon's /metrics and /api/cluster (what ``icerelay ctl cluster`` prints) show the
    cluster: instances, the calls each owns, adoptions."""
    import re

    import aiohttp
    from click.testing import CliRunner

    from icerelay.commands.main import main
    from icerelay.daemon.config import HttpConfig
    from icerelay.daemon.http import HttpService

    server = redisd.RedisServer(tmp_path)
    server.start()

    async def scenario() -> tuple[str, dict[str, object], str]:
        relay = RelayService(relay_config())
        cluster = ClusterService(
            ClusterConfig(redis=server.url, instance="metered", heartbeat_interval=0.1), relay
        )
        http = HttpService(HttpConfig(listen=("127.0.0.1", 0)))  # type: ignore[arg-type]
        http.attach([relay, cluster, http])
        await relay.start()
        await cluster.start()
        await http.start()
        try:
            await asyncio.sleep(0.4)
            async with aiohttp.ClientSession(http.url) as client:
                async with client.get("/metrics") as response:
                    text = await response.text()
                async with client.get("/api/cluster") as response:
                    view = await response.json()
            # The operator's view, in another thread (it blocks on HTTP to this loop).
            result = await asyncio.to_thread(
                CliRunner().invoke, main, ["ctl", "--url", http.url, "cluster"]
            )
            assert result.exit_code == 0, result.output
            return text, view, result.output
        finally:
            await http.stop()
            await cluster.stop()
            await relay.stop()

    try:
        text, view, table = asyncio.run(scenario())
    finally:
        server.stop()
    assert "icerelay_cluster_redis_up 1.0" in text
    assert 'icerelay_cluster_instances{state="alive"} 1.0' in text
    assert 'icerelay_cluster_owned_calls{instance="metered"} 0.0' in text
    assert "icerelay_cluster_adoptions_total 0.0" in text
    assert view["instance"] == "metered" and view["redis"] == "up"
    assert view["owners"] == {"metered": 0}
    assert "instance metered, redis up" in table
    assert re.search(r"^metered\s+yes\s+\S+\s+0$", table, flags=re.M), table
