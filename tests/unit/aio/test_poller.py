"""DatagramPoller (icerelay.aio.poller), the TURN service's UDP reader: rounds, budgets,
flushes, coalesced wake-ups, errors, sockets removed mid-round."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import pytest

from icerelay.aio.poller import DatagramPoller


def _pair(family: int = socket.AF_INET) -> tuple[socket.socket, socket.socket]:
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    receiver = socket.socket(family, socket.SOCK_DGRAM)
    receiver.bind((host, 0))
    receiver.setblocking(False)
    sender = socket.socket(family, socket.SOCK_DGRAM)
    sender.connect(receiver.getsockname())
    return receiver, sender


class _Log:
    """Records what the poller hands over, and the flushes between."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def datagram(self, data: bytes, source: Any, tag: str, now: float) -> None:
        assert isinstance(now, float)
        self.items.append((tag, data, source))

    def flush(self) -> None:
        self.items.append("flush")


def test_a_round_reads_each_ready_socket_once_unless_backlogged_or_eager() -> None:
    async def scenario() -> list[list[Any]]:
        loop = asyncio.get_running_loop()
        log = _Log()
        # Not started: rounds run only by hand.
        poller: DatagramPoller[str] = DatagramPoller(loop, log.flush, interval=0, chunk=100)
        relay, relay_sender = _pair()
        listen, listen_sender = _pair()
        poller.add(relay, log.datagram, "relay", limit=2)
        poller.add(listen, log.datagram, "listen", limit=3, eager=True)
        for index in range(4):
            relay_sender.send(b"r%d" % index)
            listen_sender.send(b"l%d" % index)
        await asyncio.sleep(0.01)
        rounds = []
        for _ in range(4):
            log.items.clear()
            poller.run_round()
            rounds.append(sorted(item[1] for item in log.items if item != "flush"))
        poller.close()
        for sock in (relay, relay_sender, listen, listen_sender):
            sock.close()
        return rounds

    rounds = asyncio.run(scenario())
    # Round 1: the relay socket once (not ready before), the eager socket up to its limit.
    # Round 2: the relay socket was ready in round 1 too: up to its limit (2).
    # Round 3: the last relay datagram; the eager socket's last one.
    assert rounds[0] == [b"l0", b"l1", b"l2", b"r0"]
    assert rounds[1] == [b"l3", b"r1", b"r2"]
    assert rounds[2] == [b"r3"]
    assert rounds[3] == []


def test_flush_after_every_chunk_and_at_the_end_of_a_round() -> None:
    async def scenario() -> list[Any]:
        loop = asyncio.get_running_loop()
        log = _Log()
        poller: DatagramPoller[str] = DatagramPoller(loop, log.flush, interval=0, chunk=2)
        listen, sender = _pair()
        poller.add(listen, log.datagram, "listen", limit=10, eager=True)
        for index in range(5):
            sender.send(b"%d" % index)
        await asyncio.sleep(0.01)
        count = poller.run_round()
        assert count == 5
        assert poller.run_round() == 0  # nothing ready: no round, no flush
        poller.close()
        listen.close()
        sender.close()
        return [item if item == "flush" else item[1] for item in log.items]

    items = asyncio.run(scenario())
    assert items == [b"0", b"1", "flush", b"2", b"3", "flush", b"4", "flush"]


def test_coalesces_wake_ups_under_load_and_wakes_on_readiness_again_after() -> None:
    async def scenario() -> tuple[int, int, bool, int]:
        loop = asyncio.get_running_loop()
        log = _Log()
        poller: DatagramPoller[str] = DatagramPoller(
            loop, log.flush, interval=0.001, coalesce_after=4
        )
        poller.start()
        listen, sender = _pair()
        poller.add(listen, log.datagram, "listen", limit=100, eager=True)
        # A burst big enough for the timer, then a trickle.
        for index in range(20):
            sender.send(b"%d" % index)
        for _ in range(50):
            await asyncio.sleep(0.005)
            if sum(item != "flush" for item in log.items) == 20:
                break
        sender.send(b"late")
        for _ in range(50):
            await asyncio.sleep(0.005)
            if sum(item != "flush" for item in log.items) == 21:
                break
        result = (
            sum(item != "flush" for item in log.items),
            poller.timed_rounds,
            poller._reading,
            poller.rounds,
        )
        poller.close()
        listen.close()
        sender.close()
        return result

    received, timed, reading, rounds = asyncio.run(scenario())
    assert received == 21
    # The burst's round read >= 4: the next round came from the timer (and read nothing,
    # so the poller went back to readiness, where the late datagram woke it).
    assert timed >= 1
    assert reading
    assert rounds >= 2


def test_no_coalescing_with_interval_zero() -> None:
    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        log = _Log()
        poller: DatagramPoller[str] = DatagramPoller(loop, log.flush, interval=0, coalesce_after=1)
        poller.start()
        listen, sender = _pair()
        poller.add(listen, log.datagram, "listen", limit=100, eager=True)
        for index in range(20):
            sender.send(b"%d" % index)
        await asyncio.sleep(0.02)
        timed = poller.timed_rounds
        poller.close()
        listen.close()
        sender.close()
        return timed

    assert asyncio.run(scenario()) == 0


def test_ipv6_sources_are_host_port_pairs() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")

    async def scenario() -> list[Any]:
        loop = asyncio.get_running_loop()
        log = _Log()
        poller: DatagramPoller[str] = DatagramPoller(loop, log.flush)
        poller.start()
        try:
            listen, sender = _pair(socket.AF_INET6)
        except OSError:
            pytest.skip("no IPv6 loopback")
        poller.add(listen, log.datagram, "six")
        sender.send(b"hello")
        for _ in range(50):
            await asyncio.sleep(0.005)
            if log.items:
                break
        expected = sender.getsockname()[:2]
        poller.close()
        listen.close()
        sender.close()
        return [log.items[0], expected]

    (tag, data, source), expected = asyncio.run(scenario())
    assert (tag, data) == ("six", b"hello")
    assert source == expected


def test_socket_errors_go_to_on_error_and_removed_sockets_are_skipped() -> None:
    async def scenario() -> tuple[list[str], list[bytes]]:
        loop = asyncio.get_running_loop()
        errors: list[str] = []
        got: list[bytes] = []
        closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closed.bind(("127.0.0.1", 0))
        gone = closed.getsockname()
        closed.close()
        # A connected socket that sent to a closed port: Linux reports ECONNREFUSED on it.
        lonely = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        lonely.bind(("127.0.0.1", 0))
        lonely.setblocking(False)
        lonely.connect(gone)
        lonely.send(b"x")
        other, other_sender = _pair()

        def datagram(data: bytes, _source: Any, tag: str, _now: float) -> None:
            got.append(data)
            # The first datagram's handler takes the other socket out mid-round.
            poller.remove(other if tag == "first" else first)

        def on_error(tag: str, error: OSError) -> bool:
            errors.append(f"{tag}:{type(error).__name__}")
            return False

        first, first_sender = _pair()
        poller: DatagramPoller[str] = DatagramPoller(loop, lambda: None, interval=0)
        poller.add(lonely, datagram, "lonely", on_error=on_error)
        poller.add(first, datagram, "first")
        poller.add(other, datagram, "other")
        first_sender.send(b"a")
        other_sender.send(b"b")
        await asyncio.sleep(0.01)
        poller.run_round()
        poller.close()
        for sock in (lonely, other, other_sender, first, first_sender):
            sock.close()
        return errors, got

    errors, got = asyncio.run(scenario())
    assert errors == ["lonely:ConnectionRefusedError"]
    # Whichever of the two came first in the round removed the other: one datagram only.
    assert got in ([b"a"], [b"b"])


def test_urgent_datagrams_do_not_count_toward_coalescing() -> None:
    """Requests a client waits on (the TURN listener's STUN requests) are answered at readiness:
    a burst of them does not put the poller on its timer, a burst of other datagrams does."""

    async def scenario(urgent_burst: bool) -> bool:
        loop = asyncio.get_running_loop()
        log = _Log()
        poller: DatagramPoller[str] = DatagramPoller(
            loop, log.flush, interval=0.05, coalesce_after=4
        )
        listen, sender = _pair()
        poller.add(
            listen, log.datagram, "listen", limit=100, eager=True, urgent=lambda d: d[:1] == b"R"
        )
        poller.start()
        for index in range(10):
            sender.send((b"R%d" if urgent_burst else b"M%d") % index)
        for _ in range(100):
            await asyncio.sleep(0.001)
            if sum(item != "flush" for item in log.items) == 10:
                break
        timed = poller._timer is not None
        poller.close()
        listen.close()
        sender.close()
        assert sum(item != "flush" for item in log.items) == 10
        return timed

    assert not asyncio.run(scenario(urgent_burst=True))
    assert asyncio.run(scenario(urgent_burst=False))


def test_stun_request_test_reads_the_class_bits() -> None:
    from icerelay.stun.demux import is_stun_request

    assert is_stun_request(bytes([0x00, 0x03]))  # Allocate request
    assert is_stun_request(bytes([0x00, 0x09]))  # ChannelBind request
    assert not is_stun_request(bytes([0x00, 0x16]))  # Send indication (media)
    assert not is_stun_request(bytes([0x01, 0x03]))  # Allocate success response
    assert not is_stun_request(bytes([0x01, 0x13]))  # Allocate error response
    assert not is_stun_request(bytes([0x40, 0x00]))  # ChannelData
    assert not is_stun_request(b"\x00")


def test_handlers_get_the_given_clock_once_per_round() -> None:
    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        ticks = iter([5.0, 7.0])
        seen: list[float] = []
        poller: DatagramPoller[str] = DatagramPoller(
            loop, lambda: None, interval=0, clock=lambda: next(ticks)
        )
        receiver, sender = _pair()
        poller.add(receiver, lambda _d, _s, _t, now: seen.append(now), "r", eager=True)
        sender.send(b"1")
        sender.send(b"2")
        poller.run_round()
        sender.send(b"3")
        poller.run_round()
        poller.close()
        receiver.close()
        sender.close()
        return seen

    # One reading of the clock per round, whatever the round reads.
    assert asyncio.run(scenario()) == [5.0, 5.0, 7.0]


def test_a_socket_discarded_and_closed_mid_round_leaves_the_set() -> None:
    """discard() does not call epoll_ctl: closing the socket takes it out of the epoll set. A
    socket opened in its place mid-round (the same descriptor number, as the relay's next call
    gets it) is read normally, and nothing of the old one is reported again."""

    async def scenario() -> list[list[bytes]]:
        loop = asyncio.get_running_loop()
        got: list[bytes] = []
        first, first_sender = _pair()
        doomed, doomed_sender = _pair()
        fresh: list[socket.socket] = []

        def datagram(data: bytes, _source: Any, tag: str, _now: float) -> None:
            got.append(data)
            if tag == "first":
                # The other socket, ready in this round too, goes; a new one takes its number.
                number = doomed.fileno()
                poller.discard(doomed)
                doomed.close()
                receiver, _ = _pair()
                assert receiver.fileno() == number
                fresh.append(receiver)
                poller.add(receiver, datagram, "fresh")

        poller: DatagramPoller[str] = DatagramPoller(loop, lambda: None, interval=0)
        poller.add(first, datagram, "first")
        poller.add(doomed, datagram, "doomed")
        # Ready in this order: the round meets "first" before "doomed".
        first_sender.send(b"a")
        doomed_sender.send(b"never read")
        rounds = []
        for _ in range(2):
            poller.run_round()
            rounds.append(got.copy())
            got.clear()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"new", fresh[0].getsockname())
        poller.run_round()
        rounds.append(got.copy())
        assert len(poller) == 2
        poller.close()
        for sock in (first, first_sender, doomed_sender, *fresh):
            sock.close()
        return rounds

    assert asyncio.run(scenario()) == [[b"a"], [], [b"new"]]


def test_coalescing_masks_the_set_instead_of_leaving_the_event_loop() -> None:
    """Going to the timer and back costs one epoll_ctl, not an add_reader/remove_reader pair:
    putting an epoll set back into the loop's makes the kernel walk every socket in it."""

    async def scenario() -> tuple[list[str], int, bool]:
        loop = asyncio.get_running_loop()
        calls: list[str] = []
        add_reader, remove_reader = loop.add_reader, loop.remove_reader

        def counting_add(fd: Any, callback: Any, *args: Any) -> None:
            calls.append("add")
            add_reader(fd, callback, *args)

        def counting_remove(fd: Any) -> bool:
            calls.append("remove")
            return remove_reader(fd)

        loop.add_reader = counting_add  # type: ignore[method-assign]
        loop.remove_reader = counting_remove  # type: ignore[method-assign]
        log = _Log()
        poller: DatagramPoller[str] = DatagramPoller(
            loop, log.flush, interval=0.001, coalesce_after=4
        )
        poller.start()
        listen, sender = _pair()
        poller.add(listen, log.datagram, "listen", limit=100, eager=True)
        for cycle in range(3):
            for index in range(10):
                sender.send(b"%d-%d" % (cycle, index))
            for _ in range(100):
                await asyncio.sleep(0.002)
                if poller._reading and sum(item != "flush" for item in log.items) == 10:
                    break
            log.items.clear()
        timed, reading = poller.timed_rounds, poller._reading
        poller.close()
        listen.close()
        sender.close()
        return calls, timed, reading

    calls, timed, reading = asyncio.run(scenario())
    assert timed >= 3  # every burst put the poller on its timer, and it came back
    assert reading
    assert calls == ["add", "remove"]  # start() and close(), nothing in between


class _CountingSocket(socket.socket):
    """A real UDP socket that counts its recvfrom calls."""

    reads = 0

    def recvfrom(self, size: int, flags: int = 0) -> tuple[bytes, Any]:
        self.reads += 1
        return super().recvfrom(size, flags)


def _counting_pair() -> tuple[_CountingSocket, socket.socket]:
    receiver = _CountingSocket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.connect(receiver.getsockname())
    return receiver, sender


def test_an_eager_socket_with_one_datagram_is_not_read_again_for_nothing() -> None:
    # "Nothing to read" is an exception in Python, dearer than asking the socket's own epoll
    # set; with more queued, the socket is read until it is empty, in the same round.
    async def scenario() -> tuple[list[int], list[list[bytes]]]:
        loop = asyncio.get_running_loop()
        log = _Log()
        poller: DatagramPoller[str] = DatagramPoller(loop, log.flush, interval=0)
        listen, sender = _counting_pair()
        poller.add(listen, log.datagram, "listen", limit=100, eager=True)
        reads, rounds = [], []
        for batch in (1, 3, 1):
            for index in range(batch):
                sender.send(b"%d" % index)
            await asyncio.sleep(0.01)
            log.items.clear()
            listen.reads = 0
            poller.run_round()
            reads.append(listen.reads)
            rounds.append([item[1] for item in log.items if item != "flush"])
        poller.close()
        listen.close()
        sender.close()
        return reads, rounds

    reads, rounds = asyncio.run(scenario())
    assert rounds == [[b"0"], [b"0", b"1", b"2"], [b"0"]]
    # One datagram: one read. Three: three, and the read that finds the queue empty.
    assert reads == [1, 4, 1]


def test_an_eager_socket_removed_or_closed_leaves_no_descriptor_behind() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        poller: DatagramPoller[str] = DatagramPoller(loop, lambda: None)
        first, first_sender = _pair()
        second, second_sender = _pair()
        before = len(os.listdir("/proc/self/fd"))
        poller.add(first, _Log().datagram, "first", eager=True)
        poller.add(second, _Log().datagram, "second", eager=True)
        assert len(os.listdir("/proc/self/fd")) == before + 2  # one epoll set each
        poller.remove(first)
        assert len(os.listdir("/proc/self/fd")) == before + 1
        poller.close()
        # The poller's own sets too: its epoll set and the gate that masks it while coalescing.
        assert len(os.listdir("/proc/self/fd")) == before - 2
        for sock in (first, first_sender, second, second_sender):
            sock.close()

    asyncio.run(scenario())


def test_a_handler_that_removes_its_eager_socket_ends_its_reads() -> None:
    async def scenario() -> list[bytes]:
        loop = asyncio.get_running_loop()
        seen: list[bytes] = []
        poller: DatagramPoller[str] = DatagramPoller(loop, lambda: None, interval=0)
        listen, sender = _pair()

        def handler(data: bytes, _source: Any, _tag: str, _now: float) -> None:
            seen.append(data)
            poller.remove(listen)

        poller.add(listen, handler, "listen", limit=10, eager=True)
        for index in range(3):
            sender.send(b"%d" % index)
        await asyncio.sleep(0.01)
        poller.run_round()
        poller.close()
        listen.close()
        sender.close()
        return seen

    assert asyncio.run(scenario()) == [b"0"]


def test_a_timed_round_must_read_coalesce_while_to_stay_on_the_timer() -> None:
    """A burst puts the poller on the timer (>= coalesce_after); a timed round that reads
    fewer than coalesce_while sends it back to readiness, one that reads more keeps it there."""

    async def scenario(second_burst: int) -> tuple[bool, int]:
        loop = asyncio.get_running_loop()
        log = _Log()
        poller: DatagramPoller[str] = DatagramPoller(
            loop, log.flush, interval=0.02, coalesce_after=4, coalesce_while=8
        )
        listen, sender = _pair()
        poller.add(listen, log.datagram, "listen", limit=100, eager=True)
        poller.start()
        for index in range(10):
            sender.send(b"a%d" % index)
        for _ in range(100):  # the burst's round, at readiness
            await asyncio.sleep(0.001)
            if sum(item != "flush" for item in log.items) == 10:
                break
        assert poller._timer is not None  # on the timer now
        for index in range(second_burst):  # read by the timed round
            sender.send(b"b%d" % index)
        for _ in range(200):
            await asyncio.sleep(0.001)
            if poller.timed_rounds:
                break
        result = (poller._timer is not None, poller.timed_rounds)
        poller.close()
        listen.close()
        sender.close()
        return result

    # 5 datagrams: >= coalesce_after but < coalesce_while: back to readiness.
    assert asyncio.run(scenario(5)) == (False, 1)
    # 12: the next round comes from the timer too.
    assert asyncio.run(scenario(12)) == (True, 1)
