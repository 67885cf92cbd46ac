"""Issue 10, unbounded resources of the ng control protocol: each attack replayed on a real relay
on loopback, and its refusal asserted (an error reply or a closed connection, a counter).

RSS figures are printed (``pytest -s``); they are in-process, so they include the test's own
client sockets and are an upper bound of what the relay holds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import pytest

from icerelay import bencode
from icerelay.control.ng import NgProtocol, NgRequest
from icerelay.control.ng import handler as ng_handler
from tests.attack.limits_support import (
    NgClient,
    port_range,
    relay,
    rss_mib,
    sdp_with_media,
    tcp_closed,
)
from tests.unit.relay.test_service import run


def test_tcp_connections_are_capped_and_memory_stays_bounded() -> None:
    """200 connections each sending 250 KiB of a message that never ends: 58 -> 261 MB RSS on
    835a0e7. Now at most ``ng_tcp_max_connections`` are kept, each bounded by
    ``ng_tcp_max_message``, and the others are closed at once."""

    async def main() -> None:
        async with relay(ng_tcp_max_connections=16, ng_tcp_max_message=256 * 1024) as service:
            address = service.ng_address_tuple()
            before = rss_mib()
            chunk = b"1_1 d3:sdp" + b"262000:" + b"x" * 250_000
            connections = []
            for _ in range(200):
                reader, writer = await asyncio.open_connection(*address)
                writer.write(chunk)
                connections.append((reader, writer))
            await asyncio.gather(*(w.drain() for _, w in connections), return_exceptions=True)
            await asyncio.sleep(0.5)
            peak = rss_mib()
            closed = await asyncio.gather(*(tcp_closed(r, 0.2) for r, _ in connections))
            assert sum(closed) == 200 - 16
            assert service.counters.dropped["ng_tcp_too_many_connections"] == 184
            for _, writer in connections:
                writer.close()
            await asyncio.sleep(0.2)
            after = rss_mib()
            print(f"\nng TCP 200x250KiB: RSS {before:.0f} -> {peak:.0f} -> {after:.0f} MiB")
            # 16 connections x 256 KiB is 4 MiB; the margin is for the client side in-process.
            assert peak - before < 40
            # The relay still answers.
            reply = await NgClient(service.ng_address).request({"command": "ping"})
            assert reply[b"result"] == b"pong"

    run(main)


def test_idle_tcp_connection_is_closed() -> None:
    async def main() -> None:
        async with relay(ng_tcp_idle_timeout=0.3) as service:
            reader, writer = await asyncio.open_connection(*service.ng_address_tuple())
            assert await tcp_closed(reader, 3.0)
            assert service.counters.dropped["ng_tcp_idle_timeout"] == 1
            writer.close()

    run(main)


def test_tcp_message_longer_than_the_limit_closes_the_connection() -> None:
    async def main() -> None:
        async with relay(ng_tcp_max_message=4096) as service:
            reader, writer = await asyncio.open_connection(*service.ng_address_tuple())
            writer.write(b'1_1 {"command": "ping", "pad": "' + b"x" * 10_000)
            await writer.drain()
            assert await tcp_closed(reader, 3.0)
            assert service.counters.dropped["ng_tcp_unframable"] == 1
            writer.close()

    run(main)


def test_command_names_do_not_grow_the_counters(caplog: pytest.LogCaptureFixture) -> None:
    """50,000 invented command names grew memory by 58 MB and made ``statistics`` too big for
    UDP; now they are all counted under ``unknown``."""

    async def main() -> None:
        async with relay() as service:
            client = NgClient(service.ng_address)
            for number in range(2000):
                reply = await client.request({"command": f"invented-{number}"})
                assert reply[b"result"] == b"error"
            reply = await client.request({"command": "statistics"})
            statistics = reply[b"statistics"]
            assert isinstance(statistics, dict)
            totals = statistics[b"totalstatistics"]
            assert isinstance(totals, dict)
            assert totals[b"commands"] == {b"unknown": 2000, b"statistics": 1}
            assert len(service.counters.events) < 20

    with caplog.at_level(logging.DEBUG, logger="icerelay.relay"):
        run(main)
    # 2000 refusals, one log line (the interval is 10 s).
    assert len([r for r in caplog.records if r.getMessage() == "relay.ng_rejected"]) == 1


def test_lone_surrogate_gets_an_error_reply_without_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        async with relay() as service:
            client = NgClient(service.ng_address)
            for number in range(50):
                data = await client.raw(b'%d_s {"command": "\\ud800"}' % number)
                reply = json.loads(data.partition(b" ")[2])
                assert reply["result"] == "error"
                assert "surrogate" in reply["error-reason"]
            assert service.counters.events["error.undecodable"] == 50
            assert service.counters.events.get("internal_errors", 0) == 0

    with caplog.at_level(logging.DEBUG):
        run(main)
    assert not [record for record in caplog.records if record.exc_info]


def test_internal_errors_are_logged_at_a_bounded_rate(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request that trips a bug, sent in a loop, must not write a traceback per packet."""

    def broken(*args: object, **kwargs: object) -> object:
        raise ZeroDivisionError("a bug")

    async def main() -> None:
        async with relay() as service:
            monkeypatch.setattr(service.handler, "_dispatch", broken)
            client = NgClient(service.ng_address)
            for _ in range(100):
                reply = await client.request({"command": "ping"})
                assert reply[b"error-reason"] == b"internal error: ZeroDivisionError"
            assert service.counters.events["internal_errors"] == 100

    with caplog.at_level(logging.WARNING):
        run(main)
    tracebacks = [record for record in caplog.records if record.exc_info]
    assert len(tracebacks) == 1


def offer(sdp: bytes, call: str = "big") -> dict[str, bencode.Encodable]:
    # ICE forced: the relay adds its candidates to every m-line, so the reply outgrows the offer.
    return {"command": "offer", "call-id": call, "from-tag": "a", "sdp": sdp, "ICE": "force"}


def test_too_many_streams_are_refused_before_allocating() -> None:
    async def main() -> None:
        async with relay(max_streams_per_call=32) as service:
            client = NgClient(service.ng_address)
            reply = await client.request(offer(sdp_with_media(33)))
            assert reply[b"result"] == b"error"
            assert b"too many media streams: 33" in reply[b"error-reason"]  # type: ignore[operator]
            assert service.pool.in_use == 0
            assert service.counters.events["error.too_many_streams"] == 1
            reply = await client.request(offer(sdp_with_media(32), "fits"))
            assert reply[b"result"] == b"ok"

    run(main)


def test_reply_too_big_for_udp_is_an_error_and_allocates_nothing() -> None:
    """450 m-lines on 835a0e7: 1,816 ports held, no reply, no log line. (60 m-lines with
    950 bytes of attributes each make a reply as big with fewer ports.)"""

    async def main() -> None:
        async with relay(max_streams_per_call=1000, **port_range(1200)) as service:
            client = NgClient(service.ng_address)
            reply = await client.request(offer(sdp_with_media(60, pad=950)))
            assert reply[b"result"] == b"error"
            assert b"would not fit in one UDP datagram" in reply[b"error-reason"]  # type: ignore[operator]
            assert service.pool.in_use == 0
            assert service.engine.call_count == 0
            assert service.counters.events["error.reply_too_big"] == 1
            # Over TCP the same offer is fine: a stream carries replies of any size.
            reader, writer = await asyncio.open_connection(*service.ng_address_tuple())
            message = b"t_1 " + bencode.encode(offer(sdp_with_media(60, pad=950), "tcp"))
            writer.write(b"%d:%s" % (len(message), message))
            length = int((await asyncio.wait_for(reader.readuntil(b":"), 10))[:-1])
            data = await asyncio.wait_for(reader.readexactly(length), 10)
            assert b"6:result2:ok" in data and length > 65_507
            writer.close()
            # The same request retransmitted over UDP: its cached reply cannot go in a
            # datagram, so the answer says so.
            retransmitted = await client.raw(message)
            assert retransmitted.startswith(b"t_1 ")
            reply = bencode.decode(retransmitted[4:])
            assert isinstance(reply, dict)
            assert b"would not fit" in reply[b"error-reason"]  # type: ignore[operator]

    run(main)


def test_reply_that_outgrows_the_estimate_is_rolled_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The estimate is a safety margin; if a reply still does not fit, the new call's ports
    are given back and the proxy gets an error, never silence."""
    monkeypatch.setattr(ng_handler, "_REPLY_PER_STREAM", 0)
    monkeypatch.setattr(ng_handler, "_REPLY_FIXED", -(10**6))

    async def main() -> None:
        async with relay(max_streams_per_call=1000, **port_range(1200)) as service:
            client = NgClient(service.ng_address)
            reply = await client.request(offer(sdp_with_media(60, pad=950)))
            assert reply[b"result"] == b"error"
            assert b"would not fit" in reply[b"error-reason"]  # type: ignore[operator]
            assert service.pool.in_use == 0
            assert service.engine.call_count == 0

    run(main)


def test_udp_reply_limit_is_honoured_for_small_settings() -> None:
    async def main() -> None:
        async with relay(ng_max_udp_reply=1024) as service:
            reply = await NgClient(service.ng_address).request(offer(sdp_with_media(4)))
            assert reply[b"result"] == b"error"
            assert service.pool.in_use == 0

    run(main)



def test_error_reasons_stay_short_whatever_the_request_quotes() -> None:
    async def main() -> None:
        async with relay() as service:
            client = NgClient(service.ng_address)
            reply = await client.request({"command": "x" * 60_000})
            assert reply[b"result"] == b"error"
            assert len(reply[b"error-reason"]) <= 300  # type: ignore[arg-type]
            reply = await client.request(
                {"command": "offer", "call-id": "c", "from-tag": "a", "sdp": b"v=0",
                 "address family": "y" * 60_000}
            )
            assert len(reply[b"error-reason"]) <= 300  # type: ignore[arg-type]

    run(main)


def test_udp_flood_is_dropped_not_queued_without_end(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with relay(ng_queue_max=16) as service:
            original = service._request

            async def slow(data: bytes, max_reply: int | None = None) -> bytes | None:
                await asyncio.sleep(0.002)  # a worker busy with the data plane
                return await original(data, max_reply)

            monkeypatch.setattr(service, "_request", slow)
            loop = asyncio.get_running_loop()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                for number in range(2000):
                    message = b"%d_f d7:command4:pinge" % number
                    await loop.sock_sendto(sock, message, service.ng_address_tuple())
                    await asyncio.sleep(0)
            await asyncio.sleep(0.5)
            assert service.counters.dropped["ng_queue_full"] > 0
            assert service._queue.qsize() == 0
            reply = await NgClient(service.ng_address).request({"command": "ping"})
            assert reply[b"result"] == b"pong"

    run(main)


def test_reply_cache_is_bounded_in_bytes() -> None:
    protocol = NgProtocol(cache_bytes=100_000)
    for number in range(100):
        outcome = protocol.receive(b"%d_c d7:command4:pinge" % number, 0.0)
        assert isinstance(outcome, NgRequest)
        protocol.reply(outcome, {"result": "ok", "pad": "x" * 10_000}, 0.0)
        assert protocol.cached_bytes <= 100_000
    assert 5 <= protocol.cached_replies <= 10


def test_sessions_without_ports_are_capped() -> None:
    """Offers whose streams are all rejected (port 0) hold no port, so the port pool does not
    bound them: 5,000 such calls (or 3,000 legs of one call, by from-tag or via-branch) were
    accepted and kept until their offer timeout."""
    rejected = (
        b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        b"m=audio 0 RTP/AVP 8\r\n"
    )

    async def main() -> None:
        async with relay(max_sessions=50) as service:
            client = NgClient(service.ng_address)
            results = []
            for number in range(200):
                reply = await client.request(offer(rejected, f"empty{number}"))
                results.append(reply[b"result"])
            assert results.count(b"ok") == 50
            assert service.engine.call_count == 50
            assert service.counters.events["error.too_many_sessions"] == 150
            # A call in progress may still re-offer; it may not fork into new legs.
            reply = await client.request(offer(rejected, "empty0"))
            assert reply[b"result"] == b"ok"
            forked = {**offer(rejected, "empty0"), "via-branch": "z9hG4bK-other"}
            reply = await client.request(forked)
            assert b"too many sessions" in reply[b"error-reason"]  # type: ignore[operator]

    run(main)
