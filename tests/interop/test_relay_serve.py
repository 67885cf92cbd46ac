"""``icerelay serve`` runs the media relay: ng answers on its port, and a graceful stop (SIGINT, as
a restart does) writes the records of the calls still up, so accounting loses nothing."""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from icerelay import bencode
from tests.support.ports import free_ports
from tests.support.serve import ServeProcess

pytestmark = pytest.mark.interop

HOST = "127.0.0.1"
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0\r\n"
)


def ng(
    port: int, cookie: bytes, body: dict[str, bencode.Encodable], timeout: float = 3.0
) -> dict[bytes, bencode.BencodeValue]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(cookie + b" " + bencode.encode(body), (HOST, port))
        data = sock.recv(65536)
    reply = bencode.decode(data.partition(b" ")[2])
    assert isinstance(reply, dict)
    return reply


def test_serve_runs_the_relay_and_stops_gracefully(
    serve_factory: Callable[..., ServeProcess], tmp_path: Path
) -> None:
    stun_port, ng_port = free_ports(2)
    block = free_ports(21, kinds=("udp",), consecutive=True)
    first = block[0] + (block[0] & 1)
    database = tmp_path / "sessions.sqlite3"
    server = serve_factory(
        ["--stun-listen", f"{HOST}:{stun_port}"],
        host=HOST,
        port=stun_port,
        env={
            "ICERELAY_RELAY__ENABLED": "1",
            "ICERELAY_RELAY__NG_LISTEN": f"{HOST}:{ng_port}",
            "ICERELAY_RELAY__PORT_MIN": str(first),
            "ICERELAY_RELAY__PORT_MAX": str(first + 19),
            "ICERELAY_RELAY__MEDIAPROXY_SOCKET": "",
            "ICERELAY_RELAY__ACCOUNTING": f"sqlite://{database}",
        },
    )
    # STUN answering does not mean the relay (started after it, journal first) listens yet.
    for attempt in range(20):
        try:
            assert ng(ng_port, b"1", {"command": "ping"}, 0.5) == {b"result": b"pong"}
            break
        except TimeoutError:
            assert attempt < 19
    offer = ng(ng_port, b"2", {"command": "offer", "call-id": "up", "from-tag": "a", "sdp": SDP})
    assert offer[b"result"] == b"ok", offer
    answer = ng(
        ng_port,
        b"3",
        {"command": "answer", "call-id": "up", "from-tag": "a", "to-tag": "b", "sdp": SDP},
    )
    assert answer[b"result"] == b"ok", answer
    # SIGINT right after the last request: the stop must not hang, and the call still up gets
    # its record ("shutdown") before the process exits.
    assert server.stop() == 0, server.output()
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT call_id, to_tag, reason FROM sessions").fetchall()
    assert rows == [("up", "b", "shutdown")]


def test_serve_relay_settings_are_validated() -> None:
    """A bad [relay] setting stops serve with status 2 and names the setting."""
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if not key.startswith("ICERELAY_")}
    env["ICERELAY_RELAY__ACCOUNTING"] = "mysql://db/x"
    result = subprocess.run(
        [sys.executable, "-m", "icerelay", "serve", "--stun-listen", f"{HOST}:0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result
    assert "accounting" in result.stderr + result.stdout
