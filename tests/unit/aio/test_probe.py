"""The stun-probe shell on real loopback sockets: the probe's own timers end it."""

from __future__ import annotations

import asyncio
import socket

import pytest

from icerelay.aio.probe import probe_tcp, probe_udp
from icerelay.daemon.config import load_config
from icerelay.daemon.stun_service import StunService
from icerelay.errors import ProbeError
from icerelay.stun import Address


def test_udp_probe_gets_the_mapped_address() -> None:
    async def run() -> None:
        service = StunService(load_config(environ={}, overrides={"stun": {
            "listen": ["127.0.0.1:0"]}}).stun)  # fmt: skip
        await service.start()
        try:
            server = next(a for kind, a in service.bound if kind == "udp")
            result = await probe_udp(server, timeout=2)
            tcp_server = next(a for kind, a in service.bound if kind == "tcp")
            tcp_result = await probe_tcp(tcp_server, timeout=2)
        finally:
            await service.stop()
        assert result.mapped == result.local  # no NAT on loopback
        assert tcp_result.mapped.host == "127.0.0.1" and tcp_result.transport == "tcp"

    asyncio.run(asyncio.wait_for(run(), 10))


def test_udp_probe_times_out_against_silence() -> None:
    async def run() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            server = Address("127.0.0.1", silent.getsockname()[1])
            started = asyncio.get_running_loop().time()
            with pytest.raises(ProbeError):
                await probe_udp(server, timeout=0.3)
            assert asyncio.get_running_loop().time() - started < 2

    asyncio.run(asyncio.wait_for(run(), 10))


def test_tcp_probe_times_out_against_a_silent_server() -> None:
    async def run() -> None:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # never answers
            writer.close()

        listener = await asyncio.start_server(accept, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        try:
            with pytest.raises(ProbeError):
                await probe_tcp(Address("127.0.0.1", port), timeout=0.3)
        finally:
            listener.close()

    asyncio.run(asyncio.wait_for(run(), 10))
