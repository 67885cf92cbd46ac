"""TURN ChannelData relayed in the kernel: which channel bindings go there, and for how long.

:class:`TurnOffload` keeps the eBPF program's maps (``bpf/turn_offload.bpf.c``, loaded by
:mod:`.turn_offload_bpf`) in step with one TURN engine's allocations:

- a channel bound on a UDP allocation (the engine's ``ChannelBound`` event) becomes two map
  entries, client -> peer and peer -> client, each with a per-channel counter slot;
- every entry carries a deadline, the earliest of the channel's, the permission's and the
  allocation's expiry: the kernel relays nothing past it and hands such packets to userspace,
  the reference, which drops or relays them by its own rules. :meth:`sync` (the service's
  one-second tick) moves deadlines after refreshes and removes entries whose channel or
  permission is gone; :meth:`release_relay` removes an allocation's entries as it ends
  (expiry, Refresh 0, a lost connection) before its accounting record is made;
- the counters are read on each :meth:`sync`: what the kernel relayed is added to the
  allocation's traffic figures and charged to its bandwidth bucket. An allocation over its
  quota has its entries withdrawn for a while, so userspace enforces the quota packet by
  packet meanwhile (the kernel overshoots by at most one tick's worth);
- an ``alive`` heartbeat renewed by :meth:`sync`: if the server dies without detaching, the
  program stops relaying within seconds.

Not offloaded (stays in userspace): TCP/TLS allocations, Send/Data indications, STUN, peers
without a channel, a client and peer of different address families, a wildcard listening
address (the kernel must know the exact server address), and a client or peer on this host
when the other side is elsewhere (a locally sent datagram carries only a partial checksum,
completed by the transmitting device; rewritten in place it would leave with a wrong one).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from icerelay.dataplane.turn_offload_bpf import Maps

if TYPE_CHECKING:
    from icerelay.turn.server.allocation import Allocation, Channel, HostPort

logger = logging.getLogger("icerelay.turn.offload")

# Layouts of the C structs (bpf/turn_offload.bpf.c); ports and channel numbers are stored in
# network order, so they are packed as htons() values in the host's order.
C2P_KEY = struct.Struct("=BxHHH16s16s")
C2P_VALUE = struct.Struct("=16s16sHHIQII")
P2C_KEY = struct.Struct("=BxHHxx16s16s")
P2C_VALUE = struct.Struct("=16s16sHHHxxIIQII")
STATS = struct.Struct("=QQQQ")
ALIVE = struct.Struct("=Q")
_ZERO_KEY = struct.pack("=I", 0)

#: How long the heartbeat vouches for the maps (renewed every tick, ~1 s).
HEARTBEAT = 5.0
#: Seconds an allocation over its bandwidth quota stays in userspace before it is offloaded
#: again.
QUOTA_BACKOFF = 2.0
#: A deadline that moved less than this is not rewritten (refreshes move it by minutes).
_DEADLINE_SLACK = 0.5
_ROUTE_CACHE = 4096


@dataclass(slots=True, eq=False)
class OffloadEntry:
    """One channel binding installed in the kernel."""

    allocation: Allocation
    channel: Channel
    slot: int
    c2p_key: bytes
    p2c_key: bytes
    c2p_value: bytes
    p2c_value: bytes
    deadline: float
    packets_to_peer: int = 0
    bytes_to_peer: int = 0
    packets_to_client: int = 0
    bytes_to_client: int = 0


def _packed_ip(host: str) -> tuple[int, bytes]:
    address = ipaddress.ip_address(host)
    return address.version, address.packed.ljust(16, b"\0")


class Routes:
    """Whether an address is this host's, and otherwise which interface reaches it. Both are
    cached and cheap on a miss (a bind or a connect of a UDP socket: a route lookup, no
    packet, no subprocess), since they run on the ChannelBind path; never per packet."""

    def __init__(self) -> None:
        self._local: dict[str, bool] = {}
        self._egress: dict[str, tuple[int, int] | None] = {}
        #: Local address -> (ifindex, MTU), from ``ip -j addr`` (re-read on a miss, at most
        #: every few seconds).
        self._interfaces: dict[str, tuple[int, int]] = {}
        self._interfaces_read = float("-inf")

    def is_local(self, host: str) -> bool:
        """A local address can be bound."""
        known = self._local.get(host)
        if known is None:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind((host, 0))
                    known = True
                except OSError:
                    known = False
            if len(self._local) >= _ROUTE_CACHE:
                self._local.clear()
            self._local[host] = known
        return known

    def egress(self, host: str) -> tuple[int, int] | None:
        """(ifindex, MTU) of the interface the kernel would send to *host* from, or None."""
        if host in self._egress:
            return self._egress[host]
        found: tuple[int, int] | None = None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((host, 9))  # a route lookup; nothing is sent
                source = ipaddress.ip_address(probe.getsockname()[0]).compressed
            except OSError:
                source = ""
        if source:
            found = self._interfaces.get(source)
            if found is None and time.monotonic() - self._interfaces_read > 5.0:
                self._read_interfaces()
                found = self._interfaces.get(source)
        if len(self._egress) >= _ROUTE_CACHE:
            self._egress.clear()
        self._egress[host] = found
        return found

    def _read_interfaces(self) -> None:
        self._interfaces_read = time.monotonic()
        with contextlib.suppress(OSError, ValueError, subprocess.SubprocessError):
            answer = subprocess.run(
                ["ip", "-j", "addr", "show"], capture_output=True, text=True, timeout=5, check=True
            )
            table: dict[str, tuple[int, int]] = {}
            for link in json.loads(answer.stdout):
                for info in link.get("addr_info", ()):
                    local = info.get("local")
                    if local:
                        address = ipaddress.ip_address(local).compressed
                        table[address] = (int(link["ifindex"]), int(link.get("mtu", 1500)))
            self._interfaces = table


class TurnOffload:
    """The kernel entries of one TURN engine (one worker), in counter slots *slots*."""

    def __init__(self, maps: Maps, slots: range, *, routes: Routes | None = None) -> None:
        self.maps = maps
        self.routes = routes or Routes()
        self._free = list(reversed(slots))
        self.entries: dict[tuple[HostPort, HostPort], OffloadEntry] = {}
        self._by_relay: dict[HostPort, list[OffloadEntry]] = {}
        #: Allocations kept in userspace until the given time (over their bandwidth quota).
        self._backoff: dict[int, tuple[Allocation, float]] = {}
        #: False after :meth:`withdraw_all` (drain): nothing more is installed.
        self.enabled = True
        #: Reason -> count; the service adds them to its status (``offloaded_packets`` is what
        #: the stop line and /metrics show).
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "offloaded_packets",
                "offloaded_bytes",
                "offload_installed",
                "offload_removed",
                "offload_skipped",
                "offload_map_full",
                "offload_quota_withdrawn",
            ),
            0,
        )

    # --- clock ------------------------------------------------------------------------------

    @staticmethod
    def _kernel_time(deadline: float, now: float) -> int:
        """*deadline* (the engine's clock, *now* being its present) as CLOCK_MONOTONIC ns,
        bpf_ktime_get_ns()'s clock."""
        return time.monotonic_ns() + max(0, int((deadline - now) * 1e9))

    def heartbeat(self, now: float) -> None:
        """Vouch for the maps for another :data:`HEARTBEAT` seconds."""
        self.maps.update("alive", _ZERO_KEY, ALIVE.pack(self._kernel_time(now + HEARTBEAT, now)))

    # --- installing -----------------------------------------------------------------------

    @staticmethod
    def deadline(allocation: Allocation, channel: Channel) -> float:
        """Until when the engine would relay this channel both ways without asking again."""
        permission = allocation.permissions.get(channel.peer[0], 0.0)
        return min(channel.expires, permission, allocation.expires)

    def install(self, allocation: Allocation, channel: Channel, now: float) -> bool:
        """Put *channel* of *allocation* in the kernel; False when it stays in userspace."""
        if not self.enabled or allocation.transport != "udp":
            return False
        if id(allocation) in self._backoff:
            return False
        key = (channel.relay, channel.peer)
        deadline = self.deadline(allocation, channel)
        existing = self.entries.get(key)
        if existing is not None:
            if existing.channel is channel and existing.allocation is allocation:
                # A refresh: only the deadline moves.
                existing.deadline = deadline
                try:
                    self._write(existing, self._kernel_time(deadline, now))
                except OSError:
                    self._remove(existing, now)
                    return False
                return True
            self._remove(existing, now)
        client, server = allocation.client, allocation.server
        relay, peer = channel.relay, channel.peer
        family, client_ip = _packed_ip(client[0])
        server_family, server_ip = _packed_ip(server[0])
        peer_family, peer_ip = _packed_ip(peer[0])
        relay_family, relay_ip = _packed_ip(relay[0])
        if (
            deadline <= now
            or len({family, server_family, peer_family, relay_family}) != 1
            or ipaddress.ip_address(server[0]).is_unspecified
            or not self._free
        ):
            self.counters["offload_skipped"] += 1
            return False
        route = self._route(client[0], peer[0])
        if route is None:
            self.counters["offload_skipped"] += 1
            return False
        to_peer, to_client, mtu = route
        slot = self._free.pop()
        kernel_deadline = self._kernel_time(deadline, now)
        entry = OffloadEntry(
            allocation,
            channel,
            slot,
            C2P_KEY.pack(
                family,
                socket.htons(channel.number),
                socket.htons(client[1]),
                socket.htons(server[1]),
                client_ip,
                server_ip,
            ),
            P2C_KEY.pack(family, socket.htons(relay[1]), socket.htons(peer[1]), relay_ip, peer_ip),
            b"",
            b"",
            deadline,
        )
        entry.c2p_value = C2P_VALUE.pack(
            relay_ip, peer_ip, socket.htons(relay[1]), socket.htons(peer[1]), slot, 0, to_peer, 0
        )
        entry.p2c_value = P2C_VALUE.pack(
            client_ip,
            server_ip,
            socket.htons(client[1]),
            socket.htons(server[1]),
            socket.htons(channel.number),
            slot,
            to_client,
            0,
            mtu,
            0,
        )
        try:
            self.maps.update("stats", struct.pack("=I", slot), STATS.pack(0, 0, 0, 0))
            self._write(entry, kernel_deadline)
        except OSError:
            # ENOSPC: the maps are full (another worker's entries count too).
            self.counters["offload_map_full"] += 1
            self.maps.delete("c2p", entry.c2p_key)
            self.maps.delete("p2c", entry.p2c_key)
            self._free.append(slot)
            return False
        self.entries[key] = entry
        self._by_relay.setdefault(relay, []).append(entry)
        self.counters["offload_installed"] += 1
        return True

    def _route(self, client: str, peer: str) -> tuple[int, int, int] | None:
        """(ifindex to the peer, ifindex to the client, MTU to the client); 0 means this
        host. None when a locally sent datagram would have to leave the host (see the
        module docstring) or no route is known."""
        routes = self.routes
        client_local, peer_local = routes.is_local(client), routes.is_local(peer)
        if client_local != peer_local:
            return None
        if client_local:
            return 0, 0, 0
        to_peer, to_client = routes.egress(peer), routes.egress(client)
        if to_peer is None or to_client is None:
            return None
        return to_peer[0], to_client[0], to_client[1]

    def _write(self, entry: OffloadEntry, kernel_deadline: int) -> None:
        c2p = bytearray(entry.c2p_value)
        struct.pack_into("=Q", c2p, 40, kernel_deadline)
        p2c = bytearray(entry.p2c_value)
        struct.pack_into("=Q", p2c, 48, kernel_deadline)
        self.maps.update("c2p", entry.c2p_key, bytes(c2p))
        self.maps.update("p2c", entry.p2c_key, bytes(p2c))

    # --- removing ---------------------------------------------------------------------------

    def release_relay(self, relay: HostPort, now: float) -> None:
        """The relayed address is closing (its allocation ends): remove its entries and add
        what the kernel relayed to the allocation's figures before its record is made."""
        for entry in list(self._by_relay.get(relay, ())):
            self._remove(entry, now)

    def withdraw_all(self, now: float) -> None:
        """Remove every entry (drain, stop); nothing is installed afterwards."""
        self.enabled = False
        for entry in list(self.entries.values()):
            self._remove(entry, now)

    def _remove(self, entry: OffloadEntry, now: float) -> None:
        self.maps.delete("c2p", entry.c2p_key)
        self.maps.delete("p2c", entry.p2c_key)
        # Read after deleting: nothing more can be counted in the slot.
        self._collect(entry, now, charge=False)
        key = (entry.channel.relay, entry.channel.peer)
        if self.entries.get(key) is entry:
            del self.entries[key]
        siblings = self._by_relay.get(entry.channel.relay)
        if siblings is not None:
            with contextlib.suppress(ValueError):
                siblings.remove(entry)
            if not siblings:
                del self._by_relay[entry.channel.relay]
        self._free.append(entry.slot)
        self.counters["offload_removed"] += 1

    # --- the periodic pass ------------------------------------------------------------------

    def sync(self, now: float) -> None:
        """Once a tick: heartbeat, counters (statistics and quotas), deadlines after refreshes,
        removal of what ended, re-installation after a quota back-off."""
        self.heartbeat(now)
        over: list[Allocation] = []
        counts = self._read_slots()
        for entry in list(self.entries.values()):
            allocation, channel = entry.allocation, entry.channel
            if not self._collect(entry, now, charge=True, raw=counts.get(entry.slot)):
                over.append(allocation)
            if (
                allocation.channels.get(channel.number) is not channel
                or channel.expires <= now
                or allocation.permissions.get(channel.peer[0], 0.0) <= now
                or allocation.expires <= now
            ):
                self._remove(entry, now)
                continue
            deadline = self.deadline(allocation, channel)
            if abs(deadline - entry.deadline) > _DEADLINE_SLACK:
                entry.deadline = deadline
                with contextlib.suppress(OSError):
                    self._write(entry, self._kernel_time(deadline, now))
        for allocation in over:
            self._back_off(allocation, now)
        for key, (allocation, until) in list(self._backoff.items()):
            if until <= now:
                del self._backoff[key]
                for channel in list(allocation.channels.values()):
                    if channel.expires > now:
                        self.install(allocation, channel, now)

    def _read_slots(self) -> dict[int, bytes]:
        """The counters of every slot in use, in one system call when they lie close
        together (slots are handed out lowest first, so they do), else none (each entry is
        then read on its own)."""
        if not self.entries:
            return {}
        slots = [entry.slot for entry in self.entries.values()]
        first, last = min(slots), max(slots)
        span = last - first + 1
        if span > 4 * len(slots) + 64:
            return {}
        values = self.maps.lookup_range("stats", first, span, STATS.size)
        if values is None:
            return {}
        return {first + index: value for index, value in enumerate(values)}

    def _back_off(self, allocation: Allocation, now: float) -> None:
        if id(allocation) in self._backoff:
            return
        self.counters["offload_quota_withdrawn"] += 1
        for relay in allocation.relays.values():
            self.release_relay(relay, now)
        self._backoff[id(allocation)] = (allocation, now + QUOTA_BACKOFF)

    def forget(self, allocation: Allocation) -> None:
        """The allocation ended: drop its back-off, if any."""
        self._backoff.pop(id(allocation), None)

    def _collect(
        self, entry: OffloadEntry, now: float, *, charge: bool, raw: bytes | None = None
    ) -> bool:
        """Fold the slot's new counts (*raw* if already read) into the allocation; False if
        that overdrew its bandwidth bucket."""
        if raw is None:
            raw = self.maps.lookup("stats", struct.pack("=I", entry.slot), STATS.size)
        if raw is None:
            return True
        to_peer, bytes_peer, to_client, bytes_client = STATS.unpack(raw)
        packets = to_peer - entry.packets_to_peer + to_client - entry.packets_to_client
        size = bytes_peer - entry.bytes_to_peer + bytes_client - entry.bytes_to_client
        if not packets:
            return True
        allocation = entry.allocation
        allocation.packets_to_peers += to_peer - entry.packets_to_peer
        allocation.bytes_to_peers += bytes_peer - entry.bytes_to_peer
        allocation.packets_to_client += to_client - entry.packets_to_client
        allocation.bytes_to_client += bytes_client - entry.bytes_to_client
        entry.packets_to_peer, entry.bytes_to_peer = to_peer, bytes_peer
        entry.packets_to_client, entry.bytes_to_client = to_client, bytes_client
        self.counters["offloaded_packets"] += packets
        self.counters["offloaded_bytes"] += size
        bucket = allocation.bucket
        if not charge or bucket is None or bucket.take(size, now):
            return True
        bucket.tokens = 0.0  # spent (by the kernel, after the fact)
        return False

    # --- views ------------------------------------------------------------------------------

    def kernel_keys(self) -> tuple[list[bytes], list[bytes]]:
        """The c2p and p2c keys in the maps (tests, diagnostics)."""
        return self.maps.keys("c2p", C2P_KEY.size), self.maps.keys("p2c", P2C_KEY.size)


def interfaces_for(hosts: list[str], names: list[str]) -> list[int]:
    """Interface indexes to attach to: *names* if given, else those holding *hosts* (every
    interface that is up for a wildcard address)."""
    if names:
        return [socket.if_nametoindex(name) for name in names]
    try:
        answer = subprocess.run(
            ["ip", "-j", "addr", "show"], capture_output=True, text=True, timeout=5, check=True
        )
        links = json.loads(answer.stdout)
    except (OSError, ValueError, subprocess.SubprocessError) as error:
        raise OSError(f"cannot list interfaces: {error}") from error
    wanted: set[int] = set()
    for host in hosts:
        address = ipaddress.ip_address(host)
        if address.is_loopback:  # all of 127.0.0.0/8 lives on lo, not only its addresses
            wanted.add(socket.if_nametoindex("lo"))
        for link in links:
            up = link.get("operstate") in ("UP", "UNKNOWN")
            held = any(
                ipaddress.ip_address(info.get("local", "::")) == address
                for info in link.get("addr_info", ())
            )
            if held or (address.is_unspecified and up):
                wanted.add(int(link["ifindex"]))
    return sorted(wanted)
