"""Passing an ng command to the instance that owns its call, and its reply back.

The command's datagram goes unchanged (cookie included) to the owner's ng address, which its
heartbeat publishes; the owner's reply already carries the proxy's cookie, so it goes back to the
proxy as it came. A retransmission by the proxy is forwarded again and the owner's reply cache
answers it without running the command twice (the cookie is the same).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from icerelay.net import Address

__all__ = ["forward_ng"]


class _Exchange(asyncio.DatagramProtocol):
    def __init__(self, reply: asyncio.Future[bytes]) -> None:
        self.reply = reply

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


async def forward_ng(data: bytes, owner: Address, timeout: float) -> bytes | None:
    """The owner's reply to ``data``, or None if it did not answer within ``timeout``."""
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[bytes] = loop.create_future()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Exchange(reply), remote_addr=(owner.host, owner.port)
    )
    try:
        transport.sendto(data)
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(timeout):
                return await reply
        return None
    finally:
        transport.close()
