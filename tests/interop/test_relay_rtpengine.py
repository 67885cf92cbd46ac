"""The same ng requests to rtpengine 10.5 and to icerelay: the rewritten SDPs agree on what the
flags ask for.

Compared per case: the addresses the flags replace (``o=``, session and media ``c=``), that every
stream moved to a relay port, the codecs left alone, and the ICE lines each ``ICE=`` mode asks for.
Not compared, on purpose: port numbers, line order (rtpengine re-renders the body, icerelay keeps
it byte-exact), ``a=rtcp`` (rtpengine always writes one), and ``ICE`` left at its default, where
the two differ by design (rtpengine 10.5 terminates ICE itself; icerelay adds itself as a relay
candidate per the MediaProxy ICE policy).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from icerelay import bencode
from icerelay.daemon.relay_config import RelayServiceConfig
from icerelay.daemon.relay_service import RelayService
from icerelay.sdp import Candidate, SessionDescription
from tests.support.ports import free_ports
from tests.unit.relay.samples import ASTERISK, PLAIN

pytestmark = pytest.mark.interop

HOST = "127.0.0.1"
RTPENGINE = shutil.which("rtpengine")


def ng_request(
    port: int, body: dict[str, bencode.Encodable], cookie: bytes
) -> dict[bytes, bencode.BencodeValue]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(cookie + b" " + bencode.encode(body), (HOST, port))
        data = sock.recv(65536)
    got, _, payload = data.partition(b" ")
    assert got == cookie
    reply = bencode.decode(payload)
    assert isinstance(reply, dict)
    return reply


@pytest.fixture(scope="module")
def rtpengine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, range]]:
    if RTPENGINE is None:
        pytest.skip("rtpengine is not installed (Debian package 'rtpengine-daemon')")
    workdir = tmp_path_factory.mktemp("rtpengine")
    ng_port = free_ports(1, kinds=("udp",))[0]
    block = free_ports(101, kinds=("udp",), consecutive=True)
    first = block[0] + (block[0] & 1)
    config = workdir / "rtpengine.conf"
    # Userspace only (table = -1), loopback only, its own ports: nothing of /etc is read.
    config.write_text(
        "[rtpengine]\n"
        "table = -1\n"
        f"interface = {HOST}\n"
        f"listen-ng = {HOST}:{ng_port}\n"
        f"port-min = {first}\n"
        f"port-max = {first + 99}\n"
        "foreground = true\n"
        "log-stderr = true\n"
        "log-level = 5\n"
    )
    log = (workdir / "rtpengine.log").open("wb")
    process = subprocess.Popen(
        [RTPENGINE, f"--config-file={config}", f"--pidfile={workdir / 'pid'}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, (workdir / "rtpengine.log").read_text()
            try:
                if ng_request(ng_port, {"command": "ping"}, b"ping")[b"result"] == b"pong":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "rtpengine did not answer ping"
            time.sleep(0.1)
        yield ng_port, range(first, first + 100)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


@pytest.fixture(scope="module")
def icerelay() -> Iterator[tuple[int, range]]:
    block = free_ports(101, kinds=("udp",), consecutive=True)
    first = block[0] + (block[0] & 1)
    config = RelayServiceConfig(
        ng_listen=(HOST, 0),
        ng_tcp=False,
        port_min=first,
        port_max=first + 99,
        mediaproxy_socket="",
        accounting="",
    )
    service = RelayService(config)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(service.start(), loop).result(30)
    try:
        yield service.ng_address.port, range(first, first + 100)
    finally:
        asyncio.run_coroutine_threadsafe(service.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def offer_both(
    rtpengine: tuple[int, range],
    icerelay: tuple[int, range],
    sdp: bytes,
    call_id: str,
    **extra: bencode.Encodable,
) -> tuple[SessionDescription, SessionDescription]:
    results = []
    for port, _ in (rtpengine, icerelay):
        body: dict[str, bencode.Encodable] = {
            "command": "offer",
            "call-id": call_id,
            "from-tag": "caller",
            "sdp": sdp,
            # What Kamailio's rtpengine module sends with its default flags.
            "replace": ["origin", "session-connection"],
            "received-from": ["IP4", "10.0.1.40"],
            **extra,
        }
        reply = ng_request(port, body, call_id.encode())
        assert reply[b"result"] == b"ok", reply
        sdp_out = reply[b"sdp"]
        assert isinstance(sdp_out, bytes)
        results.append(SessionDescription.parse(sdp_out))
    return results[0], results[1]


def addresses(sdp: SessionDescription) -> tuple[str | None, str | None, list[str | None]]:
    """The addresses the replace flags act on: o=, session c=, each stream's effective c=."""
    origin = sdp.origin.address if sdp.origin else None
    session = sdp.connection.address if sdp.connection else None
    media = []
    for description in sdp.media:
        connection = description.effective_connection(sdp)
        media.append(connection.address if connection else None)
    return origin, session, media


def relay_candidates(sdp: SessionDescription, index: int = 0) -> list[Candidate]:
    return [c for c in sdp.media[index].candidates() if c.address == HOST]


def test_replace_origin_and_session_connection(
    rtpengine: tuple[int, range], icerelay: tuple[int, range]
) -> None:
    theirs, ours = offer_both(rtpengine, icerelay, PLAIN, "plain-1")
    assert addresses(theirs) == addresses(ours) == (HOST, HOST, [HOST])
    assert theirs.media[0].port in rtpengine[1] and ours.media[0].port in icerelay[1]
    assert theirs.media[0].formats == ours.media[0].formats == ("8", "101")
    assert [m.rtpmaps() for m in theirs.media] == [m.rtpmaps() for m in ours.media]


def test_ice_remove(rtpengine: tuple[int, range], icerelay: tuple[int, range]) -> None:
    theirs, ours = offer_both(rtpengine, icerelay, ASTERISK, "remove-1", ICE="remove")
    for sdp in (theirs, ours):
        assert addresses(sdp) == (HOST, HOST, [HOST])
        audio = sdp.media[0]
        assert audio.ice_credentials(sdp) is None
        assert not relay_candidates(sdp)
        # The peer's own host candidate (its private address) is gone in both.
        assert not [c for c in audio.candidates() if c.address == "10.0.1.40"]


def test_ice_force(rtpengine: tuple[int, range], icerelay: tuple[int, range]) -> None:
    theirs, ours = offer_both(rtpengine, icerelay, ASTERISK, "force-1", ICE="force")
    shapes = []
    for sdp in (theirs, ours):
        assert addresses(sdp) == (HOST, HOST, [HOST])
        audio = sdp.media[0]
        credentials = audio.ice_credentials(sdp)
        assert credentials is not None
        assert credentials.ufrag != "0d9cc44338ad8ced48b2d92c34556f4e"  # the relay's own
        assert not [c for c in audio.candidates() if c.address == "10.0.1.40"]
        candidates = relay_candidates(sdp)
        assert [c.port for c in candidates] == [audio.port, audio.port + 1]
        shapes.append([(c.component, c.type, c.priority, c.transport.upper()) for c in candidates])
    assert (
        shapes[0] == shapes[1] == [(1, "host", 2130706431, "UDP"), (2, "host", 2130706430, "UDP")]
    )


def test_ice_force_relay(rtpengine: tuple[int, range], icerelay: tuple[int, range]) -> None:
    theirs, ours = offer_both(rtpengine, icerelay, ASTERISK, "force-relay-1", ICE="force-relay")
    shapes = []
    for sdp in (theirs, ours):
        # The peer's defaults stay (even with replace-origin); its candidates stay too.
        assert addresses(sdp) == ("10.0.1.40", "10.0.1.40", ["10.0.1.40"])
        assert sdp.media[0].port == 17234
        peer = [c for c in sdp.media[0].candidates() if c.address != HOST]
        assert len(peer) == 4
        candidates = relay_candidates(sdp)
        assert all(c.related_address == HOST and c.related_port == c.port for c in candidates)
        assert candidates[1].port == candidates[0].port + 1
        shapes.append([(c.component, c.type, c.priority) for c in candidates])
    # rtpengine's relay candidate has the priority of icerelay's "low" policy: type preference 0.
    assert shapes[0] == shapes[1] == [(1, "relay", 16777215), (2, "relay", 16777214)]
