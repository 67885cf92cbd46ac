"""Issue 10: STUN over TCP had only a global connection cap (1,024), so one source could hold
them all and lock everyone out for the idle timeout (300 s). Now one source IP address holds at
most ``max_tcp_connections_per_source``; another source is still served."""

from __future__ import annotations

import asyncio
import struct

from icerelay.daemon.config import load_config
from icerelay.daemon.stun_service import StunService
from tests.support import stunraw


async def binding_over(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(stunraw.binding_request())
    await writer.drain()
    try:
        header = await asyncio.wait_for(reader.readexactly(20), 3)
    except (asyncio.IncompleteReadError, ConnectionError):
        return False
    length = struct.unpack_from("!H", header, 2)[0]
    response = header + await reader.readexactly(length)
    return stunraw.xor_mapped_address(response) is not None


def test_one_source_cannot_take_every_stun_tcp_connection() -> None:
    async def main() -> None:
        config = load_config(
            environ={},
            overrides={
                "stun": {
                    "listen": ["127.0.0.1:0"],
                    "transports": ["tcp"],
                    "max_tcp_connections": 40,
                    "max_tcp_connections_per_source": 8,
                }
            },
        ).stun
        service = StunService(config)
        await service.start()
        try:
            (_, tcp), *_ = service.bound
            # The attacker opens connections as fast as it can, from 127.0.0.1.
            attacker = [await asyncio.open_connection(tcp.host, tcp.port) for _ in range(50)]
            await asyncio.sleep(0.2)
            alive = [await binding_over(r, w) for r, w in attacker]
            assert sum(alive) == 8
            assert service.counters.events["tcp_too_many_connections_per_source"] == 42
            # Another source (127.0.0.2 is loopback too) is still served.
            reader, writer = await asyncio.open_connection(
                tcp.host, tcp.port, local_addr=("127.0.0.2", 0)
            )
            assert await binding_over(reader, writer)
            writer.close()
            # Closing the attacker's connections gives its share back.
            for _, w in attacker:
                w.close()
            await asyncio.sleep(0.2)
            assert sum(service._tcp[0].per_source.values()) == 0
        finally:
            await service.stop()

    asyncio.run(asyncio.wait_for(main(), 20))
