"""Issue 10's resource attacks on ``icerelay serve`` (relay only), RSS measured from /proc.

    .venv/bin/python -m benchmarks.limits [SRC_DIR ...]

Each SRC_DIR is a source tree (``src`` of a checkout) run with this interpreter, so an old
commit and this one can be compared side by side in one run, e.g.
``python -m benchmarks.limits /work/main/src src``. Also times the ng TCP framer fed a large
message in small reads (quadratic before the resumable scan). Not a test: it prints figures.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
import time


def _rss(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _udp(port: int, message: bytes) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.sendto(message, ("127.0.0.1", port))
        try:
            return sock.recvfrom(65536)[0]
        except TimeoutError:
            return None


def attack(src: str) -> None:
    port = random.randrange(20000, 29000)
    base = random.randrange(12000, 19000) & ~1
    settings = [
        f"relay.ng_listen=127.0.0.1:{port}",
        "relay.mediaproxy_socket=",
        "relay.accounting=",
        f"relay.port_min={base}",
        f"relay.port_max={base + 999}",
    ]
    command = [sys.executable, "-m", "icerelay", "serve", "--no-stun", "--log-level", "error"]
    for setting in settings:
        command += ["--set", setting]
    process = subprocess.Popen(
        command,
        env=dict(os.environ, PYTHONPATH=src),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(100):
            if _udp(port, b"p d7:command4:pinge"):
                break
            time.sleep(0.1)
        before = _rss(process.pid)
        connections = []
        for _ in range(200):
            connection = socket.create_connection(("127.0.0.1", port))
            connection.setblocking(False)
            with contextlib.suppress(BlockingIOError, ConnectionError):
                connection.sendall(b"1_1 d3:sdp262000:" + b"x" * 250_000)
            connections.append(connection)
        time.sleep(3)
        peak = _rss(process.pid)
        for connection in connections:
            connection.close()
        time.sleep(2)
        after = _rss(process.pid)
        print(
            f"{src}: 200 ng TCP connections x 250 KiB: RSS {before:.0f} -> {peak:.0f} MiB,"
            f" {after:.0f} MiB after they closed"
        )
        before = after
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.001)
            for number in range(50_000):
                name = b"invented-%d" % number
                message = b"c%d d7:command%d:%se" % (number, len(name), name)
                sock.sendto(message, ("127.0.0.1", port))
                if number % 200 == 199:
                    try:
                        while True:
                            sock.recvfrom(65536)
                    except TimeoutError:
                        pass
        time.sleep(1)
        statistics = _udp(port, b"st d7:command10:statisticse")
        size = f"{len(statistics)} bytes" if statistics else "none (too big for UDP)"
        print(
            f"{src}: 50,000 invented command names: RSS {before:.0f} -> {_rss(process.pid):.0f}"
            f" MiB; statistics reply {size}"
        )
        reply = _udp(port, b'u {"command":"\\ud800"}')
        print(f"{src}: lone surrogate: {reply[:110]!r}" if reply else f"{src}: no reply")
    finally:
        process.terminate()
        try:
            _, errors = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            _, errors = process.communicate()
        print(f"{src}: tracebacks logged: {errors.count(b'Traceback')}")


def framer() -> None:
    from icerelay.control.ng import NgStreamFramer

    for size in (16_384, 65_536, 262_144):
        body = b'c1 {"command":"offer","sdp":"' + b"x" * size + b'"}'
        stream = NgStreamFramer(max_message=1 << 20)
        start = time.perf_counter()
        for index in range(0, len(body), 16):
            stream.feed(body[index : index + 16])
        print(f"framer: {size} bytes in 16-byte reads: {time.perf_counter() - start:.3f} s")


if __name__ == "__main__":
    framer()
    for tree in sys.argv[1:] or ["src"]:
        attack(os.path.abspath(tree))
