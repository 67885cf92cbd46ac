"""`icerelay phone` to `icerelay phone` on loopback: the call connects, media flows both ways,
and what each side recorded is what the other sent (exact PCMU samples, or the tone).

Each phone is a real process of the command; the answerer binds SIP port 0 and its first line
says which port it got, so nothing here depends on free fixed ports.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from array import array
from pathlib import Path

import pytest

from icerelay.endpoint.audio import dominant_frequency, read_wav, rms, write_wav
from icerelay.endpoint.g711 import decode_ulaw, encode_ulaw

pytestmark = pytest.mark.interop

PHONE = [sys.executable, "-m", "icerelay", "phone"]


def start_answerer(*args: str) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen([*PHONE, "--listen", "127.0.0.1:0", "--answer", "--wait", "15",
                                *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    assert process.stderr is not None
    first = process.stderr.readline()  # "SIP on udp:IP:PORT" comes first, on stderr
    if not first.startswith("SIP on udp:"):
        process.kill()
        raise AssertionError(f"answerer did not start: {first!r} {process.communicate()}")
    return process, int(first.rsplit(":", 1)[1])


def call(port: int, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PHONE, f"sip:bob@127.0.0.1:{port}", *args], capture_output=True,
                          text=True, timeout=timeout)


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        out, err = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return process.returncode, out + err


def test_plain_call_exact_samples_both_ways(tmp_path: Path) -> None:
    rng = random.Random(6)
    # Random speech-like content: exact comparison after one G.711 round trip.
    sent_a = array("h", [rng.randrange(-12000, 12000) for _ in range(8000)])
    sent_b = array("h", [rng.randrange(-12000, 12000) for _ in range(8000)])
    write_wav(tmp_path / "a.wav", sent_a)
    write_wav(tmp_path / "b.wav", sent_b)
    answerer, port = start_answerer("--play", str(tmp_path / "b.wav"), "--record",
                                    str(tmp_path / "b_in.wav"), "--json", "--rtcp-interval",
                                    "1", "--duration", "10")
    caller = call(port, "--play", str(tmp_path / "a.wav"), "--record", str(tmp_path / "a_in.wav"),
                  "--duration", "2", "--json", "--rtcp-interval", "1")
    code, output = finish(answerer)
    assert caller.returncode == 0, caller.stdout + caller.stderr
    assert code == 0, output
    result_a = json.loads(caller.stdout.strip().splitlines()[-1])
    result_b = json.loads(output.strip().splitlines()[-1])
    assert result_a["media_both_ways"] and result_b["media_both_ways"]
    assert result_b["end_reason"] == "remote hangup"
    assert result_a["statistics"]["packets_lost"] == 0
    assert result_a["statistics"]["remote_reported_lost"] == 0  # from the peer's RTCP
    for sent, recorded in ((sent_a, read_wav(tmp_path / "b_in.wav")),
                           (sent_b, read_wav(tmp_path / "a_in.wav"))):
        expected = decode_ulaw(encode_ulaw(sent))
        assert len(recorded) >= len(expected)
        assert recorded[:len(expected)] == expected


def test_plain_call_tone_frequencies_pcma_dtmf(tmp_path: Path) -> None:
    answerer, port = start_answerer("--tone", "1000", "--record", str(tmp_path / "b_in.wav"),
                                    "--codec", "PCMA")
    caller = call(port, "--tone", "440", "--record", str(tmp_path / "a_in.wav"),
                  "--duration", "1.5", "--codec", "PCMA", "--dtmf", "159#")
    code, output = finish(answerer)
    assert caller.returncode == 0, caller.stdout + caller.stderr
    assert code == 0, output
    assert "media: PCMA/8000" in caller.stdout and "media flowed both ways" in output
    assert "dtmf:     159#" in output
    heard_by_a = read_wav(tmp_path / "a_in.wav")
    heard_by_b = read_wav(tmp_path / "b_in.wav")
    assert dominant_frequency(heard_by_a[1600:3200]) == pytest.approx(1000, abs=10)
    assert dominant_frequency(heard_by_b[-3200:-1600]) == pytest.approx(440, abs=10)
    assert rms(heard_by_a[1600:3200]) > 5000


def test_ice_call_on_loopback_with_updated_offer(tmp_path: Path) -> None:
    answerer, port = start_answerer("--ice", "--tone", "1000", "--record",
                                    str(tmp_path / "b_in.wav"), "--debug")
    caller = call(port, "--ice", "--tone", "440", "--record", str(tmp_path / "a_in.wav"),
                  "--duration", "3", "--debug")
    code, output = finish(answerer)
    assert caller.returncode == 0, caller.stdout + caller.stderr
    assert code == 0, output
    out = caller.stdout
    # The offer has the shape of asterisk-ice.txt: ICE credentials and candidates per component.
    assert "a=ice-ufrag:" in out and "a=ice-pwd:" in out
    assert " 1 UDP " in out and " 2 UDP " in out and "typ host" in out
    assert "ICE state: completed" in out
    assert "ICE: completed, selected pair host 127.0.0.1:" in out
    # The controlling side's updated offer (re-INVITE) with a=remote-candidates, handled.
    assert "CSeq: 2 INVITE" in out and "a=remote-candidates:1 127.0.0.1 " in out
    assert "updated offer with remote-candidates" in output
    assert dominant_frequency(read_wav(tmp_path / "a_in.wav")[1600:3200]) == pytest.approx(
        1000, abs=10)
    assert dominant_frequency(read_wav(tmp_path / "b_in.wav")[1600:3200]) == pytest.approx(
        440, abs=10)


def test_ice_caller_with_plain_answerer_falls_back(tmp_path: Path) -> None:
    answerer, port = start_answerer("--tone", "1000")
    caller = call(port, "--ice", "--duration", "1", "--record", str(tmp_path / "a_in.wav"))
    code, output = finish(answerer)
    assert caller.returncode == 0, caller.stdout + caller.stderr
    assert code == 0, output
    assert "the peer does not do ICE: plain RTP" in caller.stdout
    assert dominant_frequency(read_wav(tmp_path / "a_in.wav")[800:2400]) == pytest.approx(
        1000, abs=10)


def test_nobody_answers_and_usage_errors() -> None:
    result = call(9, "--timeout", "1", "--duration", "1")  # discard port: no SIP there
    assert result.returncode == 1 and "FAILED: no call" in result.stdout
    usage = subprocess.run([*PHONE], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2


def test_asterisk_configuration_per_peer_icesupport(tmp_path: Path) -> None:
    # The answerer's sip.conf turns ICE off for the caller's peer ("icerelay", its From user);
    # the caller's sip.conf names the answerer as peer [bob] with ICE on, and its rtp.conf
    # confines media ports to rtpstart/rtpend.
    (tmp_path / "answerer.conf").write_text(
        "[general]\nicesupport=yes\n[icerelay]\nicesupport=no\n")
    answerer, port = start_answerer("--sip-conf", str(tmp_path / "answerer.conf"), "--debug")
    (tmp_path / "sip.conf").write_text(
        f"[general]\nicesupport=no\n[peers](!)\nicesupport=yes\n"
        f"[bob](peers)\nhost=127.0.0.1\nport={port}\ndefaultuser=robert\n")
    (tmp_path / "rtp.conf").write_text(
        "[general]\nrtpstart=21000\nrtpend=21100\n"
        "[ice_host_candidates]\n127.0.0.1 => 127.0.0.3,include_local_address\n")
    caller = subprocess.run(
        [*PHONE, "bob", "--sip-conf", str(tmp_path / "sip.conf"), "--rtp-conf",
         str(tmp_path / "rtp.conf"), "--duration", "1", "--debug"],
        capture_output=True, text=True, timeout=30)
    code, output = finish(answerer)
    assert caller.returncode == 0, caller.stdout + caller.stderr
    assert code == 0, output
    assert f"INVITE sip:robert@127.0.0.1:{port} SIP/2.0" in caller.stdout
    assert "a=ice-ufrag:" in caller.stdout  # offered, per [bob]
    assert "the peer does not do ICE: plain RTP" in caller.stdout  # declined, per [icerelay]
    offer_port = int(caller.stdout.split("m=audio ", 1)[1].split()[0])
    assert 21000 <= offer_port <= 21100
    # [ice_host_candidates]: the 1:1 NAT address is advertised, and the local one kept.
    offer = caller.stdout.split("INVITE sip:", 1)[1].split("<------------->", 1)[0]
    host_candidates = [line for line in offer.splitlines()
                       if line.startswith("a=candidate:") and "typ host" in line]
    assert any(f" 127.0.0.3 {offer_port} " in line for line in host_candidates), offer
    assert any(f" 127.0.0.1 {offer_port} " in line for line in host_candidates), offer


def test_rtp_conf_icesupport_no_wins_over_the_flag(tmp_path: Path) -> None:
    (tmp_path / "rtp.conf").write_text("[general]\nicesupport=no\n")
    answerer, port = start_answerer()
    caller = call(port, "--ice", "--rtp-conf", str(tmp_path / "rtp.conf"), "--duration", "0.5",
                  "--debug")
    code, output = finish(answerer)
    assert caller.returncode == 0 and code == 0, caller.stdout + output
    assert "a=ice-ufrag" not in caller.stdout and "a=candidate" not in caller.stdout


def test_sip_over_tcp(tmp_path: Path) -> None:
    answerer, port = start_answerer("--tone", "1000", "--debug")
    caller = call(port, "--transport", "tcp", "--duration", "1", "--debug", "--record",
                  str(tmp_path / "a.wav"))
    code, output = finish(answerer)
    assert caller.returncode == 0, caller.stdout + caller.stderr
    assert code == 0, output
    assert "Via: SIP/2.0/TCP" in output and "transport=tcp" in output
    # Over a stream nothing is retransmitted: one INVITE, one 200, one ACK, one BYE.
    assert caller.stdout.count("INVITE sip:") == 1 and output.count("SIP/2.0 200 OK") == 2
    assert dominant_frequency(read_wav(tmp_path / "a.wav")[800:2400]) == pytest.approx(
        1000, abs=10)


def test_ipv6_call_with_ice_and_rtcp_mux(tmp_path: Path) -> None:
    process = subprocess.Popen([*PHONE, "--listen", "[::1]:0", "--answer", "--wait", "15",
                                "--ice", "--tone", "1000", "--debug", "--rtcp-interval", "0.5"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    first = process.stderr.readline()
    if not first.startswith("SIP on udp:"):
        process.kill()
        pytest.skip(f"no IPv6 loopback here: {first!r} {process.communicate()}")
    port = int(first.rsplit(":", 1)[1])
    caller = subprocess.run([*PHONE, f"sip:bob@[::1]:{port}", "--listen", "[::1]:0", "--ice",
                             "--rtcp-mux", "--rtcp-interval", "0.5", "--duration", "1.5",
                             "--record", str(tmp_path / "a.wav")],
                            capture_output=True, text=True, timeout=30)
    code, output = finish(process)
    assert caller.returncode == 0, caller.stdout + caller.stderr
    assert code == 0, output
    assert "c=IN IP6 ::1" in output and "typ host" in output
    assert "ICE: completed, selected pair host [::1]:" in caller.stdout
    # One component with rtcp-mux (RFC 5761): the peer's RTCP reports arrive on the RTP pair.
    assert "a=rtcp-mux" in output and "peer reports: lost 0" in caller.stdout
    assert dominant_frequency(read_wav(tmp_path / "a.wav")[800:2400]) == pytest.approx(
        1000, abs=10)


def test_caller_gives_up_while_ringing_and_cancels() -> None:
    answerer, port = start_answerer("--ring", "5", "--debug")
    caller = call(port, "--timeout", "1", "--debug")
    code, output = finish(answerer)
    assert caller.returncode == 1 and "call setup timed out" in caller.stdout, caller.stdout
    assert "call progress: 180 Ringing" in caller.stdout
    assert "CANCEL sip:bob@127.0.0.1" in caller.stdout  # after the 180 (RFC 3261 section 9.1)
    assert "SIP/2.0 487 Request Terminated" in output
    assert code == 1 and "call ended: cancelled by the caller" in output


@pytest.mark.parametrize("lite_side", ["answerer", "caller"])
def test_ice_lite_peer(lite_side: str, tmp_path: Path) -> None:
    lite = ["--ice-lite"]
    answerer, port = start_answerer("--ice", "--tone", "1000", "--debug",
                                    *(lite if lite_side == "answerer" else []))
    caller = call(port, "--ice", "--duration", "2", "--debug", "--record",
                  str(tmp_path / "a.wav"), *(lite if lite_side == "caller" else []))
    code, output = finish(answerer)
    assert caller.returncode == 0, caller.stdout + caller.stderr
    assert code == 0, output
    lite_output, full_output = (output, caller.stdout) if lite_side == "answerer" else (
        caller.stdout, output)
    assert "a=ice-lite" in full_output  # the full agent saw the lite agent's SDP ...
    assert "ICE state: completed" in full_output  # ... and, controlling, nominated
    # The lite agent sent no checks of its own: it only answered (RFC 8445 section 2.5).
    assert "checks sent" not in lite_output or "ICE: 0 checks sent" in lite_output
    assert dominant_frequency(read_wav(tmp_path / "a.wav")[800:2400]) == pytest.approx(
        1000, abs=10)
