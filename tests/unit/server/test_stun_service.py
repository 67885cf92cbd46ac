"""StunService in-process on loopback: UDP, TCP framing (back-to-back and split messages),
connection limits, idle timeout, unframeable streams, and the serve composition helpers."""

from __future__ import annotations

import asyncio
import functools
import struct
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from tests.support import stunraw

from icerelay.daemon.compose import build_services, run_services, start_services
from icerelay.daemon.config import load_config
from icerelay.daemon.stun_service import StunService
from icerelay.stun import Address


def async_test(function: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run a coroutine test on a fresh event loop (no pytest-asyncio needed)."""

    @functools.wraps(function)
    def wrapper() -> None:
        asyncio.run(asyncio.wait_for(function(), 10))

    return wrapper


def service(**stun: object) -> StunService:
    base: dict[str, object] = {"listen": ["127.0.0.1:0"], "tcp_idle_timeout": 0.5}
    base.update(stun)
    return StunService(load_config(environ={}, overrides={"stun": base}).stun)


def address_of(svc: StunService, kind: str) -> Address:
    return next(a for k, a in svc.bound if k == kind)


async def read_frames(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    frames = []
    for _ in range(count):
        header = await asyncio.wait_for(reader.readexactly(20), 2)
        length = struct.unpack_from("!H", header, 2)[0]
        frames.append(header + await reader.readexactly(length))
    return frames


@async_test
async def test_udp_binding() -> None:
    svc = service()
    await svc.start()
    try:
        udp = address_of(svc, "udp")
        loop = asyncio.get_running_loop()
        mapped = await loop.run_in_executor(None, stunraw.udp_binding, udp.host, udp.port, 2.0)
        assert mapped is not None and mapped[0] == "127.0.0.1"
        assert svc.counters.events["binding_requests"] == 1
    finally:
        await svc.stop()
    assert svc.bound == []


@async_test
async def test_tcp_framing_back_to_back_and_split() -> None:
    svc = service()
    await svc.start()
    try:
        tcp = address_of(svc, "tcp")
        reader, writer = await asyncio.open_connection(tcp.host, tcp.port)
        first, second, third = (stunraw.binding_request() for _ in range(3))
        writer.write(first + second + third[:7])  # two whole messages and a piece of a third
        await writer.drain()
        frames = await read_frames(reader, 2)
        writer.write(third[7:])
        frames += await read_frames(reader, 1)
        assert [f[8:20] for f in frames] == [first[8:20], second[8:20], third[8:20]]
        assert all(stunraw.xor_mapped_address(f) is not None for f in frames)
        writer.close()
    finally:
        await svc.stop()


@async_test
async def test_tcp_unframeable_stream_is_closed_and_counted() -> None:
    svc = service()
    await svc.start()
    try:
        tcp = address_of(svc, "tcp")
        reader, writer = await asyncio.open_connection(tcp.host, tcp.port)
        # A TLS ClientHello on the plain port (first byte 22: neither STUN nor ChannelData).
        # ("GET ..." would not do: 'G' is 71, a ChannelData first byte.)
        writer.write(b"\x16\x03\x01\x00\x40" + bytes(64))
        assert await asyncio.wait_for(reader.read(), 2) == b""
        assert svc.counters.dropped["unframeable_stream"] == 1
        writer.close()
    finally:
        await svc.stop()


@async_test
async def test_tcp_idle_and_half_open_connections_are_closed() -> None:
    svc = service(tcp_idle_timeout=0.2)
    await svc.start()
    try:
        tcp = address_of(svc, "tcp")
        reader, writer = await asyncio.open_connection(tcp.host, tcp.port)
        writer.write(stunraw.binding_request()[:10])  # half a header, then silence
        assert await asyncio.wait_for(reader.read(), 3) == b""
        assert svc.counters.events["tcp_idle_timeout"] == 1
        writer.close()
    finally:
        await svc.stop()


@async_test
async def test_tcp_connection_limit() -> None:
    svc = service(max_tcp_connections=2, tcp_idle_timeout=5)
    await svc.start()
    try:
        tcp = address_of(svc, "tcp")
        kept = [await asyncio.open_connection(tcp.host, tcp.port) for _ in range(2)]
        await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_connection(tcp.host, tcp.port)
        assert await asyncio.wait_for(reader.read(), 2) == b""
        assert svc.counters.events["tcp_too_many_connections"] == 1
        # The two accepted connections still work.
        kept[0][1].write(stunraw.binding_request())
        assert len(await read_frames(kept[0][0], 1)) == 1
        for _, w in [*kept, (reader, writer)]:
            w.close()
    finally:
        await svc.stop()


@async_test
async def test_start_failure_stops_what_was_started() -> None:
    first = service()
    await first.start()
    try:
        taken = address_of(first, "tcp")
        second = service(listen=[f"127.0.0.1:{taken.port}"], transports=["udp", "tcp"])
        # UDP on that port may be free; TCP is not: start must fail and leave nothing open.
        with pytest.raises(OSError, match=f"STUN (udp|tcp) on 127.0.0.1:{taken.port}"):
            await start_services([second])
        assert second.bound == []
    finally:
        await first.stop()


@async_test
async def test_run_services_until_stopped() -> None:
    # The relay is on by default; this test is about the STUN service alone.
    no_relay = {"relay": {"enabled": False}, "http": {"listen": ""}}
    config = load_config(environ={}, overrides={"stun": {"listen": ["127.0.0.1:0"]}, **no_relay})
    services = build_services(config)
    assert [s.name for s in services] == ["stun"]
    stun_off = {"stun": {"enabled": False}, **no_relay}
    assert build_services(load_config(environ={}, overrides=stun_off)) == []
    stop = asyncio.Event()
    task = asyncio.create_task(run_services(services, stop))
    await asyncio.sleep(0.1)
    svc = services[0]
    assert isinstance(svc, StunService) and svc.bound
    stop.set()
    await asyncio.wait_for(task, 2)
    assert svc.bound == []
