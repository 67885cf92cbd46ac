"""Media hijack (the RTP Bleed class) through the real daemon.

``icerelay serve`` with the relay on loopback, driven by an ng client over UDP as Kamailio
would; the parties and the attacker are UDP sockets. Each test sets up one call (offer from
Alice, answer from Bob), lets media flow, then attacks Alice's relay port and asserts where
Bob's next packet goes: to Alice, never to the attacker. The policy is tested packet by packet
in ``test_hijack_policy.py``; this proves the daemon applies it.
"""

from __future__ import annotations

import os
import random
import re
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from icerelay import bencode
from icerelay.stun import AttributeType, MessageClass, Method
from icerelay.stun.credentials import short_term_key
from icerelay.stun.message import Message
from tests.support.ports import free_ports
from tests.support.serve import ServeProcess, start_serve

pytestmark = pytest.mark.interop

HOST = "127.0.0.1"
#: Short, so that "after silence" costs the suite little; the rules do not depend on it.
HANDOVER_AFTER = 0.2
ALICE_UFRAG, ALICE_PWD = "alice1", "alicepassword0123456789x"
BOB_UFRAG, BOB_PWD = "bobb1", "bobpassword0123456789xyz"


@pytest.fixture(scope="module")
def relay() -> Iterator[int]:
    """A running ``icerelay serve`` with the relay on; yields its ng port."""
    stun_port, ng_port = free_ports(2)
    # A wide range: the machine is shared, and a port someone else took meanwhile makes the
    # relay pick another pair (it retries), which needs free ones around.
    block = free_ports(201, kinds=("udp",), consecutive=True)
    first = block[0] + (block[0] & 1)
    server: ServeProcess = start_serve(
        ["--stun-listen", f"{HOST}:{stun_port}"],
        host=HOST,
        port=stun_port,
        env={
            "ICERELAY_RELAY__ENABLED": "1",
            "ICERELAY_RELAY__NG_LISTEN": f"{HOST}:{ng_port}",
            "ICERELAY_RELAY__PORT_MIN": str(first),
            "ICERELAY_RELAY__PORT_MAX": str(first + 199),
            "ICERELAY_RELAY__MEDIAPROXY_SOCKET": "",
            "ICERELAY_RELAY__ACCOUNTING": "",
            "ICERELAY_RELAY__HANDOVER_AFTER": str(HANDOVER_AFTER),
        },
    )
    try:
        yield ng_port
    finally:
        server.stop()


def ng(port: int, body: dict[str, bencode.Encodable]) -> dict[bytes, bencode.BencodeValue]:
    cookie = os.urandom(4).hex().encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(cookie + b" " + bencode.encode(body), (HOST, port))
        data = sock.recv(65536)
    reply = bencode.decode(data.partition(b" ")[2])
    assert isinstance(reply, dict) and reply.get(b"result") == b"ok", reply
    return reply


class Party:
    """A UDP socket: a phone, or the attacker."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.port = self.sock.getsockname()[1]

    def send(self, data: bytes, port: int) -> None:
        self.sock.sendto(data, (HOST, port))

    def receive(self, timeout: float = 2.0) -> bytes | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096)
        except TimeoutError:
            return None

    def drain(self) -> None:
        while self.receive(0.05) is not None:
            pass

    def close(self) -> None:
        self.sock.close()


def rtp(seq: int, ssrc: int, pt: int = 8) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, seq * 160, ssrc) + b"m" * 160


def sdp(port: int, ice: tuple[str, str] | None = None) -> bytes:
    lines = [
        "v=0",
        f"o=- {port} 1 IN IP4 {HOST}",
        "s=-",
        f"c=IN IP4 {HOST}",
        "t=0 0",
        f"m=audio {port} RTP/AVP 0 8 101",
        "a=rtpmap:101 telephone-event/8000",
        "a=sendrecv",
    ]
    if ice is not None:
        lines += [
            f"a=ice-ufrag:{ice[0]}",
            f"a=ice-pwd:{ice[1]}",
            f"a=candidate:1 1 UDP 2130706431 {HOST} {port} typ host",
        ]
    return ("\r\n".join(lines) + "\r\n").encode()


def relay_port(reply: dict[bytes, bencode.BencodeValue]) -> int:
    body = reply[b"sdp"]
    assert isinstance(body, bytes)
    match = re.search(rb"m=audio (\d+) ", body)
    assert match is not None
    return int(match.group(1))


@dataclass
class Call:
    """One call through the relay: Alice's SDP address absorbs media until she latches."""

    alice: Party
    alice_sdp: Party
    bob: Party
    mallory: Party
    relay_a: int  # where Alice sends
    relay_b: int  # where Bob sends
    alice_ssrc: int
    call_id: str
    seq: int = 0

    def alice_talks(self, packets: int = 5) -> None:
        for _ in range(packets):
            self.seq += 1
            self.alice.send(rtp(self.seq, self.alice_ssrc), self.relay_a)
            assert self.bob.receive() is not None
            self.bob.send(rtp(self.seq, 0xB0B), self.relay_b)
            assert self.alice.receive() is not None, "Bob's media should reach Alice"

    def bob_reaches(self) -> str:
        """Who gets Bob's next packet: 'alice', 'alice-sdp', 'mallory' or 'nobody'."""
        for party in (self.alice, self.alice_sdp, self.mallory):
            party.drain()
        marker = rtp(40000 + random.randrange(1000), 0xB0B)
        self.bob.send(marker, self.relay_b)
        names = {"alice": self.alice, "alice-sdp": self.alice_sdp, "mallory": self.mallory}
        got = [name for name, party in names.items() if party.receive(0.3) == marker]
        assert len(got) <= 1
        return got[0] if got else "nobody"

    def close(self) -> None:
        for party in (self.alice, self.alice_sdp, self.bob, self.mallory):
            party.close()


@pytest.fixture
def make_call(relay: int) -> Iterator[Callable[..., Call]]:
    calls: list[Call] = []

    def factory(flags: tuple[str, ...] = (), ice: bool = False) -> Call:
        alice, alice_sdp, bob, mallory = Party(), Party(), Party(), Party()
        call_id = f"hijack-{os.urandom(6).hex()}"
        alice_ice = (ALICE_UFRAG, ALICE_PWD) if ice else None
        bob_ice = (BOB_UFRAG, BOB_PWD) if ice else None
        offer = ng(
            relay,
            {
                "command": "offer",
                "call-id": call_id,
                "from-tag": "alice",
                "sdp": sdp(alice_sdp.port, alice_ice),
                "flags": list(flags),
            },
        )
        answer = ng(
            relay,
            {
                "command": "answer",
                "call-id": call_id,
                "from-tag": "alice",
                "to-tag": "bob",
                "sdp": sdp(bob.port, bob_ice),
                "flags": list(flags),
            },
        )
        call = Call(
            alice,
            alice_sdp,
            bob,
            mallory,
            relay_a=relay_port(answer),
            relay_b=relay_port(offer),
            alice_ssrc=random.getrandbits(32),
            call_id=call_id,
        )
        calls.append(call)
        return call

    yield factory
    for call in calls:
        call.close()
        ng(relay, {"command": "delete", "call-id": call.call_id, "from-tag": "alice"})


def nominating_check(pwd: str, transaction_id: bytes | None = None) -> bytes:
    request = Message(Method.BINDING, MessageClass.REQUEST, transaction_id or os.urandom(12))
    request.add(AttributeType.USERNAME, f"{BOB_UFRAG}:{ALICE_UFRAG}")
    request.add(AttributeType.PRIORITY, 1853817087)
    request.add(AttributeType.ICE_CONTROLLING, 0x1122334455667788)
    request.add(AttributeType.USE_CANDIDATE)
    return request.encode(integrity_key=short_term_key(pwd), fingerprint=True)


def test_garbage_first_never_latches(make_call: Callable[..., Call]) -> None:
    call = make_call()
    rng = random.Random(10)
    for _ in range(5):
        call.mallory.send(bytes(rng.getrandbits(8) for _ in range(200)), call.relay_a)
    call.mallory.send(rtp(1, 0xBAD, pt=96), call.relay_a)  # a payload type nobody offered
    assert call.bob_reaches() == "alice-sdp"
    call.alice_talks()
    assert call.bob_reaches() == "alice"
    assert call.mallory.receive(0.1) is None


def test_a_stranger_after_silence_does_not_take_the_leg(make_call: Callable[..., Call]) -> None:
    call = make_call()
    call.alice_talks()
    time.sleep(HANDOVER_AFTER * 2)  # Alice on hold, silent
    for seq in range(3):
        call.mallory.send(rtp(seq, 0xBAD), call.relay_a)  # valid RTP, wrong SSRC
    assert call.bob_reaches() == "alice"
    call.alice_talks()  # the real phone resumes, both ways
    assert call.bob_reaches() == "alice"


def test_nat_rebinding_same_ssrc_from_a_new_port_takes_over(make_call: Callable[..., Call]) -> None:
    call = make_call(flags=("strict-source",))
    call.alice_talks()
    time.sleep(HANDOVER_AFTER * 2)
    call.alice.close()
    call.alice = Party()  # the NAT mapped Alice to a new port
    call.alice_talks()
    assert call.bob_reaches() == "alice"


def test_strict_source_drops_a_stranger(make_call: Callable[..., Call]) -> None:
    call = make_call(flags=("strict-source",))
    call.alice_talks()
    time.sleep(HANDOVER_AFTER * 2)
    call.mallory.send(rtp(call.seq + 1, 0xBAD), call.relay_a)
    assert call.bob.receive(0.3) is None  # not even relayed to Bob
    assert call.bob_reaches() == "alice"


def test_an_authenticated_check_moves_the_latch_a_wrong_password_does_not(
    make_call: Callable[..., Call],
) -> None:
    call = make_call(flags=("strict-source",), ice=True)
    call.alice_talks()
    for pwd in ("guessedpassword012345678", ALICE_PWD):
        call.mallory.send(nominating_check(pwd), call.relay_a)
    assert call.bob.receive(0.3) is None  # forged checks are dropped, not relayed
    assert call.bob_reaches() == "alice"
    # Alice's ICE agent nominates a pair from another of her candidates.
    moved = Party()
    check = nominating_check(BOB_PWD)
    moved.send(check, call.relay_a)
    assert call.bob.receive() == check
    # A copy of her check from elsewhere is refused.
    call.mallory.send(check, call.relay_a)
    assert call.bob.receive(0.3) is None
    call.alice.close()
    call.alice = moved
    assert call.bob_reaches() == "alice"


def test_refusals_are_logged_once_per_stream() -> None:
    """Garbage is counted per packet but logged once, when the stream ends (here at stop)."""
    stun_port, ng_port = free_ports(2)
    block = free_ports(41, kinds=("udp",), consecutive=True)
    first = block[0] + (block[0] & 1)
    server = start_serve(
        ["--stun-listen", f"{HOST}:{stun_port}"],
        host=HOST,
        port=stun_port,
        env={
            "ICERELAY_RELAY__ENABLED": "1",
            "ICERELAY_RELAY__NG_LISTEN": f"{HOST}:{ng_port}",
            "ICERELAY_RELAY__PORT_MIN": str(first),
            "ICERELAY_RELAY__PORT_MAX": str(first + 39),
            "ICERELAY_RELAY__MEDIAPROXY_SOCKET": "",
            "ICERELAY_RELAY__ACCOUNTING": "",
        },
    )
    mallory = Party()
    try:
        ng(ng_port, {"command": "offer", "call-id": "x", "from-tag": "a", "sdp": sdp(4000)})
        reply = ng(
            ng_port,
            {"command": "answer", "call-id": "x", "from-tag": "a", "to-tag": "b", "sdp": sdp(4002)},
        )
        for _ in range(100):
            mallory.send(b"\xff" * 100, relay_port(reply))
        time.sleep(0.3)
    finally:
        mallory.close()
        server.stop()
    lines = [line for line in server.output().splitlines() if "relay.stream_refusals" in line]
    assert len(lines) == 1, server.output()[-2000:]
    assert "caller_leg=not-media:100" in lines[0]


def mediaproxy(path: str, command: str, **headers: str) -> bytes:
    lines = [command] + [f"{name}: {value}" for name, value in headers.items()]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return sock.recv(4096)


def test_mediaproxy_fallback_garbage_and_strangers_still_refused(tmp_path: Path) -> None:
    """MediaProxy's protocol passes no payload types and no ICE credentials: the fallback
    (any RTP version 2 is valid) still refuses garbage and a stranger after silence."""
    stun_port, ng_port = free_ports(2)
    block = free_ports(41, kinds=("udp",), consecutive=True)
    first = block[0] + (block[0] & 1)
    path = str(tmp_path / "mediaproxy.sock")
    server = start_serve(
        ["--stun-listen", f"{HOST}:{stun_port}"],
        host=HOST,
        port=stun_port,
        env={
            "ICERELAY_RELAY__ENABLED": "1",
            "ICERELAY_RELAY__NG_LISTEN": f"{HOST}:{ng_port}",
            "ICERELAY_RELAY__PORT_MIN": str(first),
            "ICERELAY_RELAY__PORT_MAX": str(first + 39),
            "ICERELAY_RELAY__MEDIAPROXY_SOCKET": path,
            "ICERELAY_RELAY__ACCOUNTING": "",
            "ICERELAY_RELAY__HANDOVER_AFTER": str(HANDOVER_AFTER),
        },
    )
    alice, alice_sdp, bob, mallory = Party(), Party(), Party(), Party()
    try:
        common = {
            "dialog_id": "1:2",
            "call_id": "mp-hijack",
            "cseq": "1 INVITE",
            "from_uri": "sip:alice@example.com",
            "to_uri": "sip:bob@example.com",
            "from_tag": "alice",
        }
        to_bob = mediaproxy(
            path,
            "update",
            type="request",
            to_tag="",
            media=f"audio:{HOST}:{alice_sdp.port}:sendrecv",
            **common,
        )
        to_alice = mediaproxy(
            path,
            "update",
            type="reply",
            to_tag="bob",
            media=f"audio:{HOST}:{bob.port}:sendrecv",
            **common,
        )
        relay_b, relay_a = int(to_bob.split()[1]), int(to_alice.split()[1])
        call = Call(alice, alice_sdp, bob, mallory, relay_a, relay_b, 0x5EC2E7A1, "mp-hijack")
        rng = random.Random(11)
        for _ in range(5):
            garbage = bytearray(rng.getrandbits(8) for _ in range(200))
            garbage[0] = 0x40  # never RTP version 2, whatever the rest
            mallory.send(bytes(garbage), relay_a)
        assert call.bob_reaches() == "alice-sdp"
        call.alice_talks()
        time.sleep(HANDOVER_AFTER * 2)
        mallory.send(rtp(1, 0xBAD, pt=96), relay_a)  # valid in the fallback, wrong SSRC
        assert call.bob_reaches() == "alice"
    finally:
        for party in (alice, alice_sdp, bob, mallory):
            party.close()
        server.stop()
