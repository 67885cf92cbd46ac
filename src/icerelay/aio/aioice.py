"""aioice's ``Connection`` surface on top of icerelay's ICE agent, for an easy switch.

Code written for aioice keeps working with one changed import::

    # from aioice import Candidate, Connection
    from icerelay.aio.aioice import Candidate, Connection

    connection = Connection(ice_controlling=True, stun_server=("stun.example.net", 3478))
    await connection.gather_candidates()
    sdp_lines = [c.to_sdp() for c in connection.local_candidates]
    connection.remote_username, connection.remote_password = ufrag, pwd
    for line in remote_lines:
        await connection.add_remote_candidate(Candidate.from_sdp(line))
    await connection.add_remote_candidate(None)
    await connection.connect()
    await connection.send(b"...")
    data = await connection.recv()
    await connection.close()

What differs, on purpose: :meth:`Connection.connect` returns as soon as every component has a
working pair (media can flow; nomination completes in the background), which is what makes
icerelay connect sooner; remote candidates may be added before or after ``connect()`` (trickle);
aioice ``Candidate`` objects are accepted as they are; ``TransportPolicy.RELAY`` maps to
``AgentConfig(relay_only=True)``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Protocol

from icerelay.aio.ice import Connection as AioConnection
from icerelay.aio.ice import default_local_addresses
from icerelay.errors import IceError
from icerelay.ice.candidate import Candidate as IceCandidate
from icerelay.ice.candidate import TransportAddress
from icerelay.ice.config import AgentConfig
from icerelay.ice.events import ConnectionState, ConnectionStateChanged, Event
from icerelay.ice.relay import TurnServer
from icerelay.ice.signalling import default_candidate
from icerelay.numbers import parse_uint
from icerelay.sdp import Candidate as SdpCandidate
from icerelay.sdp import SdpError


class _SdpCandidate(Protocol):
    def to_sdp(self) -> str: ...


class Candidate:
    """An ICE candidate with aioice's attributes and its ``to_sdp``/``from_sdp`` (strings)."""

    def __init__(
        self,
        foundation: str,
        component: int,
        transport: str,
        priority: int,
        host: str,
        port: int,
        type: str,
        related_address: str | None = None,
        related_port: int | None = None,
        tcptype: str | None = None,
        generation: int | None = None,
    ) -> None:
        self.foundation = foundation
        self.component = component
        self.transport = transport
        self.priority = priority
        self.host = host
        self.port = port
        self.type = type
        self.related_address = related_address
        self.related_port = related_port
        self.tcptype = tcptype
        self.generation = generation

    @classmethod
    def from_sdp(cls, sdp: str) -> Candidate:
        """Parse the value of an ``a=candidate`` attribute (with or without ``candidate:``)."""
        try:
            parsed = SdpCandidate.parse(sdp)
        except SdpError as exc:
            raise ValueError(str(exc)) from exc
        generation = parsed.extension("generation")
        return cls(
            parsed.foundation,
            parsed.component,
            parsed.transport,
            parsed.priority,
            parsed.address,
            parsed.port,
            parsed.type,
            parsed.related_address,
            parsed.related_port,
            parsed.tcptype,
            parse_uint(generation) if generation is not None else None,
        )

    @classmethod
    def _from_ice(cls, candidate: IceCandidate) -> Candidate:
        return cls.from_sdp(candidate.to_sdp().to_sdp())

    def to_sdp(self) -> str:
        """The value of an ``a=candidate`` attribute, as aioice writes it."""
        sdp = (
            f"{self.foundation} {self.component} {self.transport} "
            f"{self.priority} {self.host} {self.port} typ {self.type}"
        )
        if self.related_address is not None:
            sdp += f" raddr {self.related_address}"
        if self.related_port is not None:
            sdp += f" rport {self.related_port}"
        if self.tcptype is not None:
            sdp += f" tcptype {self.tcptype}"
        if self.generation is not None:
            sdp += f" generation {self.generation}"
        return sdp

    def __repr__(self) -> str:
        return f"Candidate({self.to_sdp()})"


@dataclass(frozen=True)
class ConnectionClosed:
    """aioice's event: the connection was closed (or ICE failed)."""


class Connection:
    """aioice's ``Connection`` API, run by icerelay's agent (see the module documentation).

    ``local_addresses`` (not in aioice) picks the interfaces to gather on; by default the primary
    address of each enabled family.
    """

    def __init__(
        self,
        ice_controlling: bool,
        components: int = 1,
        stun_server: tuple[str, int] | None = None,
        turn_server: tuple[str, int] | None = None,
        turn_username: str | None = None,
        turn_password: str | None = None,
        turn_ssl: bool = False,
        turn_transport: str = "udp",
        use_ipv4: bool = True,
        use_ipv6: bool = True,
        transport_policy: object | None = None,
        local_username: str | None = None,
        local_password: str | None = None,
        *,
        local_addresses: list[str] | None = None,
        config: AgentConfig | None = None,
    ) -> None:
        transport = "tls" if turn_ssl else turn_transport
        if transport not in ("udp", "tcp", "tls"):
            raise IceError(f"unknown TURN transport {turn_transport!r}")
        policy = getattr(transport_policy, "name", "ALL") if transport_policy is not None else "ALL"
        if policy not in ("ALL", "RELAY"):
            raise IceError(f"unknown transport policy {policy}")
        if policy == "RELAY":
            config = replace(config or AgentConfig(), relay_only=True)
        turn_servers: list[TurnServer] = []
        if turn_server is not None:
            turn_servers.append(
                TurnServer(
                    (str(turn_server[0]), int(turn_server[1])),
                    turn_username or "",
                    turn_password or "",
                    transport,  # type: ignore[arg-type]  # checked just above
                )
            )
        addresses = local_addresses or default_local_addresses(ipv4=use_ipv4, ipv6=use_ipv6)
        self._data: asyncio.Queue[tuple[bytes, int]] = asyncio.Queue()
        self._events: asyncio.Queue[ConnectionClosed] = asyncio.Queue()
        self._connection = AioConnection(
            controlling=ice_controlling,
            components=components,
            stun_servers=[stun_server] if stun_server is not None else [],
            turn_servers=turn_servers,
            local_addresses=addresses,
            config=config,
            on_event=self._on_event,
            on_data=self._on_data,
            local_username=local_username,
            local_password=local_password,
        )
        self.remote_username: str | None = None
        self.remote_password: str | None = None
        self.remote_is_lite = False
        self._remote: list[IceCandidate] = []
        self._closed = False

    # --- aioice properties ------------------------------------------------------------------

    @property
    def ice_controlling(self) -> bool:
        return self._connection.agent.controlling

    @property
    def local_username(self) -> str:
        return self._connection.local_username

    @property
    def local_password(self) -> str:
        return self._connection.local_password

    @property
    def local_candidates(self) -> list[Candidate]:
        return [Candidate._from_ice(c) for c in self._connection.local_candidates]

    @property
    def remote_candidates(self) -> list[Candidate]:
        return [Candidate._from_ice(c) for c in self._remote]

    @property
    def agent_connection(self) -> AioConnection:
        """The icerelay connection underneath (events, states, the engine)."""
        return self._connection

    # --- aioice methods ---------------------------------------------------------------------

    async def gather_candidates(self) -> None:
        await self._connection.gather()

    def get_default_candidate(self, component: int) -> Candidate | None:
        candidate = default_candidate(self._connection.agent, component)
        return Candidate._from_ice(candidate) if candidate is not None else None

    async def add_remote_candidate(self, remote_candidate: _SdpCandidate | None) -> None:
        """A remote candidate (aioice's or ours), or None for end-of-candidates."""
        if remote_candidate is None:
            self._connection.add_remote_candidate(None)
            return
        try:
            candidate = IceCandidate.from_sdp(remote_candidate.to_sdp())
        except IceError:
            return  # aioice also ignores what it cannot use (TCP, mDNS it cannot resolve)
        self._remote.append(candidate)
        self._credentials()
        self._connection.add_remote_candidate(candidate)

    async def connect(self) -> None:
        """Run ICE until media can flow on every component (raises ConnectionError on failure)."""
        self._credentials(required=True)
        try:
            await self._connection.connect()
        except IceError as exc:
            raise ConnectionError("ICE negotiation failed") from exc

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._connection.close()
            self._events.put_nowait(ConnectionClosed())

    async def get_event(self) -> ConnectionClosed | None:
        return await self._events.get()

    async def recv(self) -> bytes:
        data, _ = await self.recvfrom()
        return data

    async def recvfrom(self) -> tuple[bytes, int]:
        """The next datagram and the component it came on."""
        if self._closed and self._data.empty():
            raise ConnectionError("Cannot receive data, not connected")
        return await self._data.get()

    async def send(self, data: bytes) -> None:
        await self.sendto(data, 1)

    async def sendto(self, data: bytes, component: int) -> None:
        try:
            await self._connection.send(data, component)
        except IceError as exc:
            raise ConnectionError("Cannot send data, not connected") from exc

    # --- plumbing ---------------------------------------------------------------------------

    def _credentials(self, *, required: bool = False) -> None:
        if self._connection.agent.remote_credentials is not None:
            return
        if self.remote_username is None or self.remote_password is None:
            if required:
                raise ValueError("Remote username or password is missing")
            return
        self._connection.set_remote_credentials(
            self.remote_username, self.remote_password, lite=self.remote_is_lite
        )

    def _on_data(self, component: int, data: bytes, source: TransportAddress) -> None:
        self._data.put_nowait((data, component))

    def _on_event(self, event: Event) -> None:
        if (
            isinstance(event, ConnectionStateChanged)
            and event.state is ConnectionState.FAILED
            and not self._closed
        ):
            self._events.put_nowait(ConnectionClosed())
