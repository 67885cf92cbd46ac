"""The TURN server as a sans-I/O state machine (RFC 8656 over RFC 8489).

Shape
-----
The engine never opens a socket or reads a clock. Its shell
(:mod:`icerelay.daemon.turn_service`, the simulator, or a test) feeds:

- ``receive(data, source, destination, transport, now)``: one datagram from a client over UDP,
  or one whole frame (a STUN message or a ChannelData message) from a TCP/TLS stream, which
  the shell cuts with :class:`~icerelay.turn.server.framing.StreamFramer`. ``destination`` is
  the local listening address; (transport, source, destination) is RFC 8656's 5-tuple.
- ``receive_relayed(data, peer, relay, now)``: one datagram a peer sent to a relayed address.
- ``connection_lost(source, destination, transport, now)``: a TCP/TLS client went away (its
  allocation dies with the connection, RFC 8656 §3.1).
- ``handle_timer(now)`` at ``next_timer()``: expiry of allocations, permissions, channels and
  reservations.

and takes out:

- ``datagrams_to_send()``: :data:`Transmit` tuples ``(data, source, destination, transport)``.
  ``source`` is the local address to send from: a listening address (answers and data to a
  client; for "tcp"/"tls" the shell finds the connection by (source, destination)) or a
  relayed address (data to a peer, always "udp").
- ``next_event()``: :class:`AllocationCreated`, :class:`AllocationDeleted`,
  :class:`ChannelBound`, :class:`Drained`.

Relayed addresses need real sockets. The engine picks the port (random order, EVEN-PORT,
reservations: :mod:`.ports`) and asks the shell's :class:`RelayBinder` to bind it; a bind
can fail because another process holds the port, and the engine then tries another one. This
synchronous interface keeps Allocate a single step (no half-made allocation waiting for I/O)
and is trivial to fake in tests.

The engine is a facade over parts with one job each: :mod:`.state` (allocations, reservations,
relay ports, bookkeeping), :mod:`.expiry` (one queue of everything that expires),
:mod:`.requests` (Allocate, Refresh, CreatePermission, ChannelBind, Binding; refusals are
:mod:`.refusals` errors answered and counted in one place) and :mod:`.relaying` (ChannelData,
Send and Data indications, ICMP). It takes plain :class:`~.settings.TurnServerSettings` and an
injected random generator (port order, nonce key, tokens, transaction ids).

Policy decisions, each counted in :attr:`TurnServerEngine.counters`:

- unauthenticated requests are answered at most ``unauthenticated_rate`` per second per source
  IP, so the server is no reflection amplifier;
- peers pass :class:`~.policy.PeerPolicy` at CreatePermission/ChannelBind (403 otherwise);
  data to or from a peer without a live permission is dropped;
- quotas (:class:`~.quotas.TurnQuotas`): 486 per user, 508 for the server, permissions and
  channels per allocation, bandwidth per allocation (excess dropped);
- drain mode (:meth:`TurnServerEngine.start_drain`): new allocations get 508 Insufficient
  Capacity (chosen over 403 because the condition is temporary and about capacity: a client
  may try another server), existing ones keep working until they end; :class:`Drained` is
  emitted when the last one is gone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from icerelay.stun import ErrorCode
from icerelay.turn.server.allocation import CHANNEL_MAX, CHANNEL_MAX_LEGACY, Allocation, HostPort
from icerelay.turn.server.events import (
    AllocationCreated,
    AllocationDeleted,
    ChannelBound,
    Drained,
    Event,
    RelayBinder,
    Transmit,
)
from icerelay.turn.server.relaying import Relaying
from icerelay.turn.server.requests import RequestHandler
from icerelay.turn.server.settings import TurnServerSettings
from icerelay.turn.server.state import COUNTERS, ServerState

if TYPE_CHECKING:
    from random import Random

    from icerelay.turn.server.allocation import FiveTuple

logger = logging.getLogger("icerelay.turn.server")


class TurnServerEngine:
    """A TURN server without I/O. See the module docstring for the interface."""

    def __init__(
        self,
        settings: TurnServerSettings,
        binder: RelayBinder,
        *,
        rng: Random,
        wall_clock_offset: float = 0.0,
        nonce_key: bytes | None = None,
    ) -> None:
        self.settings = settings
        self.binder = binder
        self.state = state = ServerState(settings, binder, rng=rng)
        self.relaying = relaying = Relaying(state, rng=rng)
        self.requests = RequestHandler(
            state,
            relaying,
            rng=rng,
            wall_clock_offset=wall_clock_offset,
            nonce_key=nonce_key,
        )
        self.auth = self.requests.auth
        self.counters: dict[str, int] = state.counters
        # The peer -> client paths go straight to the data path: no extra call per packet.
        self.receive_relayed = relaying.receive_relayed
        self.receive_icmp = relaying.receive_icmp
        self._channel_data = relaying.channel_data_from_client
        self._request = self.requests.handle
        # First bytes of ChannelData we accept: 0x40-0x4F, or up to 0x7F for RFC 5766 clients.
        channel_max = CHANNEL_MAX_LEGACY if settings.legacy_channel_numbers else CHANNEL_MAX
        self._channel_first_max = channel_max >> 8
        self._next_error_log = float("-inf")

    # --- the interface --------------------------------------------------------------------

    @property
    def allocations(self) -> dict[FiveTuple, Allocation]:
        """Live allocations by 5-tuple (read only, for status pages and tests)."""
        return self.state.by_tuple

    @property
    def wall_clock_offset(self) -> float:
        """Added to ``now`` to get Unix time (REST API credentials carry Unix timestamps)."""
        return self.requests.wall_clock_offset

    @property
    def draining(self) -> bool:
        """Whether drain mode is on."""
        return self.state.draining

    @property
    def has_output(self) -> bool:
        """Whether datagrams or events are waiting (a cheap test for the shell's hot path)."""
        state = self.state
        return bool(state.out or state.events)

    def allocation_for_relay(self, relay: HostPort) -> Allocation | None:
        """The allocation owning a relayed address, if any."""
        return self.state.by_relay.get(relay)

    def datagrams_to_send(self) -> list[Transmit]:
        """Everything queued for the wire since the last call."""
        state = self.state
        out = state.out
        state.out = []
        return out

    def next_event(self) -> Event | None:
        """The oldest event not yet taken, or None."""
        events = self.state.events
        return events.popleft() if events else None

    def next_timer(self) -> float | None:
        """When :meth:`handle_timer` should next run, or None."""
        return self.state.expiry.next_time()

    def handle_timer(self, now: float) -> None:
        """Expire whatever is due at *now*."""
        self.state.expire(now)

    def start_drain(self) -> None:
        """Refuse new allocations from now on; :class:`Drained` follows the last deletion."""
        self.state.draining = True
        self.state.check_drained()

    def receive(
        self, data: bytes, source: HostPort, destination: HostPort, transport: str, now: float
    ) -> None:
        """One datagram (UDP) or frame (TCP/TLS) from a client."""
        if not data:
            return
        first = data[0]
        if 0x40 <= first <= self._channel_first_max:
            self._channel_data(data, (transport, source, destination), now)
        elif first < 0x04:
            try:
                self._request(data, (transport, source, destination), now)
            except Exception:
                # A bug of ours, not the peer's fault: keep serving, count it, say so (rarely).
                self.counters["internal_errors"] += 1
                if now >= self._next_error_log:
                    self._next_error_log = now + 60.0
                    logger.exception("turn.internal_error source=%s", source)
        else:
            # Reserved ChannelData numbers (RFC 8656 §12), or not TURN at all.
            self.counters["dropped_malformed"] += 1

    # receive_relayed(data, peer, relay, now) and receive_icmp(peer, relay, icmp_type,
    # icmp_code, info, now) are :class:`~.relaying.Relaying`'s, bound in __init__.

    def connection_lost(
        self, source: HostPort, destination: HostPort, transport: str, now: float
    ) -> None:
        """A TCP/TLS client connection closed: its allocation ends with it."""
        allocation = self.state.by_tuple.get((transport, source, destination))
        if allocation is not None:
            self.state.delete(allocation, "connection", now)


def allocated_relays(allocations: Iterable[Allocation]) -> list[HostPort]:
    """Every relayed address of *allocations* (for status output)."""
    return [relay for allocation in allocations for relay in allocation.relays.values()]


__all__ = [
    "COUNTERS",
    "AllocationCreated",
    "AllocationDeleted",
    "ChannelBound",
    "Drained",
    "ErrorCode",
    "Event",
    "RelayBinder",
    "Transmit",
    "TurnServerEngine",
]
