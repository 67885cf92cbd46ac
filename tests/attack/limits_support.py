"""Helpers of the resource-limit attack tests: RSS, a relay on loopback, ng over TCP."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from icerelay.daemon.relay_service import RelayService
from tests.support.ports import free_ports
from tests.unit.relay.test_service import HOST, NgClient, config

__all__ = [
    "HOST",
    "NgClient",
    "config",
    "port_range",
    "relay",
    "rss_mib",
    "sdp_with_media",
    "tcp_closed",
]


def rss_mib() -> float:
    """This process's resident set size in MiB (Linux /proc), after a garbage collection."""
    gc.collect()
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@asynccontextmanager
async def relay(**overrides: object) -> AsyncIterator[RelayService]:
    service = RelayService(config(**overrides))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def sdp_with_media(count: int, port: int = 4000, pad: int = 0) -> bytes:
    """An SDP with ``count`` audio m-lines, each with ``pad`` bytes of an attribute the relay
    passes through (to reach a size with fewer streams)."""
    extra = f"a=x-pad:{'p' * pad}\r\n" if pad else ""
    lines = [
        f"v=0\r\no=- 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n",
        *(
            f"m=audio {port + 2 * index} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n{extra}"
            for index in range(count)
        ),
    ]
    return "".join(lines).encode()


def port_range(count: int) -> dict[str, int]:
    """``port_min``/``port_max`` settings for ``count`` consecutive free UDP ports."""
    start = free_ports(count + 2, kinds=("udp",), consecutive=True)[0]
    start += start & 1
    return {"port_min": start, "port_max": start + count - 1}


async def tcp_closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    """True when the relay closed (or reset) the connection within ``timeout``."""
    try:
        return await asyncio.wait_for(reader.read(1), timeout) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False
