"""Run SIPp (Debian's sip-tester) with the scenarios in tests/interop/kamailio/, read its traces.

Every run writes its message trace (``-trace_msg``) to a file of our choosing, so a test can read
exactly which SIP messages (and SDP bodies) each side sent and received: that is how the SDPs a
relay rewrote are captured without touching the proxy. :func:`read_messages` parses the trace.

The scenarios need a few things from the launcher: the caller streams ``audio.alaw`` from its
working directory (written here: one second of A-law, 50 RTP packets of 172 bytes), and learns
the callee's address from ``-key uas HOST:PORT``.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.kamailio import CONFIG_DIR
from tests.support.process import spawn_logged, stop_group

__all__ = [
    "AUDIO_PACKETS",
    "RTP_PACKET_SIZE",
    "SipMessage",
    "Sipp",
    "read_messages",
    "start_sipp",
    "unavailable_reason",
]

#: What the caller's rtp_stream sends: 1 s of 8 kHz A-law in 20 ms packets (160 bytes + RTP header).
AUDIO_PACKETS = 50
RTP_PACKET_SIZE = 12 + 160
_SEPARATOR = re.compile(r"^-{20,} .*$", re.MULTILINE)
_HEADER = re.compile(r"^(UDP|TCP) message (sent|received)", re.MULTILINE)


def unavailable_reason() -> str | None:
    """Why SIPp can't run here (None when it can)."""
    if shutil.which("sipp") is None:
        return "sipp not installed (Debian package sip-tester; run scripts/install-debian-deps)"
    return None


@dataclass(frozen=True)
class SipMessage:
    """One message of a SIPp trace."""

    direction: str  # "sent" | "received"
    text: str

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0].strip()

    @property
    def is_request(self) -> bool:
        return not self.first_line.startswith("SIP/2.0")

    @property
    def method_or_status(self) -> str:
        """``INVITE`` for requests, ``200`` for responses."""
        parts = self.first_line.split()
        return parts[1] if not self.is_request and len(parts) > 1 else (parts[0] if parts else "")

    def header(self, name: str) -> str | None:
        head = self.text.split("\n\n", 1)[0]
        for line in head.split("\n")[1:]:
            key, sep, value = line.partition(":")
            if sep and key.strip().lower() == name.lower():
                return value.strip()
        return None

    @property
    def body(self) -> str:
        """The body, with CRLF line endings as on the wire (SIPp's trace keeps them)."""
        parts = re.split(r"\r?\n\r?\n", self.text, maxsplit=1)
        return parts[1] if len(parts) == 2 else ""


def read_messages(path: Path) -> list[SipMessage]:
    """Parse a SIPp ``-trace_msg`` file into messages, in order."""
    try:
        content = path.read_text(errors="replace")
    except OSError:
        return []
    messages: list[SipMessage] = []
    for block in _SEPARATOR.split(content):
        match = _HEADER.search(block)
        if match is None:
            continue
        rest = block[match.end() :]
        # After the header line comes one empty line, then the message as sent or received.
        rest = rest.split("\n", 1)[1] if "\n" in rest else ""
        text = rest.lstrip("\r\n").rstrip("\r\n ") + "\r\n"
        messages.append(SipMessage(match.group(2), text))
    return messages


@dataclass
class Sipp:
    """A running SIPp instance."""

    process: subprocess.Popen[bytes]
    name: str
    workdir: Path
    argv: list[str] = field(default_factory=list)

    @property
    def trace_path(self) -> Path:
        return self.workdir / f"{self.name}_messages.log"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def messages(self) -> list[SipMessage]:
        return read_messages(self.trace_path)

    def log(self) -> str:
        parts = []
        for path in (self.log_path, self.workdir / f"{self.name}_errors.log"):
            with contextlib.suppress(OSError):
                parts.append(path.read_text(errors="replace")[-2000:])
        return "\n".join(parts)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise

    def stop(self) -> None:
        stop_group(self.process)


def start_sipp(
    workdir: Path,
    name: str,
    *,
    scenario: str,
    local_ip: str,
    port: int,
    media_port: int,
    remote: str | None = None,
    rtp_echo: bool = False,
    keys: dict[str, str] | None = None,
    calls: int = 1,
    timeout: float = 20.0,
    extra: Sequence[str] = (),
) -> Sipp:
    """Start ``sipp`` with ``tests/interop/kamailio/<scenario>`` (not waiting for it to finish).

    ``remote`` is ``host:port`` for a caller; a callee leaves it out and waits for the INVITE.
    """
    binary = shutil.which("sipp")
    if binary is None:
        raise RuntimeError(unavailable_reason() or "sipp not found")
    workdir.mkdir(parents=True, exist_ok=True)
    audio = workdir / "audio.alaw"
    if not audio.exists():
        audio.write_bytes(b"\xd5" * 160 * AUDIO_PACKETS)  # A-law silence
    argv = [binary]
    if remote is not None:
        argv.append(remote)
    argv += [
        "-sf", str(CONFIG_DIR / scenario),
        "-i", local_ip,
        "-p", str(port),
        "-mi", local_ip,
        "-mp", str(media_port),
        "-m", str(calls),
        "-nostdin",
        "-timeout", f"{int(timeout)}s",
        "-timeout_error",  # a timeout is a failure (non-zero exit), not a quiet stop
        "-trace_msg", "-message_file", str(workdir / f"{name}_messages.log"),
        "-trace_err", "-error_file", str(workdir / f"{name}_errors.log"),
    ]  # fmt: skip
    if rtp_echo:
        argv.append("-rtp_echo")
    for key, value in (keys or {}).items():
        argv += ["-key", key, value]
    argv += list(extra)
    process = spawn_logged(argv, workdir / f"{name}.log", cwd=workdir, stdin=subprocess.DEVNULL)
    return Sipp(process, name, workdir, argv)


@dataclass
class CallOutcome:
    """What one caller/callee pair saw of a call placed through a proxy."""

    uac: Sipp
    uas: Sipp
    uac_status: int
    uas_status: int
    uac_address: tuple[str, int]  # the caller's SIP and media address (media: port)
    uas_address: tuple[str, int]
    uac_media_port: int
    uas_media_port: int

    def _find(self, side: Sipp, direction: str, kind: str) -> SipMessage:
        for message in side.messages():
            if message.direction == direction and message.method_or_status == kind and message.body:
                return message
        raise AssertionError(f"{side.name} {direction} no {kind} with a body:\n{side.log()}")

    @property
    def offer_sent(self) -> SipMessage:
        return self._find(self.uac, "sent", "INVITE")

    @property
    def offer_received(self) -> SipMessage:
        """The INVITE as the callee got it: its SDP is the relay's rewritten offer."""
        return self._find(self.uas, "received", "INVITE")

    @property
    def answer_sent(self) -> SipMessage:
        return self._find(self.uas, "sent", "200")

    @property
    def answer_received(self) -> SipMessage:
        """The 200 OK as the caller got it: its SDP is the relay's rewritten answer."""
        return self._find(self.uac, "received", "200")

    def logs(self) -> str:
        return f"--- uac ---\n{self.uac.log()}\n--- uas ---\n{self.uas.log()}"


def place_call(
    workdir: Path,
    *,
    proxy: tuple[str, int],
    uac_ip: str = "127.0.0.2",
    uas_ip: str = "127.0.0.3",
    calls: int = 1,
    timeout: float = 30.0,
) -> CallOutcome:
    """``calls`` calls through ``proxy``, all at once: uas.xml (echoing RTP) answers, uac.xml
    calls, both must end.

    Caller and callee sit on their own loopback addresses, apart from the proxy's and the relay's
    127.0.0.1, so a rewritten ``c=``/``o=`` is visibly the relay's and not a coincidence.
    """
    from tests.support.ports import free_ports

    (uac_port,) = free_ports(1, hosts=(uac_ip,), kinds=("udp",))
    (uas_port,) = free_ports(1, hosts=(uas_ip,), kinds=("udp",))
    # SIPp binds its media port and the next ones (RTCP, video): a free block of four each.
    uac_block = free_ports(5, hosts=(uac_ip,), kinds=("udp",), consecutive=True)
    uas_block = free_ports(5, hosts=(uas_ip,), kinds=("udp",), consecutive=True)
    uac_media = uac_block[0] + (uac_block[0] & 1)
    uas_media = uas_block[0] + (uas_block[0] & 1)
    uas = start_sipp(
        workdir / "uas", "uas", scenario="uas.xml", local_ip=uas_ip, port=uas_port,
        media_port=uas_media, rtp_echo=True, timeout=timeout, calls=calls,
    )  # fmt: skip
    uac: Sipp | None = None
    try:
        # SIPp binds its sockets within a few ms; the caller's INVITE is retransmitted anyway.
        import time

        time.sleep(0.2)
        uac = start_sipp(
            workdir / "uac", "uac", scenario="uac.xml", local_ip=uac_ip, port=uac_port,
            media_port=uac_media, remote=f"{proxy[0]}:{proxy[1]}",
            keys={"uas": f"{uas_ip}:{uas_port}"}, timeout=timeout, calls=calls,
            # All calls up together (-l), started within a fraction of a second (-r per s).
            extra=["-l", str(calls), "-r", str(max(1, calls * 4))],
        )  # fmt: skip
        uac_status = uac.wait(timeout + 10)
        uas_status = uas.wait(10)
    finally:
        if uac is not None:
            uac.stop()
        uas.stop()
    return CallOutcome(
        uac, uas, uac_status, uas_status, (uac_ip, uac_port), (uas_ip, uas_port),
        uac_media, uas_media,
    )  # fmt: skip
