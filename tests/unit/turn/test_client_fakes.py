"""A scripted in-memory TURN server and a virtual-time pump for the TURN client's unit tests.

The fake speaks just enough RFC 8656 to drive :class:`Allocation` through every path: long-term
credentials (MD5, or SHA-256 with USERHASH when asked), stale nonces, redirections, refreshes,
permissions, channels, Send indications and ChannelData, with knobs to drop or replace answers.
It checks what the client sends (integrity, required attributes) and records it for assertions.
Time is a plain float that the tests move.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from icerelay.stun import (
    Address,
    AttributeType,
    ErrorCode,
    Message,
    MessageClass,
    Method,
    PasswordAlgorithmEntry,
    decode_message,
)
from icerelay.stun.channeldata import decode_channel_data, encode_channel_data
from icerelay.stun.constants import PasswordAlgorithm, SecurityFeature
from icerelay.stun.credentials import long_term_key, userhash
from icerelay.stun.nonce import make_nonce
from icerelay.turn.client import Allocation, Event

A = AttributeType
SERVER = Address("192.0.2.1", 3478)
ALTERNATE = Address("192.0.2.2", 3478)
CLIENT = Address("198.51.100.2", 40000)
RELAYED = Address("203.0.113.5", 50000)
PEER = Address("198.51.100.77", 6000)
PEER2 = Address("198.51.100.78", 7000)
#: Globally routable peers (only ever named in messages to the fake server, never sent to):
#: create_permission() batches these and asks for the others one by one.
GLOBAL_PEER = Address("151.101.1.69", 6000)
GLOBAL_PEER2 = Address("151.101.65.69", 7000)
PRIVATE_PEER = Address("10.9.9.9", 5000)
USER, PASSWORD, REALM = "alice", "wonderland", "example.org"


def test_fake_server_is_importable() -> None:
    # Keeps pytest from reporting this helper module as "no tests ran" when run alone.
    assert FakeServer().realm == REALM


@dataclass
class FakeServer:
    """Answers whatever the client sends. Set the knobs before or between steps."""

    realm: str = REALM
    nonce: str = "nonce-1"
    users: dict[str, str] = field(default_factory=lambda: {USER: PASSWORD})
    #: Offer PASSWORD-ALGORITHMS (SHA-256, MD5) in the 401, and/or USERHASH (nonce cookie bits).
    offer_sha256: bool = False
    offer_userhash: bool = False
    #: Like a server whose users are computed (TURN REST API): USERHASH finds no one.
    userhash_unknown: bool = False
    granted_lifetime: int = 600
    #: Answer the next N requests of any kind with 438 (a fresh nonce each time).
    stale_next: int = 0
    #: method -> error code to answer (after authentication) instead of success.
    errors: dict[int, int] = field(default_factory=dict)
    #: Peer IPs against this server's policy: a CreatePermission naming any of them is refused
    #: whole with 403, as RFC 8656 §10.2 says.
    refuse_peers: set[str] = field(default_factory=set)
    #: method -> an ALTERNATE-SERVER to redirect to with 300 (Allocate only, before auth).
    redirect_to: Address | None = None
    #: Requests to swallow (simulates loss on the way there).
    drop_requests: int = 0
    stream: bool = False
    requests: list[Message] = field(default_factory=list)
    sends: list[tuple[Address, bytes]] = field(default_factory=list)
    #: Send indications for peers without a permission (dropped, as a server does).
    dropped_sends: list[tuple[Address, bytes]] = field(default_factory=list)
    channel_data: list[tuple[int, bytes]] = field(default_factory=list)
    permissions: set[str] = field(default_factory=set)
    channels: dict[int, Address] = field(default_factory=dict)
    #: Raw bytes of every ChannelData frame received (to check TCP padding).
    raw_channel_frames: list[bytes] = field(default_factory=list)
    nonce_counter: int = 1
    #: Hook to rewrite an answer before it goes out (malformed-response tests).
    mangle: Callable[[Message, bytes], bytes] | None = None

    # ------------------------------------------------------------------ helpers

    def current_nonce(self) -> str:
        features = SecurityFeature(0)
        if self.offer_sha256:
            features |= SecurityFeature.PASSWORD_ALGORITHMS
        if self.offer_userhash:
            features |= SecurityFeature.USERNAME_ANONYMITY
        return make_nonce(self.nonce, features)

    def new_nonce(self) -> None:
        self.nonce_counter += 1
        self.nonce = f"nonce-{self.nonce_counter}"

    def key_for(self, username: str, algorithm: int) -> bytes:
        return long_term_key(username, self.realm, self.users[username], algorithm)

    # ------------------------------------------------------------------ traffic

    def handle(self, data: bytes) -> list[bytes]:
        """Process one message (or ChannelData) from the client; return the answers."""
        if 0x40 <= data[0] <= 0x4F:
            self.raw_channel_frames.append(data)
            number, payload = decode_channel_data(data)
            assert number in self.channels, f"ChannelData on unbound channel {number:#x}"
            self.channel_data.append((number, payload))
            return []
        message = decode_message(data)
        if message.message_class == MessageClass.INDICATION:
            assert message.method == Method.SEND
            peer = message.get(A.XOR_PEER_ADDRESS)
            data_value = message.get(A.DATA)
            assert peer is not None and data_value is not None
            if peer.host not in self.permissions:
                # RFC 8656 §11.3: a real server silently drops it; tests look at this list.
                self.dropped_sends.append((peer, data_value))
                return []
            self.sends.append((peer, data_value))
            return []
        assert message.message_class == MessageClass.REQUEST
        assert message.has_fingerprint and message.fingerprint_ok
        self.requests.append(message)
        if self.drop_requests:
            self.drop_requests -= 1
            return []
        answer = self._answer(message)
        return [answer] if answer is not None else []

    def _answer(self, request: Message) -> bytes | None:
        username = request.get(A.USERNAME)
        hashed = request.get(A.USERHASH)
        if username is None and hashed is not None:
            matches = [
                u
                for u in self.users
                if userhash(u, self.realm) == hashed and not self.userhash_unknown
            ]
            username = matches[0] if matches else None
        if username is None and hashed is None:
            if self.redirect_to is not None and request.method == Method.ALLOCATE:
                response = request.error_response(300)
                response.add(A.ALTERNATE_SERVER, self.redirect_to)
                return self._out(request, response, None, None)
            return self._challenge(request)
        if self.stale_next:
            self.stale_next -= 1
            self.new_nonce()
            response = request.error_response(438)
            response.add(A.REALM, self.realm)
            response.add(A.NONCE, self.current_nonce())
            return self._out(request, response, None, None)
        if request.get(A.NONCE) != self.current_nonce():
            response = request.error_response(438)
            response.add(A.REALM, self.realm)
            response.add(A.NONCE, self.current_nonce())
            return self._out(request, response, None, None)
        if username is None or username not in self.users:
            return self._challenge(request)
        algorithm_entry = request.get(A.PASSWORD_ALGORITHM)
        algorithm = algorithm_entry.algorithm if algorithm_entry else PasswordAlgorithm.MD5
        key = self.key_for(username, algorithm)
        wanted = "sha256" if algorithm == PasswordAlgorithm.SHA256 else "sha1"
        if request.integrity_algorithm != wanted or not request.check_integrity(key, wanted):
            return self._challenge(request)
        code = self.errors.get(request.method)
        if code is not None:
            return self._out(request, request.error_response(code), key, wanted)
        response = request.response()
        if request.method == Method.ALLOCATE:
            assert request.get(A.REQUESTED_TRANSPORT) == 17
            relayed = RELAYED
            token = request.get(A.RESERVATION_TOKEN)
            if token is not None:
                assert token == b"T" * 8, "unknown reservation token"
                assert A.EVEN_PORT not in request and A.REQUESTED_ADDRESS_FAMILY not in request
                relayed = Address(RELAYED.host, RELAYED.port + 1)
            response.add(A.XOR_RELAYED_ADDRESS, relayed)
            if request.get(A.EVEN_PORT):
                response.add(A.RESERVATION_TOKEN, b"T" * 8)
            response.add(A.XOR_MAPPED_ADDRESS, CLIENT)
            response.add(A.LIFETIME, min(request.get(A.LIFETIME) or 600, self.granted_lifetime))
        elif request.method == Method.REFRESH:
            asked = request.get(A.LIFETIME)
            response.add(A.LIFETIME, 0 if asked == 0 else self.granted_lifetime)
        elif request.method == Method.CREATE_PERMISSION:
            peers = request.get_all(A.XOR_PEER_ADDRESS)
            assert peers, "CreatePermission without XOR-PEER-ADDRESS"
            if any(p.host in self.refuse_peers for p in peers):
                return self._out(request, request.error_response(403), key, wanted)
            self.permissions.update(p.host for p in peers)
        elif request.method == Method.CHANNEL_BIND:
            number = request.get(A.CHANNEL_NUMBER)
            peer = request.get(A.XOR_PEER_ADDRESS)
            assert number is not None and peer is not None
            assert self.channels.get(number, peer) == peer, "channel rebound to another peer"
            self.channels[number] = peer
            self.permissions.add(peer.host)
        return self._out(request, response, key, wanted)

    def _challenge(self, request: Message) -> bytes:
        response = request.error_response(401)
        response.add(A.REALM, self.realm)
        response.add(A.NONCE, self.current_nonce())
        if self.offer_sha256:
            response.add(
                A.PASSWORD_ALGORITHMS,
                [
                    PasswordAlgorithmEntry(PasswordAlgorithm.SHA256),
                    PasswordAlgorithmEntry(PasswordAlgorithm.MD5),
                ],
            )
        return self._out(request, response, None, None)

    def _out(
        self, request: Message, response: Message, key: bytes | None, integrity: str | None
    ) -> bytes:
        data: bytes
        if key is not None:
            data = response.encode(
                integrity_key=key,
                integrity="sha256" if integrity == "sha256" else "sha1",
                fingerprint=True,
            )
        else:
            data = response.encode(fingerprint=True)
        if self.mangle is not None:
            return self.mangle(response, data)
        return data

    def data_indication(self, peer: Address, payload: bytes) -> bytes:
        """A Data indication from *peer* (what the server sends when no channel is bound)."""
        indication = Message(Method.DATA, MessageClass.INDICATION, os.urandom(12))
        indication.add(A.XOR_PEER_ADDRESS, peer)
        indication.add(A.DATA, payload)
        return indication.encode()

    def channel_data_from(self, peer: Address, payload: bytes) -> bytes:
        """ChannelData from *peer* on the channel the client bound to it."""
        number = next(n for n, p in self.channels.items() if p == peer)
        return encode_channel_data(number, payload, stream=self.stream)


def error_of(message: Message) -> ErrorCode | None:
    return message.get(A.ERROR_CODE)


@dataclass
class Harness:
    """An engine, a fake server and a virtual clock, connected by :meth:`pump`."""

    engine: Allocation
    server: FakeServer
    now: float = 0.0
    events: list[Event] = field(default_factory=list)
    #: Every datagram the engine sent, with its destination (for redirection tests).
    wire: list[tuple[Address, bytes]] = field(default_factory=list)

    def pump(self) -> list[Event]:
        """Exchange messages until both sides are quiet; return the new events."""
        new: list[Event] = []
        for _ in range(100):
            datagrams = self.engine.datagrams_to_send(self.now)
            if not datagrams:
                break
            for datagram in datagrams:
                self.wire.append((datagram.destination, datagram.data))
                for answer in self.server.handle(datagram.data):
                    self.deliver(answer)
        while (event := self.engine.next_event()) is not None:
            new.append(event)
        self.events.extend(new)
        return new

    def deliver(self, data: bytes, source: Address | None = None) -> None:
        self.engine.receive(data, source or self.engine.server, CLIENT, self.now)

    def advance(self, seconds: float) -> list[Event]:
        """Move the clock, running every timer on the way, exactly at its deadline."""
        target = self.now + seconds
        new: list[Event] = []
        while True:
            deadline = self.engine.next_timer()
            if deadline is None or deadline > target:
                break
            self.now = max(self.now, deadline)
            self.engine.handle_timer(self.now)
            new += self.pump()
        self.now = target
        new += self.pump()
        return new

    def requests_of(self, method: int) -> list[Message]:
        return [r for r in self.server.requests if r.method == method]


def make(
    *,
    transport: str = "udp",
    server: FakeServer | None = None,
    start: bool = True,
    **options: object,
) -> Harness:
    """A harness with an allocation made (unless *start* is False)."""
    fake = server or FakeServer(stream=transport != "udp")
    options.setdefault("rng", random.Random(0))
    engine = Allocation(SERVER, USER, PASSWORD, transport=transport, **options)  # type: ignore[arg-type]
    harness = Harness(engine, fake)
    if start:
        engine.start(harness.now)
        harness.pump()
    return harness
