"""`icerelay phone` against SIPp (Debian package sip-tester) without ICE: plain symmetric RTP.

SIPp runs our own scenarios (tests/interop/sipp/): its built-in uac/uas lose the ACK and BYE
through a record-routing proxy (PEERS.md), ours follow Record-Route. With ``-rtp_echo`` SIPp
sends every RTP packet back where it came from, so media flowing both ways means our packets
reached SIPp and came back: the phone hears its own tone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from icerelay.endpoint.audio import dominant_frequency, read_wav, rms
from tests.support.ports import free_port, free_ports

pytestmark = pytest.mark.interop

SIPP = shutil.which("sipp")
SCENARIOS = Path(__file__).parent / "sipp"
PHONE = [sys.executable, "-m", "icerelay", "phone"]


@pytest.fixture
def sipp() -> str:
    if SIPP is None:
        pytest.skip("sipp is not installed (Debian package 'sip-tester', "
                    "see scripts/install-debian-deps)")
    return SIPP


def sipp_command(binary: str, scenario: str, sip_port: int, media_port: int,
                 *extra: str) -> list[str]:
    return [binary, "-sf", str(SCENARIOS / scenario), "-i", "127.0.0.1", "-p", str(sip_port),
            "-mi", "127.0.0.1", "-mp", str(media_port), "-rtp_echo", "-m", "1", "-nostdin",
            "-timeout", "20s", "-timeout_error", *extra]


def sipp_calls_phone(sipp: str, tmp_path: Path, scenario: str, pause_ms: int,
                     *phone_args: str) -> tuple[subprocess.CompletedProcess[str], int, str, str]:
    """SIPp's ``scenario`` (``-d pause_ms``) calls an answering phone started with ``phone_args``.

    Returns SIPp's result, the phone's exit status, stdout and stderr.
    """
    phone = subprocess.Popen(
        [*PHONE, "--listen", "127.0.0.1:0", "--answer", "--wait", "20", "--duration", "10",
         *phone_args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert phone.stderr is not None
        first = phone.stderr.readline()
        assert first.startswith("SIP on udp:"), first
        phone_port = int(first.rsplit(":", 1)[1])
        media_port = free_ports(4, kinds=("udp",), consecutive=True)[0]
        uac = subprocess.run(
            [*sipp_command(sipp, scenario, free_port(kinds=("udp",)), media_port),
             "-s", "bob", "-d", str(pause_ms), f"127.0.0.1:{phone_port}"],
            capture_output=True, text=True, timeout=30, cwd=tmp_path)
        out, err = phone.communicate(timeout=20)
    finally:
        if phone.poll() is None:
            phone.kill()
            phone.communicate()
    return uac, phone.returncode, out, err


def test_phone_calls_sipp_uas_and_hears_the_echo(sipp: str, tmp_path: Path) -> None:
    sip_port = free_port(kinds=("udp",))
    media_port = free_ports(4, kinds=("udp",), consecutive=True)[0]
    uas = subprocess.Popen(sipp_command(sipp, "uas_echo.xml", sip_port, media_port),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           cwd=tmp_path)
    try:
        result = None
        for _ in range(3):  # SIPp needs a moment to bind; the phone's INVITE is retransmitted
            result = subprocess.run(
                [*PHONE, f"sip:sipp@127.0.0.1:{sip_port}", "--duration", "2", "--tone", "800",
                 "--record", str(tmp_path / "echo.wav"), "--timeout", "10"],
                capture_output=True, text=True, timeout=30)
            if result.returncode == 0 or "no call" not in result.stdout:
                break
        assert result is not None
        assert result.returncode == 0, result.stdout + result.stderr
        assert "symmetric RTP to 127.0.0.1:" in result.stdout
        assert "media flowed both ways" in result.stdout
        uas_out, _ = uas.communicate(timeout=20)
        assert uas.returncode == 0, uas_out
    finally:
        if uas.poll() is None:
            uas.kill()
            uas.communicate()
    echo = read_wav(tmp_path / "echo.wav")
    assert len(echo) > 8000
    assert dominant_frequency(echo[1600:3200]) == pytest.approx(800, abs=10)
    assert rms(echo[1600:3200]) > 5000


def test_sipp_uac_calls_the_phone(sipp: str, tmp_path: Path) -> None:
    uac, phone_status, out, err = sipp_calls_phone(
        sipp, tmp_path, "uac_echo.xml", 2000,
        "--tone", "600", "--record", str(tmp_path / "echo.wav"), "--json")
    assert uac.returncode == 0, uac.stdout[-2000:]
    assert phone_status == 0, out + err
    assert '"media_both_ways": true' in out and '"end_reason": "remote hangup"' in out
    echo = read_wav(tmp_path / "echo.wav")
    assert dominant_frequency(echo[1600:3200]) == pytest.approx(600, abs=10)


def test_phone_calls_sipp_over_tcp(sipp: str, tmp_path: Path) -> None:
    sip_port = free_port(kinds=("tcp",))
    media_port = free_ports(4, kinds=("udp",), consecutive=True)[0]
    uas = subprocess.Popen([*sipp_command(sipp, "uas_echo.xml", sip_port, media_port), "-t", "t1",
                            "-trace_err"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           cwd=tmp_path)
    try:
        result = None
        for _ in range(3):
            result = subprocess.run(
                [*PHONE, f"sip:sipp@127.0.0.1:{sip_port};transport=tcp", "--duration", "1",
                 "--timeout", "5"], capture_output=True, text=True, timeout=30)
            if result.returncode == 0 or "cannot connect" not in result.stdout:
                break
            time.sleep(0.3)  # SIPp was not listening yet
        assert result is not None
        assert result.returncode == 0, result.stdout + result.stderr
        uas_out, _ = uas.communicate(timeout=20)
        assert uas.returncode == 0, uas_out
    finally:
        if uas.poll() is None:
            uas.kill()
            uas.communicate()


def test_sipp_puts_the_phone_on_hold(sipp: str, tmp_path: Path) -> None:
    """A re-INVITE with a=sendonly: the phone answers a=recvonly and stops sending."""
    uac, phone_status, out, err = sipp_calls_phone(sipp, tmp_path, "uac_hold.xml", 1000, "--json")
    assert uac.returncode == 0, uac.stdout[-2000:]
    assert phone_status == 0, out + err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["reinvites"] == 1
    # About 1 s of media before the hold (50 packets), none during the second.
    assert 40 <= result["statistics"]["packets_sent"] <= 65, result["statistics"]


def test_ice_mismatch_falls_back_to_plain_rtp(sipp: str, tmp_path: Path) -> None:
    uac, phone_status, out, err = sipp_calls_phone(
        sipp, tmp_path, "uac_ice_mismatch.xml", 1000, "--ice")
    assert uac.returncode == 0, uac.stdout[-2000:]  # the answer had a=ice-mismatch
    assert phone_status == 0, out + err
    assert "ICE mismatch" in out and "symmetric RTP to 127.0.0.1:" in out
