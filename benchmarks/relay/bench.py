"""The relay benchmark's measurements: media streams, ng offer+answer rate, memory per call.

Each server (icerelay's relay in its own process, rtpengine 10.5 userspace) is started fresh with
equivalent settings (127.0.0.1, same relay port range, no delete delay, no kernel forwarding) and
measured in this order:

Three servers can be measured: ``icerelay`` (the userspace data plane), ``icerelay-kernel`` (the
nftables data plane, root only: both legs of every call are latched before the load starts, by one
packet from the callee's address, so that the kernel forwards each stream after its first caller
packet) and ``rtpengine``. With ``--netns`` the whole run happens in a private network namespace
(no other program's sockets on the relay ports) and the relay port range widens to 20000-59999,
so that the plan can reach the load generator's limit instead of the port range's.

1. **ng offer+answer rate and memory per call**: RSS of the idle server, then ``calls`` calls set
   up by a pipelined ng client over UDP (offer, then answer as soon as the offer's reply is in,
   ``window`` requests in flight); RSS again; the calls are deleted. Every request is encoded
   before the clock starts, and replies are only checked for ``result: ok``, so the client stays
   cheaper than the servers.
2. **Concurrent 50 packets/s streams**: K calls, each carrying one RTP-like stream (172-byte
   packets, 50/s) from the caller's address through the relay to the callee's. ``udpblast msend``
   sends all K streams from one socket (the caller address of every call), ``udpblast msink``
   receives them on one socket (every callee address) and reports per-stream loss and one-way
   latency percentiles from a CLOCK_MONOTONIC timestamp in each packet. K is stepped up until loss
   exceeds 0.01% (a lossy step is retried once) or the generator itself cannot keep the rate.
   The same K streams sent straight to the sink, without a relay, give the baseline latency that
   "added latency" is measured against.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tests.support.relayd import start_relay
from tests.support.rtpengine import NgClient, start_rtpengine

from icerelay import bencode

HOST = "127.0.0.1"
PACKET_SIZE = 172  # 12-byte RTP header + 160 bytes of 20 ms G.711
RATE = 50  # packets per second per stream
TOOLS = Path(__file__).resolve().parents[1] / "tools"

Result = dict[str, Any]


@dataclass
class Plan:
    """What to run; :meth:`full` for the report, :meth:`smoke` to check the harness (< 1 min)."""

    steps: list[int]
    seconds: float
    baseline_seconds: float
    calls: int  # for the ng rate and memory measurement
    window: int = 64
    loss_limit_pct: float = 0.01
    # A packet this late is as good as lost to a phone's jitter buffer; a step passes only if
    # 99.9% of packets were faster (the relay is not building a backlog).
    late_limit_ms: float = 200.0
    ng_port: int = 12223
    src_port: int = 12224
    sink_port: int = 12226
    # Apart from the TURN benchmark's ports (13478, relay 22000-29999) so both can run.
    port_min: int = 14000
    port_max: int = 21999

    @classmethod
    def full(cls) -> Plan:
        return cls(
            # 8000 relay ports, 4 per call (RTP+RTCP on each side): 1750 calls at most.
            steps=[100, 200, 300, 400, 500, 600, 700, 800, 1000, 1250, 1500, 1750],
            seconds=10.0,
            baseline_seconds=5.0,
            calls=1500,
        )

    @classmethod
    def smoke(cls) -> Plan:
        return cls(steps=[50, 200], seconds=3.0, baseline_seconds=2.0, calls=200)

    def widen(self, smoke: bool) -> None:
        """In a private namespace: 40,000 relay ports (10,000 calls), steps up to the load
        generator's limit (about 200k packets/s, 4,000 streams)."""
        self.port_min, self.port_max = 20000, 59999
        if smoke:
            self.steps = [200, 1000, 2000, 3000, 4000]
            self.seconds = 4.0
            self.calls = 500
        else:
            self.steps = [*self.steps, 2000, 2500, 3000, 3500, 4000]

    def as_dict(self) -> Result:
        return asdict(self)


class Server(Protocol):
    @property
    def pid(self) -> int: ...

    def stop(self) -> object: ...

    def log(self) -> str: ...


@contextlib.contextmanager
def running(name: str, plan: Plan, workdir: Path) -> Iterator[Server]:
    """One server, started with the benchmark's settings and stopped afterwards."""
    server: Server
    if name in ("icerelay", "icerelay-kernel"):
        server = start_relay(
            workdir / name,
            ng_port=plan.ng_port,
            port_min=plan.port_min,
            port_max=plan.port_max,
            # INFO logs one line per session end, like rtpengine's default level 6 does.
            log_level="info",
            # RelayService alone, as measured for the committed report (serve adds nothing
            # on the relay's path; it would only add a STUN service to switch off).
            mode="service",
            dataplane="kernel" if name == "icerelay-kernel" else "userspace",
        )
    elif name == "rtpengine":
        server = start_rtpengine(
            workdir / name,
            ng_port=plan.ng_port,
            port_min=plan.port_min,
            port_max=plan.port_max,
            threads=os.cpu_count() or 2,  # rtpengine's own default: one worker per CPU
        )
    else:
        raise ValueError(f"unknown server {name!r}")
    try:
        yield server
    finally:
        server.stop()


# -- process figures ---------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """Resident set of ``pid`` (all its threads) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# -- ng ------------------------------------------------------------------------------------------


def _sdp(port: int, origin: str) -> str:
    return (
        "v=0\r\n"
        f"o={origin} 1 1 IN IP4 {HOST}\r\n"
        "s=-\r\n"
        f"c=IN IP4 {HOST}\r\n"
        "t=0 0\r\n"
        # udpblast's packets carry payload type 0: the SDP must offer it, or rtpengine counts
        # every packet as an error and logs "unknown payload type" warnings.
        f"m=audio {port} RTP/AVP 0 8 101\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:8 PCMA/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
        "a=ptime:20\r\n"
        "a=sendrecv\r\n"
    )


def _request(cookie: str, message: dict[str, bencode.Encodable]) -> bytes:
    return cookie.encode() + b" " + bencode.encode(message)


@dataclass
class NgPipeline:
    """Offers and answers for many calls, ``window`` in flight, over one UDP socket.

    Every call has the caller at ``HOST:src_port`` and the callee at ``HOST:sink_port`` (the load
    generator's two sockets): a relay keeps calls apart by its own ports, not by the peers'.
    """

    port: int
    src_port: int
    sink_port: int
    window: int = 64
    timeout: float = 5.0
    prefix: str = field(default_factory=lambda: f"b{os.getpid()}x{int(time.time() * 1000)}")
    failures: list[str] = field(default_factory=list)
    #: Call index -> the callee-side relay port (where the callee sends), from the offers.
    callee_ports: dict[int, int] = field(default_factory=dict)

    def _call_id(self, index: int) -> str:
        return f"{self.prefix}-{index}@bench"

    def setup(self, first: int, count: int) -> tuple[float, list[tuple[int, int]]]:
        """Offer+answer calls first..first+count-1.

        Returns (seconds, [(call index, caller-side relay port)]) for the calls that succeeded.
        """
        offers: list[bytes] = []
        answers: list[bytes] = []
        for index in range(first, first + count):
            call_id = self._call_id(index)
            common: dict[str, bencode.Encodable] = {
                "call-id": call_id,
                "from-tag": f"caller{index}",
                "replace": ["origin", "session-connection"],
                "flags": ["trust-address"],
            }
            offers.append(
                _request(
                    f"o{index}",
                    {"command": "offer", "sdp": _sdp(self.src_port, "caller"), **common},
                )
            )
            answers.append(
                _request(
                    f"a{index}",
                    {
                        "command": "answer",
                        "sdp": _sdp(self.sink_port, "callee"),
                        "to-tag": f"callee{index}",
                        **common,
                    },
                )
            )
        ports: dict[int, int] = {}
        self.failures = []
        failed_offers = 0

        def on_reply(cookie: bytes, payload: bytes) -> bytes | None:
            kind, index = cookie[:1], int(cookie[1:])
            if b"6:result2:ok" not in payload:
                # E.g. a relay port taken by another program on this shared machine: the call
                # is left out of the load, and counted.
                nonlocal failed_offers
                failed_offers += kind == b"o"  # no answer will follow
                self.failures.append(payload[:200].decode("latin-1"))
                return None
            if kind == b"o":
                match = re.search(rb"m=audio (\d+) ", payload)
                if match is not None:
                    self.callee_ports[index] = int(match.group(1))
                return answers[index - first]
            # The answer's SDP, rewritten, is what the caller sends to: the stream's relay port.
            match = re.search(rb"m=audio (\d+) ", payload)
            if match is None:
                raise RuntimeError(f"no m=audio in the answer reply {payload[:300]!r}")
            ports[index] = int(match.group(1))
            return None

        seconds = self._run(offers, on_reply, lambda: 2 * count - failed_offers)
        return seconds, [(i, ports[i]) for i in range(first, first + count) if i in ports]

    def rtp_packets(self, index: int) -> int:
        """What the relay counted for call ``index`` (ng ``query``, totals of RTP packets)."""
        with NgClient(HOST, self.port) as client:
            reply = client.request({"command": "query", "call-id": self._call_id(index)})
        totals = reply.get(b"totals")
        rtp = totals.get(b"RTP") if isinstance(totals, dict) else None
        packets = rtp.get(b"packets") if isinstance(rtp, dict) else None
        return packets if isinstance(packets, int) else 0

    def delete(self, first: int, count: int) -> float:
        deletes = [
            _request(
                f"d{index}",
                {
                    "command": "delete",
                    "call-id": self._call_id(index),
                    "from-tag": f"caller{index}",
                },
            )
            for index in range(first, first + count)
        ]

        def on_reply(cookie: bytes, payload: bytes) -> bytes | None:
            return None

        return self._run(deletes, on_reply, lambda: count)

    def _run(
        self,
        initial: list[bytes],
        on_reply: Callable[[bytes, bytes], bytes | None],
        expected: Callable[[], int],
    ) -> float:
        """Send ``initial`` with at most ``window`` in flight; follow-ups come from on_reply."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.connect((HOST, self.port))
        sock.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(sock, selectors.EVENT_READ)
        pending = list(reversed(initial))
        in_flight: dict[bytes, tuple[bytes, float]] = {}
        done = 0
        start = time.perf_counter()
        deadline = time.monotonic() + self.timeout + len(initial) / 100
        try:
            while done < expected():
                while pending and len(in_flight) < self.window:
                    request = pending.pop()
                    cookie = request.split(b" ", 1)[0]
                    sock.send(request)
                    in_flight[cookie] = (request, time.monotonic())
                for _ in selector.select(0.2):
                    while True:
                        try:
                            data = sock.recv(65536)
                        except BlockingIOError:
                            break
                        cookie, _, payload = data.partition(b" ")
                        if in_flight.pop(cookie, None) is None:
                            continue  # a duplicate reply to a retransmission
                        done += 1
                        follow_up = on_reply(cookie, payload)
                        if follow_up is not None:
                            pending.append(follow_up)
                now = time.monotonic()
                for cookie, (request, sent) in list(in_flight.items()):
                    if now - sent > 1.0:  # retransmit, as Kamailio does, with the same cookie
                        sock.send(request)
                        in_flight[cookie] = (request, now)
                if now > deadline:
                    raise RuntimeError(f"ng: {done}/{expected()} replies before the deadline")
            return time.perf_counter() - start
        finally:
            selector.close()
            sock.close()


# -- media -------------------------------------------------------------------------------------


def build_udpblast(workdir: Path) -> Path:
    binary = workdir / "udpblast"
    subprocess.run(
        ["gcc", "-O2", "-o", str(binary), str(TOOLS / "udpblast.c")],
        check=True,
        capture_output=True,
    )
    return binary


_SENT = re.compile(r"sent (\d+) packets on (\d+) streams in ([\d.]+) s \((\d+) pps\)")
_RECEIVED = re.compile(
    r"received (\d+) packets on (\d+) streams, (\d+) pps over ([\d.]+) s, loss ([\d.]+)% "
    r"\((\d+) streams lossy\), latency p50 ([\d.]+) us p99 ([\d.]+) us p999 ([\d.]+) us"
)


def blast(udpblast: Path, plan: Plan, ports: list[int], seconds: float, workdir: Path) -> Result:
    """K streams to ``ports`` (one each), received on the sink; loss and latency."""
    portfile = workdir / "ports.txt"
    portfile.write_text(" ".join(map(str, ports)) + "\n")
    sink = subprocess.Popen(
        [str(udpblast), "msink", HOST, str(plan.sink_port), f"{seconds + 1.5}", str(len(ports))],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(0.3)  # the sink binds before the first packet leaves
    sender = subprocess.run(
        [
            str(udpblast),
            "msend",
            HOST,
            str(plan.src_port),
            str(RATE),
            str(seconds),
            str(PACKET_SIZE),
            str(portfile),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    )
    sink_out, _ = sink.communicate(timeout=seconds + 30)
    sent = _SENT.search(sender.stdout)
    received = _RECEIVED.search(sink_out)
    if sent is None or received is None:
        raise RuntimeError(f"udpblast output not understood: {sender.stdout!r} {sink_out!r}")
    sent_packets = int(sent.group(1))
    got = int(received.group(1))
    target_pps = RATE * len(ports)
    return {
        "streams": len(ports),
        "target_pps": target_pps,
        "sent": sent_packets,
        "sent_pps": int(sent.group(4)),
        "received": got,
        "received_streams": int(received.group(2)),
        # Two views of loss: sequence gaps per stream (msink) and sent vs received overall
        # (which also counts streams that never arrived and losses at the very end).
        # msink computes this in unsigned arithmetic: more packets than sequence numbers (stale
        # packets of an earlier run) would show as an absurd figure; None then.
        "gap_loss_pct": gap if (gap := float(received.group(5))) <= 100 else None,
        "loss_pct": round(max(0.0, 100.0 * (sent_packets - got) / max(1, sent_packets)), 4),
        "lossy_streams": int(received.group(6)),
        "latency_us": {
            "p50": float(received.group(7)),
            "p99": float(received.group(8)),
            "p999": float(received.group(9)),
        },
        # Packets of an earlier run reached this sink: the counts can't be trusted.
        "stale": float(received.group(5)) > 100,
        # The generator could not keep the rate: the step says nothing about the relay.
        "generator_limited": int(sent.group(4)) < 0.97 * target_pps,
    }


def latch_callees(plan: Plan, ports: list[int]) -> None:
    """One RTP-like packet from the callee's address (the sink's) to each call's callee-side
    relay port: the relay latches that leg, so the kernel plane can take over each stream as
    soon as its caller's first packet latched the other. Sent before the sink binds its port."""
    packet = bytes([0x80, 0]) + bytes(PACKET_SIZE - 2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, plan.sink_port))
        for index, port in enumerate(ports):
            sock.sendto(packet, (HOST, port))
            if index % 200 == 199:
                time.sleep(0.01)  # the relay reads these in batches; do not overflow its queues


def wait_idle(pid: int, limit: float = 15.0) -> float:
    """Wait until ``pid`` uses < 5% of a CPU over 0.5 s (its socket backlog is drained).

    An overloaded relay keeps forwarding queued packets for seconds after the sender stopped;
    those must not reach the next step's sink, where they would count as that step's packets.
    Returns the seconds waited.
    """
    start = time.monotonic()
    while time.monotonic() - start < limit:
        before = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - before < 0.025:
            break
    return round(time.monotonic() - start, 1)


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def passed(step: Result, plan: Plan) -> bool:
    """A step the relay sustained: little enough loss, a trustworthy count, a generator on time."""
    return bool(
        step["loss_pct"] <= plan.loss_limit_pct
        and step["latency_us"]["p999"] <= 1000 * plan.late_limit_ms
        and not step["stale"]
        and not step["generator_limited"]
    )


def measure_server(name: str, plan: Plan, workdir: Path, udpblast: Path, log: Any) -> Result:
    """All measurements of one server (a fresh process)."""
    result: Result = {"server": name}
    ng = NgPipeline(plan.ng_port, plan.src_port, plan.sink_port, window=plan.window)
    with running(name, plan, workdir) as server:
        time.sleep(0.5)
        # Warm-up: first-use allocations (imports, caches, pools) are not "per call".
        ng.setup(1_000_000, 20)
        ng.delete(1_000_000, 20)
        time.sleep(0.3)
        rss_before = rss_kib(server.pid)
        cpu_before = cpu_seconds(server.pid)
        seconds, established = ng.setup(0, plan.calls)
        cpu_setup = cpu_seconds(server.pid) - cpu_before
        time.sleep(0.3)
        rss_after = rss_kib(server.pid)
        delete_seconds = ng.delete(0, plan.calls)
        result["ng"] = {
            "calls": plan.calls,
            "failed": plan.calls - len(established),
            "window": plan.window,
            "seconds": round(seconds, 3),
            "offer_answer_per_s": round(plan.calls / seconds, 1),
            "server_cpu_us_per_call": round(1e6 * cpu_setup / plan.calls, 1),
            "delete_per_s": round(plan.calls / delete_seconds, 1),
        }
        result["memory"] = {
            "calls": plan.calls,
            "rss_idle_kib": rss_before,
            "rss_with_calls_kib": rss_after,
            "kib_per_call": round((rss_after - rss_before) / plan.calls, 2),
        }
        log(f"{name}: ng {result['ng']}, memory {result['memory']}")
        time.sleep(0.5)

        steps: list[Result] = []
        calls: list[tuple[int, int]] = []  # (call index, caller-side relay port)
        first_call = next_call = 10_000
        failed_calls = replaced_calls = 0
        for count in plan.steps:
            for _ in range(3):
                if len(calls) >= count:
                    break
                _, more = ng.setup(next_call, count - len(calls))
                failed_calls += len(ng.failures)
                next_call += count - len(calls)
                calls.extend(more)
            if len(calls) < count:
                log(f"{name}: only {len(calls)} of {count} calls could be set up")
                break
            if name == "icerelay-kernel":
                latch_callees(plan, [ng.callee_ports[i] for i, _ in calls[:count]])
                time.sleep(0.3)
            for attempt in (1, 2):
                drained = wait_idle(server.pid)
                cpu0 = cpu_seconds(server.pid)
                load0 = loadavg()
                ports = [port for _, port in calls[:count]]
                step = blast(udpblast, plan, ports, plan.seconds, workdir)
                cpu = cpu_seconds(server.pid) - cpu0
                step["attempt"] = attempt
                step["idle_wait_s"] = drained
                step["server_cpu_pct"] = round(100 * cpu / plan.seconds, 1)
                step["server_cpu_us_per_packet"] = round(1e6 * cpu / max(1, step["received"]), 2)
                step["loadavg_before"] = load0
                step["rss_kib"] = rss_kib(server.pid)
                steps.append(step)
                log(
                    f"{name}: {count} streams: loss {step['loss_pct']}% "
                    f"(gaps {step['gap_loss_pct']}%), p99 {step['latency_us']['p99']} us, "
                    f"cpu {step['server_cpu_pct']}%, sent {step['sent_pps']} pps"
                )
                if passed(step, plan) or step["generator_limited"]:
                    break
                # Calls through which nothing at all passed: on this shared machine another
                # program's socket on a relay port takes a stream's packets (a whole stream
                # lost at low load). Not the relay's doing: new calls, new ports, for attempt 2.
                dead = [(i, port) for i, port in calls[:count] if ng.rtp_packets(i) == 0]
                step["dead_streams"] = len(dead)
                if dead:
                    log(f"{name}: {len(dead)} streams carried nothing (ports {dead[:5]})")
                    gone = {i for i, _ in dead}
                    for i in gone:
                        ng.delete(i, 1)
                    _, fresh = ng.setup(next_call, len(dead))
                    next_call += len(dead)
                    replaced_calls += len(dead)
                    calls = [c for c in calls if c[0] not in gone] + fresh
            last = steps[-1]
            # Stepping goes on past a latency failure until loss too, so that the report
            # shows where packets start to be dropped as well as where they start to be late.
            if last["loss_pct"] > plan.loss_limit_pct or last["stale"]:
                break
            if last["generator_limited"]:
                break
        ng.delete(first_call, next_call - first_call)
        result["streams"] = {
            "steps": steps,
            "failed_calls": failed_calls,
            "replaced_dead_calls": replaced_calls,
        }
        good = [s for s in steps if passed(s, plan)]
        result["streams"]["max_streams"] = max((s["streams"] for s in good), default=0)
        # Warnings and errors say why a relay dropped packets (rtpengine logs the reason).
        problems = [
            line[-300:]
            for line in server.log().splitlines()
            if re.search(r"\b(WARNING|WARN|ERR|ERROR|CRIT|level=(warning|error))\b", line)
        ]
        result["log_problems"] = {"count": len(problems), "first": problems[:15]}
    return result


def measure_baseline(plan: Plan, workdir: Path, udpblast: Path, log: Any) -> list[Result]:
    """The same streams straight from generator to sink: the latency a relay adds to."""
    results = []
    for count in plan.steps:
        step = blast(udpblast, plan, [plan.sink_port] * count, plan.baseline_seconds, workdir)
        results.append(step)
        log(f"direct: {count} streams: p99 {step['latency_us']['p99']} us")
    return results
