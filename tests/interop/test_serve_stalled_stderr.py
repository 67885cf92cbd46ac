"""A supervisor that stops reading the daemon's stderr must not stop its calls.

Before the background log writer, a pipe nobody drained filled up (64 KiB) and the next log
call blocked the event loop: with debug logs (the SDPs of every command) the relay stopped
answering ng after a few dozen calls."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from icerelay import bencode
from tests.support.ports import free_ports

pytestmark = pytest.mark.interop

HOST = "127.0.0.1"
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)


def _ng(sock: socket.socket, port: int, cookie: int, body: dict[str, bencode.Encodable]) -> bytes:
    sock.sendto(f"{cookie} ".encode() + bencode.encode(body), (HOST, port))
    while True:
        data = sock.recv(65536)
        if data.startswith(f"{cookie} ".encode()):
            reply = bencode.decode(data.partition(b" ")[2])
            assert isinstance(reply, dict)
            result = reply[b"result"]
            assert isinstance(result, bytes)
            return result


def test_relay_keeps_answering_while_nobody_reads_its_stderr() -> None:
    (ng_port,) = free_ports(1)
    block = free_ports(41, kinds=("udp",), consecutive=True)[0]
    block += block & 1
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICERELAY_")}
    env.update(
        ICERELAY_HTTP__LISTEN="",
        ICERELAY_STUN__ENABLED="0",
        ICERELAY_RELAY__NG_LISTEN=f"{HOST}:{ng_port}",
        ICERELAY_RELAY__NG_TCP="0",
        ICERELAY_RELAY__MEDIAPROXY_SOCKET="",
        ICERELAY_RELAY__ACCOUNTING="",
        ICERELAY_RELAY__DELETE_DELAY="0",
        ICERELAY_RELAY__PORT_MIN=str(block),
        ICERELAY_RELAY__PORT_MAX=str(block + 39),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "icerelay", "serve", "--log-level", "debug"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,  # never read until the end: the stalled supervisor
        env=env,
        start_new_session=True,
    )
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.5)
            for _ in range(40):
                try:
                    assert _ng(sock, ng_port, 0, {"command": "ping"}) == b"pong"
                    break
                except (TimeoutError, ConnectionRefusedError):
                    assert process.poll() is None
            sock.settimeout(5.0)
            # ~1.5 KiB of debug lines per call: 300 calls are several times the pipe's 64 KiB.
            for n in range(300):
                call = {"call-id": f"stalled-{n}", "from-tag": "a"}
                assert (
                    _ng(sock, ng_port, 3 * n + 1, {"command": "offer", **call, "sdp": SDP}) == b"ok"
                )
                answer = {"command": "answer", **call, "to-tag": "b", "sdp": SDP}
                assert _ng(sock, ng_port, 3 * n + 2, answer) == b"ok"
                assert _ng(sock, ng_port, 3 * n + 3, {"command": "delete", **call}) == b"ok"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    text = stderr.decode()
    assert process.returncode == 0, text[-2000:]
    # More than the pipe holds was logged while nobody read: a blocking write would have hung.
    assert len(stderr) > 65536, len(stderr)
    # and, the backlog being larger than this burst, every line came out once the pipe drained.
    assert "call_id=stalled-299" in text and "event=logs.dropped" not in text
