"""The userspace data plane on loopback with real sockets: forwarding, latching, RTCP, ICE-lite.

The latching rules themselves are tested packet by packet in test_latching.py; here they are
seen through real sockets once each. Time is injected where it matters (no sleeping).
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest
from tests.support.ports import free_ports

from icerelay.dataplane.userspace import UserspaceDataPlane
from icerelay.errors import RelayError
from icerelay.relay.forwarding import Forwarding, Leg
from icerelay.sdp import IceCredentials
from icerelay.stun import Address, AttributeType, MessageClass, Method, decode_message
from icerelay.stun.credentials import short_term_key
from icerelay.stun.message import Message

HOST = "127.0.0.1"


def rtp(seq: int, payload: bytes = b"x" * 160, pt: int = 8, ssrc: int = 0x1234) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, seq * 160, ssrc) + payload


def rtcp() -> bytes:
    # A minimal receiver report: V=2, PT=201 (RR), length 1, SSRC.
    return struct.pack("!BBHI", 0x80, 201, 1, 0x1234)


class Phone:
    """A UDP socket standing for one party."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.setblocking(False)
        self.address = Address(HOST, self.sock.getsockname()[1])

    def send(self, data: bytes, to: Address) -> None:
        self.sock.sendto(data, (to.host, to.port))

    async def receive(self, timeout: float = 1.0) -> tuple[bytes, Address]:
        loop = asyncio.get_running_loop()
        data, addr = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 2048), timeout)
        return data, Address(addr[0], addr[1])

    async def nothing(self, wait: float = 0.1) -> bool:
        try:
            await self.receive(wait)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.sock.close()


def local_pair() -> Address:
    return Address(HOST, free_ports(2, kinds=("udp",), consecutive=True)[0])


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 10))


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until ``condition`` holds (bounded by :func:`run`'s timeout)."""
    while not condition():
        await asyncio.sleep(0)


def forwarding(a: Leg, b: Leg, **options: object) -> Forwarding:
    return Forwarding("k1", a, b, **options)  # type: ignore[arg-type]


def test_forwards_both_ways_and_counts() -> None:
    async def main() -> None:
        plane = UserspaceDataPlane()
        alice, bob = Phone(), Phone()
        relay_a, relay_b = local_pair(), local_pair()
        await plane.install(
            forwarding(
                Leg(relay_a, alice.address, Address(HOST, alice.address.port + 1)),
                Leg(relay_b, bob.address, None),
            )
        )
        try:
            alice.send(rtp(1), relay_a)
            data, source = await bob.receive()
            assert data == rtp(1) and source == relay_b
            bob.send(rtp(7, b"y" * 20), relay_b)
            data, source = await alice.receive()
            assert data == rtp(7, b"y" * 20) and source == relay_a
            counters = plane.counters("k1")
            assert counters is not None
            assert (counters.a.packets, counters.a.bytes) == (1, 172)
            assert (counters.b.packets, counters.b.bytes) == (1, 32)
            assert counters.a.latched_rtp == alice.address
            assert counters.last_packet is not None
        finally:
            await plane.close()
            alice.close()
            bob.close()

    run(main)


def test_latching_finds_a_party_behind_a_nat() -> None:
    async def main() -> None:
        plane = UserspaceDataPlane()
        alice, bob = Phone(), Phone()
        relay_a, relay_b = local_pair(), local_pair()
        # Alice's SDP names a private address that is not where her packets come from.
        await plane.install(
            forwarding(Leg(relay_a, Address("192.0.2.99", 4000)), Leg(relay_b, bob.address))
        )
        try:
            bob.send(rtp(1), relay_b)  # to Alice's SDP address: lost
            alice.send(rtp(2), relay_a)
            assert (await bob.receive())[0] == rtp(2)
            bob.send(rtp(3), relay_b)
            data, source = await alice.receive()
            assert data == rtp(3) and source == relay_a
        finally:
            await plane.close()
            alice.close()
            bob.close()

    run(main)


@pytest.mark.parametrize("strict", [False, True])
def test_foreign_source_after_latching(strict: bool) -> None:
    async def main() -> None:
        plane = UserspaceDataPlane()
        alice, bob, mallory = Phone(), Phone(), Phone()
        relay_a, relay_b = local_pair(), local_pair()
        await plane.install(
            forwarding(
                Leg(relay_a, alice.address),
                Leg(relay_b, bob.address),
                strict_source=strict,
                handover_after=None,
            )
        )
        try:
            alice.send(rtp(1), relay_a)
            await bob.receive()
            # Valid RTP, but not Alice's stream (another SSRC): no handover.
            mallory.send(rtp(666, ssrc=0x6666), relay_a)
            if strict:
                assert await bob.nothing()
            else:
                assert (await bob.receive())[0] == rtp(666, ssrc=0x6666)
            # Either way the latch stays with Alice.
            bob.send(rtp(2), relay_b)
            assert (await alice.receive())[0] == rtp(2)
            assert await mallory.nothing()
            counters = plane.counters("k1")
            assert counters is not None and counters.a.dropped == (1 if strict else 0)
        finally:
            await plane.close()
            for phone in (alice, bob, mallory):
                phone.close()

    run(main)


def test_handover_after_silence() -> None:
    async def main() -> None:
        now = 1000.0
        plane = UserspaceDataPlane(clock=lambda: now)
        alice, alice_new, bob = Phone(), Phone(), Phone()
        relay_a, relay_b = local_pair(), local_pair()
        await plane.install(
            forwarding(
                Leg(relay_a, alice.address),
                Leg(relay_b, bob.address),
                strict_source=True,
                handover_after=5.0,
            )
        )
        try:
            alice.send(rtp(1), relay_a)
            await bob.receive()
            now += 4.9
            alice_new.send(rtp(2), relay_a)  # too soon: the latched source is still talking
            assert await bob.nothing(0.05)
            counters = plane.counters("k1")
            assert counters is not None and counters.a.dropped == 1
            assert counters.a.last_packet == 1000.0  # the clock the plane was given
            now += 0.1
            alice_new.send(rtp(3), relay_a)  # Alice moved networks: the new source takes over
            assert (await bob.receive())[0] == rtp(3)
            bob.send(rtp(4), relay_b)
            assert (await alice_new.receive())[0] == rtp(4)
        finally:
            await plane.close()
            for phone in (alice, alice_new, bob):
                phone.close()

    run(main)


def test_rtcp_on_the_next_port_and_mux_demux() -> None:
    async def main() -> None:
        plane = UserspaceDataPlane()
        alice, bob, bob_rtcp = Phone(), Phone(), Phone()
        relay_a, relay_b = local_pair(), local_pair()
        # Alice multiplexes RTP and RTCP on one port; Bob uses a separate RTCP port.
        await plane.install(
            forwarding(
                Leg(relay_a, alice.address, alice.address, rtcp_mux=True),
                Leg(relay_b, bob.address, bob_rtcp.address),
            )
        )
        try:
            alice.send(rtcp(), relay_a)  # RTCP on the muxed port goes to Bob's RTCP port
            data, source = await bob_rtcp.receive()
            assert data == rtcp() and source == Address(HOST, relay_b.port + 1)
            bob_rtcp.send(rtcp(), Address(HOST, relay_b.port + 1))
            data, source = await alice.receive()  # ...and back onto Alice's single port
            assert data == rtcp() and source == relay_a
            alice.send(rtp(5), relay_a)
            assert (await bob.receive())[0] == rtp(5)
            counters = plane.counters("k1")
            assert counters is not None
            assert (counters.a.rtcp_packets, counters.a.packets) == (1, 1)
            assert counters.b.latched_rtcp == bob_rtcp.address
        finally:
            await plane.close()
            for phone in (alice, bob, bob_rtcp):
                phone.close()

    run(main)


def binding_request(username: str, password: str, nominate: bool) -> Message:
    request = Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12))
    request.add(AttributeType.USERNAME, username)
    request.add(AttributeType.PRIORITY, 1853817087)
    request.add(AttributeType.ICE_CONTROLLING, 0x1122334455667788)
    if nominate:
        request.add(AttributeType.USE_CANDIDATE)
    return request


def test_stun_checks_pass_through_and_latch_until_media_comes() -> None:
    async def main() -> None:
        plane = UserspaceDataPlane()
        alice, alice_media, bob, stranger = Phone(), Phone(), Phone(), Phone()
        relay_a, relay_b = local_pair(), local_pair()
        alice_ice, bob_ice = IceCredentials("alice1", "a" * 22), IceCredentials("bob1", "b" * 22)
        # Alice's SDP address is useless (behind a NAT): only her checks show where she is.
        await plane.install(
            forwarding(
                Leg(relay_a, Address("192.0.2.99", 4000), sdp_ice=alice_ice),
                Leg(relay_b, bob.address, sdp_ice=bob_ice),
            )
        )
        try:
            check = binding_request("bob1:alice1", "x" * 22, False)
            data = check.encode(integrity_key=short_term_key(bob_ice.pwd), fingerprint=True)
            alice.send(data, relay_a)
            received, source = await bob.receive()
            assert received == data and source == relay_b
            counters = plane.counters("k1")
            assert counters is not None
            assert (counters.a.stun_requests, counters.a.stun_nominations) == (1, 0)
            assert counters.a.latched_rtp == alice.address and counters.a.packets == 0
            assert counters.a.checks_authenticated == 1 and counters.a.last_check is not None
            # Bob's answer to the check reaches Alice at the address her check came from.
            answer = Message(Method.BINDING, MessageClass.SUCCESS_RESPONSE, check.transaction_id)
            answer_data = answer.encode(integrity_key=short_term_key(bob_ice.pwd))
            bob.send(answer_data, relay_b)
            assert (await alice.receive())[0] == answer_data
            # A nominating check from another of her candidates moves the provisional latch.
            nominate = binding_request("bob1:alice1", "y" * 22, True)
            nominate_data = nominate.encode(
                integrity_key=short_term_key(bob_ice.pwd), fingerprint=True
            )
            alice_media.send(nominate_data, relay_a)
            await bob.receive()
            counters = plane.counters("k1")
            assert counters is not None and counters.a.latched_rtp == alice_media.address
            assert counters.a.last_nomination is not None
            # Media from a checked source decides for good; a stranger's copy of a check
            # (replayed from elsewhere) is refused and moves nothing.
            alice.send(rtp(1), relay_a)
            assert (await bob.receive())[0] == rtp(1)
            stranger.send(nominate_data, relay_a)
            assert await bob.nothing()
            counters = plane.counters("k1")
            assert counters is not None and counters.a.latched_rtp == alice.address
            assert counters.a.refusals == {"replayed-check": 1}
        finally:
            await plane.close()
            for phone in (alice, alice_media, bob, stranger):
                phone.close()

    run(main)


def test_ice_lite_answers_checks_on_forced_legs() -> None:
    async def main() -> None:
        plane = UserspaceDataPlane()
        alice, bob = Phone(), Phone()
        relay_a, relay_b = local_pair(), local_pair()
        credentials = IceCredentials("relayufr", "relaypassword0123456789x")
        await plane.install(
            forwarding(
                Leg(relay_a, Address("192.0.2.99", 4000), ice_credentials=credentials),
                Leg(relay_b, bob.address),
            )
        )
        key = short_term_key(credentials.pwd)
        try:
            wrong = binding_request("relayufr:alice1", "x", True)
            alice.send(wrong.encode(integrity_key=b"wrong", fingerprint=True), relay_a)
            assert await alice.nothing()
            request = binding_request("relayufr:alice1", credentials.pwd, True)
            alice.send(request.encode(integrity_key=key, fingerprint=True), relay_a)
            data, source = await alice.receive()
            response = decode_message(data)
            assert source == relay_a
            assert response.message_class == MessageClass.SUCCESS_RESPONSE
            assert response.transaction_id == request.transaction_id
            assert response.get(AttributeType.XOR_MAPPED_ADDRESS) == alice.address
            assert response.check_integrity(key) and response.fingerprint_ok
            assert await bob.nothing(0.05), "checks to the ICE-lite relay are not forwarded"
            # The nomination latched Alice: Bob's media reaches her real address.
            bob.send(rtp(9), relay_b)
            assert (await alice.receive())[0] == rtp(9)
        finally:
            await plane.close()
            alice.close()
            bob.close()

    run(main)


def _dropped(plane: UserspaceDataPlane, side: str) -> int:
    counters = plane.counters("k1")
    return getattr(counters, side).dropped if counters is not None else -1


def test_update_in_place_and_remove_frees_ports() -> None:
    async def main() -> None:
        plane = UserspaceDataPlane()
        alice, bob, bob2 = Phone(), Phone(), Phone()
        relay_a, relay_b = local_pair(), local_pair()
        await plane.install(forwarding(Leg(relay_a, alice.address), Leg(relay_b, None)))
        try:
            alice.send(rtp(1), relay_a)  # nowhere to go yet: counted as dropped
            await until(lambda: _dropped(plane, "a") == 1)
            counters = plane.counters("k1")
            assert counters is not None and counters.a.packets == 1
            await plane.install(forwarding(Leg(relay_a, alice.address), Leg(relay_b, bob.address)))
            alice.send(rtp(2), relay_a)
            assert (await bob.receive())[0] == rtp(2)
            counters = plane.counters("k1")
            assert counters is not None and counters.a.packets == 2  # kept across the update
            # A re-INVITE moves Bob: new SDP address, the old latch is forgotten.
            bob.send(rtp(3), relay_b)
            await alice.receive()
            await plane.install(forwarding(Leg(relay_a, alice.address), Leg(relay_b, bob2.address)))
            alice.send(rtp(4), relay_a)
            assert (await bob2.receive())[0] == rtp(4)
            assert plane.forwarding_count == 1
            await plane.remove("k1")
            assert plane.counters("k1") is None and plane.forwarding_count == 0
            for port in (relay_a.port, relay_a.port + 1, relay_b.port, relay_b.port + 1):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                    probe.bind((HOST, port))
            await plane.remove("k1")  # unknown keys are ignored
        finally:
            await plane.close()
            for phone in (alice, bob, bob2):
                phone.close()

    run(main)


def test_bind_failure_is_a_relay_error_and_leaves_nothing_open() -> None:
    async def main() -> None:
        plane = UserspaceDataPlane()
        relay_a, relay_b = local_pair(), local_pair()
        blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        blocker.bind((HOST, relay_b.port + 1))
        try:
            with pytest.raises(RelayError, match="cannot bind relay port"):
                await plane.install(forwarding(Leg(relay_a), Leg(relay_b)))
            assert plane.forwarding_count == 0
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind((HOST, relay_a.port))
        finally:
            blocker.close()
            await plane.close()

    run(main)


def test_ipv6_legs_and_ipv4_to_ipv6_bridging() -> None:
    async def main() -> None:
        plane = UserspaceDataPlane()
        alice = Phone()
        bob = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        bob.bind(("::1", 0))
        bob.setblocking(False)
        bob_address = Address("::1", bob.getsockname()[1])
        relay_a = local_pair()
        port = free_ports(2, hosts=("::1",), kinds=("udp",), consecutive=True)[0]
        relay_b = Address("::1", port)
        await plane.install(forwarding(Leg(relay_a, alice.address), Leg(relay_b, bob_address)))
        loop = asyncio.get_running_loop()
        try:
            alice.send(rtp(1), relay_a)
            data, source = await asyncio.wait_for(loop.sock_recvfrom(bob, 2048), 1.0)
            assert data == rtp(1) and (source[0], source[1]) == ("::1", port)
            await loop.sock_sendto(bob, rtp(2), ("::1", port))
            data, relay_source = await alice.receive()
            assert data == rtp(2) and relay_source == relay_a
            counters = plane.counters("k1")
            assert counters is not None and counters.b.latched_rtp == bob_address
        finally:
            await plane.close()
            alice.close()
            bob.close()

    run(main)


def test_packets_from_the_relay_itself_are_dropped() -> None:
    async def main() -> None:
        plane = UserspaceDataPlane()
        bob = Phone()
        relay_a, relay_b = local_pair(), local_pair()
        # A party that named the relay's own port as its address (it learnt it as a
        # peer-reflexive candidate through the relay): forwarding there must not loop.
        await plane.install(forwarding(Leg(relay_a, relay_b), Leg(relay_b, bob.address)))
        try:
            bob.send(rtp(1), relay_b)
            await until(lambda: _dropped(plane, "b") == 1)
            counters = plane.counters("k1")
            assert counters is not None
            assert counters.b.packets == 1  # Bob's packet, once
            assert counters.b.dropped == 1  # its copy arriving from relay_a, refused
            assert await bob.nothing()
        finally:
            await plane.close()
            bob.close()

    run(main)
