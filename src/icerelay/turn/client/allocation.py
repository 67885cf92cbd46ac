"""The sans-I/O TURN client: one allocation on one TURN server (RFC 8656 §7-§12).

:class:`Allocation` never touches a socket or a clock. Its driver feeds it what the server sent,
asks it what to send and when to wake it up, and reads events::

    allocation = Allocation(Address("192.0.2.10", 3478), "alice", "secret")
    allocation.start(now)
    ...
    allocation.receive(data, source, destination, now)     # what the server sent
    for datagram in allocation.datagrams_to_send(now): ...
    deadline = allocation.next_timer()                     # call handle_timer(now) then
    while (event := allocation.next_event()) is not None: ...

What it does for the application:

- Allocate with long-term credentials: the first request goes without them, the 401 brings
  REALM and NONCE, the retry carries USERNAME (or USERHASH), REALM, NONCE and MESSAGE-INTEGRITY
  (MD5 key) or MESSAGE-INTEGRITY-SHA256 (SHA-256 key, when the server offers it in
  PASSWORD-ALGORITHMS, RFC 8489 §9.2). A 438 (stale nonce) is retried with the new nonce; a 300
  (Try Alternate) is followed once.
- :meth:`Allocation.send_to` creates the permission for the peer on demand and sends the data
  right behind the CreatePermission (or, with ``pipeline_permissions=False``, queues it until the
  server confirms), sends Send indications, and once traffic to a peer has started binds a
  channel so that later packets go as 4-byte-header ChannelData instead of 36-byte-header
  indications.
- CreatePermission is all or nothing (RFC 8656 §10.2: one forbidden peer makes the server refuse
  the whole request with 403), and private, loopback, link-local... addresses are what servers
  deny by default. So peers that are not globally routable each get a request of their own,
  global ones share one; a 403 to a shared request is retried peer by peer.
- Keeps everything alive while in use: the allocation is refreshed before its lifetime ends,
  permissions every 240 s (they last 300 s), channels before their 600 s pass.
- Delivers what peers send (Data indications and ChannelData) as :class:`DataReceived`.
- :meth:`Allocation.close` deallocates with a Refresh of LIFETIME 0.

Over TCP and TLS the engine reads and writes one byte stream (STUN and padded ChannelData);
everything else is the same. Malformed input never raises: it is counted in
:attr:`Allocation.counters` and dropped (or, when a stream loses its framing, ends the allocation
with an event).
"""

from __future__ import annotations

import ipaddress
import random
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from icerelay.errors import StunError, TurnError
from icerelay.stun import (
    Address,
    AttributeType,
    ErrorCode,
    Message,
    MessageClass,
    Method,
    decode_message,
)
from icerelay.stun.attributes import PasswordAlgorithmEntry
from icerelay.stun.channeldata import (
    CHANNEL_NUMBER_MAX,
    CHANNEL_NUMBER_MIN,
    decode_channel_data,
    encode_channel_data,
)
from icerelay.stun.constants import (
    TRANSPORT_UDP,
    AddressFamily,
    PasswordAlgorithm,
    SecurityFeature,
)
from icerelay.stun.credentials import long_term_key, userhash
from icerelay.stun.nonce import nonce_security_features
from icerelay.stun.transaction import (
    DEFAULT_RC,
    DEFAULT_RM,
    DEFAULT_RTO,
    DEFAULT_TI,
    ClientTransaction,
)
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
from icerelay.turn.client.framing import StreamFramer

Transport = Literal["udp", "tcp", "tls"]

#: RFC 8656 §9: a permission lives 300 s; refreshing at 240 s leaves a minute for retransmissions.
PERMISSION_LIFETIME = 300.0
PERMISSION_REFRESH = 240.0
#: RFC 8656 §12: a channel binding lives 600 s.
CHANNEL_LIFETIME = 600.0
CHANNEL_REFRESH = 540.0
#: Refresh the allocation this long before it ends (or at half its life when that is shorter).
REFRESH_MARGIN = 60.0
#: After a Refresh that timed out or failed oddly, try again this much later (until expiry).
REFRESH_RETRY = 10.0
#: A server that keeps answering 438 is broken or hostile; stop after this many in a row.
MAX_STALE_NONCE_RETRIES = 3
#: Data waiting for a permission (per peer IP) or for the allocation; beyond this it is dropped,
#: as a real-time media sender would rather lose old packets than queue without bound.
MAX_QUEUED = 64
#: After a 403 (the server's peer policy refuses this IP) data to that peer is dropped, counted,
#: for this long instead of asking again on every packet: an ICE agent retransmits its checks on
#: a refused pair and each would otherwise cost the server and us another doomed request.
REFUSED_HOLD = 30.0
DEFAULT_SOFTWARE = "icerelay"


class State(Enum):
    """Where the allocation stands."""

    #: Constructed, :meth:`Allocation.start` not called yet.
    NEW = "new"
    #: Allocate sent (possibly several: 401, 438, 300), no success yet.
    ALLOCATING = "allocating"
    #: The server has the allocation; data can flow.
    ALLOCATED = "allocated"
    #: :meth:`Allocation.close` sent the Refresh with LIFETIME 0 and waits for its answer.
    CLOSING = "closing"
    #: Finished: closed, failed or expired. Nothing more is sent.
    CLOSED = "closed"


class _Kind(Enum):
    ALLOCATE = "Allocate"
    REFRESH = "Refresh"
    DEALLOCATE = "Refresh (deallocate)"
    CREATE_PERMISSION = "CreatePermission"
    CHANNEL_BIND = "ChannelBind"


@dataclass(slots=True)
class _Request:
    """One request in flight: what it was for, so that it can be rebuilt after a 438."""

    kind: _Kind
    transaction: ClientTransaction
    #: CreatePermission: the peers (IP addresses with any port) it installs.
    peers: tuple[Address, ...] = ()
    #: ChannelBind: the channel number.
    channel: int = 0
    stale_retries: int = 0
    authenticated: bool = False


@dataclass(slots=True)
class _Permission:
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


@dataclass(slots=True)
class _Channel:
    peer: Address
    number: int
    bound: bool = False
    pending: bool = False
    bound_at: float = 0.0
    last_used: float = 0.0
    #: A refresh was refused: keep using the binding until it expires, don't ask again.
    refresh_failed: bool = False


class Allocation:
    """One TURN allocation, sans I/O. See the module docstring for the protocol it follows.

    *server* is the TURN server's transport address; *transport* is how we reach it (the relayed
    transport is always UDP). *lifetime* is what we ask for (the server may grant less).
    *family* 6 asks for an IPv6 relayed address (REQUESTED-ADDRESS-FAMILY), 4 or None for the
    default IPv4. *channel_threshold* is how many packets to one peer start a channel binding (0:
    never bind, keep Send indications). *userhash* False never sends USERHASH, even when the
    server offers username anonymity. For RTP/RTCP port pairs (RFC 8656 §7.1, §18.8):
    *even_port* True asks for an even relayed port and the reservation of the next one (the
    success then carries a token, :attr:`reserved_token`), False just an even port; a second
    Allocation with *reservation_token* gets the reserved port. *dont_fragment* asks the server
    to set DF on relayed packets. *rng* makes transaction ids reproducible (a seeded
    :class:`random.Random` in the network simulator); by default they come from os.urandom, as
    RFC 8489 §6 wants them unpredictable. *rto*, *rc* and *rm* tune the UDP retransmissions and
    *ti* the TCP/TLS timeout (RFC 8489 §6.2; the defaults give up after 39.5 s).

    *pipeline_permissions* (default True) sends data to a peer whose permission is still being
    created right behind the CreatePermission instead of holding it until the success returns:
    that saves one round trip to the server on the first packet to every new peer (an ICE
    connectivity check through the relay). It is safe because a server handles one client's
    messages on one 5-tuple in order (always over TCP/TLS; over UDP unless the network reorders
    them), so the permission exists when the Send indication arrives; icerelay's server and
    coturn 4.6.1 both relay it (tests/interop/test_turn_client_*.py). What can go wrong costs
    at most what waiting would have cost: a packet that overtakes its CreatePermission or whose
    CreatePermission was lost (UDP reordering or loss) is dropped by the server, and a sender
    that needs it (an ICE check) retransmits anyway. When the server answers the request with
    an error it installed nothing, so the packets behind it are sent again behind the re-sent
    request (438 stale nonce, a refused batch split peer by peer); if the permission fails,
    they are counted in ``counters.dropped`` like queued ones. False restores the conservative
    behaviour, holding data until the server confirms (for a server that might not process
    one 5-tuple in order).
    """

    def __init__(
        self,
        server: Address,
        username: str,
        password: str,
        *,
        transport: Transport = "udp",
        lifetime: int = 600,
        family: int | None = None,
        software: str | None = DEFAULT_SOFTWARE,
        channel_threshold: int = 1,
        userhash: bool = True,
        even_port: bool | None = None,
        reservation_token: bytes | None = None,
        dont_fragment: bool = False,
        rng: random.Random | None = None,
        rto: float = DEFAULT_RTO,
        rc: int = DEFAULT_RC,
        rm: int = DEFAULT_RM,
        ti: float = DEFAULT_TI,
        pipeline_permissions: bool = True,
    ) -> None:
        if transport not in ("udp", "tcp", "tls"):
            raise TurnError(f"unknown transport {transport!r} (udp, tcp or tls)")
        if family not in (None, 4, 6):
            raise TurnError(f"address family must be 4 or 6, not {family!r}")
        self.server = server
        self.username = username
        self.password = password
        self.transport: Transport = transport
        self.requested_lifetime = lifetime
        self.family = family
        self.software = software
        self.channel_threshold = channel_threshold
        self.userhash = userhash
        self.even_port = even_port
        self.reservation_token = reservation_token
        self.dont_fragment = dont_fragment
        self._rng = rng
        self.rto = rto
        self.rc = rc
        self.rm = rm
        self.ti = ti
        self.pipeline_permissions = pipeline_permissions

        self.state = State.NEW
        self.counters = AllocationCounters()
        #: Set once the allocation succeeds.
        self.relayed_address: Address | None = None
        self.mapped_address: Address | None = None
        #: With EVEN-PORT R=1: the token for a second allocation on the next port (RTCP).
        self.reserved_token: bytes | None = None
        self.lifetime = 0
        #: Absolute time (the driver's clock) when the server will drop the allocation.
        self.expires_at: float | None = None

        self._reliable = transport != "udp"
        self._framer = StreamFramer() if self._reliable else None
        self._outgoing: list[Datagram] = []
        self._events: deque[Event] = deque()
        self._requests: dict[bytes, _Request] = {}
        self._redirected = False
        self._close_requested = False
        self._refresh_at: float | None = None
        self._refresh_in_flight = False

        # Long-term credential state (RFC 8489 §9.2), learnt from the first 401.
        self._realm: str | None = None
        self._nonce: str | None = None
        self._key: bytes | None = None
        self._algorithms: list[PasswordAlgorithmEntry] | None = None
        self._algorithm = PasswordAlgorithm.MD5
        self._use_userhash = False
        self._userhash_refused = False

        self._permissions: dict[str, _Permission] = {}
        #: Peer IPs the server refused (403) -> until when we don't ask again.
        self._refused: dict[str, float] = {}
        self._channels_by_peer: dict[Address, _Channel] = {}
        self._channels_by_number: dict[int, _Channel] = {}
        self._next_channel = CHANNEL_NUMBER_MIN
        self._packets_to: dict[Address, int] = {}
        #: send_to() and create_permission() calls made before the allocation exists.
        self._early: deque[tuple[bytes, Address]] = deque()
        self._early_permissions: list[Address] = []

    # ------------------------------------------------------------------ driver interface

    def start(self, now: float) -> None:
        """Send the first Allocate request."""
        if self.state is not State.NEW:
            raise TurnError(f"start() called in state {self.state.value}")
        self.state = State.ALLOCATING
        self._send_allocate(now)

    def receive(
        self, data: bytes, source: Address, destination: Address | None, now: float
    ) -> None:
        """Feed what arrived from the server.

        Over UDP *data* is one datagram and *source* must be the server (anything else is
        counted as ignored). Over TCP/TLS *data* is whatever the connection returned; partial
        and coalesced messages are fine. Never raises on malformed input.
        """
        if self.state in (State.NEW, State.CLOSED):
            self.counters.ignored += 1
            return
        if self._framer is None:
            if source != self.server:
                self.counters.ignored += 1
                return
            self._receive_frame(data, now)
            return
        try:
            frames = self._framer.feed(data)
        except TurnError as exc:
            self.counters.malformed += 1
            self._terminate(str(exc), None)
            return
        for frame in frames:
            self._receive_frame(frame, now)
            if self._finished():
                break  # e.g. a 4xx to the Allocate ended it; the rest is noise

    def _finished(self) -> bool:
        # A method, not an inline test, so that type narrowing of self.state does not assume
        # that the calls in between left it unchanged.
        return self.state is State.CLOSED

    def connection_lost(self, now: float, reason: str = "connection to the server closed") -> None:
        """Tell the engine that the TCP/TLS connection ended: the server drops an allocation
        whose connection closes (RFC 8656 §3.1), so this one is over too."""
        if self.state is State.CLOSED:
            return
        if self.state is State.CLOSING:
            self._finish_close(confirmed=False)
            return
        self._terminate(reason, None)

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        """Everything to put on the wire now, in order. Empties the queue."""
        out = self._outgoing
        self._outgoing = []
        return out

    def next_timer(self) -> float | None:
        """When :meth:`handle_timer` next wants to run (absolute time), or None."""
        if self.state is State.CLOSED:
            return None
        deadlines: list[float] = []
        for request in self._requests.values():
            deadline = request.transaction.next_timer()
            if deadline is not None:
                deadlines.append(deadline)
        if self.state is State.ALLOCATED:
            if self._refresh_at is not None and not self._refresh_in_flight:
                deadlines.append(self._refresh_at)
            if self.expires_at is not None:
                deadlines.append(self.expires_at)
            for permission in self._permissions.values():
                if permission.active and not permission.pending:
                    deadlines.append(self._permission_deadline(permission))
            for channel in self._channels_by_peer.values():
                if channel.bound and not channel.pending:
                    deadlines.append(self._channel_deadline(channel))
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        """Retransmit, time out, refresh and expire whatever is due at *now*."""
        for transaction_id, request in list(self._requests.items()):
            if self._requests.get(transaction_id) is not request:
                continue
            self._run_transaction_timer(transaction_id, request, now)
        if self.state is not State.ALLOCATED:
            return
        if self.expires_at is not None and now >= self.expires_at:
            self._terminate("allocation lifetime passed without a successful Refresh", None)
            return
        if self._refresh_at is not None and now >= self._refresh_at and not self._refresh_in_flight:
            self._send_refresh(now, self.requested_lifetime, _Kind.REFRESH)
        self._maintain_permissions(now)
        self._maintain_channels(now)

    def next_event(self) -> Event | None:
        """The oldest event not yet read, or None."""
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------------ application interface

    def send_to(self, data: bytes, peer: Address, now: float) -> None:
        """Relay *data* to *peer* through the allocation.

        Creates the permission first when needed (the data follows it at once, or waits for its
        success without *pipeline_permissions*), then sends a Send indication, or ChannelData
        once a channel is bound. Before the allocation exists the data waits for it. Data to a
        peer the server refused (403) in the last :data:`REFUSED_HOLD` seconds is dropped and
        counted. Raises :class:`TurnError` once the allocation is closing or closed.
        """
        if self.state in (State.CLOSING, State.CLOSED) or self._close_requested:
            raise TurnError(f"cannot send: allocation is {self.state.value}")
        if self.state is not State.ALLOCATED:
            self._enqueue(self._early, data, peer)
            return
        if peer.family != (self.relayed_address.family if self.relayed_address else 4):
            raise TurnError(
                f"peer {peer} is not of the relayed address's family (RFC 8656 443 would follow)"
            )
        if self._refused_now(peer.host, now):
            self.counters.dropped += 1
            return
        permission = self._permissions.get(peer.host)
        if permission is None:
            permission = _Permission(peer.host, peer)
            self._permissions[peer.host] = permission
        permission.last_used = now
        if not permission.active:
            if not permission.pending:
                self._send_create_permission(now, (permission.address,))
            if self.pipeline_permissions:
                # Behind the CreatePermission on the same 5-tuple: see the class docstring.
                permission.unconfirmed.append((bytes(data), peer))
                permission.unconfirmed_count += 1
                self._send_data(data, peer, now)
            else:
                self._enqueue(permission.queue, data, peer)
            return
        self._send_data(data, peer, now)

    def create_permission(self, peers: list[Address], now: float) -> None:
        """Install permissions for *peers* and keep them refreshed until the allocation ends,
        whether or not traffic flows.

        Globally routable peers share one CreatePermission; every other peer (private, loopback,
        link-local, CGNAT, documentation... the ranges servers deny by default) gets one of its
        own, because a server refuses the whole request when it refuses one of its peers
        (RFC 8656 §10.2): one private ICE host candidate must not cost the others their
        permission. ICE calls this for remote candidates so that their checks can come in
        through the relay before we have sent anything to them. Before the allocation exists
        the request waits for it (trickled candidates may arrive first); once closing,
        :class:`TurnError`.
        """
        if self.state in (State.NEW, State.ALLOCATING) and not self._close_requested:
            self._early_permissions.extend(peers)
            return
        if self.state is not State.ALLOCATED:
            raise TurnError(f"cannot create permissions: allocation is {self.state.value}")
        shared: list[Address] = []
        alone: list[Address] = []
        chosen: set[str] = set()
        family = self.relayed_address.family if self.relayed_address is not None else 4
        for peer in peers:
            if peer.family != family:
                # An IPv4 relay cannot reach an IPv6 peer (the server would answer 443 and
                # fail the whole batch with it): leave it out, counted.
                self.counters.dropped += 1
                continue
            if self._refused_now(peer.host, now):
                continue  # refused a moment ago; asking again would be refused again
            permission = self._permissions.get(peer.host)
            if permission is None:
                permission = _Permission(peer.host, peer)
                self._permissions[peer.host] = permission
            permission.pinned = True
            if not permission.active and not permission.pending and peer.host not in chosen:
                chosen.add(peer.host)
                if _globally_routable(peer.host):
                    shared.append(permission.address)
                else:
                    alone.append(permission.address)
        if shared:
            self._send_create_permission(now, tuple(shared))
        for address in alone:
            self._send_create_permission(now, (address,))

    def bind_channel(self, peer: Address, now: float) -> None:
        """Bind a channel to *peer* now, without waiting for traffic (needs the permission's
        IP to be allowed by the server; ChannelBind installs the permission too)."""
        if self.state is not State.ALLOCATED:
            raise TurnError(f"cannot bind a channel: allocation is {self.state.value}")
        if peer not in self._channels_by_peer:
            self._send_channel_bind(now, peer)

    def refresh(self, now: float) -> None:
        """Refresh the allocation now instead of waiting for the timer."""
        if self.state is State.ALLOCATED and not self._refresh_in_flight:
            self._send_refresh(now, self.requested_lifetime, _Kind.REFRESH)

    def close(self, now: float) -> None:
        """Deallocate: a Refresh with LIFETIME 0 (RFC 8656 §7.2). :class:`AllocationClosed`
        follows when the server answers or the request times out. Idempotent."""
        if self.state in (State.CLOSING, State.CLOSED):
            return
        self._close_requested = True
        if self.state is State.NEW:
            self._finish_close(confirmed=True)
        elif self.state is State.ALLOCATED:
            self._abandon_requests()
            self.state = State.CLOSING
            self._send_refresh(now, 0, _Kind.DEALLOCATE)
        # ALLOCATING: the Allocate in flight may yet create an allocation on the server; wait
        # for its answer and deallocate then, rather than leave it there for its lifetime.

    @property
    def password_algorithm(self) -> PasswordAlgorithm:
        """The long-term key in use: MD5, or SHA-256 when the server offered it."""
        return self._algorithm

    @property
    def uses_userhash(self) -> bool:
        """True when requests carry USERHASH instead of USERNAME (RFC 8489 §14.4)."""
        return self._use_userhash

    def channel_for(self, peer: Address) -> int | None:
        """The channel number bound to *peer*, if the binding is confirmed."""
        channel = self._channels_by_peer.get(peer)
        return channel.number if channel is not None and channel.bound else None

    def has_permission(self, host: str) -> bool:
        """True when the server has confirmed a permission for the IP address *host*."""
        permission = self._permissions.get(host)
        return permission is not None and permission.active

    # ------------------------------------------------------------------ sending data

    def _refused_now(self, host: str, now: float) -> bool:
        until = self._refused.get(host)
        if until is None:
            return False
        if now >= until:
            del self._refused[host]
            return False
        return True

    def _enqueue(self, queue: deque[tuple[bytes, Address]], data: bytes, peer: Address) -> None:
        if len(queue) >= MAX_QUEUED:
            queue.popleft()
            self.counters.dropped += 1
        queue.append((bytes(data), peer))

    def _send_data(self, data: bytes, peer: Address, now: float) -> None:
        channel = self._channels_by_peer.get(peer)
        self.counters.bytes_sent += len(data)
        if channel is not None and channel.bound:
            channel.last_used = now
            self.counters.channel_data_sent += 1
            self._emit(encode_channel_data(channel.number, data, stream=self._reliable))
            return
        indication = Message(method=Method.SEND, message_class=MessageClass.INDICATION)
        indication.add(AttributeType.XOR_PEER_ADDRESS, peer)
        indication.add(AttributeType.DATA, data)
        self.counters.send_indications_sent += 1
        self._emit(indication.encode())
        if channel is None and self.channel_threshold > 0:
            count = self._packets_to.get(peer, 0) + 1
            self._packets_to[peer] = count
            if count >= self.channel_threshold and self.has_permission(peer.host):
                # Traffic to this peer has started: a channel saves 32 bytes per packet
                # (RTP at 50 packets/s, for the rest of the call). Not before the permission
                # is confirmed (pipelined data): a peer the server refuses would make the
                # ChannelBind fail too; _bind_deferred_channels() catches up at its success.
                self._send_channel_bind(now, peer)

    def _resend_unconfirmed(self, host: str, now: float) -> None:
        """Send again, behind the CreatePermission just re-sent for *host*, what was pipelined
        behind the one the server answered with an error (and so dropped): a media sender that
        never retransmits loses nothing to a stale nonce."""
        permission = self._permissions.get(host)
        if permission is None or permission.active:
            return
        for data, peer in permission.unconfirmed:
            self._send_data(data, peer, now)

    def _bind_deferred_channels(self, host: str, now: float) -> None:
        """Bind the channels that pipelined traffic to *host* earned while its permission was
        still pending."""
        if self.channel_threshold <= 0 or self.state is not State.ALLOCATED:
            return
        for peer, count in list(self._packets_to.items()):
            if (
                peer.host == host
                and count >= self.channel_threshold
                and peer not in self._channels_by_peer
            ):
                self._send_channel_bind(now, peer)

    def _emit(self, data: bytes) -> None:
        self._outgoing.append(Datagram(data, None, self.server))

    # ------------------------------------------------------------------ requests

    def _new_transaction(self, message: bytes, now: float) -> ClientTransaction:
        return ClientTransaction(
            message, self.transport, now, rto=self.rto, rc=self.rc, rm=self.rm, ti=self.ti
        )

    def _request(
        self,
        kind: _Kind,
        now: float,
        build: Message,
        *,
        peers: tuple[Address, ...] = (),
        channel: int = 0,
        stale_retries: int = 0,
    ) -> None:
        authenticated = self._nonce is not None
        data = self._encode_request(build)
        transaction = self._new_transaction(data, now)
        self._requests[build.transaction_id] = _Request(
            kind, transaction, peers, channel, stale_retries, authenticated
        )
        self.counters.requests_sent += 1
        for datagram in transaction.datagrams_to_send(now):
            self._emit(datagram)

    def _encode_request(self, message: Message) -> bytes:
        if self.software:
            message.add(AttributeType.SOFTWARE, self.software)
        if self._nonce is None or self._realm is None or self._key is None:
            return message.encode(fingerprint=True)
        if self._use_userhash:
            message.add(AttributeType.USERHASH, userhash(self.username, self._realm))
        else:
            message.add(AttributeType.USERNAME, self.username)
        message.add(AttributeType.REALM, self._realm)
        message.add(AttributeType.NONCE, self._nonce)
        if self._algorithms is not None:
            # RFC 8489 §9.2.4: echo the server's list so it can tell that no one in the middle
            # struck SHA-256 from it (bid-down protection), and name the one we chose.
            message.add(AttributeType.PASSWORD_ALGORITHMS, self._algorithms)
            message.add(AttributeType.PASSWORD_ALGORITHM, PasswordAlgorithmEntry(self._algorithm))
        integrity: Literal["sha1", "sha256"] = (
            "sha256" if self._algorithm == PasswordAlgorithm.SHA256 else "sha1"
        )
        return message.encode(integrity_key=self._key, integrity=integrity, fingerprint=True)

    def _new_request(self, method: Method) -> Message:
        transaction_id = self._rng.randbytes(12) if self._rng is not None else None
        return Message(
            method=method, message_class=MessageClass.REQUEST, transaction_id=transaction_id
        )

    def _allocate_message(self) -> Message:
        message = self._new_request(Method.ALLOCATE)
        message.add(AttributeType.REQUESTED_TRANSPORT, TRANSPORT_UDP)
        message.add(AttributeType.LIFETIME, self.requested_lifetime)
        if self.reservation_token is not None:
            # RFC 8656 §7.1: the token names the family and port already; nothing else may.
            message.add(AttributeType.RESERVATION_TOKEN, self.reservation_token)
        else:
            if self.family == 6:
                message.add(AttributeType.REQUESTED_ADDRESS_FAMILY, AddressFamily.IPV6)
            if self.even_port is not None:
                message.add(AttributeType.EVEN_PORT, self.even_port)
        if self.dont_fragment:
            message.add(AttributeType.DONT_FRAGMENT, None)
        return message

    def _send_allocate(self, now: float) -> None:
        self._request(_Kind.ALLOCATE, now, self._allocate_message())

    def _send_refresh(self, now: float, lifetime: int, kind: _Kind) -> None:
        message = self._new_request(Method.REFRESH)
        message.add(AttributeType.LIFETIME, lifetime)
        if kind is _Kind.REFRESH:
            self._refresh_in_flight = True
        self._request(kind, now, message)

    def _send_create_permission(self, now: float, peers: tuple[Address, ...]) -> None:
        message = self._new_request(Method.CREATE_PERMISSION)
        for peer in peers:
            message.add(AttributeType.XOR_PEER_ADDRESS, peer)
            permission = self._permissions.get(peer.host)
            if permission is not None:
                permission.pending = True
        self._request(_Kind.CREATE_PERMISSION, now, message, peers=peers)

    def _send_channel_bind(self, now: float, peer: Address, number: int | None = None) -> None:
        if number is None:
            if self._next_channel > CHANNEL_NUMBER_MAX:
                return  # all 4096 used: stay with Send indications, which always work
            # Numbers are never reused: RFC 8656 §12 forbids rebinding a number to another peer
            # until 5 minutes after its binding expired, and 4096 is plenty for one allocation.
            number = self._next_channel
            self._next_channel += 1
            channel = _Channel(peer, number, pending=True, last_used=now)
            self._channels_by_peer[peer] = channel
            self._channels_by_number[number] = channel
        else:
            self._channels_by_number[number].pending = True
        message = self._new_request(Method.CHANNEL_BIND)
        message.add(AttributeType.CHANNEL_NUMBER, number)
        message.add(AttributeType.XOR_PEER_ADDRESS, peer)
        self._request(_Kind.CHANNEL_BIND, now, message, peers=(peer,), channel=number)

    def _resend(self, request: _Request, now: float, *, stale: bool) -> None:
        """Build *request* again with a new transaction id and the current credentials (after
        the first 401, or a 438 when *stale*)."""
        retries = request.stale_retries + 1 if stale else request.stale_retries
        if request.kind is _Kind.ALLOCATE:
            message = self._allocate_message()
        elif request.kind in (_Kind.REFRESH, _Kind.DEALLOCATE):
            message = self._new_request(Method.REFRESH)
            lifetime = 0 if request.kind is _Kind.DEALLOCATE else self.requested_lifetime
            message.add(AttributeType.LIFETIME, lifetime)
        elif request.kind is _Kind.CREATE_PERMISSION:
            message = self._new_request(Method.CREATE_PERMISSION)
            for peer in request.peers:
                message.add(AttributeType.XOR_PEER_ADDRESS, peer)
        else:
            message = self._new_request(Method.CHANNEL_BIND)
            message.add(AttributeType.CHANNEL_NUMBER, request.channel)
            message.add(AttributeType.XOR_PEER_ADDRESS, request.peers[0])
        self._request(
            request.kind,
            now,
            message,
            peers=request.peers,
            channel=request.channel,
            stale_retries=retries,
        )

    def _abandon_requests(self) -> None:
        """Forget requests whose answers no longer matter (closing: the allocation goes anyway)."""
        self._requests.clear()
        self._refresh_in_flight = False

    # ------------------------------------------------------------------ receiving

    def _receive_frame(self, frame: bytes, now: float) -> None:
        # RFC 7983: first byte 64-79 is ChannelData; everything else must parse as STUN.
        if frame and 0x40 <= frame[0] <= 0x4F:
            self._receive_channel_data(frame, now)
            return
        try:
            message = decode_message(frame)
        except StunError:
            self.counters.malformed += 1
            return
        if message.message_class is MessageClass.INDICATION:
            if message.method == Method.DATA:
                self._receive_data_indication(message, now)
            else:
                self.counters.ignored += 1
            return
        if message.message_class is MessageClass.REQUEST:
            self.counters.ignored += 1  # a TURN server sends no requests to its clients
            return
        request = self._requests.get(message.transaction_id)
        if request is None:
            # Late answer to a retransmitted or abandoned request, or a forgery.
            self.counters.ignored += 1
            return
        if not self._response_authentic(message, request):
            self.counters.integrity_failures += 1
            return
        if not request.transaction.receive(message):
            self.counters.ignored += 1  # same id, different cookie: not an answer to us
            return
        del self._requests[message.transaction_id]
        try:
            self._handle_response(request, message, now)
        except (StunError, TurnError) as exc:
            # The response broke the protocol (a success without the attribute it must carry,
            # ...): treat it as that request failing, never let it escape to the driver.
            self.counters.malformed += 1
            self._request_failed(
                request, f"malformed {request.kind.value} response: {exc}", None, now
            )

    def _response_authentic(self, message: Message, request: _Request) -> bool:
        """RFC 8489 §9.2.5: answers to authenticated requests must carry a valid integrity
        attribute, except the errors a server sends before it can check credentials."""
        if not request.authenticated or self._key is None:
            return True
        has_integrity = (
            message.get(AttributeType.MESSAGE_INTEGRITY) is not None
            or message.get(AttributeType.MESSAGE_INTEGRITY_SHA256) is not None
        )
        if not has_integrity:
            # 400/401/420/438 are sent without integrity by design; other errors may lack it
            # too (coturn signs them, others don't). An off-path attacker would still have to
            # guess the 96-bit transaction id to forge one. A success must be signed.
            return message.message_class is not MessageClass.SUCCESS_RESPONSE
        return message.check_integrity(self._key)

    def _receive_data_indication(self, message: Message, now: float) -> None:
        peer = message.get(AttributeType.XOR_PEER_ADDRESS)
        data = message.get(AttributeType.DATA)
        if not isinstance(peer, Address) or not isinstance(data, bytes):
            # RFC 8656 §11.6: discard without XOR-PEER-ADDRESS. Without DATA it is an ICMP
            # report, which this client does not surface.
            self.counters.ignored += 1
            return
        permission = self._permissions.get(peer.host)
        if permission is None or not (permission.active or permission.pending):
            # RFC 8656 §11.6: the server should not have relayed this; it is not for us.
            self.counters.ignored += 1
            return
        permission.last_used = now
        self.counters.data_indications_received += 1
        self.counters.bytes_received += len(data)
        self._events.append(DataReceived(peer, data))

    def _receive_channel_data(self, frame: bytes, now: float) -> None:
        try:
            number, data = decode_channel_data(frame)
        except StunError:
            self.counters.malformed += 1
            return
        channel = self._channels_by_number.get(number)
        # The server may start using the channel before its ChannelBind success reaches us.
        if channel is None or not (channel.bound or channel.pending):
            self.counters.ignored += 1
            return
        channel.last_used = now
        permission = self._permissions.get(channel.peer.host)
        if permission is not None:
            permission.last_used = now
        self.counters.channel_data_received += 1
        self.counters.bytes_received += len(data)
        self._events.append(DataReceived(channel.peer, data))

    def _handle_response(self, request: _Request, message: Message, now: float) -> None:
        if message.message_class is MessageClass.SUCCESS_RESPONSE:
            self._request_succeeded(request, message, now)
            return
        error = message.get(AttributeType.ERROR_CODE)
        if not isinstance(error, ErrorCode):
            raise TurnError("error response without ERROR-CODE")
        code = error.code
        if code == 401 and not request.authenticated and request.kind is _Kind.ALLOCATE:
            self._learn_credentials(message)
            self._resend(request, now, stale=False)
            return
        if (
            code == 401
            and request.kind is _Kind.ALLOCATE
            and self._use_userhash
            and not self._userhash_refused
        ):
            # A server can only map a USERHASH back to users it has in a table: TURN REST API
            # usernames ("expiry:user") are computed, not stored, so it cannot find them and
            # answers 401. Try once more naming the user in the clear.
            self._userhash_refused = True
            if isinstance(message.get(AttributeType.NONCE), str):
                self._learn_credentials(message)
            else:
                self._use_userhash = False
            self._resend(request, now, stale=False)
            return
        if code == 438:
            if request.stale_retries >= MAX_STALE_NONCE_RETRIES:
                self._request_failed(request, "server keeps answering 438 (Stale Nonce)", code, now)
                return
            nonce = message.get(AttributeType.NONCE)
            if not isinstance(nonce, str):
                raise TurnError("438 without NONCE")
            realm = message.get(AttributeType.REALM)
            if isinstance(realm, str) and realm != self._realm:
                # A new realm changes the key too.
                self._learn_credentials(message)
            else:
                self._nonce = nonce
            self.counters.stale_nonces += 1
            self._resend(request, now, stale=True)
            if request.kind is _Kind.CREATE_PERMISSION:
                for peer in request.peers:
                    self._resend_unconfirmed(peer.host, now)
            return
        if code == 300 and request.kind is _Kind.ALLOCATE:
            alternate = message.get(AttributeType.ALTERNATE_SERVER)
            if isinstance(alternate, Address) and not self._redirected:
                self._follow_alternate(alternate, now)
                return
            reason = "second 300 (Try Alternate)" if self._redirected else "300 without address"
            self._request_failed(request, reason, code, now)
            return
        self._request_failed(request, f"{code} {error.reason}".strip(), code, now)

    def _learn_credentials(self, message: Message) -> None:
        """Take REALM, NONCE and the offered password algorithms from a 401 (RFC 8489 §9.2.4)."""
        realm = message.get(AttributeType.REALM)
        nonce = message.get(AttributeType.NONCE)
        if not isinstance(realm, str) or not isinstance(nonce, str):
            raise TurnError("401 without REALM and NONCE")
        features = nonce_security_features(nonce) or SecurityFeature(0)
        algorithms = message.get(AttributeType.PASSWORD_ALGORITHMS)
        self._algorithms = None
        self._algorithm = PasswordAlgorithm.MD5
        if isinstance(algorithms, list) and algorithms:
            offered = {
                entry.algorithm for entry in algorithms if isinstance(entry, PasswordAlgorithmEntry)
            }
            self._algorithms = [e for e in algorithms if isinstance(e, PasswordAlgorithmEntry)]
            if PasswordAlgorithm.SHA256 in offered:
                self._algorithm = PasswordAlgorithm.SHA256
            elif PasswordAlgorithm.MD5 not in offered:
                raise TurnError("server offers no password algorithm we know (MD5, SHA-256)")
        self._use_userhash = (
            self.userhash
            and not self._userhash_refused
            and bool(features & SecurityFeature.USERNAME_ANONYMITY)
        )
        self._realm = realm
        self._nonce = nonce
        self._key = long_term_key(self.username, realm, self.password, algorithm=self._algorithm)

    def _follow_alternate(self, alternate: Address, now: float) -> None:
        self._redirected = True
        self.server = alternate
        # The other server has its own realm and nonces: start over unauthenticated.
        self._realm = self._nonce = self._key = None
        self._algorithms = None
        self._algorithm = PasswordAlgorithm.MD5
        self._use_userhash = False
        if self._framer is not None:
            self._framer = StreamFramer()
        self._events.append(AlternateServer(alternate))
        self._send_allocate(now)

    # ------------------------------------------------------------------ outcomes

    def _request_succeeded(self, request: _Request, message: Message, now: float) -> None:
        kind = request.kind
        if kind is _Kind.ALLOCATE:
            self._allocated(message, now)
        elif kind is _Kind.REFRESH:
            self._refresh_in_flight = False
            lifetime = message.get(AttributeType.LIFETIME)
            if not isinstance(lifetime, int):
                lifetime = self.requested_lifetime
            self._set_lifetime(lifetime, now)
            self._events.append(AllocationRefreshed(lifetime))
        elif kind is _Kind.DEALLOCATE:
            self._finish_close(confirmed=True)
        elif kind is _Kind.CREATE_PERMISSION:
            for peer in request.peers:
                permission = self._permissions.get(peer.host)
                if permission is None:
                    continue
                first = not permission.active
                permission.active = True
                permission.pending = False
                permission.installed_at = now
                permission.unconfirmed.clear()
                permission.unconfirmed_count = 0
                if first:
                    self._events.append(PermissionCreated(peer.host))
                while permission.queue and self.state is State.ALLOCATED:
                    data, destination = permission.queue.popleft()
                    self._send_data(data, destination, now)
                self._bind_deferred_channels(peer.host, now)
        elif kind is _Kind.CHANNEL_BIND:
            channel = self._channels_by_number.get(request.channel)
            if channel is None:
                return
            first = not channel.bound
            channel.bound = True
            channel.pending = False
            channel.bound_at = now
            if first:
                self._events.append(ChannelBound(channel.peer, channel.number))
            # RFC 8656 §12.2: a successful ChannelBind installs or refreshes the permission for
            # the peer's IP too (bind_channel() may have come before any CreatePermission).
            permission = self._permissions.get(channel.peer.host)
            if permission is None:
                permission = _Permission(channel.peer.host, channel.peer, last_used=now)
                self._permissions[channel.peer.host] = permission
            permission.installed_at = max(permission.installed_at, now)
            if not permission.active and not permission.pending:
                permission.active = True
                permission.unconfirmed.clear()
                permission.unconfirmed_count = 0
                self._events.append(PermissionCreated(channel.peer.host))
                while permission.queue and self.state is State.ALLOCATED:
                    data, destination = permission.queue.popleft()
                    self._send_data(data, destination, now)

    def _allocated(self, message: Message, now: float) -> None:
        relayed = message.get(AttributeType.XOR_RELAYED_ADDRESS)
        if not isinstance(relayed, Address):
            raise TurnError("Allocate success without XOR-RELAYED-ADDRESS")
        mapped = message.get(AttributeType.XOR_MAPPED_ADDRESS)
        lifetime = message.get(AttributeType.LIFETIME)
        if not isinstance(lifetime, int):
            self.counters.malformed += 1
            lifetime = self.requested_lifetime
        token = message.get(AttributeType.RESERVATION_TOKEN)
        self.relayed_address = relayed
        self.mapped_address = mapped if isinstance(mapped, Address) else None
        self.reserved_token = token if isinstance(token, bytes) else None
        self.state = State.ALLOCATED
        self._set_lifetime(lifetime, now)
        self._events.append(
            AllocationSucceeded(relayed, self.mapped_address, lifetime, self.reserved_token)
        )
        if self._close_requested:
            self._abandon_requests()
            self.state = State.CLOSING
            self._send_refresh(now, 0, _Kind.DEALLOCATE)
            return
        if self._early_permissions:
            peers, self._early_permissions = self._early_permissions, []
            self.create_permission(peers, now)
        while self._early and self.state is State.ALLOCATED:
            data, peer = self._early.popleft()
            try:
                self.send_to(data, peer, now)
            except TurnError:
                self.counters.dropped += 1

    def _set_lifetime(self, lifetime: int, now: float) -> None:
        self.lifetime = lifetime
        self.expires_at = now + lifetime
        self._refresh_at = now + max(lifetime - min(REFRESH_MARGIN, lifetime / 2), 0.0)

    def _request_failed(self, request: _Request, reason: str, code: int | None, now: float) -> None:
        kind = request.kind
        if kind is _Kind.ALLOCATE:
            self._terminate(f"Allocate failed: {reason}", code)
        elif kind is _Kind.REFRESH:
            self._refresh_in_flight = False
            if code == 437:
                # RFC 8656 §7.3: the server no longer knows this allocation.
                self._terminate("Refresh failed: 437 (Allocation Mismatch)", code)
            elif self.expires_at is not None:
                self._refresh_at = min(now + REFRESH_RETRY, self.expires_at)
        elif kind is _Kind.DEALLOCATE:
            # Whatever the answer (437 included), the allocation is gone or will time out.
            self._finish_close(confirmed=code is not None)
        elif kind is _Kind.CREATE_PERMISSION:
            if code == 403 and len(request.peers) > 1:
                # All or nothing (RFC 8656 §10.2): some peer of the batch is against the
                # server's policy. Ask for each alone; the allowed ones get theirs one round
                # trip later instead of never (create_permission() keeps this rare by sending
                # the peers servers usually deny on their own).
                for peer in request.peers:
                    if peer.host in self._permissions:
                        self._send_create_permission(now, (peer,))
                        self._resend_unconfirmed(peer.host, now)
                return
            for peer in request.peers:
                permission = self._permissions.get(peer.host)
                if permission is None:
                    continue
                permission.pending = False
                if permission.active and code is None:
                    # A refresh timed out; the permission may still hold until it expires.
                    continue
                # Queued data never left; pipelined data was dropped by the server.
                self.counters.dropped += len(permission.queue) + permission.unconfirmed_count
                del self._permissions[peer.host]
                if code == 403:
                    self._refused[peer.host] = now + REFUSED_HOLD
                self._events.append(PermissionFailed(peer.host, reason, code))
        elif kind is _Kind.CHANNEL_BIND:
            channel = self._channels_by_number.get(request.channel)
            if channel is None:
                return
            channel.pending = False
            if channel.bound:
                channel.refresh_failed = True
            else:
                # Keep the number reserved (never reused) but stop using it; Send indications
                # keep working. Stop counting packets so we don't retry on every one.
                del self._channels_by_peer[channel.peer]
                self._packets_to[channel.peer] = -(1 << 30)
                self._events.append(ChannelBindFailed(channel.peer, reason, code))

    def _terminate(self, reason: str, code: int | None) -> None:
        """End the allocation without deallocating (it failed, expired or its stream broke)."""
        previous = self.state
        self.state = State.CLOSED
        self._requests.clear()
        self._outgoing.clear()
        if previous is State.ALLOCATING or previous is State.NEW:
            self._events.append(AllocationFailed(reason, code))
            if self._close_requested:
                # close() was called while the Allocate was in flight: it still gets its
                # AllocationClosed, as promised; there is nothing on the server to remove.
                self._events.append(AllocationClosed(confirmed=True))
        elif previous is State.CLOSING:
            self._events.append(AllocationClosed(confirmed=False))
        else:
            self._events.append(AllocationExpired(reason))

    def _finish_close(self, *, confirmed: bool) -> None:
        self.state = State.CLOSED
        self._requests.clear()
        self._events.append(AllocationClosed(confirmed))

    # ------------------------------------------------------------------ timers

    def _run_transaction_timer(self, transaction_id: bytes, request: _Request, now: float) -> None:
        transaction = request.transaction
        transaction.handle_timer(now)
        for datagram in transaction.datagrams_to_send(now):
            self.counters.retransmissions += 1
            self._emit(datagram)
        if transaction.error is not None:
            del self._requests[transaction_id]
            self._request_failed(request, f"{request.kind.value} timed out", None, now)

    def _permission_deadline(self, permission: _Permission) -> float:
        # A permission in use (or pinned) is refreshed at 240 s; an idle one is only watched
        # until it lapses at 300 s, so the timer never spins on an idle permission.
        if permission.pinned or permission.last_used > permission.installed_at:
            return permission.installed_at + PERMISSION_REFRESH
        return permission.installed_at + PERMISSION_LIFETIME

    def _channel_deadline(self, channel: _Channel) -> float:
        if channel.last_used > channel.bound_at and not channel.refresh_failed:
            return channel.bound_at + CHANNEL_REFRESH
        return channel.bound_at + CHANNEL_LIFETIME

    def _maintain_permissions(self, now: float) -> None:
        for host, until in list(self._refused.items()):
            if now >= until:
                del self._refused[host]
        due: list[Address] = []
        for host, permission in list(self._permissions.items()):
            if not permission.active or permission.pending:
                continue
            if now >= permission.installed_at + PERMISSION_LIFETIME:
                # Not refreshed in time: the server has dropped it; so do we.
                del self._permissions[host]
                continue
            # Unused for a whole period: let it lapse at 300 s rather than keep open a door
            # in the server's filter that nobody needs.
            if now >= self._permission_deadline(permission) and (
                permission.pinned or permission.last_used > permission.installed_at
            ):
                due.append(permission.address)
        if due:
            self._send_create_permission(now, tuple(due))

    def _maintain_channels(self, now: float) -> None:
        for peer, channel in list(self._channels_by_peer.items()):
            if not channel.bound or channel.pending:
                continue
            if now >= channel.bound_at + CHANNEL_LIFETIME:
                del self._channels_by_peer[peer]
                self._packets_to.pop(peer, None)
                continue
            if now >= self._channel_deadline(channel) and channel.last_used > channel.bound_at:
                self._send_channel_bind(now, peer, channel.number)


def _globally_routable(host: str) -> bool:
    """True for an address on the public Internet; False for private, loopback, link-local,
    CGNAT, documentation, multicast... (what TURN servers' deny lists hold by default)."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_global
    except ValueError:
        return False
