"""What the client believes the server's permissions are, one per peer IP address (RFC 8656 §9).

A permission lets a peer IP address (any port) send to the relayed address; the server installs
it on CreatePermission (or ChannelBind) and drops it after 300 s unless refreshed. This table
decides which permissions to refresh (those in use, or asked for explicitly), which to let lapse,
how to group peers into requests, and which peers the server refused a moment ago.

Pipelining (``Allocation(pipeline_permissions=True)``, the default) sends data to a peer whose
permission is still being created right behind the CreatePermission instead of holding it until
the success returns: that saves one round trip to the server on the first packet to every new
peer (an ICE connectivity check through the relay). It is safe because a server handles one
client's messages on one 5-tuple in order (always over TCP/TLS; over UDP unless the network
reorders them), so the permission exists when the Send indication arrives; icerelay's server and
coturn 4.6.1 both relay it (tests/interop/test_turn_client_*.py). What can go wrong costs at
most what waiting would have cost: a packet that overtakes its CreatePermission or whose
CreatePermission was lost (UDP reordering or loss) is dropped by the server, and a sender that
needs it (an ICE check) retransmits anyway. When the server answers the request with an error it
installed nothing, so the packets behind it are sent again behind the re-sent request (438 stale
nonce, a refused batch split peer by peer); if the permission fails, they are counted in
``counters.dropped`` like queued ones. Without pipelining data waits for the confirmation (for a
server that might not process one 5-tuple in order).
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from icerelay.stun import Address

#: RFC 8656 §9: a permission lives 300 s; refreshing at 240 s leaves a minute for retransmissions.
PERMISSION_LIFETIME = 300.0
PERMISSION_REFRESH = 240.0
#: Data waiting for a permission (per peer IP) or for the allocation; beyond this it is dropped,
#: as a real-time media sender would rather lose old packets than queue without bound.
MAX_QUEUED = 64
#: After a 403 (the server's peer policy refuses this IP) data to that peer is dropped, counted,
#: for this long instead of asking again on every packet: an ICE agent retransmits its checks on
#: a refused pair and each would otherwise cost the server and us another doomed request.
REFUSED_HOLD = 30.0


@dataclass(slots=True)
class Permission:
    """What we believe the server holds for one peer IP address."""

    host: str
    #: The address (with a port) we name in CreatePermission; servers ignore the port.
    address: Address
    #: pending: CreatePermission in flight and never succeeded; active: installed.
    active: bool = False
    pending: bool = False
    installed_at: float = 0.0
    #: Last time data went to or came from this IP; a permission is refreshed only while in use.
    last_used: float = 0.0
    #: Asked for explicitly (create_permission): kept alive even without traffic.
    pinned: bool = False
    queue: deque[tuple[bytes, Address]] = field(default_factory=deque)
    #: Copies of the packets sent right behind a CreatePermission not confirmed yet
    #: (pipelining). An error answer means the server installed nothing and dropped them: they
    #: go again behind the re-sent request after a 438 or a split 403, and are counted as
    #: dropped, like queued ones, if the permission fails. Bounded like the queue (the
    #: oldest copies go first: a real-time sender would rather lose those).
    unconfirmed: deque[tuple[bytes, Address]] = field(
        default_factory=lambda: deque(maxlen=MAX_QUEUED)
    )
    #: How many packets were pipelined to this peer since the last confirmation.
    unconfirmed_count: int = 0

    @property
    def in_use(self) -> bool:
        """Pinned, or used since it was last installed: worth refreshing."""
        return self.pinned or self.last_used > self.installed_at

    @property
    def deadline(self) -> float:
        """When the timer next needs to look at this permission."""
        # A permission in use (or pinned) is refreshed at 240 s; an idle one is only watched
        # until it lapses at 300 s, so the timer never spins on an idle permission.
        if self.in_use:
            return self.installed_at + PERMISSION_REFRESH
        return self.installed_at + PERMISSION_LIFETIME

    def confirm(self, now: float) -> bool:
        """The server installed (or refreshed) it at *now*; True when it is new."""
        first = not self.active
        self.active = True
        self.pending = False
        self.installed_at = now
        self.unconfirmed.clear()
        self.unconfirmed_count = 0
        return first


def enqueue(queue: deque[tuple[bytes, Address]], data: bytes, peer: Address) -> bool:
    """Append to a bounded queue; True when the oldest entry had to go to make room."""
    dropped = len(queue) >= MAX_QUEUED
    if dropped:
        queue.popleft()
    queue.append((bytes(data), peer))
    return dropped


class Permissions:
    """The permissions of one allocation, by peer IP address, and the peers refused lately."""

    __slots__ = ("_by_host", "_refused")

    def __init__(self) -> None:
        self._by_host: dict[str, Permission] = {}
        #: Peer IPs the server refused (403) -> until when we don't ask again.
        self._refused: dict[str, float] = {}

    def get(self, host: str) -> Permission | None:
        return self._by_host.get(host)

    def __contains__(self, host: object) -> bool:
        return host in self._by_host

    def __iter__(self) -> Iterator[Permission]:
        return iter(self._by_host.values())

    def ensure(self, peer: Address, *, last_used: float = 0.0) -> Permission:
        """The permission for *peer*'s IP, made (neither pending nor active) if there is none."""
        permission = self._by_host.get(peer.host)
        if permission is None:
            permission = Permission(peer.host, peer, last_used=last_used)
            self._by_host[peer.host] = permission
        return permission

    def remove(self, host: str) -> None:
        del self._by_host[host]

    def refuse(self, host: str, now: float) -> None:
        """The server refused *host* (403): don't ask again for :data:`REFUSED_HOLD` s."""
        self._refused[host] = now + REFUSED_HOLD

    def refused(self, host: str, now: float) -> bool:
        """True while *host* is held after a 403."""
        until = self._refused.get(host)
        if until is None:
            return False
        if now >= until:
            del self._refused[host]
            return False
        return True

    def claim(self, peers: list[Address], family: int, now: float) -> tuple[list[Address], int]:
        """Pin the permissions for *peers* (kept alive without traffic); return the addresses
        to ask the server for (not installed or pending yet) and how many peers were left out
        for being of the other address family (an IPv4 relay cannot reach an IPv6 peer: the
        server would answer 443 and fail the whole batch with it)."""
        wanted: list[Address] = []
        chosen: set[str] = set()
        other_family = 0
        for peer in peers:
            if peer.family != family:
                other_family += 1
                continue
            if self.refused(peer.host, now):
                continue  # refused a moment ago; asking again would be refused again
            permission = self.ensure(peer)
            permission.pinned = True
            if not permission.active and not permission.pending and peer.host not in chosen:
                chosen.add(peer.host)
                wanted.append(permission.address)
        return wanted, other_family

    def failed(self, host: str, code: int | None, now: float) -> Permission | None:
        """CreatePermission for *host* failed; the permission given up (its queued and
        pipelined data lost), or None when it is kept: unknown, or a refresh that timed out
        (the permission may still hold until it expires)."""
        permission = self._by_host.get(host)
        if permission is None:
            return None
        permission.pending = False
        if permission.active and code is None:
            return None
        del self._by_host[host]
        if code == 403:
            self.refuse(host, now)
        return permission

    def deadlines(self) -> Iterator[float]:
        for permission in self._by_host.values():
            if permission.active and not permission.pending:
                yield permission.deadline

    def due(self, now: float) -> tuple[Address, ...]:
        """Forget what lapsed; the addresses whose permissions need a refresh now."""
        for host, until in list(self._refused.items()):
            if now >= until:
                del self._refused[host]
        due: list[Address] = []
        for host, permission in list(self._by_host.items()):
            if not permission.active or permission.pending:
                continue
            if now >= permission.installed_at + PERMISSION_LIFETIME:
                # Not refreshed in time: the server has dropped it; so do we.
                del self._by_host[host]
                continue
            # Unused for a whole period: let it lapse at 300 s rather than keep open a door
            # in the server's filter that nobody needs.
            if now >= permission.deadline and permission.in_use:
                due.append(permission.address)
        return tuple(due)


def globally_routable(host: str) -> bool:
    """True for an address on the public Internet; False for private, loopback, link-local,
    CGNAT, documentation, multicast... (what TURN servers' deny lists hold by default)."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_global
    except ValueError:
        return False


def batches(addresses: list[Address]) -> list[tuple[Address, ...]]:
    """Group peers into CreatePermission requests.

    CreatePermission is all or nothing (RFC 8656 §10.2: one forbidden peer makes the server
    refuse the whole request with 403), and private, loopback, link-local... addresses are what
    servers deny by default. So globally routable peers share one request and every other peer
    gets one of its own: one private ICE host candidate must not cost the others their
    permission.
    """
    shared = tuple(address for address in addresses if globally_routable(address.host))
    alone = [(address,) for address in addresses if not globally_routable(address.host)]
    return ([shared] if shared else []) + alone
