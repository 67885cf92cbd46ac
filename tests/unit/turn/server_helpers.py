"""Shared helpers for the TURN server engine tests: a fake binder and a tiny client."""

from __future__ import annotations

import itertools
import os
import random
from dataclasses import dataclass, field

from icerelay.daemon.turn_config import TurnServerConfig
from icerelay.stun import Address, AttributeType, Message, MessageClass, Method, decode_message
from icerelay.stun.credentials import long_term_key
from icerelay.turn.server.engine import TurnServerEngine

A = AttributeType
SERVER = ("192.0.2.1", 3478)
CLIENT = ("203.0.113.5", 40000)
REALM = "example.org"
#: Each engine gets its own generator (and so its own nonce key), deterministically.
_SEEDS = itertools.count(1)


class FakeBinder:
    """Binds in memory; ports listed in ``taken`` fail like EADDRINUSE."""

    def __init__(self) -> None:
        self.bound: set[tuple[str, int]] = set()
        self.taken: set[tuple[str, int]] = set()
        self.dont_fragment: set[tuple[str, int]] = set()

    def bind(self, address: tuple[str, int], dont_fragment: bool) -> bool:
        if address in self.taken or address in self.bound:
            return False
        self.bound.add(address)
        if dont_fragment:
            self.dont_fragment.add(address)
        return True

    def release(self, address: tuple[str, int]) -> None:
        assert address in self.bound, address
        self.bound.discard(address)


def make_engine(
    seed: int | None = None, **overrides: object
) -> tuple[TurnServerEngine, FakeBinder]:
    settings: dict[str, object] = {
        "listen": ["192.0.2.1:3478"],
        "realm": REALM,
        "users": {"alice": "wonderland", "bob": "builder"},
        "auth_secrets": ["north"],
        "relay_ipv4": "192.0.2.1",
        "relay_ipv6": "2001:db8::1",
        "relay_port_min": 20000,
        "relay_port_max": 20099,
        "allow_peers": ["198.51.100.0/24", "2001:db8:1::/48"],
    }
    settings.update(overrides)
    binder = FakeBinder()
    rng = random.Random(next(_SEEDS) if seed is None else seed)
    engine = TurnServerEngine(TurnServerConfig.model_validate(settings).settings(), binder, rng=rng)
    return engine, binder


@dataclass
class Client:
    """Speaks TURN to an engine directly, with the long-term credential dance."""

    engine: TurnServerEngine
    username: str = "alice"
    password: str = "wonderland"
    address: tuple[str, int] = CLIENT
    transport: str = "udp"
    server: tuple[str, int] = SERVER
    nonce: str | None = None
    realm: str = REALM
    integrity: str = "sha1"
    now: float = 1000.0
    sent: list[bytes] = field(default_factory=list)

    @property
    def key(self) -> bytes:
        return long_term_key(self.username, self.realm, self.password)

    def send_raw(self, data: bytes) -> list[tuple[bytes, tuple[str, int], tuple[str, int], str]]:
        self.engine.receive(data, self.address, self.server, self.transport, self.now)
        return self.engine.datagrams_to_send()

    def request(
        self,
        method: int,
        attributes: list[tuple[int, object]] | None = None,
        *,
        authenticate: bool = True,
        transaction_id: bytes | None = None,
    ) -> Message:
        """Send a request (retrying once after 401/438 to learn the nonce); return the answer."""
        for _ in range(3):
            message = Message(method, MessageClass.REQUEST, transaction_id or os.urandom(12))
            for attribute_type, value in attributes or []:
                message.add(attribute_type, value)  # type: ignore[arg-type]
            if authenticate and self.nonce is not None:
                message.add(A.USERNAME, self.username)
                message.add(A.REALM, self.realm)
                message.add(A.NONCE, self.nonce)
                data = message.encode(self.key, self.integrity)  # type: ignore[arg-type]
            else:
                data = message.encode()
            out = self.send_raw(data)
            assert len(out) == 1, out
            response = decode_message(out[0][0])
            assert out[0][1] == self.server and out[0][2] == self.address
            error = response.get(A.ERROR_CODE)
            if (
                authenticate
                and error is not None
                and error.code in (401, 438)
                and (self.nonce is None or error.code == 438)
            ):
                self.nonce = response.get(A.NONCE)
                continue
            return response
        raise AssertionError("no answer after nonce retries")

    def allocate(self, *extra: tuple[int, object]) -> Message:
        return self.request(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 17), *extra])

    def relayed(self, response: Message) -> tuple[str, int]:
        address = response.get(A.XOR_RELAYED_ADDRESS)
        assert address is not None, response
        return (address.host, address.port)

    def permit(self, *hosts: str) -> Message:
        return self.request(
            Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, Address(h, 9)) for h in hosts]
        )

    def bind_channel(self, number: int, peer: tuple[str, int]) -> Message:
        return self.request(
            Method.CHANNEL_BIND,
            [(A.CHANNEL_NUMBER, number), (A.XOR_PEER_ADDRESS, Address(*peer))],
        )

    def refresh(self, lifetime: int | None = None) -> Message:
        return self.request(Method.REFRESH, [] if lifetime is None else [(A.LIFETIME, lifetime)])

    def send_indication(
        self, peer: tuple[str, int], data: bytes
    ) -> list[tuple[bytes, tuple[str, int], tuple[str, int], str]]:
        message = Message(Method.SEND, MessageClass.INDICATION, os.urandom(12))
        message.add(A.XOR_PEER_ADDRESS, Address(*peer))
        message.add(A.DATA, data)
        return self.send_raw(message.encode())


def error_code(response: Message) -> int | None:
    error = response.get(A.ERROR_CODE)
    return None if error is None else error.code
