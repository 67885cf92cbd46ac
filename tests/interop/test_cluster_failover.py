"""Failover on Redis (issue 15), with real processes: two ``icerelay serve`` instances sharing a
relay address (as a floating IP would be shared) and a real redis-server.

A call's RTP flows through instance A; A is killed with SIGKILL (no goodbye, no record); B sees
A's heartbeat expire, wins the adoption lock, binds A's relay ports and restores the call: media
flows again, ng commands for the call work on B, and the call's one record is B's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from icerelay import bencode
from icerelay.daemon.cluster import take_adopted
from icerelay.daemon.cluster_config import ClusterConfig
from tests.support import redisd
from tests.support.ports import free_ports
from tests.support.serve import ServeProcess

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not redisd.available(), reason="needs redis-server (Debian redis-server)"),
]

HOST = "127.0.0.1"
# Short timings: the defaults aim at < 2 s; the tests run the same code faster.
TIMING = {
    "ICERELAY_CLUSTER__HEARTBEAT_INTERVAL": "0.2",
    "ICERELAY_CLUSTER__HEARTBEAT_TTL": "0.6",
    "ICERELAY_CLUSTER__WRITE_INTERVAL": "0.1",
}


def sdp(port: int) -> bytes:
    return (
        f"v=0\r\no=- 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    ).encode()


def media_port(body: bytes) -> int:
    for line in body.decode().splitlines():
        if line.startswith("m=audio "):
            return int(line.split()[1])
    raise AssertionError(f"no m=audio in {body!r}")


_cookies = iter(range(1, 1_000_000))


def ng(port: int, body: dict[str, bencode.Encodable]) -> dict[bytes, bencode.BencodeValue]:
    cookie = f"{os.getpid()}_{next(_cookies)}".encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(cookie + b" " + bencode.encode(body), (HOST, port))
        data = sock.recv(65536)
    head, _, payload = data.partition(b" ")
    assert head == cookie
    reply = bencode.decode(payload)
    assert isinstance(reply, dict)
    return reply


def ng_answers(port: int) -> bool:
    """True once the relay answers a ping (serve is ready when STUN answers; the relay and
    the cluster start after it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        sock.sendto(b"ready " + bencode.encode({"command": "ping"}), (HOST, port))
        try:
            return sock.recv(65536).startswith(b"ready ")
        except OSError:
            return False


@dataclass
class Instance:
    name: str
    ng: int
    server: ServeProcess
    database: Path

    def records(self) -> list[tuple[str, str]]:
        if not self.database.exists():
            return []
        with sqlite3.connect(self.database) as connection:
            return connection.execute("SELECT call_id, reason FROM sessions").fetchall()

    def kill(self) -> None:
        """SIGKILL: no stop path runs, nothing is written."""
        os.killpg(self.server.process.pid, signal.SIGKILL)
        self.server.process.wait(timeout=5)


@dataclass
class Cluster:
    redis: redisd.RedisServer
    start: Callable[..., Instance]
    relay_ports: list[int]


@pytest.fixture
def cluster(tmp_path: Path, serve_factory: Callable[..., ServeProcess]) -> Iterator[Cluster]:
    redis = redisd.RedisServer(tmp_path)
    redis.start()
    block = free_ports(120, kinds=("udp",), consecutive=True)
    first = block[0] + (block[0] & 1)
    # Each instance hands out ports from its own range; all bind the same relay address.
    ranges = [(first + 38 * n, first + 38 * n + 37) for n in range(3)]

    def start(name: str, index: int, **settings: str) -> Instance:
        stun_port, ng_port = free_ports(2)
        low, high = ranges[index]
        database = tmp_path / f"{name}.sqlite3"
        server = serve_factory(
            ["--stun-listen", f"{HOST}:{stun_port}"],
            host=HOST,
            port=stun_port,
            env={
                "ICERELAY_RELAY__ENABLED": "1",
                "ICERELAY_RELAY__NG_LISTEN": f"{HOST}:{ng_port}",
                "ICERELAY_RELAY__ADDRESS_IPV4": HOST,
                "ICERELAY_RELAY__PORT_MIN": str(low),
                "ICERELAY_RELAY__PORT_MAX": str(high),
                "ICERELAY_RELAY__MEDIAPROXY_SOCKET": "",
                "ICERELAY_RELAY__ACCOUNTING": f"sqlite://{database}",
                # Each instance its own journal (the state directory is locked by one relay).
                "ICERELAY_RELAY__STATE_DIR": str(tmp_path / f"{name}-state"),
                "ICERELAY_CLUSTER__REDIS": redis.url,
                "ICERELAY_CLUSTER__INSTANCE": name,
                **TIMING,
                **settings,
            },
        )
        wait_for(lambda: ng_answers(ng_port), 10, f"{name}'s ng port")
        return Instance(name, ng_port, server, database)

    try:
        yield Cluster(redis, start, block)
    finally:
        redis.stop()


@dataclass
class Media:
    """RTP-shaped packets from a caller socket to the relay, 50 per second, and the arrival
    time of each at the callee socket."""

    caller: socket.socket
    callee: socket.socket
    arrivals: list[float] = field(default_factory=list)
    target: tuple[str, int] | None = None
    #: The relay port the offer gave the callee (the leg facing the callee).
    offer_port: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self, relay_port: int) -> None:
        self.target = (HOST, relay_port)
        self._threads = [
            threading.Thread(target=self._send, daemon=True),
            threading.Thread(target=self._receive, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _send(self) -> None:
        sequence = 0
        while not self._stop.is_set():
            sequence += 1
            header = struct.pack("!BBHII", 0x80, 0, sequence & 0xFFFF, sequence * 160, 0x1234)
            assert self.target is not None
            # OSError: ICMP port unreachable while nobody holds the port.
            with contextlib.suppress(OSError):
                self.caller.sendto(header + b"\xff" * 160, self.target)
            self._stop.wait(0.02)

    def _receive(self) -> None:
        self.callee.settimeout(0.1)
        while not self._stop.is_set():
            try:
                self.callee.recv(2048)
            except OSError:
                continue
            self.arrivals.append(time.monotonic())

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2)

    def received_after(self, moment: float) -> int:
        return sum(1 for arrival in self.arrivals if arrival > moment)

    def longest_gap(self, after: float) -> float:
        times = [t for t in self.arrivals if t >= after - 1.0]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def redis_call(url: str, instance: str, call_id: str) -> dict[str, object] | None:
    """The call's document in Redis, as ``instance`` wrote it (None: not there)."""
    import redis

    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        text = client.hget(f"icerelay:calls:{instance}", call_id)
    finally:
        client.close()
    return None if text is None else json.loads(str(text))


def place_call(instance: Instance, call_id: str) -> tuple[Media, int]:
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    callee = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller.bind((HOST, 0))
    callee.bind((HOST, 0))
    offer = ng(
        instance.ng,
        {
            "command": "offer",
            "call-id": call_id,
            "from-tag": "alice",
            "sdp": sdp(caller.getsockname()[1]),
        },
    )
    assert offer[b"result"] == b"ok", offer
    answer = ng(
        instance.ng,
        {
            "command": "answer",
            "call-id": call_id,
            "from-tag": "alice",
            "to-tag": "bob",
            "sdp": sdp(callee.getsockname()[1]),
        },
    )
    assert answer[b"result"] == b"ok", answer
    sdp_for_caller = answer[b"sdp"]
    assert isinstance(sdp_for_caller, bytes)
    sdp_for_callee = offer[b"sdp"]
    assert isinstance(sdp_for_callee, bytes)
    media = Media(caller, callee, offer_port=media_port(sdp_for_callee))
    return media, media_port(sdp_for_caller)


def test_killed_instance_calls_are_adopted_and_media_resumes(cluster: Cluster) -> None:
    a = cluster.start("relay-a", 0)
    b = cluster.start("relay-b", 1)
    media, relay_port = place_call(a, "failover-1")
    media.start(relay_port)
    try:
        wait_for(lambda: len(media.arrivals) >= 10, 5, "media through A")
        wait_for(
            lambda: redis_call(cluster.redis.url, "relay-a", "failover-1") is not None,
            5,
            "A's call in Redis",
        )
        # Any instance answers for any call: B passes a query for A's call to A.
        query = ng(b.ng, {"command": "query", "call-id": "failover-1"})
        assert query[b"result"] == b"ok", query

        killed = time.monotonic()
        a.kill()
        wait_for(lambda: media.received_after(killed + 0.05) >= 10, 10, "media through B")
        gap = media.longest_gap(killed)
        print(f"\nfailover gap: {gap:.3f} s (heartbeat 0.2 s, TTL 0.6 s)")
    finally:
        media.stop()
        media.caller.close()
        media.callee.close()
    document = redis_call(cluster.redis.url, "relay-b", "failover-1")
    assert document is not None and document["origin"] == "relay-a"

    # A, restarted under its name, must not recover the call from its journal: B adopted it
    # (the marks are consumed once).
    config = ClusterConfig(redis=cluster.redis.url, instance="relay-a")
    assert asyncio.run(take_adopted(config)) == {"failover-1"}
    assert asyncio.run(take_adopted(config)) == set()
    a_again = cluster.start("relay-a", 0)
    # Any instance answers for any call: the restarted A passes a query to B.
    query = ng(a_again.ng, {"command": "query", "call-id": "failover-1"})
    assert query[b"result"] == b"ok", query

    # The adopted call ends normally on B, with one record, written by B.
    query = ng(b.ng, {"command": "query", "call-id": "failover-1"})
    assert query[b"result"] == b"ok", query
    deleted = ng(b.ng, {"command": "delete", "call-id": "failover-1", "delete-delay": 0})
    assert deleted[b"result"] == b"ok", deleted
    totals = deleted[b"totals"]
    assert isinstance(totals, dict)
    rtp = totals[b"RTP"]
    assert isinstance(rtp, dict) and isinstance(rtp[b"packets"], int)
    # Packets counted by A before it died (as of its last write) plus those B relayed.
    assert rtp[b"packets"] > media.received_after(killed) >= 10
    wait_for(lambda: b.records() == [("failover-1", "deleted")], 5, "B's record")
    assert a.records() == [] and a_again.records() == []
    wait_for(
        lambda: redis_call(cluster.redis.url, "relay-b", "failover-1") is None,
        3,
        "the call leaving Redis",
    )


def test_redis_restart_and_outage_lose_no_call(cluster: Cluster) -> None:
    a = cluster.start("relay-a", 0)
    b = cluster.start("relay-b", 1)
    media, relay_port = place_call(a, "restart-1")
    media.start(relay_port)
    try:
        wait_for(
            lambda: redis_call(cluster.redis.url, "relay-a", "restart-1") is not None,
            5,
            "A's call in Redis",
        )
        cluster.redis.restart()  # no persistence: Redis comes back empty
        during = time.monotonic()
        # A resynchronises its calls; relaying never depended on Redis.
        wait_for(
            lambda: redis_call(cluster.redis.url, "relay-a", "restart-1") is not None, 10, "resync"
        )
        wait_for(lambda: media.received_after(during) >= 5, 5, "media all along")
        query = ng(a.ng, {"command": "query", "call-id": "restart-1"})
        assert query[b"result"] == b"ok", query

        # Redis down for a while: calls come and go on A all the same, accounted locally.
        cluster.redis.stop()
        second, _ = place_call(a, "during-outage")
        second.caller.close()
        second.callee.close()
        ended = ng(a.ng, {"command": "delete", "call-id": "during-outage", "delete-delay": 0})
        assert ended[b"result"] == b"ok", ended
        third, _ = place_call(a, "kept-during-outage")
        third.caller.close()
        third.callee.close()
        wait_for(lambda: ("during-outage", "deleted") in a.records(), 5, "A's local record")
        cluster.redis.start()
        wait_for(
            lambda: redis_call(cluster.redis.url, "relay-a", "kept-during-outage") is not None,
            10,
            "the call placed during the outage in Redis",
        )
        wait_for(
            lambda: redis_call(cluster.redis.url, "relay-a", "restart-1") is not None, 10, "resync"
        )
        # The state in Redis is good enough to fail over with.
        killed = time.monotonic()
        a.kill()
        wait_for(lambda: media.received_after(killed + 0.05) >= 10, 10, "media through B")
    finally:
        media.stop()
        media.caller.close()
        media.callee.close()
    for call_id in ("restart-1", "kept-during-outage"):
        deleted = ng(b.ng, {"command": "delete", "call-id": call_id, "delete-delay": 0})
        assert deleted[b"result"] == b"ok", deleted
    wait_for(
        lambda: (
            sorted(b.records()) == [("kept-during-outage", "deleted"), ("restart-1", "deleted")]
        ),
        5,
        "B's records",
    )
    assert a.records() == [("during-outage", "deleted")]


def test_exactly_one_survivor_adopts(cluster: Cluster) -> None:
    a = cluster.start("relay-a", 0)
    survivors = [cluster.start("relay-b", 1), cluster.start("relay-c", 2)]
    media, relay_port = place_call(a, "race-1")
    media.start(relay_port)
    try:
        wait_for(
            lambda: redis_call(cluster.redis.url, "relay-a", "race-1") is not None, 5, "in Redis"
        )
        killed = time.monotonic()
        a.kill()
        wait_for(lambda: media.received_after(killed + 0.05) >= 10, 10, "media again")
        # Give the loser time to try, too.
        time.sleep(1.0)
    finally:
        media.stop()
        media.caller.close()
        media.callee.close()
    holders = [
        s.name for s in survivors if redis_call(cluster.redis.url, s.name, "race-1") is not None
    ]
    assert len(holders) == 1, holders
    import redis

    client = redis.Redis.from_url(cluster.redis.url, decode_responses=True)
    try:
        adoptions = [json.loads(str(item)) for item in client.lrange("icerelay:adoptions", 0, -1)]
    finally:
        client.close()
    assert [(x["dead"], x["adopter"], x["calls"]) for x in adoptions] == [
        ("relay-a", holders[0], 1)
    ]
    (holder,) = (s for s in survivors if s.name == holders[0])
    other = next(s for s in survivors if s is not holder)
    # A re-INVITE's offer through the other survivor reaches the holder: same relay port.
    reoffer = ng(
        other.ng,
        {
            "command": "offer",
            "call-id": "race-1",
            "from-tag": "alice",
            "to-tag": "bob",
            "sdp": sdp(40000),
        },
    )
    assert reoffer[b"result"] == b"ok", reoffer
    sdp_for_callee = reoffer[b"sdp"]
    assert isinstance(sdp_for_callee, bytes)
    assert media_port(sdp_for_callee) == media.offer_port
    # The other survivor forwards the BYE's delete to the holder; one record, the holder's.
    deleted = ng(other.ng, {"command": "delete", "call-id": "race-1", "delete-delay": 0})
    assert deleted[b"result"] == b"ok", deleted
    wait_for(lambda: holder.records() == [("race-1", "deleted")], 5, "the holder's record")
    assert other.records() == []


def test_split_brain_on_one_host_adopts_nothing_and_records_once(cluster: Cluster) -> None:
    """A taken for dead while alive (its heartbeat key lost): B cannot bind the ports A
    still holds, so B adopts nothing, writes no record, and A's call goes on."""
    import redis

    a = cluster.start(
        "relay-a",
        0,
        ICERELAY_CLUSTER__HEARTBEAT_INTERVAL="3",
        ICERELAY_CLUSTER__HEARTBEAT_TTL="10",
    )
    b = cluster.start("relay-b", 1)
    media, relay_port = place_call(a, "split-1")
    media.start(relay_port)
    client = redis.Redis.from_url(cluster.redis.url, decode_responses=True)
    try:
        wait_for(
            lambda: redis_call(cluster.redis.url, "relay-a", "split-1") is not None, 5, "in Redis"
        )
        client.delete("icerelay:alive:relay-a")
        wait_for(lambda: client.llen("icerelay:adoptions") == 1, 5, "B's attempt")
        (entry,) = [json.loads(str(item)) for item in client.lrange("icerelay:adoptions", 0, -1)]
        assert (entry["adopter"], entry["calls"], entry["failed"]) == ("relay-b", 0, 1)
        moment = time.monotonic()
        wait_for(lambda: media.received_after(moment) >= 10, 5, "media still through A")
    finally:
        client.close()
        media.stop()
        media.caller.close()
        media.callee.close()
    deleted = ng(a.ng, {"command": "delete", "call-id": "split-1", "delete-delay": 0})
    assert deleted[b"result"] == b"ok", deleted
    wait_for(lambda: a.records() == [("split-1", "deleted")], 5, "A's record")
    time.sleep(0.5)
    assert b.records() == []


def test_call_ended_while_redis_was_unreachable_leaves_redis(cluster: Cluster) -> None:
    """Redis stops answering for a while (data kept): a call that ends meanwhile must not stay
    in Redis, where it would be adopted as a ghost if its instance died later."""
    import redis

    a = cluster.start("relay-a", 0)
    media, _ = place_call(a, "ghost-1")
    media.caller.close()
    media.callee.close()
    url = cluster.redis.url
    wait_for(lambda: redis_call(url, "relay-a", "ghost-1") is not None, 5, "in Redis")
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        client.client_pause(2500)
    finally:
        client.close()
    time.sleep(0.5)  # heartbeats time out: A relays alone
    deleted = ng(a.ng, {"command": "delete", "call-id": "ghost-1", "delete-delay": 0})
    assert deleted[b"result"] == b"ok", deleted
    wait_for(lambda: a.records() == [("ghost-1", "deleted")], 5, "A's local record")
    wait_for(lambda: redis_call(url, "relay-a", "ghost-1") is None, 10, "the ghost removed")


def test_delete_between_owners_is_carried_out_at_adoption(cluster: Cluster) -> None:
    """The BYE's delete reaches B after A died but before A's heartbeat expired: B cannot
    forward it (A does not answer) and cannot serve it yet; it keeps it, adopts the call when
    the TTL runs out, and ends it then: one record, B's, reason deleted."""
    a = cluster.start("relay-a", 0, ICERELAY_CLUSTER__HEARTBEAT_TTL="3")
    b = cluster.start("relay-b", 1)
    media, _ = place_call(a, "between-1")
    media.caller.close()
    media.callee.close()
    url = cluster.redis.url
    wait_for(lambda: redis_call(url, "relay-a", "between-1") is not None, 5, "in Redis")
    a.kill()
    deleted = ng(b.ng, {"command": "delete", "call-id": "between-1", "delete-delay": 0})
    assert deleted[b"result"] == b"ok", deleted
    warning = deleted.get(b"warning")
    assert isinstance(warning, bytes) and b"once adopted" in warning, deleted
    wait_for(lambda: b.records() == [("between-1", "deleted")], 10, "B's record")
    assert a.records() == []


def test_mediaproxy_remove_of_an_adopted_call(cluster: Cluster) -> None:
    """OpenSIPS's mediaproxy module talks to its local relay: after a failover, its ``remove``
    for an adopted call reaches the adopted session on the adopter."""
    import tempfile

    directory = tempfile.mkdtemp(prefix="cluster-mp-")  # short: a UNIX socket path is < 108
    path = os.path.join(directory, "dispatcher.sock")
    try:
        # Adopted calls keep their origin's settings: A's delete_delay applies.
        a = cluster.start("relay-a", 0, ICERELAY_RELAY__DELETE_DELAY="0")
        b = cluster.start("relay-b", 1, ICERELAY_RELAY__MEDIAPROXY_SOCKET=path)
        media, relay_port = place_call(a, "mp-1")
        media.start(relay_port)
        try:
            url = cluster.redis.url
            wait_for(lambda: redis_call(url, "relay-a", "mp-1") is not None, 5, "in Redis")
            killed = time.monotonic()
            a.kill()
            wait_for(lambda: media.received_after(killed + 0.05) >= 5, 10, "media through B")
        finally:
            media.stop()
            media.caller.close()
            media.callee.close()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(path)
            sock.sendall(b"remove\r\ncall_id: mp-1\r\nfrom_tag: alice\r\nto_tag: bob\r\n\r\n")
            assert sock.recv(100) == b"removed\r\n"
        wait_for(lambda: b.records() == [("mp-1", "deleted")], 5, "B's record")
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(directory)


def test_lone_instance_killed_and_restarted_resumes_its_call_with_one_record(
    cluster: Cluster,
) -> None:
    """A lone instance with Redis is killed -9 and restarted under its name: it adopts its own
    call back from Redis (media goes on) and its journal does not also recover the call as
    ``interrupted``: one record, written when the call ends."""
    # Checkpoints often: the journal holds the live call when the instance is killed.
    solo = cluster.start("solo", 0, ICERELAY_RELAY__CHECKPOINT_INTERVAL="0.1")
    media, relay_port = place_call(solo, "solo-1")
    media.start(relay_port)
    try:
        wait_for(lambda: redis_call(cluster.redis.url, "solo", "solo-1") is not None, 5, "in Redis")
        wait_for(lambda: len(media.arrivals) >= 5, 5, "media through solo")
        time.sleep(0.3)  # a checkpoint or two
        solo.kill()
        solo_again = cluster.start("solo", 0)
        restarted = time.monotonic()
        wait_for(lambda: media.received_after(restarted) >= 10, 10, "media after the restart")
    finally:
        media.stop()
        media.caller.close()
        media.callee.close()
    deleted = ng(solo_again.ng, {"command": "delete", "call-id": "solo-1", "delete-delay": 0})
    assert deleted[b"result"] == b"ok", deleted
    wait_for(lambda: ("solo-1", "deleted") in solo_again.records(), 5, "the record")
    time.sleep(0.3)
    assert solo_again.records() == [("solo-1", "deleted")]


def test_calls_adopted_from_two_dead_instances_each_get_their_record(cluster: Cluster) -> None:
    """B adopts the calls of two dead instances: each origin's engine numbers its sessions
    from 1, and neither record may be taken for the other (same record id: the second one
    dropped by the journal and the database)."""
    a = cluster.start("relay-a", 0)
    c = cluster.start("relay-c", 2)
    b = cluster.start("relay-b", 1)
    for instance, call_id in ((a, "two-a"), (c, "two-c")):
        media, _ = place_call(instance, call_id)
        media.caller.close()
        media.callee.close()
        wait_for(
            lambda: redis_call(cluster.redis.url, instance.name, call_id) is not None,  # noqa: B023
            5,
            f"{call_id} in Redis",
        )
    a.kill()
    c.kill()
    for call_id in ("two-a", "two-c"):
        wait_for(
            lambda: redis_call(cluster.redis.url, "relay-b", call_id) is not None,  # noqa: B023
            10,
            f"{call_id} adopted by B",
        )
        deleted = ng(b.ng, {"command": "delete", "call-id": call_id, "delete-delay": 0})
        assert deleted[b"result"] == b"ok", deleted
    wait_for(
        lambda: sorted(b.records()) == [("two-a", "deleted"), ("two-c", "deleted")],
        5,
        "B's two records",
    )


def test_call_ended_by_its_owner_and_adopted_after_a_kill_is_recorded_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A ends a call on its own timer (no media) and records it at once, but the call leaves
    Redis only at A's next periodic write. A is killed in between: B adopts the ended call and
    records it again when its own timer ends it. Both records carry the id A chose when the
    call opened, so the accounting database the two share keeps one."""
    shared = tmp_path / "shared.sqlite3"
    settings = {"ICERELAY_RELAY__ACCOUNTING": f"sqlite://{shared}"}
    # A writes to Redis every 30 s: the ended call stays there long after its record.
    a = cluster.start(
        "relay-a",
        0,
        ICERELAY_RELAY__MEDIA_TIMEOUT="1",
        ICERELAY_CLUSTER__WRITE_INTERVAL="30",
        **settings,
    )
    b = cluster.start("relay-b", 1, **settings)
    url = cluster.redis.url

    def records() -> list[tuple[str, str]]:
        if not shared.exists():
            return []
        with sqlite3.connect(shared) as connection:
            return connection.execute("SELECT call_id, reason FROM sessions").fetchall()

    media, _ = place_call(a, "ended-1")  # no media at all: A's media timeout ends it
    media.caller.close()
    media.callee.close()
    assert redis_call(url, "relay-a", "ended-1") is not None  # written with the answer
    wait_for(lambda: records() == [("ended-1", "no-media")], 10, "A's record in the database")
    a.kill()
    # Inside the window: the ended call is still in Redis, as A's.
    assert redis_call(url, "relay-a", "ended-1") is not None
    wait_for(lambda: redis_call(url, "relay-b", "ended-1") is not None, 10, "B adopting it")
    # Adopted calls keep A's settings: B's media timeout ends it after a second.
    wait_for(lambda: redis_call(url, "relay-b", "ended-1") is None, 10, "B ending it")
    time.sleep(1.0)  # B's journal delivers its record (or finds it already there)
    assert records() == [("ended-1", "no-media")]
    assert b.records() == []  # its own database was never used
