"""The TURN server as a sans-I/O state machine (RFC 8656 over RFC 8489).

Shape
-----
The engine never opens a socket or reads a clock. Its shell (:mod:`.service`, or a test) feeds:

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
- ``next_event()``: :class:`AllocationCreated`, :class:`AllocationDeleted`, :class:`Drained`.

Relayed addresses need real sockets. The engine picks the port (random order, EVEN-PORT,
reservations: :mod:`.ports`) and asks the shell's :class:`RelayBinder` to bind it; a bind
can fail because another process holds the port, and the engine then tries another one. This
synchronous interface keeps Allocate a single step (no half-made allocation waiting for I/O)
and is trivial to fake in tests.

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

import heapq
import ipaddress
import logging
import os
import socket
import struct
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from icerelay.errors import StunError
from icerelay.stun import (
    Address,
    AddressErrorCode,
    AttributeType,
    ErrorCode,
    Icmp,
    Message,
    MessageClass,
    Method,
    decode_message,
)
from icerelay.stun.binding import BindingEngine
from icerelay.stun.constants import MAGIC_COOKIE, TRANSPORT_UDP
from icerelay.stun.ratelimit import LogLimiter
from icerelay.turn.server.allocation import (
    CHANNEL_COOLDOWN,
    CHANNEL_LIFETIME,
    CHANNEL_MAX,
    CHANNEL_MAX_LEGACY,
    CHANNEL_MIN,
    PERMISSION_LIFETIME,
    Allocation,
    Channel,
    FiveTuple,
    HostPort,
)
from icerelay.turn.server.auth import Authenticator, AuthFailure, Credentials
from icerelay.turn.server.config import TurnServerConfig
from icerelay.turn.server.policy import PeerPolicy
from icerelay.turn.server.ports import RESERVATION_LIFETIME, PortPool, Reservation, new_token
from icerelay.turn.server.ratelimit import SourceRateLimiter, TokenBucket

A = AttributeType
logger = logging.getLogger("icerelay.turn.server")

#: ``(data, source, destination, transport)``: send *data* from local address *source* to
#: *destination*; transport "udp", "tcp" or "tls". A plain tuple: this is the hot path.
Transmit = tuple[bytes, HostPort, HostPort, str]

_CHANNEL_HEADER = struct.Struct("!HH")
_DATA_HEADER = struct.Struct("!HHI12s")
_XOR_PEER_V4 = struct.Struct("!HHxBHI")
_XOR_PEER_V6_HEAD = struct.Struct("!HHxBH")
_DATA_INDICATION_TYPE = 0x0017
_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
_BIND_ATTEMPTS = 16
#: ADDITIONAL-ADDRESS-FAMILY's number in draft-ietf-tram-dual-allocation, which coturn 4.6
#: still sends (RFC 8656 moved it to 0x8000); same value layout, so both are understood.
_ADDITIONAL_ADDRESS_FAMILY_DRAFT = 0x8032
_PADDING = b"\x00\x00\x00"
#: ICMP types relayed to clients (RFC 8656 §11): IPv4 destination unreachable and time
#: exceeded; ICMPv6 destination unreachable, packet too big and time exceeded.
_ICMP4_TYPES = frozenset((3, 11))
_ICMP6_TYPES = frozenset((1, 2, 3))

_TURN_METHODS = frozenset(
    (Method.ALLOCATE, Method.REFRESH, Method.CREATE_PERMISSION, Method.CHANNEL_BIND)
)

#: Every counter the engine keeps; all start at zero so a metrics dump lists them all.
COUNTERS = (
    "allocations_created",
    "allocations_deleted",
    "allocations_expired",
    "binding_requests",
    "dropped_malformed",
    "dropped_no_allocation",
    "dropped_no_permission",
    "dropped_no_channel",
    "dropped_bandwidth",
    "dropped_unknown_relay",
    "dropped_bad_indication",
    "dropped_not_request",
    "dropped_rate_limited",
    "refused_unauthenticated",
    "refused_stale_nonce",
    "refused_bad_request",
    "refused_wrong_credentials",
    "refused_allocation_mismatch",
    "refused_peer_policy",
    "refused_peer_loop",
    "dropped_peer_loop",
    "refused_peer_family",
    "refused_transport",
    "refused_address_family",
    "refused_user_quota",
    "refused_capacity",
    "refused_draining",
    "refused_reservation",
    "refused_unknown_attribute",
    "reservations_expired",
    "bind_failures",
    "internal_errors",
    "icmp_relayed",
    "refused_tcp_connections",
)


class RelayBinder(Protocol):
    """What the shell provides so the engine can have relayed sockets."""

    def bind(self, address: HostPort, dont_fragment: bool) -> bool:
        """Open a UDP socket bound to *address*; False if the OS refuses (port taken)."""

    def release(self, address: HostPort) -> None:
        """Close the socket of *address* (the allocation or reservation ended)."""


@dataclass(frozen=True, slots=True)
class AllocationCreated:
    """An allocation was made (``relayed``: one address, or two for a dual allocation)."""

    five_tuple: FiveTuple
    username: str
    relayed: tuple[HostPort, ...]
    lifetime: int


@dataclass(frozen=True, slots=True)
class AllocationDeleted:
    """An allocation ended: ``reason`` is "refresh" (lifetime 0), "expired", "connection".

    The traffic figures make it an accounting record (what a CDR needs)."""

    five_tuple: FiveTuple
    username: str
    relayed: tuple[HostPort, ...]
    reason: str
    packets_to_peers: int
    packets_to_client: int
    bytes_to_peers: int = 0
    bytes_to_client: int = 0
    #: Seconds the allocation lived.
    duration: float = 0.0


@dataclass(frozen=True, slots=True)
class Drained:
    """Drain mode is on and the last allocation has ended: the server may exit."""


Event = AllocationCreated | AllocationDeleted | Drained


def _family(host: str) -> int:
    return 6 if ":" in host else 4


def _lifetime(requested: int | None, default: int, maximum: int) -> int:
    """RFC 8656 §7.2/§8: min(requested, maximum), but never below the default."""
    if requested is None:
        return default
    return max(default, min(requested, maximum))


class TurnServerEngine:
    """A TURN server without I/O. See the module docstring for the interface."""

    def __init__(
        self,
        config: TurnServerConfig,
        binder: RelayBinder,
        *,
        wall_clock_offset: float = 0.0,
        nonce_key: bytes | None = None,
    ) -> None:
        self.config = config
        self.binder = binder
        #: Added to ``now`` to get Unix time (REST API credentials carry Unix timestamps).
        self.wall_clock_offset = wall_clock_offset
        self.auth = Authenticator(
            config.realm,
            dict(config.users),
            list(config.auth_secrets),
            nonce_lifetime=config.nonce_lifetime,
            sha256=config.sha256,
            nonce_key=nonce_key,
        )
        self.policy = PeerPolicy(config.allow_peers, config.deny_peers)
        self.quotas = config.quotas
        self.limiter = SourceRateLimiter(config.unauthenticated_rate, config.unauthenticated_burst)
        self.relay_hosts: dict[int, str] = {}
        #: What XOR-RELAYED-ADDRESS says, per family (differs behind a 1:1 NAT).
        self.advertised_hosts: dict[int, str] = {}
        self._pools: dict[int, PortPool] = {}
        for family in (4, 6):
            host = config.relay_host(family)
            if host is not None:
                self.relay_hosts[family] = host
                self.advertised_hosts[family] = config.advertised_host(family) or host
                self._pools[family] = PortPool(config.relay_port_min, config.relay_port_max)
        # The server's own listening addresses: relaying to them would feed STUN/TURN requests
        # into our own listener with a relayed address as their source (TURN over TURN through
        # one server: allocations "from" a relayed address, answers relayed to the attacker).
        # Relayed addresses of other allocations are legitimate peers (two agents using the
        # same TURN server, the common WebRTC/SIP case), and are reached like any peer.
        self._own_hosts = {_canonical(host) for host in self.relay_hosts.values()}
        self._own_hosts.update(_canonical(host) for host in self.advertised_hosts.values())
        self._own_hosts.update(_canonical(host) for host, _port in config.listen)
        self._own_ports = {port for _host, port in config.listen}
        self._own_ports.update(port for _host, port in config.tls_endpoints())
        self.software = config.software
        # Binding answers come from the STUN server's engine, so both behave the same.
        self.binding = BindingEngine(software=config.software)
        self.channel_max = CHANNEL_MAX_LEGACY if config.legacy_channel_numbers else CHANNEL_MAX
        # First bytes of ChannelData we accept: 0x40-0x4F, or up to 0x7F for RFC 5766 clients.
        self._channel_first_max = self.channel_max >> 8
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.draining = False
        self._by_tuple: dict[FiveTuple, Allocation] = {}
        self._by_relay: dict[HostPort, Allocation] = {}
        self._per_user: dict[str, int] = {}
        self._reservations: dict[bytes, Reservation] = {}
        self._timers: list[tuple[float, int, str, Any]] = []
        self._timer_seq = 0
        self._out: list[Transmit] = []
        # Bounded: a shell that never asks for events (a simulation) must not grow memory.
        self._events: deque[Event] = deque(maxlen=65536)
        self._drained_sent = False
        self._next_error_log = float("-inf")
        self._log_limiter = LogLimiter(60.0)

    # --- the interface ------------------------------------------------------------------

    @property
    def allocations(self) -> dict[FiveTuple, Allocation]:
        """Live allocations by 5-tuple (read only, for status pages and tests)."""
        return self._by_tuple

    def allocation_for_relay(self, relay: HostPort) -> Allocation | None:
        """The allocation owning a relayed address, if any."""
        return self._by_relay.get(relay)

    def datagrams_to_send(self) -> list[Transmit]:
        """Everything queued for the wire since the last call."""
        out = self._out
        self._out = []
        return out

    def next_event(self) -> Event | None:
        """The oldest event not yet taken, or None."""
        return self._events.popleft() if self._events else None

    def next_timer(self) -> float | None:
        """When :meth:`handle_timer` should next run, or None."""
        return self._timers[0][0] if self._timers else None

    def start_drain(self) -> None:
        """Refuse new allocations from now on; :class:`Drained` follows the last deletion."""
        self.draining = True
        self._check_drained()

    def receive(
        self, data: bytes, source: HostPort, destination: HostPort, transport: str, now: float
    ) -> None:
        """One datagram (UDP) or frame (TCP/TLS) from a client."""
        if not data:
            return
        first = data[0]
        if 0x40 <= first <= self._channel_first_max:
            self._channel_data_from_client(data, (transport, source, destination), now)
        elif first < 0x04:
            try:
                self._stun_from_client(data, (transport, source, destination), now)
            except Exception:
                # A bug of ours, not the peer's fault: keep serving, count it, say so (rarely).
                self.counters["internal_errors"] += 1
                if now >= self._next_error_log:
                    self._next_error_log = now + 60.0
                    logger.exception("turn.internal_error source=%s", source)
        else:
            # Reserved ChannelData numbers (RFC 8656 §12), or not TURN at all.
            self.counters["dropped_malformed"] += 1

    def receive_relayed(self, data: bytes, peer: HostPort, relay: HostPort, now: float) -> None:
        """One datagram from a peer to a relayed address (RFC 8656 §10.3, §12.6)."""
        allocation = self._by_relay.get(relay)
        if allocation is None:
            self.counters["dropped_unknown_relay"] += 1
            return
        expires = allocation.permissions.get(peer[0])
        if expires is None or expires <= now:
            self.counters["dropped_no_permission"] += 1
            return
        size = len(data)
        bucket = allocation.bucket
        if bucket is not None and not bucket.take(size, now):
            self.counters["dropped_bandwidth"] += 1
            return
        channel = allocation.channel_by_peer.get(peer)
        if channel is not None and channel.expires > now:
            frame = channel.prefix + size.to_bytes(2, "big") + data
            if allocation.stream and size & 3:
                frame += _PADDING[: -size & 3]
        else:
            frame = _data_indication(peer, data)
        allocation.packets_to_client += 1
        allocation.bytes_to_client += size
        five_tuple = allocation.five_tuple
        self._out.append((frame, five_tuple[2], five_tuple[1], five_tuple[0]))

    def receive_icmp(
        self,
        peer: HostPort,
        relay: HostPort,
        icmp_type: int,
        icmp_code: int,
        info: int,
        now: float,
    ) -> None:
        """An ICMP error caused by a datagram relayed from *relay* to *peer* (RFC 8656 §11):
        tell the client in a Data indication with XOR-PEER-ADDRESS and ICMP (no DATA), if the
        peer has a permission. Only the types RFC 8656 lists are passed on: destination
        unreachable, time exceeded, and (IPv4 "fragmentation needed" / IPv6) packet too big,
        whose MTU travels in the ICMP attribute's data field."""
        allocation = self._by_relay.get(relay)
        if allocation is None:
            return
        expires = allocation.permissions.get(peer[0])
        if expires is None or expires <= now:
            self.counters["dropped_no_permission"] += 1
            return
        allowed = _ICMP6_TYPES if ":" in peer[0] else _ICMP4_TYPES
        if icmp_type not in allowed:
            return
        indication = Message(Method.DATA, MessageClass.INDICATION, os.urandom(12))
        indication.add(A.XOR_PEER_ADDRESS, Address(peer[0], peer[1]))
        mtu = info if (icmp_type, icmp_code) in ((3, 4), (2, 0)) else 0
        indication.add(A.ICMP, Icmp(icmp_type, icmp_code, mtu))
        self.counters["icmp_relayed"] += 1
        five_tuple = allocation.five_tuple
        self._out.append((indication.encode(), five_tuple[2], five_tuple[1], five_tuple[0]))

    def connection_lost(
        self, source: HostPort, destination: HostPort, transport: str, now: float
    ) -> None:
        """A TCP/TLS client connection closed: its allocation ends with it."""
        allocation = self._by_tuple.get((transport, source, destination))
        if allocation is not None:
            self._delete(allocation, "connection", now)

    def handle_timer(self, now: float) -> None:
        """Expire whatever is due at *now*."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, _seq, kind, item = heapq.heappop(timers)
            if kind == "allocation":
                allocation: Allocation = item
                if (
                    self._by_tuple.get(allocation.five_tuple) is not allocation
                    or when != allocation.timer_at
                ):
                    continue  # deleted, or a superseded entry
                if allocation.expires <= now:
                    self.counters["allocations_expired"] += 1
                    self._delete(allocation, "expired", now)
                else:
                    allocation.timer_at = allocation.expires
                    self._at(allocation.expires, "allocation", allocation)
            elif kind == "permission":
                allocation, host = item
                expires = allocation.permissions.get(host)
                if expires is None:
                    continue
                if expires <= now:
                    del allocation.permissions[host]
                else:
                    self._at(expires, "permission", item)
            elif kind == "channel":
                allocation, number = item
                channel = allocation.channels.get(number)
                if channel is None:
                    continue
                if channel.expires <= now:
                    self._expire_channel(allocation, channel, now)
                else:
                    self._at(channel.expires, "channel", item)
            elif kind == "cooldown":
                allocation, number, peer = item
                entry = allocation.cooldown_numbers.get(number)
                if entry is not None and entry[1] <= now:
                    del allocation.cooldown_numbers[number]
                peer_entry = allocation.cooldown_peers.get(peer)
                if peer_entry is not None and peer_entry[1] <= now:
                    del allocation.cooldown_peers[peer]
            elif kind == "reservation":
                reservation: Reservation = item
                if self._reservations.get(reservation.token) is reservation:
                    self.counters["reservations_expired"] += 1
                    self._drop_reservation(reservation, release_port=True)

    # --- timers and bookkeeping ---------------------------------------------------------

    def _at(self, when: float, kind: str, item: Any) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, self._timer_seq, kind, item))

    def _schedule(self, allocation: Allocation) -> None:
        """Arm the allocation's expiry: a new entry only when it must fire earlier than the
        pending one (a Refresh may shorten the lifetime); later expiries are re-armed when the
        pending entry comes due."""
        if allocation.timer_at == 0.0 or allocation.expires < allocation.timer_at:
            allocation.timer_at = allocation.expires
            self._at(allocation.expires, "allocation", allocation)

    def _expire_channel(self, allocation: Allocation, channel: Channel, now: float) -> None:
        del allocation.channels[channel.number]
        if allocation.channel_by_peer.get(channel.peer) is channel:
            del allocation.channel_by_peer[channel.peer]
        until = now + CHANNEL_COOLDOWN
        allocation.cooldown_numbers[channel.number] = (channel.peer, until)
        allocation.cooldown_peers[channel.peer] = (channel.number, until)
        self._at(until, "cooldown", (allocation, channel.number, channel.peer))

    def _user_count(self, user: str) -> int:
        return self._per_user.get(user, 0)

    def _add_user(self, user: str, delta: int) -> None:
        count = self._per_user.get(user, 0) + delta
        if count > 0:
            self._per_user[user] = count
        else:
            self._per_user.pop(user, None)

    def _release_relay(self, relay: HostPort) -> None:
        self.binder.release(relay)
        pool = self._pools.get(_family(relay[0]))
        if pool is not None:
            pool.give_back(relay[1])

    def _drop_reservation(self, reservation: Reservation, *, release_port: bool) -> None:
        del self._reservations[reservation.token]
        self._add_user(reservation.owner, -1)
        if release_port:
            self._release_relay((reservation.relay_host, reservation.port))

    def _delete(self, allocation: Allocation, reason: str, now: float) -> None:
        del self._by_tuple[allocation.five_tuple]
        for relay in allocation.relays.values():
            self._by_relay.pop(relay, None)
            self._release_relay(relay)
        self._add_user(allocation.quota_user, -1)
        # Break references so that stale timer entries do not keep much alive.
        allocation.permissions.clear()
        allocation.channels.clear()
        allocation.channel_by_peer.clear()
        self.counters["allocations_deleted"] += 1
        self._events.append(
            AllocationDeleted(
                allocation.five_tuple,
                allocation.username,
                tuple(allocation.relays.values()),
                reason,
                allocation.packets_to_peers,
                allocation.packets_to_client,
                allocation.bytes_to_peers,
                allocation.bytes_to_client,
                max(0.0, now - allocation.created),
            )
        )
        self._check_drained()

    def _check_drained(self) -> None:
        if self.draining and not self._by_tuple and not self._drained_sent:
            self._drained_sent = True
            self._events.append(Drained())

    # --- data from the client -----------------------------------------------------------

    def _channel_data_from_client(self, data: bytes, five_tuple: FiveTuple, now: float) -> None:
        allocation = self._by_tuple.get(five_tuple)
        if allocation is None:
            self.counters["dropped_no_allocation"] += 1
            return
        if len(data) < 4:
            self.counters["dropped_malformed"] += 1
            return
        number, length = _CHANNEL_HEADER.unpack_from(data)
        # Over UDP the datagram may carry padding after the data (RFC 8656 §12.5); never less.
        if 4 + length > len(data):
            self.counters["dropped_malformed"] += 1
            return
        channel = allocation.channels.get(number)
        if channel is None or channel.expires <= now:
            self.counters["dropped_no_channel"] += 1
            return
        bucket = allocation.bucket
        if bucket is not None and not bucket.take(length, now):
            self.counters["dropped_bandwidth"] += 1
            return
        allocation.packets_to_peers += 1
        allocation.bytes_to_peers += length
        self._out.append((data[4 : 4 + length], channel.relay, channel.peer, "udp"))

    def _send_indication(self, message: Message, five_tuple: FiveTuple, now: float) -> None:
        """RFC 8656 §10.2: relay DATA to XOR-PEER-ADDRESS if a permission exists."""
        allocation = self._by_tuple.get(five_tuple)
        if allocation is None:
            self.counters["dropped_no_allocation"] += 1
            return
        peer = message.get(A.XOR_PEER_ADDRESS)
        data = message.get(A.DATA)
        if peer is None or data is None:
            self.counters["dropped_bad_indication"] += 1
            return
        relay = allocation.relays.get(peer.family)
        expires = allocation.permissions.get(peer.host)
        if relay is None or expires is None or expires <= now:
            self.counters["dropped_no_permission"] += 1
            return
        if peer.port in self._own_ports and self._is_own(peer.host, peer.port):
            self.counters["dropped_peer_loop"] += 1
            return
        bucket = allocation.bucket
        if bucket is not None and not bucket.take(len(data), now):
            self.counters["dropped_bandwidth"] += 1
            return
        allocation.packets_to_peers += 1
        allocation.bytes_to_peers += len(data)
        self._out.append((data, relay, (peer.host, peer.port), "udp"))

    # --- STUN requests ------------------------------------------------------------------

    def _stun_from_client(self, data: bytes, five_tuple: FiveTuple, now: float) -> None:
        try:
            message = decode_message(data)
        except StunError as error:
            self.counters["dropped_malformed"] += 1
            # Logged at most once a minute per source: a flood must not become a disk attack.
            suppressed = self._log_limiter.allow(five_tuple[1][0], now)
            if suppressed is not None:
                logger.info(
                    "turn.dropped source=%s transport=%s reason=%r suppressed=%d",
                    five_tuple[1][0],
                    five_tuple[0],
                    str(error),
                    suppressed,
                )
            return
        message_class = message.message_class
        if message_class == MessageClass.INDICATION:
            if message.method == Method.SEND:
                self._send_indication(message, five_tuple, now)
            else:
                self.counters["dropped_bad_indication"] += 1
            return
        if message_class != MessageClass.REQUEST:
            self.counters["dropped_not_request"] += 1
            return
        if message.method == Method.BINDING:
            self._binding(message, five_tuple, len(data), now)
            return
        if message.method not in _TURN_METHODS:
            self._refuse_unauthenticated(message, five_tuple, now, 400, "Unknown method")
            return
        outcome = self.auth.check(
            message, five_tuple[0], five_tuple[1], now, now + self.wall_clock_offset
        )
        if isinstance(outcome, AuthFailure):
            self._refuse_unauthenticated(message, five_tuple, now, outcome.code, outcome.reason)
            return
        if message.unknown_comprehension_required:
            self.counters["refused_unknown_attribute"] += 1
            response = message.error_response(420)
            response.add(A.UNKNOWN_ATTRIBUTES, list(message.unknown_comprehension_required))
            self._respond(message, response, five_tuple, outcome)
            return
        method = message.method
        if method == Method.ALLOCATE:
            self._allocate(message, five_tuple, outcome, now)
            return
        allocation = self._by_tuple.get(five_tuple)
        if allocation is None:
            self.counters["refused_allocation_mismatch"] += 1
            self._respond(message, message.error_response(437), five_tuple, outcome)
            return
        if allocation.username != outcome.username:
            # RFC 8656 §5: later requests must use the credentials that made the allocation.
            self.counters["refused_wrong_credentials"] += 1
            self._respond(message, message.error_response(441), five_tuple, outcome)
            return
        if method == Method.REFRESH:
            response = self._refresh(message, allocation, now)
        elif method == Method.CREATE_PERMISSION:
            response = self._create_permission(message, allocation, now)
        else:
            response = self._channel_bind(message, allocation, now)
        self._respond(message, response, five_tuple, outcome)

    def _respond(
        self,
        request: Message,
        response: Message,
        five_tuple: FiveTuple,
        credentials: Credentials | None,
    ) -> bytes:
        if self.software is not None:
            response.add(A.SOFTWARE, self.software)
        if credentials is None:
            data = response.encode(fingerprint=request.has_fingerprint)
        else:
            data = response.encode(
                credentials.key, credentials.integrity, fingerprint=request.has_fingerprint
            )
        self._out.append((data, five_tuple[2], five_tuple[1], five_tuple[0]))
        return data

    def _refuse_unauthenticated(
        self, message: Message, five_tuple: FiveTuple, now: float, code: int, reason: str
    ) -> None:
        if not self.limiter.allow(five_tuple[1][0], now):
            self.counters["dropped_rate_limited"] += 1
            return
        counter = {401: "refused_unauthenticated", 438: "refused_stale_nonce"}.get(
            code, "refused_bad_request"
        )
        self.counters[counter] += 1
        response = message.error_response(code, reason)
        if code in (401, 438):
            for attribute_type, value in self.auth.challenge_attributes(
                five_tuple[0], five_tuple[1], now
            ):
                response.add(attribute_type, value)  # type: ignore[arg-type]
        self._respond(message, response, five_tuple, None)

    def _binding(self, message: Message, five_tuple: FiveTuple, size: int, now: float) -> None:
        """A TURN server is a STUN server too (RFC 8656 §4): answer Binding requests."""
        if not self.limiter.allow(five_tuple[1][0], now):
            self.counters["dropped_rate_limited"] += 1
            return
        self.counters["binding_requests"] += 1
        transport, client, server = five_tuple
        datagram = self.binding.answer(
            message,
            Address(client[0], client[1]),
            Address(server[0], server[1]),
            "udp" if transport == "udp" else "tcp",
            size,
        )
        self._out.append((datagram.data, server, client, transport))

    # --- Allocate -----------------------------------------------------------------------

    def _allocate(
        self, message: Message, five_tuple: FiveTuple, credentials: Credentials, now: float
    ) -> None:
        existing = self._by_tuple.get(five_tuple)
        if existing is not None:
            if existing.allocate_transaction == message.transaction_id:
                # A retransmission (our answer was lost): the same answer again (RFC 8656 §7.2).
                self._out.append(
                    (existing.allocate_response, five_tuple[2], five_tuple[1], five_tuple[0])
                )
            else:
                self.counters["refused_allocation_mismatch"] += 1
                self._respond(message, message.error_response(437), five_tuple, credentials)
            return
        response = self._make_allocation(message, five_tuple, credentials, now)
        data = self._respond(message, response, five_tuple, credentials)
        allocation = self._by_tuple.get(five_tuple)
        if allocation is not None:
            allocation.allocate_response = data

    def _error(self, message: Message, code: int, counter: str, reason: str = "") -> Message:
        self.counters[counter] += 1
        return message.error_response(code, reason)

    def _make_allocation(
        self, message: Message, five_tuple: FiveTuple, credentials: Credentials, now: float
    ) -> Message:
        transport = message.get(A.REQUESTED_TRANSPORT)
        if transport is None:
            return self._error(message, 400, "refused_bad_request", "REQUESTED-TRANSPORT missing")
        if transport != TRANSPORT_UDP:
            return self._error(message, 442, "refused_transport")
        token = message.get(A.RESERVATION_TOKEN)
        even_port = message.get(A.EVEN_PORT)
        requested_family = message.get(A.REQUESTED_ADDRESS_FAMILY)
        additional_family = message.get(A.ADDITIONAL_ADDRESS_FAMILY)
        if additional_family is None:
            draft = message.get(_ADDITIONAL_ADDRESS_FAMILY_DRAFT)
            if isinstance(draft, bytes) and len(draft) == 4:
                additional_family = draft[0]
        # RFC 8656 §7.2: combinations that make no sense are bad requests.
        if token is not None and (
            even_port is not None or requested_family is not None or additional_family is not None
        ):
            return self._error(message, 400, "refused_bad_request", "RESERVATION-TOKEN conflict")
        if requested_family is not None and additional_family is not None:
            return self._error(message, 400, "refused_bad_request", "two address families")
        if additional_family is not None and additional_family != 2:
            return self._error(message, 400, "refused_bad_request", "ADDITIONAL-ADDRESS-FAMILY")
        if additional_family is not None and even_port:
            return self._error(message, 400, "refused_bad_request", "EVEN-PORT with dual")
        if self.draining:
            return self._error(message, 508, "refused_draining", "Draining")
        if len(self._by_tuple) >= self.quotas.total_allocations:
            return self._error(message, 508, "refused_capacity")
        user = credentials.quota_user
        reservation: Reservation | None = None
        if token is not None:
            reservation = self._reservations.get(token)
            if reservation is None or reservation.expires <= now or reservation.owner != user:
                return self._error(message, 508, "refused_reservation", "Bad RESERVATION-TOKEN")
            # The reservation counted against the user's quota; the allocation takes its place.
            self._drop_reservation(reservation, release_port=False)
        if self._user_count(user) >= self.quotas.allocations_per_user:
            if reservation is not None:
                self._release_relay((reservation.relay_host, reservation.port))
            return self._error(message, 486, "refused_user_quota")

        family = 4
        if reservation is not None:
            family = _family(reservation.relay_host)
        elif requested_family is not None:
            family = {1: 4, 2: 6}.get(requested_family, 0)
        if family not in self.relay_hosts:
            return self._error(message, 440, "refused_address_family")

        dont_fragment = message.has(A.DONT_FRAGMENT)
        relays: dict[int, HostPort] = {}
        new_token_value: bytes | None = None
        if reservation is not None:
            relays[family] = (reservation.relay_host, reservation.port)
        else:
            bound = self._bind_relay(
                family, dont_fragment, bool(even_port is not None), bool(even_port)
            )
            if bound is None:
                return self._error(message, 508, "refused_capacity")
            port, reserved = bound
            relays[family] = (self.relay_hosts[family], port)
            if reserved is not None:
                new_token_value = self._reserve(family, reserved, user, now)
        address_error: AddressErrorCode | None = None
        if additional_family is not None:
            if 6 not in self.relay_hosts:
                address_error = AddressErrorCode(2, 440)
            else:
                bound = self._bind_relay(6, dont_fragment, False, False)
                if bound is None:
                    address_error = AddressErrorCode(2, 508)
                else:
                    relays[6] = (self.relay_hosts[6], bound[0])

        lifetime = _lifetime(
            message.get(A.LIFETIME), self.config.default_lifetime, self.config.max_lifetime
        )
        bucket = None
        if self.quotas.bandwidth_per_allocation:
            rate = float(self.quotas.bandwidth_per_allocation)
            bucket = TokenBucket(rate, rate * self.quotas.bandwidth_burst_seconds, now)
        allocation = Allocation(
            five_tuple=five_tuple,
            username=credentials.username,
            quota_user=user,
            relays=relays,
            expires=now + lifetime,
            created=now,
            stream=five_tuple[0] != "udp",
            bucket=bucket,
            dont_fragment=dont_fragment,
            allocate_transaction=message.transaction_id,
        )
        self._by_tuple[five_tuple] = allocation
        for relay in relays.values():
            self._by_relay[relay] = allocation
        self._add_user(user, 1)
        self._schedule(allocation)
        self.counters["allocations_created"] += 1
        self._events.append(
            AllocationCreated(five_tuple, credentials.username, tuple(relays.values()), lifetime)
        )

        response = message.response()
        for relay_family, relay in relays.items():
            advertised = self.advertised_hosts.get(relay_family, relay[0])
            response.add(A.XOR_RELAYED_ADDRESS, Address(advertised, relay[1]))
        if address_error is not None:
            response.add(A.ADDRESS_ERROR_CODE, address_error)
        response.add(A.LIFETIME, lifetime)
        if new_token_value is not None:
            response.add(A.RESERVATION_TOKEN, new_token_value)
        client = five_tuple[1]
        response.add(A.XOR_MAPPED_ADDRESS, Address(client[0], client[1]))
        return response

    def _bind_relay(
        self, family: int, dont_fragment: bool, even: bool, reserve_next: bool
    ) -> tuple[int, int | None] | None:
        """Pick and bind a relay port (and bind the next one when reserving); None if full."""
        pool = self._pools[family]
        host = self.relay_hosts[family]
        for _attempt in range(_BIND_ATTEMPTS):
            port = pool.take_even_pair(reserve_next) if even else pool.take()
            if port is None:
                return None
            if self.binder.bind((host, port), dont_fragment):
                if not reserve_next:
                    return port, None
                if self.binder.bind((host, port + 1), False):
                    return port, port + 1
                self.binder.release((host, port))
                pool.set_aside(port + 1)
            self.counters["bind_failures"] += 1
            pool.set_aside(port)
        return None

    def _reserve(self, family: int, port: int, user: str, now: float) -> bytes:
        token = new_token()
        while token in self._reservations:
            token = new_token()
        reservation = Reservation(
            token, self.relay_hosts[family], port, user, now + RESERVATION_LIFETIME
        )
        self._reservations[token] = reservation
        # A reservation holds a port like an allocation does: it counts against the quota.
        self._add_user(user, 1)
        self._at(reservation.expires, "reservation", reservation)
        return token

    # --- Refresh, CreatePermission, ChannelBind ----------------------------------------

    def _refresh(self, message: Message, allocation: Allocation, now: float) -> Message:
        family = message.get(A.REQUESTED_ADDRESS_FAMILY)
        if family is not None and {1: 4, 2: 6}.get(family) not in allocation.relays:
            return self._error(message, 443, "refused_peer_family")
        requested = message.get(A.LIFETIME)
        response = message.response()
        if requested == 0:
            self._delete(allocation, "refresh", now)
            response.add(A.LIFETIME, 0)
            return response
        lifetime = _lifetime(requested, self.config.default_lifetime, self.config.max_lifetime)
        allocation.expires = now + lifetime
        self._schedule(allocation)
        response.add(A.LIFETIME, lifetime)
        return response

    def _check_peer(
        self, message: Message, allocation: Allocation, peer: Address
    ) -> Message | None:
        if peer.family not in allocation.relays:
            return self._error(message, 443, "refused_peer_family")
        if not self.policy.is_allowed(peer.host):
            return self._error(message, 403, "refused_peer_policy")
        return None

    def _is_own(self, host: str, port: int) -> bool:
        """Whether (host, port) is one of this server's listening addresses."""
        return port in self._own_ports and _canonical(host) in self._own_hosts

    def _create_permission(self, message: Message, allocation: Allocation, now: float) -> Message:
        peers = message.get_all(A.XOR_PEER_ADDRESS)
        if not peers:
            return self._error(message, 400, "refused_bad_request", "XOR-PEER-ADDRESS missing")
        # All or nothing (RFC 8656 §9.2): check every peer before installing any.
        for peer in peers:
            refusal = self._check_peer(message, allocation, peer)
            if refusal is not None:
                return refusal
        hosts = {_canonical(peer.host) for peer in peers}
        live = {host for host, expires in allocation.permissions.items() if expires > now}
        if len(live | hosts) > self.quotas.permissions_per_allocation:
            return self._error(message, 508, "refused_capacity", "Too many permissions")
        expires = now + PERMISSION_LIFETIME
        for host in hosts:
            self._permit(allocation, host, expires)
        return message.response()

    def _permit(self, allocation: Allocation, host: str, expires: float) -> None:
        """Install or refresh a permission. A timer entry is pushed only for a new one: a
        refreshed permission is re-armed when its old entry comes due, so clients refreshing
        in a tight loop cannot grow the timer heap."""
        if host not in allocation.permissions:
            self._at(expires, "permission", (allocation, host))
        allocation.permissions[host] = expires

    def _channel_bind(self, message: Message, allocation: Allocation, now: float) -> Message:
        number = message.get(A.CHANNEL_NUMBER)
        peer_address = message.get(A.XOR_PEER_ADDRESS)
        if number is None or peer_address is None:
            return self._error(message, 400, "refused_bad_request", "Missing attributes")
        if not CHANNEL_MIN <= number <= self.channel_max:
            return self._error(message, 400, "refused_bad_request", "Bad channel number")
        refusal = self._check_peer(message, allocation, peer_address)
        if refusal is not None:
            return refusal
        if self._is_own(peer_address.host, peer_address.port):
            return self._error(message, 403, "refused_peer_loop", "Peer is this server")
        peer = (_canonical(peer_address.host), peer_address.port)
        channel = allocation.channels.get(number)
        if channel is not None and channel.peer != peer:
            return self._error(message, 400, "refused_bad_request", "Channel bound elsewhere")
        other = allocation.channel_by_peer.get(peer)
        if other is not None and other.number != number:
            return self._error(message, 400, "refused_bad_request", "Peer bound elsewhere")
        cooled = allocation.cooldown_numbers.get(number)
        if cooled is not None and cooled[1] > now and cooled[0] != peer:
            return self._error(message, 400, "refused_bad_request", "Channel cooling down")
        cooled_peer = allocation.cooldown_peers.get(peer)
        if cooled_peer is not None and cooled_peer[1] > now and cooled_peer[0] != number:
            return self._error(message, 400, "refused_bad_request", "Peer cooling down")
        if channel is None and len(allocation.channels) >= self.quotas.channels_per_allocation:
            return self._error(message, 508, "refused_capacity", "Too many channels")
        host = peer[0]
        if host not in allocation.permissions and (
            len(allocation.permissions) >= self.quotas.permissions_per_allocation
        ):
            return self._error(message, 508, "refused_capacity", "Too many permissions")
        expires = now + CHANNEL_LIFETIME
        if channel is None:
            channel = Channel(number, peer, allocation.relays[peer_address.family], expires)
            allocation.channels[number] = channel
            allocation.channel_by_peer[peer] = channel
            self._at(expires, "channel", (allocation, number))
        else:
            channel.expires = expires  # re-armed when its timer entry comes due
        # RFC 8656 §12.2: a ChannelBind also installs or refreshes the permission.
        self._permit(allocation, host, now + PERMISSION_LIFETIME)
        return message.response()


def _canonical(host: str) -> str:
    """The textual form the socket layer uses for *host* (so permission lookups match)."""
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


def _data_indication(peer: HostPort, data: bytes) -> bytes:
    """A Data indication (RFC 8656 §10.3) built by hand: it is on the data path for clients
    that do not use channels, and the generic encoder would cost several times more."""
    transaction_id = os.urandom(12)
    host, port = peer
    if ":" in host:
        raw = int.from_bytes(socket.inet_pton(socket.AF_INET6, host), "big")
        mask = int.from_bytes(_COOKIE_BYTES + transaction_id, "big")
        peer_attribute = _XOR_PEER_V6_HEAD.pack(A.XOR_PEER_ADDRESS, 20, 2, port ^ 0x2112) + (
            raw ^ mask
        ).to_bytes(16, "big")
    else:
        raw4 = int.from_bytes(socket.inet_aton(host), "big")
        peer_attribute = _XOR_PEER_V4.pack(
            A.XOR_PEER_ADDRESS, 8, 1, port ^ 0x2112, raw4 ^ MAGIC_COOKIE
        )
    size = len(data)
    padding = -size & 3
    length = len(peer_attribute) + 4 + size + padding
    return b"".join(
        (
            _DATA_HEADER.pack(_DATA_INDICATION_TYPE, length, MAGIC_COOKIE, transaction_id),
            peer_attribute,
            _CHANNEL_HEADER.pack(A.DATA, size),
            data,
            _PADDING[:padding],
        )
    )


def allocated_relays(allocations: Iterable[Allocation]) -> list[HostPort]:
    """Every relayed address of *allocations* (for status output)."""
    return [relay for allocation in allocations for relay in allocation.relays.values()]


__all__ = [
    "COUNTERS",
    "AllocationCreated",
    "AllocationDeleted",
    "Drained",
    "ErrorCode",
    "Event",
    "RelayBinder",
    "Transmit",
    "TurnServerEngine",
]
