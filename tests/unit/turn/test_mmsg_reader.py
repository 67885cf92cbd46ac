"""MmsgReader (recvmmsg) hands over exactly what recvfrom would: payloads, sources, order."""

from __future__ import annotations

import asyncio
import socket

import pytest
from tests.support.ports import ipv6_loopback

from icerelay.dataplane import turn_mmsg
from icerelay.dataplane.turn_mmsg import MmsgReader

pytestmark = pytest.mark.skipif(not turn_mmsg.available(), reason="no recvmmsg")

HOSTS = ["127.0.0.1"] + (["::1"] if ipv6_loopback() else [])


@pytest.mark.parametrize("host", HOSTS)
def test_batches_keep_order_payloads_and_sources(host: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        server = socket.socket(family, socket.SOCK_DGRAM)
        server.bind((host, 0))
        server.setblocking(False)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        senders = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(3)]
        for sender in senders:
            sender.bind((host, 0))
        batches: list[list[tuple[bytes, tuple[str, int]]]] = []
        reader = MmsgReader(
            loop, server, lambda _tag, batch: batches.append(batch), "tag", limit=40
        )
        try:
            # The largest UDP datagram, an empty one, and 70 small ones from three sources.
            sizes = [65507 if family == socket.AF_INET else 65527, 0] + [1 + n for n in range(70)]
            expected = []
            for n, size in enumerate(sizes):
                sender = senders[n % 3]
                payload = bytes([n % 251]) * size
                sender.sendto(payload, server.getsockname()[:2])
                expected.append((payload, sender.getsockname()[:2]))
            reader.start()
            for _ in range(100):
                if sum(map(len, batches)) == len(sizes):
                    break
                await asyncio.sleep(0.01)
            got = [item for batch in batches for item in batch]
            assert len(got) == len(expected)
            for n, (item, want) in enumerate(zip(got, expected, strict=True)):
                assert (len(item[0]), item[1]) == (len(want[0]), want[1]), n
                assert item == want, n
            # At most `limit` per wake-up, at most SLOTS per batch.
            assert all(len(batch) <= turn_mmsg.SLOTS for batch in batches)
            assert len(batches) >= 3
        finally:
            reader.close()
            server.close()
            for sender in senders:
                sender.close()

    asyncio.run(scenario())
