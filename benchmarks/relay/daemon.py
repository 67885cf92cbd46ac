"""The relay daemon's whole ng path in instructions: UDP receive, handler, port binds, data-plane
install, records and journal, the log line, the reply; offers+answers and deletes apart.

:mod:`.handler` counts the pure handler path; this counts what the daemon spends around it. A
relay runs as in the benchmark (``RelayService``, SQLite accounting with its journal, INFO logs
to a file) under valgrind's callgrind with instrumentation off; a client in this process sends
``calls`` offers+answers one at a time (no concurrency: nothing is retransmitted), then deletes
them, and switches counting on around each phase (``callgrind_control -i on|off``)::

    PYTHONPATH=$PWD/src python -m benchmarks.relay.daemon 200
    # offer+answer: N instructions per pair, delete: M per call (userspace only)

Kernel work (the syscalls themselves) is not in the counts; the CPU time the benchmark reports
is. The periodic tasks (checkpoint every 2 s, the latch watcher every 1 s) are kept as in
production: under valgrind they run about 50 times more often per call than for real, so they
are switched off here (``checkpoint_interval`` one hour); the watcher's scan is cheap per call.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from icerelay import bencode

HOST = "127.0.0.1"
SDP = (
    "v=0\r\no={origin} 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\na=sendrecv\r\n"
)


async def _serve(ng_port: int, workdir: Path) -> None:
    from icerelay.daemon.relay_config import RelayServiceConfig
    from icerelay.daemon.relay_service import RelayService

    service = RelayService(
        RelayServiceConfig(
            ng_listen=(HOST, ng_port),
            ng_tcp=False,
            mediaproxy_socket="",
            address_ipv4=HOST,
            port_min=30000,
            port_max=39999,
            delete_delay=0.0,
            accounting=f"sqlite:{workdir / 'sessions.sqlite3'}",
            state_dir=str(workdir / "state"),
            checkpoint_interval=3600.0,
        )
    )
    await service.start()
    # As `icerelay serve` does once its services run (daemon/compose.py).
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await service.stop()


def serve(ng_port: int, workdir: Path) -> None:
    from icerelay.aio.loop import loop_factory
    from icerelay.daemon.logs import configure_logging

    configure_logging("info", "kv")
    profile = os.environ.get("RELAY_CPROFILE")
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_serve(ng_port, workdir))
    if profile:
        profiler.disable()
        profiler.dump_stats(profile)


class _Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect((HOST, port))
        self.counter = 0

    def request(self, message: dict[str, bencode.Encodable], timeout: float = 120.0) -> bytes:
        self.counter += 1
        cookie = b"c%d" % self.counter
        self.sock.settimeout(timeout)
        self.sock.send(cookie + b" " + bencode.encode(message))
        while True:
            reply = self.sock.recv(65536)
            if reply.startswith(cookie + b" "):
                return reply

    def ping(self) -> bool:
        try:
            return b"pong" in self.request({"command": "ping"}, timeout=1.0)
        except OSError:
            return False


def _call(index: int) -> dict[str, bencode.Encodable]:
    return {"call-id": f"call{index}", "from-tag": f"a{index}"}


def _setup(client: _Client, first: int, count: int) -> None:
    for index in range(first, first + count):
        common: dict[str, bencode.Encodable] = {
            **_call(index),
            "replace": ["origin", "session-connection"],
            "flags": ["trust-address"],
        }
        sdp = SDP.format(origin="caller", port=12224)
        for message in (
            {"command": "offer", "sdp": sdp, **common},
            {
                "command": "answer",
                "sdp": SDP.format(origin="callee", port=12226),
                "to-tag": f"b{index}",
                **common,
            },
        ):
            reply = client.request(message)
            if b"6:result2:ok" not in reply:
                raise RuntimeError(f"not ok: {reply[:300]!r}")


def _delete(client: _Client, first: int, count: int) -> None:
    for index in range(first, first + count):
        reply = client.request({"command": "delete", **_call(index)})
        if b"6:result2:ok" not in reply:
            raise RuntimeError(f"not ok: {reply[:300]!r}")


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def _dump_total(pid: int, workdir: Path, name: str) -> int:
    """Dump the counts since the last dump and return their instruction total."""
    before = set(workdir.glob("callgrind.out*"))
    _control(pid, "--dump=" + name)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        new = set(workdir.glob("callgrind.out*")) - before
        for path in new:
            text = path.read_text(errors="replace")
            match = re.search(r"^totals: (\d+)", text, re.M)
            if match:
                return int(match.group(1))
        time.sleep(0.2)
    raise RuntimeError("callgrind wrote no dump")


def measure(calls: int, ng_port: int, keep: str | None = None) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        if keep:
            tmp = keep
            Path(tmp).mkdir(parents=True, exist_ok=True)
        workdir = Path(tmp)
        argv = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={workdir}/callgrind.out.%p",
            f"--log-file={workdir}/valgrind.log",
            sys.executable,
            "-m",
            "benchmarks.relay.daemon",
            "--serve",
            str(ng_port),
            tmp,
        ]
        with open(workdir / "relay.log", "wb") as log:
            process = subprocess.Popen(argv, stderr=log, stdout=log)
        try:
            client = _Client(ng_port)
            deadline = time.monotonic() + 300
            while not client.ping():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((workdir / "relay.log").read_text()[-2000:])
            # Warm-up: first-use costs (imports, caches) are not per call.
            _setup(client, 1_000_000, 10)
            _delete(client, 1_000_000, 10)
            _dump_total(process.pid, workdir, "warmup")
            _control(process.pid, "--instr=on")
            _setup(client, 0, calls)
            _control(process.pid, "--instr=off")
            setup = _dump_total(process.pid, workdir, "setup")
            _control(process.pid, "--instr=on")
            _delete(client, 0, calls)
            # The accounting replayer delivers the last records a moment later (off the
            # reply path, but part of the delete's cost): wait for it before counting stops.
            time.sleep(3.0)
            _control(process.pid, "--instr=off")
            delete = _dump_total(process.pid, workdir, "delete")
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(120)
    return setup / calls, delete / calls


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.relay.daemon")
    parser.add_argument("calls", type=int, nargs="?", default=200)
    parser.add_argument("--ng-port", type=int, default=12299)
    parser.add_argument("--keep", metavar="DIR", help="leave the callgrind dumps in DIR")
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), Path(args.serve[1]))
        return
    setup, delete = measure(args.calls, args.ng_port, args.keep)
    print(
        f"{args.calls} calls: offer+answer {setup / 1e6:.2f}M instructions per pair, "
        f"delete {delete / 1e6:.2f}M per call (daemon userspace, callgrind)"
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
