"""The TURN data path: what clients send to peers and what peers send back (RFC 8656 §10-12).

- client -> peer: ChannelData (§12.5) and Send indications (§10.2), relayed from the
  allocation's relayed address when a channel / permission allows it;
- peer -> client: a datagram to a relayed address goes back as ChannelData when the peer has a
  channel, else in a Data indication (§10.3); ICMP errors about relayed datagrams go back in a
  Data indication with an ICMP attribute (§11).

This is the hot path: drops are counted in place (no exceptions), expiry is a number compared
with ``now``, and Data indications are built by hand.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import TYPE_CHECKING

from icerelay.stun import Address, AttributeType, Icmp, Message, MessageClass, Method
from icerelay.stun.constants import MAGIC_COOKIE
from icerelay.turn.server.allocation import FiveTuple, HostPort
from icerelay.turn.server.state import ServerState

if TYPE_CHECKING:
    from random import Random

A = AttributeType

_CHANNEL_HEADER = struct.Struct("!HH")
_DATA_HEADER = struct.Struct("!HHI12s")
_XOR_PEER_V4 = struct.Struct("!HHxBHI")
_XOR_PEER_V6_HEAD = struct.Struct("!HHxBH")
_DATA_INDICATION_TYPE = 0x0017
_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
_PADDING = b"\x00\x00\x00"
#: ICMP types relayed to clients (RFC 8656 §11): IPv4 destination unreachable and time
#: exceeded; ICMPv6 destination unreachable, packet too big and time exceeded.
_ICMP4_TYPES = frozenset((3, 11))
_ICMP6_TYPES = frozenset((1, 2, 3))
#: Peer addresses whose binary form is remembered (parsing text costs more than the rest of a
#: Data indication); the cache is simply emptied when full.
_ADDRESS_CACHE_SIZE = 4096


class Relaying:
    """Relays data between clients and peers over the allocations of *state*."""

    def __init__(self, state: ServerState, *, rng: Random) -> None:
        self.state = state
        # Dictionaries that live as long as the state: looked up once here, not per packet.
        self._by_tuple = state.by_tuple
        self._by_relay = state.by_relay
        self._counters = state.counters
        self._randbytes = rng.randbytes
        self._addresses: dict[str, int] = {}

    # --- client -> peer -------------------------------------------------------------------

    def channel_data_from_client(self, data: bytes, five_tuple: FiveTuple, now: float) -> None:
        """A ChannelData message from a client (RFC 8656 §12.5)."""
        allocation = self._by_tuple.get(five_tuple)
        if allocation is None:
            self._counters["dropped_no_allocation"] += 1
            return
        if len(data) < 4:
            self._counters["dropped_malformed"] += 1
            return
        number, length = _CHANNEL_HEADER.unpack_from(data)
        # Over UDP the datagram may carry padding after the data (RFC 8656 §12.5); never less.
        if 4 + length > len(data):
            self._counters["dropped_malformed"] += 1
            return
        channel = allocation.channels.get(number)
        if channel is None or channel.expires <= now:
            self._counters["dropped_no_channel"] += 1
            return
        bucket = allocation.bucket
        if bucket is not None and not bucket.take(length, now):
            self._counters["dropped_bandwidth"] += 1
            return
        allocation.packets_to_peers += 1
        allocation.bytes_to_peers += length
        self.state.out.append((data[4 : 4 + length], channel.relay, channel.peer, "udp"))

    def send_indication(self, message: Message, five_tuple: FiveTuple, now: float) -> None:
        """RFC 8656 §10.2: relay DATA to XOR-PEER-ADDRESS if a permission exists."""
        allocation = self._by_tuple.get(five_tuple)
        if allocation is None:
            self._counters["dropped_no_allocation"] += 1
            return
        peer = message.get(A.XOR_PEER_ADDRESS)
        data = message.get(A.DATA)
        if peer is None or data is None:
            self._counters["dropped_bad_indication"] += 1
            return
        relay = allocation.relays.get(peer.family)
        expires = allocation.permissions.get(peer.host)
        if relay is None or expires is None or expires <= now:
            self._counters["dropped_no_permission"] += 1
            return
        if self.state.is_own(peer.host, peer.port):
            self._counters["dropped_peer_loop"] += 1
            return
        bucket = allocation.bucket
        if bucket is not None and not bucket.take(len(data), now):
            self._counters["dropped_bandwidth"] += 1
            return
        allocation.packets_to_peers += 1
        allocation.bytes_to_peers += len(data)
        self.state.out.append((data, relay, (peer.host, peer.port), "udp"))

    # --- peer -> client -------------------------------------------------------------------

    def receive_relayed(self, data: bytes, peer: HostPort, relay: HostPort, now: float) -> None:
        """One datagram from a peer to a relayed address (RFC 8656 §10.3, §12.6)."""
        allocation = self._by_relay.get(relay)
        if allocation is None:
            self._counters["dropped_unknown_relay"] += 1
            return
        expires = allocation.permissions.get(peer[0])
        if expires is None or expires <= now:
            self._counters["dropped_no_permission"] += 1
            return
        size = len(data)
        bucket = allocation.bucket
        if bucket is not None and not bucket.take(size, now):
            self._counters["dropped_bandwidth"] += 1
            return
        channel = allocation.channel_by_peer.get(peer)
        if channel is not None and channel.expires > now:
            # One C-level pack and one concatenation: the header is not built piecewise.
            frame = _CHANNEL_HEADER.pack(channel.number, size) + data
            if allocation.stream and size & 3:
                frame += _PADDING[: -size & 3]
        else:
            frame = self.data_indication(peer, data)
        allocation.packets_to_client += 1
        allocation.bytes_to_client += size
        five_tuple = allocation.five_tuple
        self.state.out.append((frame, five_tuple[2], five_tuple[1], five_tuple[0]))

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
            self._counters["dropped_no_permission"] += 1
            return
        allowed = _ICMP6_TYPES if ":" in peer[0] else _ICMP4_TYPES
        if icmp_type not in allowed:
            return
        indication = Message(Method.DATA, MessageClass.INDICATION, self._randbytes(12))
        indication.add(A.XOR_PEER_ADDRESS, Address(peer[0], peer[1]))
        mtu = info if (icmp_type, icmp_code) in ((3, 4), (2, 0)) else 0
        indication.add(A.ICMP, Icmp(icmp_type, icmp_code, mtu))
        self._counters["icmp_relayed"] += 1
        five_tuple = allocation.five_tuple
        self.state.out.append((indication.encode(), five_tuple[2], five_tuple[1], five_tuple[0]))

    def data_indication(self, peer: HostPort, data: bytes) -> bytes:
        """A Data indication (RFC 8656 §10.3) built by hand: it is on the data path for clients
        that do not use channels, and the generic encoder would cost several times more."""
        transaction_id = self._randbytes(12)
        host, port = peer
        raw = self._addresses.get(host)
        if raw is None:
            raw = self._remember(host)
        if ":" in host:
            mask = int.from_bytes(_COOKIE_BYTES + transaction_id, "big")
            peer_attribute = _XOR_PEER_V6_HEAD.pack(A.XOR_PEER_ADDRESS, 20, 2, port ^ 0x2112) + (
                raw ^ mask
            ).to_bytes(16, "big")
        else:
            peer_attribute = _XOR_PEER_V4.pack(
                A.XOR_PEER_ADDRESS, 8, 1, port ^ 0x2112, raw ^ MAGIC_COOKIE
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

    def _remember(self, host: str) -> int:
        """*host* as an integer (the peer addresses come from the socket layer: valid IPs)."""
        raw = int(ipaddress.ip_address(host))
        if len(self._addresses) >= _ADDRESS_CACHE_SIZE:
            self._addresses.clear()
        self._addresses[host] = raw
        return raw
