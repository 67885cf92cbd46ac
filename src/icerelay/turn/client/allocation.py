"""The sans-I/O TURN client: one allocation on one TURN server (RFC 8656 §7-§12).

:class:`Allocation` never touches a socket or a clock. Its driver feeds it what the server sent,
asks it what to send and when to wake it up, and reads events::

    allocation = Allocation(Address("192.0.2.10", 3478), "alice", "secret",
                            rng=random.SystemRandom())
    allocation.start(now)
    ...
    allocation.receive(data, source, destination, now)     # what the server sent
    for datagram in allocation.datagrams_to_send(now): ...
    deadline = allocation.next_timer()                     # call handle_timer(now) then
    while (event := allocation.next_event()) is not None: ...

What it does for the application, each job in a module of its own (as pion/turn's client):

- :mod:`.auth`: long-term credentials (RFC 8489 §9.2): 401 challenge, USERHASH, SHA-256 key
  when offered in PASSWORD-ALGORITHMS, 438 (stale nonce) retries. A 300 (Try Alternate) is
  followed once.
- :mod:`.permissions`: CreatePermission on demand in :meth:`Allocation.send_to` (data pipelined
  right behind it), grouped so that one refused peer costs the others nothing (RFC 8656 §10.2),
  refreshed every 240 s while in use.
- :mod:`.channels`: a ChannelBind once traffic to a peer has started, so that later packets go
  as 4-byte-header ChannelData instead of 36-byte-header indications (RFC 8656 §12).
- :mod:`.lifetime`: the allocation refreshed before its lifetime ends (RFC 8656 §7.2);
  :meth:`Allocation.close` deallocates with a Refresh of LIFETIME 0.
- :mod:`.requests`: building, signing, retransmitting and matching requests;
  :mod:`.inbound`: what peers send (Data indications, ChannelData) as :class:`DataReceived`.

Over TCP and TLS the engine reads and writes one byte stream (STUN and padded ChannelData);
everything else is the same. Malformed input never raises: it is counted in
:attr:`Allocation.counters` and dropped (or, when a stream loses its framing, ends the allocation
with an event).
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from typing import TYPE_CHECKING, Literal

from icerelay.errors import StunError, TurnError
from icerelay.net import Datagram
from icerelay.stun import (
    Address,
    AttributeType,
    ErrorCode,
    Message,
    MessageClass,
    Method,
    decode_message,
    new_transaction_id,
)
from icerelay.stun.channeldata import encode_channel_data
from icerelay.stun.constants import PasswordAlgorithm
from icerelay.stun.transaction import DEFAULT_RC, DEFAULT_RM, DEFAULT_RTO, DEFAULT_TI
from icerelay.turn.client import events as ev
from icerelay.turn.client.auth import LongTermCredentials
from icerelay.turn.client.channels import Channels
from icerelay.turn.client.framing import StreamFramer
from icerelay.turn.client.inbound import channel_data, data_indication
from icerelay.turn.client.lifetime import Lifetime
from icerelay.turn.client.permissions import REFUSED_HOLD, Permission, Permissions, batches, enqueue
from icerelay.turn.client.requests import (
    AllocateOptions,
    Kind,
    Request,
    Transactions,
    send_indication,
)

if TYPE_CHECKING:
    from random import Random

__all__ = ["DEFAULT_SOFTWARE", "REFUSED_HOLD", "Allocation", "State", "Transport"]

Transport = Literal["udp", "tcp", "tls"]

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
    to set DF on relayed packets. *rng* (required) draws the transaction ids: a
    :class:`random.SystemRandom` in real use, as RFC 8489 §6 wants them unpredictable, a seeded
    :class:`random.Random` in the network simulator and tests, so that runs are reproducible.
    *rto*, *rc* and *rm* tune the UDP retransmissions and
    *ti* the TCP/TLS timeout (RFC 8489 §6.2; the defaults give up after 39.5 s).

    *pipeline_permissions* (default True) sends data to a peer whose permission is still being
    created right behind the CreatePermission instead of holding it until the success returns
    (one round trip saved per new peer; why that is safe: :mod:`.permissions`). False holds
    data until the server confirms.
    """

    def __init__(
        self,
        server: Address,
        username: str,
        password: str,
        *,
        rng: Random,
        transport: Transport = "udp",
        lifetime: int = 600,
        family: int | None = None,
        software: str | None = DEFAULT_SOFTWARE,
        channel_threshold: int = 1,
        userhash: bool = True,
        even_port: bool | None = None,
        reservation_token: bytes | None = None,
        dont_fragment: bool = False,
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
        self.counters = ev.AllocationCounters()
        #: Set once the allocation succeeds.
        self.relayed_address: Address | None = None
        self.mapped_address: Address | None = None
        #: With EVEN-PORT R=1: the token for a second allocation on the next port (RTCP).
        self.reserved_token: bytes | None = None

        self._reliable = transport != "udp"
        self._framer = StreamFramer() if self._reliable else None
        self._outgoing: list[Datagram] = []
        self._events: deque[ev.Event] = deque()
        self._redirected = False
        self._close_requested = False
        self._lifetime = Lifetime()
        self._auth = LongTermCredentials(username, password, userhash=userhash)
        self._transactions = Transactions(
            rng=rng,
            auth=self._auth,
            options=AllocateOptions(lifetime, family, even_port, reservation_token, dont_fragment),
            software=software,
            transport=transport,
            timing=(rto, rc, rm, ti),
            counters=self.counters,
            emit=self._emit,
        )
        self._permissions = Permissions()
        self._channels = Channels()
        #: send_to() and create_permission() calls made before the allocation exists.
        self._early: deque[tuple[bytes, Address]] = deque()
        self._early_permissions: list[Address] = []

    @property
    def lifetime(self) -> int:
        """The lifetime the server granted last, in seconds (0 before it has)."""
        return self._lifetime.lifetime

    @property
    def expires_at(self) -> float | None:
        """Absolute time (the driver's clock) when the server will drop the allocation."""
        return self._lifetime.expires_at

    # ------------------------------------------------------------------ driver interface

    def start(self, now: float) -> None:
        """Send the first Allocate request."""
        if self.state is not State.NEW:
            raise TurnError(f"start() called in state {self.state.value}")
        self.state = State.ALLOCATING
        self._request(Kind.ALLOCATE, now)

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
        if (deadline := self._transactions.next_timer()) is not None:
            deadlines.append(deadline)
        if self.state is State.ALLOCATED:
            deadlines += self._lifetime.deadlines()
            deadlines += self._permissions.deadlines()
            deadlines += self._channels.deadlines()
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        """Retransmit, time out, refresh and expire whatever is due at *now*."""
        for request in self._transactions.handle_timer(now):
            if self._finished():
                break
            self._request_failed(request, f"{request.kind.value} timed out", None, now)
        if self.state is not State.ALLOCATED:
            return
        if self._lifetime.expired(now):
            self._terminate("allocation lifetime passed without a successful Refresh", None)
            return
        if self._lifetime.refresh_due(now):
            self._request(Kind.REFRESH, now)
        # RFC 8656 §9, §12: permissions last 300 s and channels 600 s; refresh those in use.
        due = self._permissions.due(now)
        if due:
            self._create_permission(now, due)
        for channel in self._channels.due(now):
            channel.pending = True
            self._request(Kind.CHANNEL_BIND, now, peers=(channel.peer,), channel=channel.number)

    def next_event(self) -> ev.Event | None:
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
        if self._permissions.refused(peer.host, now):
            self.counters.dropped += 1
            return
        permission = self._permissions.ensure(peer)
        permission.last_used = now
        if not permission.active:
            if not permission.pending:
                self._create_permission(now, (permission.address,))
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
        family = self.relayed_address.family if self.relayed_address is not None else 4
        wanted, other_family = self._permissions.claim(peers, family, now)
        self.counters.dropped += other_family
        for batch in batches(wanted):
            self._create_permission(now, batch)

    def bind_channel(self, peer: Address, now: float) -> None:
        """Bind a channel to *peer* now, without waiting for traffic (needs the permission's
        IP to be allowed by the server; ChannelBind installs the permission too)."""
        if self.state is not State.ALLOCATED:
            raise TurnError(f"cannot bind a channel: allocation is {self.state.value}")
        if self._channels.for_peer(peer) is None:
            self._bind_channel(now, peer)

    def refresh(self, now: float) -> None:
        """Refresh the allocation now instead of waiting for the timer."""
        if self.state is State.ALLOCATED and not self._lifetime.in_flight:
            self._request(Kind.REFRESH, now)

    def close(self, now: float) -> None:
        """Deallocate: a Refresh with LIFETIME 0 (RFC 8656 §7.2). :class:`AllocationClosed`
        follows when the server answers or the request times out. Idempotent."""
        if self.state in (State.CLOSING, State.CLOSED):
            return
        self._close_requested = True
        if self.state is State.NEW:
            self._finish_close(confirmed=True)
        elif self.state is State.ALLOCATED:
            self._deallocate(now)
        # ALLOCATING: the Allocate in flight may yet create an allocation on the server; wait
        # for its answer and deallocate then, rather than leave it there for its lifetime.

    @property
    def password_algorithm(self) -> PasswordAlgorithm:
        """The long-term key in use: MD5, or SHA-256 when the server offered it."""
        return self._auth.algorithm

    @property
    def uses_userhash(self) -> bool:
        """True when requests carry USERHASH instead of USERNAME (RFC 8489 §14.4)."""
        return self._auth.use_userhash

    def channel_for(self, peer: Address) -> int | None:
        """The channel number bound to *peer*, if the binding is confirmed."""
        channel = self._channels.for_peer(peer)
        return channel.number if channel is not None and channel.bound else None

    def has_permission(self, host: str) -> bool:
        """True when the server has confirmed a permission for the IP address *host*."""
        permission = self._permissions.get(host)
        return permission is not None and permission.active

    # ------------------------------------------------------------------ sending

    def _enqueue(self, queue: deque[tuple[bytes, Address]], data: bytes, peer: Address) -> None:
        if enqueue(queue, data, peer):
            self.counters.dropped += 1

    def _send_data(self, data: bytes, peer: Address, now: float) -> None:
        channel = self._channels.for_peer(peer)
        self.counters.bytes_sent += len(data)
        if channel is not None and channel.bound:
            channel.last_used = now
            self.counters.channel_data_sent += 1
            self._emit(encode_channel_data(channel.number, data, stream=self._reliable))
            return
        self.counters.send_indications_sent += 1
        self._emit(send_indication(new_transaction_id(self._rng), peer, data))
        if channel is None and self.channel_threshold > 0:
            count = self._channels.count_packet(peer)
            if count >= self.channel_threshold and self.has_permission(peer.host):
                # Traffic to this peer has started: a channel saves 32 bytes per packet
                # (RTP at 50 packets/s, for the rest of the call). Not before the permission
                # is confirmed (pipelined data): a peer the server refuses would make the
                # ChannelBind fail too; _bind_earned_channels() catches up at its success.
                self._bind_channel(now, peer)

    def _resend_unconfirmed(self, host: str, now: float) -> None:
        """Send again, behind the CreatePermission just re-sent for *host*, what was pipelined
        behind the one the server answered with an error (and so dropped): a media sender that
        never retransmits loses nothing to a stale nonce."""
        permission = self._permissions.get(host)
        if permission is None or permission.active:
            return
        for data, peer in permission.unconfirmed:
            self._send_data(data, peer, now)

    def _flush(self, permission: Permission, now: float) -> None:
        """Send what waited for *permission* (pipelining off)."""
        while permission.queue and self.state is State.ALLOCATED:
            data, destination = permission.queue.popleft()
            self._send_data(data, destination, now)

    def _bind_earned_channels(self, host: str, now: float) -> None:
        """Bind the channels that pipelined traffic to *host* earned while its permission was
        still pending."""
        if self.channel_threshold <= 0 or self.state is not State.ALLOCATED:
            return
        for peer in self._channels.earned(host, self.channel_threshold):
            self._bind_channel(now, peer)

    def _emit(self, data: bytes) -> None:
        self._outgoing.append(Datagram(data, None, self.server, self.transport))

    # ------------------------------------------------------------------ requests

    def _create_permission(self, now: float, peers: tuple[Address, ...]) -> None:
        for peer in peers:
            permission = self._permissions.get(peer.host)
            if permission is not None:
                permission.pending = True
        self._request(Kind.CREATE_PERMISSION, now, peers=peers)

    def _bind_channel(self, now: float, peer: Address) -> None:
        channel = self._channels.reserve(peer, now)
        if channel is not None:
            self._request(Kind.CHANNEL_BIND, now, peers=(peer,), channel=channel.number)

    def _deallocate(self, now: float) -> None:
        # Forget requests whose answers no longer matter: the allocation goes anyway.
        self._transactions.clear()
        self._lifetime.in_flight = False
        self.state = State.CLOSING
        self._request(Kind.DEALLOCATE, now)

    def _request(
        self, kind: Kind, now: float, *, peers: tuple[Address, ...] = (), channel: int = 0
    ) -> None:
        if kind is Kind.REFRESH:
            self._lifetime.in_flight = True
        self._transactions.send(kind, now, peers=peers, channel=channel)

    # ------------------------------------------------------------------ receiving

    def _receive_frame(self, frame: bytes, now: float) -> None:
        # RFC 7983: first byte 64-79 is ChannelData; everything else must parse as STUN.
        if frame and 0x40 <= frame[0] <= 0x4F:
            event = channel_data(frame, self._channels, self._permissions, self.counters, now)
            if event is not None:
                self._events.append(event)
            return
        try:
            message = decode_message(frame)
        except StunError:
            self.counters.malformed += 1
            return
        if message.message_class is MessageClass.INDICATION:
            if message.method == Method.DATA:
                event = data_indication(message, self._permissions, self.counters, now)
                if event is not None:
                    self._events.append(event)
            else:
                self.counters.ignored += 1
            return
        if message.message_class is MessageClass.REQUEST:
            self.counters.ignored += 1  # a TURN server sends no requests to its clients
            return
        request = self._transactions.match(message)
        if request is None:
            return
        try:
            self._handle_response(request, message, now)
        except (StunError, TurnError) as exc:
            # The response broke the protocol (a success without the attribute it must carry,
            # ...): treat it as that request failing, never let it escape to the driver.
            self.counters.malformed += 1
            self._request_failed(
                request, f"malformed {request.kind.value} response: {exc}", None, now
            )

    def _handle_response(self, request: Request, message: Message, now: float) -> None:
        if message.message_class is MessageClass.SUCCESS_RESPONSE:
            self._request_succeeded(request, message, now)
            return
        error = message.get(AttributeType.ERROR_CODE)
        if not isinstance(error, ErrorCode):
            raise TurnError("error response without ERROR-CODE")
        code = error.code
        if self._transactions.retried(request, message, code, now):
            if code == 438 and request.kind is Kind.CREATE_PERMISSION:
                for peer in request.peers:
                    self._resend_unconfirmed(peer.host, now)
            return
        if code == 438:
            self._request_failed(request, "server keeps answering 438 (Stale Nonce)", code, now)
            return
        if code == 300 and request.kind is Kind.ALLOCATE:
            alternate = message.get(AttributeType.ALTERNATE_SERVER)
            if isinstance(alternate, Address) and not self._redirected:
                self._follow_alternate(alternate, now)
                return
            reason = "second 300 (Try Alternate)" if self._redirected else "300 without address"
            self._request_failed(request, reason, code, now)
            return
        self._request_failed(request, f"{code} {error.reason}".strip(), code, now)

    def _follow_alternate(self, alternate: Address, now: float) -> None:
        """RFC 8489 §10: a 300 to the Allocate names another server; start over there."""
        self._redirected = True
        self.server = alternate
        # The other server has its own realm and nonces: start over unauthenticated.
        self._auth.forget()
        if self._framer is not None:
            self._framer = StreamFramer()
        self._events.append(ev.AlternateServer(alternate))
        self._request(Kind.ALLOCATE, now)

    # ------------------------------------------------------------------ outcomes

    def _request_succeeded(self, request: Request, message: Message, now: float) -> None:
        kind = request.kind
        if kind is Kind.ALLOCATE:
            self._allocated(message, now)
        elif kind is Kind.REFRESH:
            self._lifetime.in_flight = False
            lifetime = message.get(AttributeType.LIFETIME)
            if not isinstance(lifetime, int):
                lifetime = self.requested_lifetime
            self._lifetime.granted(lifetime, now)
            self._events.append(ev.AllocationRefreshed(lifetime))
        elif kind is Kind.DEALLOCATE:
            self._finish_close(confirmed=True)
        elif kind is Kind.CREATE_PERMISSION:
            for peer in request.peers:
                permission = self._permissions.get(peer.host)
                if permission is None:
                    continue
                if permission.confirm(now):
                    self._events.append(ev.PermissionCreated(peer.host))
                self._flush(permission, now)
                self._bind_earned_channels(peer.host, now)
        elif kind is Kind.CHANNEL_BIND:
            channel = self._channels.for_number(request.channel)
            if channel is None:
                return
            if self._channels.confirm(channel, now):
                self._events.append(ev.ChannelBound(channel.peer, channel.number))
            # RFC 8656 §12.2: a successful ChannelBind installs or refreshes the permission for
            # the peer's IP too (bind_channel() may have come before any CreatePermission).
            permission = self._permissions.ensure(channel.peer, last_used=now)
            if not permission.active and not permission.pending:
                permission.confirm(now)
                self._events.append(ev.PermissionCreated(channel.peer.host))
                self._flush(permission, now)
            else:
                permission.installed_at = max(permission.installed_at, now)

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
        self._lifetime.granted(lifetime, now)
        self._events.append(
            ev.AllocationSucceeded(relayed, self.mapped_address, lifetime, self.reserved_token)
        )
        if self._close_requested:
            self._deallocate(now)
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

    def _request_failed(self, request: Request, reason: str, code: int | None, now: float) -> None:
        kind = request.kind
        if kind is Kind.ALLOCATE:
            self._terminate(f"Allocate failed: {reason}", code)
        elif kind is Kind.REFRESH:
            if code == 437:
                # RFC 8656 §7.3: the server no longer knows this allocation.
                self._lifetime.in_flight = False
                self._terminate("Refresh failed: 437 (Allocation Mismatch)", code)
            else:
                self._lifetime.retry_later(now)
        elif kind is Kind.DEALLOCATE:
            # Whatever the answer (437 included), the allocation is gone or will time out.
            self._finish_close(confirmed=code is not None)
        elif kind is Kind.CREATE_PERMISSION:
            self._permission_failed(request, reason, code, now)
        elif kind is Kind.CHANNEL_BIND:
            channel = self._channels.for_number(request.channel)
            if channel is not None and self._channels.failed(channel):
                # Send indications keep working; the peer is not asked for again.
                self._events.append(ev.ChannelBindFailed(channel.peer, reason, code))

    def _permission_failed(
        self, request: Request, reason: str, code: int | None, now: float
    ) -> None:
        if code == 403 and len(request.peers) > 1:
            # All or nothing (RFC 8656 §10.2): some peer of the batch is against the server's
            # policy. Ask for each alone; the allowed ones get theirs one round trip later
            # instead of never (create_permission() keeps this rare by sending the peers
            # servers usually deny on their own).
            for peer in request.peers:
                if peer.host in self._permissions:
                    self._create_permission(now, (peer,))
                    self._resend_unconfirmed(peer.host, now)
            return
        for peer in request.peers:
            permission = self._permissions.failed(peer.host, code, now)
            if permission is not None:
                # Queued data never left; pipelined data was dropped by the server.
                self.counters.dropped += len(permission.queue) + permission.unconfirmed_count
                self._events.append(ev.PermissionFailed(peer.host, reason, code))

    def _terminate(self, reason: str, code: int | None) -> None:
        """End the allocation without deallocating (it failed, expired or its stream broke)."""
        previous = self.state
        self.state = State.CLOSED
        self._transactions.clear()
        self._outgoing.clear()
        if previous is State.ALLOCATING or previous is State.NEW:
            self._events.append(ev.AllocationFailed(reason, code))
            if self._close_requested:
                # close() was called while the Allocate was in flight: it still gets its
                # AllocationClosed, as promised; there is nothing on the server to remove.
                self._events.append(ev.AllocationClosed(confirmed=True))
        elif previous is State.CLOSING:
            self._events.append(ev.AllocationClosed(confirmed=False))
        else:
            self._events.append(ev.AllocationExpired(reason))

    def _finish_close(self, *, confirmed: bool) -> None:
        self.state = State.CLOSED
        self._transactions.clear()
        self._events.append(ev.AllocationClosed(confirmed))
