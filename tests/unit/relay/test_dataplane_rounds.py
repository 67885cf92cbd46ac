"""The userspace data plane's reader: every relay port in one DatagramPoller, read in rounds.

Rounds are run by hand here (``plane.poller.run_round()``) right after the datagrams are sent
(loopback queues them before ``sendto`` returns), so what one round reads is exact; the poller
also runs rounds on its own when the loop turns, which these tests avoid by not yielding
between sending and the rounds they count.
"""

from __future__ import annotations

import socket

from tests.unit.relay.test_dataplane import HOST, Phone, forwarding, local_pair, rtp, run

from icerelay.dataplane.userspace import PORT_BUDGET, UserspaceDataPlane
from icerelay.relay.forwarding import Forwarding, Leg


def test_a_backlogged_port_is_read_up_to_its_budget_per_round() -> None:
    async def main() -> None:
        plane = UserspaceDataPlane()
        alice, bob = Phone(), Phone()
        relay_a, relay_b = local_pair(), local_pair()
        await plane.install(forwarding(Leg(relay_a, alice.address), Leg(relay_b, bob.address)))
        poller = plane.poller
        assert poller is not None
        try:
            total = 2 * PORT_BUDGET + 3
            for seq in range(total):
                alice.send(rtp(seq), relay_a)
            reads = [poller.run_round() for _ in range(5)]
            # Round 1 reads the port once (it was not ready before); from then on it has a
            # backlog: up to its budget per round, until the queue is empty.
            assert reads == [1, PORT_BUDGET, PORT_BUDGET, 2, 0]
            got = [(await bob.receive())[0] for _ in range(total)]
            assert got == [rtp(seq) for seq in range(total)]  # in order, none lost
        finally:
            await plane.close()
            alice.close()
            bob.close()

    run(main)


def test_latch_moves_are_told_once_per_round_after_the_round() -> None:
    async def main() -> None:
        told: list[tuple[str, int]] = []
        rounds = [0]
        now = 1000.0
        plane = UserspaceDataPlane(
            lambda: now, on_latch=lambda key: told.append((key, rounds[0]))
        )
        alice, alice_new, bob = Phone(), Phone(), Phone()
        relay_a, relay_b = local_pair(), local_pair()
        # Alice's SDP address is not where she sends from: her first packet latches the leg.
        await plane.install(
            forwarding(Leg(relay_a, None), Leg(relay_b, bob.address), handover_after=5.0)
        )
        poller = plane.poller
        assert poller is not None
        try:
            for seq in range(3):
                alice.send(rtp(seq), relay_a)
            bob.send(rtp(100), relay_b)  # Bob's first packet latches his leg too
            assert told == []
            rounds[0] = 1
            assert poller.run_round() == 2  # each port once
            assert told == [("k1", 1)]  # one notification for the round, after it
            rounds[0] = 2
            assert poller.run_round() == 2  # Alice's backlog: nothing moved
            assert told == [("k1", 1)]
            # A new source continuing Alice's stream takes the leg over: moved again.
            now += 10.0  # Alice's old address has been silent past handover_after
            alice_new.send(rtp(3), relay_a)
            rounds[0] = 3
            assert poller.run_round() == 1
            assert told == [("k1", 1), ("k1", 3)]
            counters = plane.counters("k1")
            assert counters is not None and counters.a.latched_rtp == alice_new.address
            assert (await bob.receive())[0] == rtp(0)
        finally:
            await plane.close()
            for phone in (alice, alice_new, bob):
                phone.close()

    run(main)


def test_one_poller_for_every_port_closed_with_the_plane() -> None:
    async def main() -> None:
        plane = UserspaceDataPlane()
        assert plane.poller is None  # nothing to read before the first forwarding
        alice, bob = Phone(), Phone()
        pairs = [(local_pair(), local_pair()) for _ in range(3)]
        for index, (relay_a, relay_b) in enumerate(pairs):
            await plane.install(
                Forwarding(f"k{index}", Leg(relay_a, alice.address), Leg(relay_b, bob.address))
            )
        poller = plane.poller
        assert poller is not None and len(poller) == 12  # RTP and RTCP of both legs, per call
        await plane.remove("k1")
        assert len(poller) == 8
        # The removed ports are free at once, and the others still relay.
        for port in (pairs[1][0].port, pairs[1][0].port + 1, pairs[1][1].port):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind((HOST, port))
        alice.send(rtp(1), pairs[2][0])
        assert (await bob.receive())[0] == rtp(1)
        await plane.close()
        assert plane.poller is None and plane.forwarding_count == 0
        # A plane closed and used again starts a new reader.
        await plane.install(
            Forwarding("again", Leg(pairs[0][0], alice.address), Leg(pairs[0][1], bob.address))
        )
        try:
            assert plane.poller is not None and plane.poller is not poller
            alice.send(rtp(2), pairs[0][0])
            assert (await bob.receive())[0] == rtp(2)
        finally:
            await plane.close()
            alice.close()
            bob.close()

    run(main)
