"""The STUN Binding service: :class:`~icerelay.stun.binding.BindingEngine` on real sockets.

One engine serves every socket: UDP and TCP on each listen address and, with RFC 5780, on the four
address/port combinations (responses to CHANGE-REQUEST leave from the socket the engine names).
UDP goes through the one :class:`~icerelay.aio.driver.EngineDriver`; a TCP frame is answered on
its own connection, so that path feeds the engine and writes its answers back directly.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Literal

from icerelay.aio.driver import EngineDriver
from icerelay.aio.stream import StreamConnection, StreamServer
from icerelay.aio.udp import UdpEndpoint
from icerelay.daemon.config import HostPort, StunConfig
from icerelay.net import Datagram
from icerelay.stun import Address
from icerelay.stun.binding import BindingEngine, Rfc5780Addresses, listen_addresses
from icerelay.stun.counters import Counters, DropReason
from icerelay.stun.ratelimit import LogLimiter

logger = logging.getLogger("icerelay.server.stun")


def _address(hostport: HostPort) -> Address:
    return Address(hostport.host, hostport.port)


class StunService:
    """``[stun]`` of the configuration, served. ``await start()`` … ``await stop()``."""

    name = "stun"

    def __init__(self, config: StunConfig) -> None:
        self.config = config
        primary = config.rfc5780_primary
        self.rfc5780 = (
            Rfc5780Addresses(_address(primary), _address(config.alternate))
            if primary is not None and config.alternate is not None
            else None
        )
        self.counters = Counters()
        self.engine = BindingEngine(
            rfc5780=self.rfc5780,
            software=config.software,
            padding_limit=config.padding_limit,
            log_interval=config.log_interval,
            counters=self.counters,
            logger=logger,
        )
        self._udp: dict[Address, UdpEndpoint] = {}
        self._tcp: list[StreamServer] = []
        self._reject_log = LogLimiter(config.log_interval)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._driver: EngineDriver | None = None

    @property
    def bound(self) -> list[tuple[str, Address]]:
        """(transport, local address) of every open socket, ports resolved."""
        return [("udp", a) for a in self._udp] + [("tcp", s.local_address) for s in self._tcp]

    async def start(self) -> None:
        """Open every socket; on failure close what was opened and raise ``OSError``."""
        self._loop = asyncio.get_running_loop()
        self._driver = EngineDriver(self.engine, self._send_udp)
        wanted = listen_addresses(self.rfc5780, [_address(a) for a in self.config.listen])
        try:
            for address, transport in itertools.product(wanted, self.config.transports):
                try:
                    await self._open(address, transport)
                except OSError as exc:
                    raise OSError(
                        exc.errno, f"STUN {transport} on {address}: {exc.strerror}"
                    ) from None
        except BaseException:
            await self.stop()
            raise
        for kind, address in self.bound:
            logger.info("stun.listening", extra={"transport": kind, "address": str(address)})
        if self.rfc5780 is not None:
            logger.info(
                "stun.rfc5780",
                extra={
                    "primary": str(self.rfc5780.primary),
                    "alternate": str(self.rfc5780.alternate),
                },
            )

    async def _open(self, address: Address, transport: Literal["udp", "tcp"]) -> None:
        if transport == "udp":
            assert self._driver is not None
            # The driver's datagram_received is the socket callback: nothing in between.
            endpoint = await UdpEndpoint.open(address, self._driver.datagram_received)
            self._udp[endpoint.local_address] = endpoint
        else:
            server = await StreamServer.open(
                address,
                self._on_frame,
                idle_timeout=self.config.tcp_idle_timeout,
                max_connections=self.config.max_tcp_connections,
                max_connections_per_source=self.config.max_tcp_connections_per_source,
                on_reject=self._on_reject,
            )
            self._tcp.append(server)

    async def stop(self) -> None:
        """Close every socket and connection. Idempotent."""
        if self._driver is not None:
            self._driver.close()
        for endpoint in self._udp.values():
            endpoint.close()
        self._udp.clear()
        servers, self._tcp = self._tcp, []
        for server in servers:
            await server.close()
        logger.info("stun.stopped", extra=self.counters.snapshot())

    # --- plumbing between sockets and the engine ------------------------------------------------

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _send_udp(self, datagram: Datagram) -> None:
        # The engine names the local address each answer leaves from (RFC 5780 CHANGE-REQUEST).
        endpoint = self._udp.get(datagram.source) if datagram.source is not None else None
        if endpoint is None or not endpoint.send(datagram.data, datagram.destination):
            self.counters.drop(DropReason.SEND_FAILED)

    def _on_frame(self, frame: bytes, connection: StreamConnection) -> None:
        now = self._now()
        self.engine.receive(frame, connection.peer, connection.local, now, "tcp")
        for datagram in self.engine.datagrams_to_send(now):
            # Over TCP the engine never changes addresses; the answer goes back on the stream.
            if not connection.send(datagram.data):
                self.counters.drop(DropReason.SEND_FAILED)

    def _on_reject(self, reason: str, peer: Address) -> None:
        self.counters.count(f"tcp_{reason}")
        if reason == "unframeable_stream":
            self.counters.drop(DropReason.UNFRAMEABLE_STREAM)
        suppressed = self._reject_log.allow(peer.host, self._now())
        if suppressed is not None:
            logger.info(
                "stun.tcp_closed",
                extra={"peer": str(peer), "reason": reason, "suppressed": suppressed},
            )
