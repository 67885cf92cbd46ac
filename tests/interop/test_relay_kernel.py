"""The nftables data plane: a call whose media the kernel forwards, in network namespaces.

Topology (namespaces named ``kernel<pid>x<n>-<role>``)::

    caller 10.77.1.2 ──veth── 10.77.1.1 relay 10.77.2.1 ──veth── 10.77.2.2 callee
                              (relay ports on 10.77.1.1, ip_forward on)

``icerelay serve`` runs in the relay namespace with ``dataplane = "kernel"`` and strict source; the
test itself opens sockets inside each namespace (``setns`` in a short-lived thread: a socket
stays in the namespace it was created in) and drives the call over ng. The checks: the first
packet of each side goes through the relay process (latching), the rest is forwarded by nftables
(the relay process is stopped with SIGSTOP meanwhile, and the packets still arrive, from the
relay's ports; the per-element counters count them), a stranger's packets are not forwarded,
the record counts exactly 50 packets / 8,600 bytes each way, and the ``icerelay`` table is gone
after SIGTERM, and replaced by an empty one after kill -9 and a restart. A Kamailio + SIPp call
in a namespace of its own is forwarded by the kernel too, with an exact record.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from icerelay import bencode
from icerelay.daemon.relay_config import RelayServiceConfig
from icerelay.dataplane.nftables import NftablesDataPlane
from icerelay.relay.sessions import TerminationReason
from tests.support import kamailio as kamailio_support
from tests.support import netns
from tests.support.relayd import RelayThread
from tests.support.serve import ServeProcess, icerelay_command, start_serve

pytestmark = pytest.mark.interop

RELAY, CALLER, CALLEE = "10.77.1.1", "10.77.1.2", "10.77.2.2"
NG_PORT, STUN_PORT = 2223, 3478
PAYLOAD = 160  # 20 ms of PCMA; with the 12-byte RTP header, 172 bytes per packet
_CLONE_NEWNET = 0x40000000
# A STUN Binding request (RFC 8489 §5): what an ICE connectivity check looks like.
_BINDING = bytes.fromhex("0001 0000 2112a442") + bytes(range(12))


def _enter(namespace: str) -> None:
    """Move the calling thread (only it) into ``namespace``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{namespace}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns failed")
    finally:
        os.close(fd)


def _socket_in(namespace: str, host: str, port: int) -> socket.socket:
    """A UDP socket bound to ``host:port`` inside ``namespace``."""
    result: list[socket.socket | BaseException] = []

    def enter() -> None:
        try:
            _enter(namespace)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((host, port))
            sock.settimeout(1)
            result.append(sock)
        except BaseException as error:
            result.append(error)

    # setns changes the calling thread only: this one is thrown away afterwards.
    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def _rtp(sequence: int) -> bytes:
    return bytes([0x80, 8]) + sequence.to_bytes(2, "big") + bytes(8) + b"\xd5" * PAYLOAD


def _sdp(host: str, port: int) -> bytes:
    return (
        f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 8\r\n"
    ).encode()


def _media_port(sdp: bytes) -> int:
    for line in sdp.split(b"\r\n"):
        if line.startswith(b"m=audio "):
            return int(line.split()[1])
    raise AssertionError(f"no m=audio in {sdp!r}")


class _Ng:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.cookie = 0

    def __call__(self, **body: bencode.Encodable) -> dict[bytes, bencode.BencodeValue]:
        self.cookie += 1
        cookie = str(self.cookie).encode()
        request = cookie + b" " + bencode.encode(dict(body))
        # serve answers STUN (its readiness probe) before the relay's ng port is bound:
        # retransmit as a proxy does (the relay answers a repeated cookie from its cache).
        for _attempt in range(10):
            self.sock.sendto(request, (RELAY, NG_PORT))
            try:
                data = self.sock.recv(65536)
                break
            except TimeoutError:
                continue
        else:
            raise AssertionError(f"no ng answer to {body.get('command')}")
        reply = bencode.decode(data.partition(b" ")[2])
        assert isinstance(reply, dict)
        assert reply.get(b"result") in (b"ok", b"pong"), reply
        return reply


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    reason = netns.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with netns.Lab(prefix="kernel") as lab:
        yield lab


def _topology(lab: netns.Lab) -> tuple[netns.Namespace, netns.Namespace, netns.Namespace]:
    relay, caller, callee = lab.namespace("relay"), lab.namespace("caller"), lab.namespace("callee")
    lab.link(relay, caller, [f"{RELAY}/24"], [f"{CALLER}/24"])
    lab.link(relay, callee, ["10.77.2.1/24"], [f"{CALLEE}/24"])
    relay.sysctl("net.ipv4.ip_forward", "1")
    caller.run("ip", "route", "add", "default", "via", RELAY)
    callee.run("ip", "route", "add", "default", "via", "10.77.2.1")
    return relay, caller, callee


def _serve(relay: netns.Namespace, database: Path) -> ServeProcess:
    return start_serve(
        ["--stun-listen", f"{RELAY}:{STUN_PORT}"],
        host=RELAY,
        port=STUN_PORT,
        namespace=relay,
        env={
            "ICERELAY_RELAY__ENABLED": "1",
            "ICERELAY_RELAY__NG_LISTEN": f"{RELAY}:{NG_PORT}",
            "ICERELAY_RELAY__ADDRESS_IPV4": RELAY,
            "ICERELAY_RELAY__PORT_MIN": "30000",
            "ICERELAY_RELAY__PORT_MAX": "30099",
            "ICERELAY_RELAY__MEDIAPROXY_SOCKET": "",
            "ICERELAY_RELAY__ACCOUNTING": f"sqlite://{database}",
            "ICERELAY_RELAY__DATAPLANE": "kernel",
            "ICERELAY_RELAY__STRICT_SOURCE": "1",
            "ICERELAY_RELAY__DELETE_DELAY": "0",
            "ICERELAY_RELAY__KERNEL_POLL_INTERVAL": "0.2",
        },
    )


def _inbound(relay: netns.Namespace) -> list[tuple[list[object], int, int]]:
    """The elements of the ``inbound`` maps: (key, packets, bytes)."""
    listing = json.loads(relay.run("nft", "-j", "list", "table", "ip", "icerelay").stdout)
    elements = []
    for item in listing["nftables"]:
        described = item.get("map", {})
        if not described.get("name", "").startswith("inbound"):
            continue
        for key, _mark in described.get("elem", []):
            elem = key["elem"]
            counter = elem["counter"]
            elements.append((elem["val"]["concat"], counter["packets"], counter["bytes"]))
    return elements


def _call(ng: _Ng, call_id: str) -> tuple[int, int]:
    """Offer and answer; the relay ports (the caller's, the callee's)."""
    offer = ng(command="offer", **{"call-id": call_id, "from-tag": "a", "sdp": _sdp(CALLER, 5000)})
    answer = ng(
        command="answer",
        **{"call-id": call_id, "from-tag": "a", "to-tag": "b", "sdp": _sdp(CALLEE, 6000)},
    )
    offer_sdp, answer_sdp = offer[b"sdp"], answer[b"sdp"]
    assert isinstance(offer_sdp, bytes) and isinstance(answer_sdp, bytes)
    return _media_port(answer_sdp), _media_port(offer_sdp)


def _exchange(
    caller: socket.socket, callee: socket.socket, port_a: int, port_b: int, first: int, count: int
) -> None:
    """``count`` packets each way; each arrives from the relay's port of the other leg."""
    for sequence in range(first, first + count):
        caller.sendto(_rtp(sequence), (RELAY, port_a))
        data, source = callee.recvfrom(2048)
        assert (data, source) == (_rtp(sequence), (RELAY, port_b))
        callee.sendto(_rtp(sequence), (RELAY, port_b))
        data, source = caller.recvfrom(2048)
        assert (data, source) == (_rtp(sequence), (RELAY, port_a))


def test_kernel_forwards_a_latched_call(lab: netns.Lab, tmp_path: Path) -> None:
    relay, caller_ns, callee_ns = _topology(lab)
    database = tmp_path / "sessions.sqlite3"
    server = _serve(relay, database)
    try:
        ng = _Ng(_socket_in(caller_ns.name, CALLER, 0))
        caller = _socket_in(caller_ns.name, CALLER, 5000)
        callee = _socket_in(callee_ns.name, CALLEE, 6000)
        stranger = _socket_in(caller_ns.name, CALLER, 5002)
        port_a, port_b = _call(ng, "kernel-call")
        # The first packet each way latches, in the relay process; then the routes go in.
        _exchange(caller, callee, port_a, port_b, 0, 1)
        deadline = time.monotonic() + 5
        while len(_inbound(relay)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(_inbound(relay)) == 2, relay.run("nft", "list", "ruleset").stdout
        # With the relay process stopped, only the kernel can forward the rest.
        os.killpg(server.process.pid, signal.SIGSTOP)
        try:
            _exchange(caller, callee, port_a, port_b, 1, 49)
            # A stranger's packets to the caller's relay port are not forwarded, and an ICE
            # check from the latched source is not forwarded by the kernel either: the latching
            # policy (step-aside, ICE-lite) must see it.
            for sequence in range(10):
                stranger.sendto(_rtp(1000 + sequence), (RELAY, port_a))
            caller.sendto(_BINDING, (RELAY, port_a))
            callee.settimeout(0.3)
            with pytest.raises(TimeoutError):
                callee.recvfrom(2048)
        finally:
            os.killpg(server.process.pid, signal.SIGCONT)
        # Running again, the relay process forwards the check (and drops the stranger's packets).
        callee.settimeout(2)
        assert callee.recvfrom(2048) == (_BINDING, (RELAY, port_b))
        callee.settimeout(0.3)
        with pytest.raises(TimeoutError):
            callee.recvfrom(2048)
        elements = _inbound(relay)
        assert sorted((packets, size) for _key, packets, size in elements) == [
            (49, 49 * (PAYLOAD + 12 + 28)),
            (49, 49 * (PAYLOAD + 12 + 28)),
        ]
        assert [CALLER, 5000, RELAY, port_a] in [key for key, _p, _b in elements]
        time.sleep(0.3)  # one counter poll
        statistics = ng(command="statistics")[b"statistics"]
        assert isinstance(statistics, dict)
        service = statistics[b"service"]
        assert isinstance(service, dict)
        assert service[b"dataplane"] == b"kernel", service
        assert service[b"kernel_routes"] == 2, service
        assert service[b"kernel_packets"] == 98, service
        ng(command="delete", **{"call-id": "kernel-call", "from-tag": "a"})
        deadline = time.monotonic() + 5
        while _inbound(relay) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _inbound(relay) == []
    finally:
        assert server.stop() == 0, server.output()
    # A graceful stop removes the table.
    listed = relay.run("nft", "list", "tables", check=False).stdout
    assert "icerelay" not in listed
    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "SELECT packets_from_caller, bytes_from_caller, packets_from_callee, "
            "bytes_from_callee FROM streams"
        ).fetchall()
    assert rows == [(50, 50 * (PAYLOAD + 12), 50, 50 * (PAYLOAD + 12))]


def test_kernel_table_after_kill_and_restart(lab: netns.Lab, tmp_path: Path) -> None:
    relay, caller_ns, callee_ns = _topology(lab)
    database = tmp_path / "sessions.sqlite3"
    server = _serve(relay, database)
    ng = _Ng(_socket_in(caller_ns.name, CALLER, 0))
    caller = _socket_in(caller_ns.name, CALLER, 5000)
    callee = _socket_in(callee_ns.name, CALLEE, 6000)
    port_a, port_b = _call(ng, "killed")
    _exchange(caller, callee, port_a, port_b, 0, 1)
    deadline = time.monotonic() + 5
    while len(_inbound(relay)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(_inbound(relay)) == 2
    os.killpg(server.process.pid, signal.SIGKILL)
    server.stop()
    # kill -9 leaves the table (the kernel still forwards the dead relay's streams) ...
    assert len(_inbound(relay)) == 2
    server = _serve(relay, database)
    try:
        # ... and a restart replaces it with an empty one.
        assert _inbound(relay) == []
        # A second relay must not take the table of a running one: it refuses to start.
        argv = icerelay_command(
            "serve", "--stun-listen", f"{RELAY}:{STUN_PORT + 1}",
            "--set", "relay.enabled=true", "--set", "relay.dataplane=kernel",
            "--set", f"relay.ng_listen={RELAY}:{NG_PORT + 1}",
            "--set", f"relay.address_ipv4={RELAY}",
            "--set", "relay.port_min=30100", "--set", "relay.port_max=30199",
            "--set", "relay.mediaproxy_socket=", "--set", "relay.accounting=",
        )  # fmt: skip
        second = relay.run(*argv, check=False, timeout=30)
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"belongs to a running relay (pid {server.process.pid}" in second.stderr + (
            second.stdout
        )
        assert _inbound(relay) == []
        # SIGTERM, as systemd stops a service: the table goes.
        os.killpg(server.process.pid, signal.SIGTERM)
        assert server.stop() == 0, server.output()
    finally:
        server.stop()
    assert "icerelay" not in relay.run("nft", "list", "tables", check=False).stdout


class _NamespacedRelay(RelayThread):
    """The relay service on an event loop whose thread lives in ``namespace``: its sockets,
    its libnftables context and netlink socket (and the threads it starts) are all there."""

    def __init__(self, config: RelayServiceConfig, namespace: str) -> None:
        super().__init__(config)
        self._thread = threading.Thread(target=self._run, args=(namespace,), daemon=True)

    def _run(self, namespace: str) -> None:
        _enter(namespace)
        self.loop.run_forever()


def test_kamailio_call_forwarded_by_the_kernel(lab: netns.Lab, tmp_path: Path) -> None:
    """Kamailio 5.6 (rtpengine module) drives the relay; SIPp's UAC streams 50 packets of PCMA,
    the UAS echoes them: all in one namespace on its loopback, with the kernel plane on."""
    from tests.interop import test_relay_kamailio as kamailio_test

    if kamailio_test.KAMAILIO is None or kamailio_test.SIPP is None:
        pytest.skip("kamailio and sipp are needed (Debian packages kamailio, sip-tester)")
    host = "127.0.0.1"
    ns = lab.namespace("sip")
    # A namespace of our own: every port is free, fixed numbers are fine.
    ng_port, sip_port, uas_port, uac_port = 2223, 5060, 5070, 5080
    uac_media, uas_media = 7000, 7004
    config = RelayServiceConfig(
        ng_listen=(host, ng_port),
        ng_tcp=False,
        mediaproxy_socket="",
        accounting="",
        port_min=30000,
        port_max=30059,
        delete_delay=0.2,
        dataplane="kernel",
        kernel_poll_interval=0.2,
    )
    flags = "replace-origin replace-session-connection trust-address"
    (tmp_path / "kamailio.cfg").write_text(
        kamailio_test.KAMAILIO_CFG.format(
            host=host, sip_port=sip_port, ng_port=ng_port, uas_port=uas_port, flags=flags
        )
    )
    audio = tmp_path / "audio.alaw"
    audio.write_bytes(b"\xd5" * 8000)  # one second of A-law silence: 50 packets of 20 ms
    (tmp_path / "uac.xml").write_text(
        kamailio_test.UAC_XML.format(host=host, uas_port=uas_port, audio=audio)
    )
    (tmp_path / "uas.xml").write_text(kamailio_test.UAS_XML)
    common = ["-m", "1", "-nostdin", "-trace_msg", "-trace_err", "-timeout", "15s", "-mi", host]
    processes: list[kamailio_test.Process] = []
    with _NamespacedRelay(config, ns.name) as relay:
        plane = relay.service.dataplane
        assert isinstance(plane, NftablesDataPlane), relay.service.dataplane_name
        try:
            kam = kamailio_test.start(
                ns.command(
                    kamailio_support.command(
                        kamailio_test.KAMAILIO, tmp_path / "kamailio.cfg", tmp_path
                    )
                ),
                tmp_path / "kamailio.log",
                tmp_path,
            )
            processes.append(kam)
            deadline = time.monotonic() + 15
            while relay.service.protocol.counters.events["command.ping"] == 0:
                assert kam.popen.poll() is None, kam.log.read_text(errors="replace")[-3000:]
                assert time.monotonic() < deadline, kam.log.read_text(errors="replace")[-3000:]
                time.sleep(0.1)
            time.sleep(0.3)
            sipp = kamailio_test.SIPP
            uas = kamailio_test.start(
                ns.command(
                    [
                        sipp,
                        "-sf",
                        "uas.xml",
                        "-i",
                        host,
                        "-p",
                        str(uas_port),
                        "-mp",
                        str(uas_media),
                        "-rtp_echo",
                        *common,
                    ]
                ),
                tmp_path / "uas.log",
                tmp_path,
            )
            processes.append(uas)
            time.sleep(0.3)
            uac = kamailio_test.start(
                ns.command(
                    [
                        sipp,
                        f"{host}:{sip_port}",
                        "-sf",
                        "uac.xml",
                        "-i",
                        host,
                        "-p",
                        str(uac_port),
                        "-mp",
                        str(uac_media),
                        *common,
                    ]
                ),
                tmp_path / "uac.log",
                tmp_path,
            )
            processes.append(uac)
            uac_status = uac.popen.wait(30)
            uas_status = uas.popen.wait(15)
            logs = {p.log.name: p.log.read_text(errors="replace")[-3000:] for p in processes}
            assert uac_status == 0, logs
            assert uas_status == 0, logs
            (record,) = relay.wait_for_records(1, 5.0)
            # The first packet each way went through the relay process (latching); the kernel
            # forwarded the rest.
            assert plane.kernel_packets >= 90, plane.kernel_packets
            assert plane.routes_installed == 2 and plane.errors == 0
        finally:
            for process in reversed(processes):
                process.stop()
    assert record.reason is TerminationReason.DELETED
    (stream,) = record.streams
    # Exact, although the relay process saw only a few of them.
    assert stream.packets_from_caller == 50, record
    assert stream.packets_from_callee == 50, record
    assert stream.bytes_from_caller == stream.bytes_from_callee == 50 * 172
    assert stream.caller_latched is not None and stream.caller_latched.port == uac_media
