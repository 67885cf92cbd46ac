"""The TURN server's state, shared by its parts: allocations, reservations, relay ports, the
expiry queue, what is queued for the wire, events and counters.

:class:`ServerState` also does the bookkeeping every part needs (binding and releasing relayed
addresses, deleting an allocation, installing a permission, arming expiry) so that the request
handlers (:mod:`.requests`), the data path (:mod:`.relaying`) and the facade (:mod:`.engine`)
change the state only through one set of rules.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from typing import TYPE_CHECKING

from icerelay.turn.server.allocation import (
    CHANNEL_COOLDOWN,
    Allocation,
    Channel,
    FiveTuple,
    HostPort,
)
from icerelay.turn.server.events import AllocationDeleted, Drained, Event, RelayBinder, Transmit
from icerelay.turn.server.expiry import (
    AllocationExpiry,
    ChannelExpiry,
    CooldownExpiry,
    ExpiryQueue,
    PermissionExpiry,
    ReservationExpiry,
)
from icerelay.turn.server.ports import RESERVATION_LIFETIME, PortPool, Reservation, new_token
from icerelay.turn.server.settings import TurnServerSettings

if TYPE_CHECKING:
    from random import Random

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
    "refused_source_quota",
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

#: Ports tried per relayed address before giving up (another process may hold some).
_BIND_ATTEMPTS = 16


def canonical(host: str) -> str:
    """The textual form the socket layer uses for *host* (so permission lookups match)."""
    if ":" not in host:
        # Not IPv6. ipaddress accepts only the strict dotted quad (ASCII digits, no leading
        # zeros), which it prints back unchanged, and returns anything else as it is: so the
        # answer is *host* either way, without parsing it on every Allocate and permission.
        return host
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


def family_of(host: str) -> int:
    """4 or 6, from the textual address."""
    return 6 if ":" in host else 4


class ServerState:
    """Allocations and what hangs on them, owned by one :class:`~.engine.TurnServerEngine`."""

    def __init__(self, settings: TurnServerSettings, binder: RelayBinder, *, rng: Random) -> None:
        self.settings = settings
        self.binder = binder
        self.rng = rng
        self.quotas = settings.quotas
        self.relay_hosts: dict[int, str] = {}
        #: What XOR-RELAYED-ADDRESS says, per family (differs behind a 1:1 NAT).
        self.advertised_hosts: dict[int, str] = {}
        self.pools: dict[int, PortPool] = {}
        for family in (4, 6):
            host = settings.relay_host(family)
            if host is not None:
                self.relay_hosts[family] = host
                self.advertised_hosts[family] = settings.advertised_host(family) or host
                self.pools[family] = PortPool(
                    settings.relay_port_min, settings.relay_port_max, rng=rng
                )
        # The server's own listening addresses: relaying to them would feed STUN/TURN requests
        # into our own listener with a relayed address as their source (TURN over TURN through
        # one server: allocations "from" a relayed address, answers relayed to the attacker).
        # Relayed addresses of other allocations are legitimate peers (two agents using the
        # same TURN server, the common WebRTC/SIP case), and are reached like any peer.
        self.own_hosts = {canonical(host) for host in self.relay_hosts.values()}
        self.own_hosts.update(canonical(host) for host in self.advertised_hosts.values())
        self.own_hosts.update(canonical(host) for host, _port in settings.listen)
        self.own_ports = {port for _host, port in settings.listen}
        self.own_ports.update(port for _host, port in settings.tls_listen)
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.draining = False
        self.by_tuple: dict[FiveTuple, Allocation] = {}
        self.by_relay: dict[HostPort, Allocation] = {}
        self.per_user: dict[str, int] = {}
        #: Allocations per client IP address (canonical text).
        self.per_source: dict[str, int] = {}
        #: Allocations each user holds on the other instances of a cluster, and per-user
        #: allocation quotas (both kept up to date by the cluster's Redis directory): a
        #: user's quota counts every instance.
        self.elsewhere: dict[str, int] = {}
        self.user_quotas: dict[str, int] = {}
        self.reservations: dict[bytes, Reservation] = {}
        self.expiry = ExpiryQueue()
        #: Datagrams for the wire; the facade hands the list out and starts a new one.
        self.out: list[Transmit] = []
        # Bounded: a shell that never asks for events (a simulation) must not grow memory.
        self.events: deque[Event] = deque(maxlen=65536)
        self._drained_sent = False

    def is_own(self, host: str, port: int) -> bool:
        """Whether (host, port) is one of this server's listening addresses."""
        return port in self.own_ports and canonical(host) in self.own_hosts

    # --- quotas -------------------------------------------------------------------------

    def user_count(self, user: str) -> int:
        """Allocations and reservations *user* holds (here and, in a cluster, elsewhere)."""
        return self.per_user.get(user, 0) + self.elsewhere.get(user, 0)

    def quota_of(self, user: str, default: int) -> int:
        """The allocations *user* may hold: its own quota if it has one, else *default*."""
        return self.user_quotas.get(user, default)

    def add_user(self, user: str, delta: int) -> None:
        """Count *delta* more (or fewer) allocations/reservations for *user*."""
        count = self.per_user.get(user, 0) + delta
        if count > 0:
            self.per_user[user] = count
        else:
            self.per_user.pop(user, None)

    def source_count(self, host: str) -> int:
        """Allocations the client IP address *host* holds."""
        return self.per_source.get(canonical(host), 0)

    def _add_source(self, host: str, delta: int) -> None:
        host = canonical(host)
        count = self.per_source.get(host, 0) + delta
        if count > 0:
            self.per_source[host] = count
        else:
            self.per_source.pop(host, None)

    # --- relayed addresses and reservations ---------------------------------------------

    def bind_relay(
        self, family: int, dont_fragment: bool, even: bool, reserve_next: bool
    ) -> tuple[int, int | None] | None:
        """Pick and bind a relay port (and bind the next one when reserving); None if full."""
        pool = self.pools[family]
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

    def release_relay(self, relay: HostPort) -> None:
        """Close a relayed address and give its port back to the pool."""
        self.binder.release(relay)
        pool = self.pools.get(family_of(relay[0]))
        if pool is not None:
            pool.give_back(relay[1])

    def reserve(self, family: int, port: int, user: str, now: float) -> bytes:
        """Hold *port* (already bound) for *user*; the RESERVATION-TOKEN that claims it."""
        token = new_token(self.rng)
        while token in self.reservations:
            token = new_token(self.rng)
        reservation = Reservation(
            token, self.relay_hosts[family], port, user, now + RESERVATION_LIFETIME
        )
        self.reservations[token] = reservation
        # A reservation holds a port like an allocation does: it counts against the quota.
        self.add_user(user, 1)
        self.expiry.push(reservation.expires, ReservationExpiry(reservation))
        return token

    def drop_reservation(self, reservation: Reservation, *, release_port: bool) -> None:
        """Forget a reservation (claimed, or expired: then its port is released)."""
        del self.reservations[reservation.token]
        self.add_user(reservation.owner, -1)
        if release_port:
            self.release_relay((reservation.relay_host, reservation.port))

    # --- allocations ----------------------------------------------------------------------

    def add(self, allocation: Allocation) -> None:
        """Register a new allocation and arm its expiry."""
        self.by_tuple[allocation.five_tuple] = allocation
        for relay in allocation.relays.values():
            self.by_relay[relay] = allocation
        self.add_user(allocation.quota_user, 1)
        self._add_source(allocation.five_tuple[1][0], 1)
        self.schedule(allocation)
        self.counters["allocations_created"] += 1

    def schedule(self, allocation: Allocation) -> None:
        """Arm the allocation's expiry: a new entry only when it must fire earlier than the
        pending one (a Refresh may shorten the lifetime); later expiries are re-armed when the
        pending entry comes due."""
        if allocation.timer_at == 0.0 or allocation.expires < allocation.timer_at:
            allocation.timer_at = allocation.expires
            self.expiry.push(allocation.expires, AllocationExpiry(allocation))

    def delete(self, allocation: Allocation, reason: str, now: float) -> None:
        """End an allocation: release its relays, tell the shell (:class:`AllocationDeleted`)."""
        del self.by_tuple[allocation.five_tuple]
        for relay in allocation.relays.values():
            self.by_relay.pop(relay, None)
            self.release_relay(relay)
        self.add_user(allocation.quota_user, -1)
        self._add_source(allocation.five_tuple[1][0], -1)
        # Break references so that stale expiry entries do not keep much alive.
        allocation.permissions.clear()
        allocation.channels.clear()
        allocation.channel_by_peer.clear()
        self.counters["allocations_deleted"] += 1
        self.events.append(
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
        self.check_drained()

    def check_drained(self) -> None:
        """Emit :class:`Drained` once, when drain mode is on and no allocation is left."""
        if self.draining and not self.by_tuple and not self._drained_sent:
            self._drained_sent = True
            self.events.append(Drained())

    def permit(self, allocation: Allocation, host: str, expires: float) -> None:
        """Install or refresh a permission. An expiry entry is pushed only for a new one: a
        refreshed permission is re-armed when its old entry comes due, so clients refreshing
        in a tight loop cannot grow the queue."""
        if host not in allocation.permissions:
            self.expiry.push(expires, PermissionExpiry(allocation, host))
        allocation.permissions[host] = expires

    def bind_channel(self, allocation: Allocation, channel: Channel) -> None:
        """Add a new channel binding and arm its expiry."""
        allocation.channels[channel.number] = channel
        allocation.channel_by_peer[channel.peer] = channel
        self.expiry.push(channel.expires, ChannelExpiry(allocation, channel.number))

    # --- expiry ---------------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Apply every expiry entry due at *now*: end what is over, re-arm what was refreshed,
        skip entries whose item is gone."""
        expiry = self.expiry
        for when, entry in expiry.pop_due(now):
            if isinstance(entry, AllocationExpiry):
                allocation = entry.allocation
                if (
                    self.by_tuple.get(allocation.five_tuple) is not allocation
                    or when != allocation.timer_at
                ):
                    continue  # deleted, or a superseded entry
                if allocation.expires <= now:
                    self.counters["allocations_expired"] += 1
                    self.delete(allocation, "expired", now)
                else:
                    allocation.timer_at = allocation.expires
                    expiry.push(allocation.expires, entry)
            elif isinstance(entry, PermissionExpiry):
                permissions = entry.allocation.permissions
                expires = permissions.get(entry.host)
                if expires is None:
                    continue
                if expires <= now:
                    del permissions[entry.host]
                else:
                    expiry.push(expires, entry)
            elif isinstance(entry, ChannelExpiry):
                channel = entry.allocation.channels.get(entry.number)
                if channel is None:
                    continue
                if channel.expires <= now:
                    self._expire_channel(entry.allocation, channel, now)
                else:
                    expiry.push(channel.expires, entry)
            elif isinstance(entry, CooldownExpiry):
                allocation = entry.allocation
                number_entry = allocation.cooldown_numbers.get(entry.number)
                if number_entry is not None and number_entry[1] <= now:
                    del allocation.cooldown_numbers[entry.number]
                peer_entry = allocation.cooldown_peers.get(entry.peer)
                if peer_entry is not None and peer_entry[1] <= now:
                    del allocation.cooldown_peers[entry.peer]
            else:
                reservation = entry.reservation
                if self.reservations.get(reservation.token) is reservation:
                    self.counters["reservations_expired"] += 1
                    self.drop_reservation(reservation, release_port=True)

    def _expire_channel(self, allocation: Allocation, channel: Channel, now: float) -> None:
        del allocation.channels[channel.number]
        if allocation.channel_by_peer.get(channel.peer) is channel:
            del allocation.channel_by_peer[channel.peer]
        until = now + CHANNEL_COOLDOWN
        allocation.cooldown_numbers[channel.number] = (channel.peer, until)
        allocation.cooldown_peers[channel.peer] = (channel.number, until)
        self.expiry.push(until, CooldownExpiry(allocation, channel.number, channel.peer))
