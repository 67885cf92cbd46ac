"""A DTLS-SRTP call without ICE (RFC 5763), the caller behind a NAT, through the relay: real DTLS
handshakes by openssl's s_client and s_server.

The caller's SDP names an address where nothing listens (its private address, as seen through
a NAT); it really sends from another port. Its DTLS hello must latch its leg, or the server's
answer goes to the SDP address and the handshake never completes: before the relay latched on
DTLS hellos, such a call had no media at all (SRTP follows the handshake, so nothing else ever
latched the leg)."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import pytest

from icerelay import bencode
from icerelay.daemon.relay_service import RelayService
from tests.support.certs import self_signed
from tests.support.ports import free_ports
from tests.unit.relay.test_service import HOST, NgClient, config

pytestmark = pytest.mark.interop


def _sdp(port: int) -> bytes:
    return (
        f"v=0\r\no=- 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
        f"m=audio {port} UDP/TLS/RTP/SAVP 8\r\na=rtpmap:8 PCMA/8000\r\na=rtcp-mux\r\n"
        "a=setup:actpass\r\n"
        "a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:"
        "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n"
    ).encode()


def _media_port(sdp: bencode.BencodeValue) -> int:
    assert isinstance(sdp, bytes)
    match = re.search(rb"m=audio (\d+) ", sdp)
    assert match is not None, sdp
    return int(match.group(1))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_dtls_handshake_through_the_relay_from_behind_a_nat(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    settings = config()
    # The parties' ports must lie outside the relay's range: an SDP naming a relay port on the
    # relay's host is taken for the relay itself and not used as the party's address.
    callee_port, caller_sdp_port = next(
        ports
        for ports in (free_ports(2, kinds=("udp",)) for _ in range(100))
        if all(not settings.port_min <= port <= settings.port_max for port in ports)
    )

    async def main() -> None:
        service = RelayService(settings)
        await service.start()
        server = await asyncio.create_subprocess_exec(
            "openssl", "s_server", "-dtls1_2", "-accept", f"{HOST}:{callee_port}",
            "-cert", str(cert), "-key", str(key), "-quiet",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        client: asyncio.subprocess.Process | None = None
        try:
            ng = NgClient(service.ng_address)
            call = {"call-id": "dtls@test", "from-tag": "caller"}
            offer = await ng.request({"command": "offer", **call, "sdp": _sdp(caller_sdp_port)})
            assert offer[b"result"] == b"ok", offer
            answer = await ng.request(
                {"command": "answer", **call, "to-tag": "callee", "sdp": _sdp(callee_port)}
            )
            assert answer[b"result"] == b"ok", answer
            # The caller sends to the relay port in the answer it received, from a port of
            # its own (not the one in its SDP: the NAT's mapping).
            relay_port = _media_port(answer[b"sdp"])
            client = await asyncio.create_subprocess_exec(
                "openssl", "s_client", "-dtls1_2", "-connect", f"{HOST}:{relay_port}",
                "-quiet", "-verify_quiet",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            assert client.stdin is not None and server.stdout is not None
            # Written once the handshake is done; s_server prints what it decrypts.
            client.stdin.write(b"hello through the relay\n")
            await client.stdin.drain()
            line = await asyncio.wait_for(server.stdout.readline(), 15)
            assert line == b"hello through the relay\n"
            (session,) = service.sessions_view()
            (stream,) = session["streams"]
            assert stream["sdp_peers"]["caller"] == f"{HOST}:{caller_sdp_port}"
            # Latched on the hello, at the port the caller really sends from.
            latched = stream["caller"]["latched_rtp"]
            assert latched is not None and latched != stream["sdp_peers"]["caller"]
        finally:
            for process in (client, server):
                if process is not None and process.returncode is None:
                    process.kill()
                    await process.wait()
            await service.stop()

    asyncio.run(asyncio.wait_for(main(), 40))
