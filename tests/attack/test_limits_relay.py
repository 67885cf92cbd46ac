"""Issue 10, unbounded resources of the relay beyond ng: MediaProxy streams and socket, the
open-file limit. Each attack replayed on a real relay on loopback."""

from __future__ import annotations

import asyncio
import os
import resource
import stat
from pathlib import Path

import pytest

from tests.attack.limits_support import HOST, NgClient, port_range, relay, rss_mib, sdp_with_media
from tests.unit.relay.test_service import run


async def mediaproxy_command(path: Path, text: str) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(text.replace("\n", "\r\n").encode() + b"\r\n")
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\r\n"), 10.0)
    finally:
        writer.close()


def test_mediaproxy_update_with_3000_streams_opens_no_port(tmp_path: Path) -> None:
    """One ``update`` with 3,000 streams opened 12,028 ports on 835a0e7."""
    path = tmp_path / "dispatcher.sock"

    async def main() -> None:
        async with relay(mediaproxy_socket=str(path)) as service:
            before = rss_mib()
            media = ",".join(f"audio:{HOST}:{4000 + 2 * i}:sendrecv" for i in range(3000))
            reply = await mediaproxy_command(
                path,
                f"update\ntype: request\ncall_id: flood\nfrom_tag: a\nmedia: {media}\n",
            )
            assert reply == b"error\r\n"
            assert service.pool.in_use == 0
            assert service.mediaproxy.counters.events["error.too_many_streams"] == 1
            print(f"\nmediaproxy 3000 streams: RSS {before:.0f} -> {rss_mib():.0f} MiB, 0 ports")
            # A normal call still works.
            reply = await mediaproxy_command(
                path,
                f"update\ntype: request\ncall_id: ok\nfrom_tag: a\n"
                f"media: audio:{HOST}:4000:sendrecv\n",
            )
            assert reply.split()[0] == HOST.encode()

    run(main)


def test_mediaproxy_socket_is_not_world_writable(tmp_path: Path) -> None:
    path = tmp_path / "dispatcher.sock"

    async def main() -> None:
        async with relay(mediaproxy_socket=str(path)):
            assert stat.S_IMODE(path.stat().st_mode) == 0o660
        async with relay(mediaproxy_socket=str(path), mediaproxy_socket_mode="0600"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600

    # Under umask 0 too (the file is created with its mode, not chmod-ed after the fact).
    previous = os.umask(0)
    try:
        run(main)
    finally:
        os.umask(previous)


def test_mediaproxy_connections_are_capped(tmp_path: Path) -> None:
    path = tmp_path / "dispatcher.sock"

    async def main() -> None:
        async with relay(mediaproxy_socket=str(path), mediaproxy_max_connections=4) as service:
            held = [await asyncio.open_unix_connection(str(path)) for _ in range(4)]
            await asyncio.sleep(0.1)
            reader, writer = await asyncio.open_unix_connection(str(path))
            assert await asyncio.wait_for(reader.read(1), 3.0) == b""
            assert service.counters.dropped["mediaproxy_too_many_connections"] == 1
            for _, w in [*held, (reader, writer)]:
                w.close()

    run(main)


def test_relay_raises_the_open_file_limit_and_survives_call_251() -> None:
    """Under ``ulimit -n 1024`` the relay failed at call 251 (four sockets a call)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard open-file limit ({hard}) leaves nothing to raise the soft one to")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))

    async def main() -> None:
        async with relay(**port_range(2400)) as service:
            raised, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            assert raised >= 2400
            client = NgClient(service.ng_address)
            for call in range(270):
                reply = await client.request(
                    {
                        "command": "offer",
                        "call-id": f"fd{call}",
                        "from-tag": "a",
                        "sdp": sdp_with_media(1, port=4000 + 2 * call),
                    }
                )
                assert reply[b"result"] == b"ok", (call, reply)
            assert service.engine.call_count == 270

    try:
        run(main)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_limits_can_be_reloaded_without_a_restart() -> None:
    async def main() -> None:
        async with relay(max_streams_per_call=32) as service:
            client = NgClient(service.ng_address)
            offer = {"command": "offer", "call-id": "r", "from-tag": "a"}
            reply = await client.request({**offer, "sdp": sdp_with_media(4)})
            assert reply[b"result"] == b"ok"
            service.reload_limits(service.config.model_copy(update={"max_streams_per_call": 2}))
            reply = await client.request({**offer, "call-id": "r2", "sdp": sdp_with_media(4)})
            assert b"too many media streams" in reply[b"error-reason"]  # type: ignore[operator]

    run(main)


def test_mediaproxy_calls_are_capped(tmp_path: Path) -> None:
    path = tmp_path / "dispatcher.sock"

    async def main() -> None:
        async with relay(mediaproxy_socket=str(path), max_sessions=5) as service:
            replies = [
                await mediaproxy_command(
                    path,
                    f"update\ntype: request\ncall_id: c{n}\nfrom_tag: a\n"
                    f"media: audio:{HOST}:0:inactive\n",
                )
                for n in range(8)
            ]
            assert replies.count(b"error\r\n") == 3
            assert service.mediaproxy.counters.events["error.too_many_sessions"] == 3

    run(main)
