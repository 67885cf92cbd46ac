"""TURN client (RFC 8656): a sans-I/O allocation engine.

- :class:`Allocation` (in :mod:`.allocation`): the engine; feed it bytes and time, read
  datagrams and events. It runs the same under asyncio, in the network simulator and in tests.
- its asyncio driver, :class:`~icerelay.aio.turn_client.TurnClient` and
  :func:`~icerelay.aio.turn_client.create_turn_allocation`, lives in the I/O shell layer
  (:mod:`icerelay.aio.turn_client`): UDP, TCP or TLS to the server.

Example (asyncio)::

    async with create_turn_allocation(("192.0.2.10", 3478), "alice", "secret") as turn:
        await turn.send_to(b"ping", Address("198.51.100.7", 5000))
        data, peer = await turn.recv_from()

REST API (coturn ``use-auth-secret``) credentials come from
:func:`icerelay.turn.credentials.rest_api_credentials`.
"""

from icerelay.turn.client.allocation import Allocation, State
from icerelay.turn.client.events import (
    AllocationClosed,
    AllocationCounters,
    AllocationExpired,
    AllocationFailed,
    AllocationRefreshed,
    AllocationSucceeded,
    AlternateServer,
    ChannelBindFailed,
    ChannelBound,
    Datagram,
    DataReceived,
    Event,
    PermissionCreated,
    PermissionFailed,
)

__all__ = [
    "Allocation",
    "AllocationClosed",
    "AllocationCounters",
    "AllocationExpired",
    "AllocationFailed",
    "AllocationRefreshed",
    "AllocationSucceeded",
    "AlternateServer",
    "ChannelBindFailed",
    "ChannelBound",
    "DataReceived",
    "Datagram",
    "Event",
    "PermissionCreated",
    "PermissionFailed",
    "State",
]
