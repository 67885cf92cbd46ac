"""Kamailio 5.6's rtpengine module drives a relay, SIPp calls through it: icerelay vs rtpengine.

Topology (all loopback; every process started by the fixtures, in its own process group)::

    SIPp UAC 127.0.0.2 ──SIP──▶ Kamailio 127.0.0.1 ──SIP──▶ SIPp UAS 127.0.0.3 (-rtp_echo)
                                   │ ng (UDP): rtpengine_offer / _answer / _delete
                                   ▼   flags "replace-origin replace-session-connection"
                      relay 127.0.0.1: icerelay (own process) or rtpengine (userspace, table=-1)

Three calls are up at once. In each the caller streams one second of PCMA (50 packets) to the
address in the 200 OK; the callee echoes every packet back to its source. A poller asks the relay
(ng ``list`` + ``query``) how much media it forwarded while the calls are up; the SDPs each side
received are read from SIPp's message traces.

The same calls run once against each relay (module-scoped fixtures), and the tests check:

- all calls complete (ACK and BYE follow the Record-Route through Kamailio);
- media crossed the relay both ways, and icerelay's accounting records in its SQLite store match
  what SIPp sent, call by call (call, tags, codec, addresses, relay ports, packets and bytes per
  direction), although all callers share one media address and so do all callees;
- a hold re-INVITE keeps each call's relay ports and its direction attributes;
- the rewritten SDPs (offer, answer, and the re-INVITE's) agree between icerelay and rtpengine on
  everything the flags ask for.

Differences between the two rewrites that the flags do not ask for (recorded in
:data:`RTPENGINE_ONLY`): rtpengine adds ``a=rtcp:<port+1>`` to each audio section, and it
re-emits the direction attribute (``a=sendrecv``) in a place of its own, after the codec lines and
before ``a=ptime``; icerelay leaves every line it was not asked to change byte-exact, in order
(RTCP on port+1 is the RFC 3550 default, so it needs no ``a=rtcp``).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest

from tests.support import kamailio as kamailio_support
from tests.support import rtpengine as rtpengine_support
from tests.support import sipp as sipp_support
from tests.support.kamailio import DEFAULT_FLAGS, start_kamailio
from tests.support.ports import free_ports
from tests.support.relayd import RelayProcess, start_relay
from tests.support.rtpengine import NgClient, NgError, start_rtpengine
from tests.support.sipp import AUDIO_PACKETS, RTP_PACKET_SIZE, CallOutcome, place_call

pytestmark = pytest.mark.interop

RELAY_IP = "127.0.0.1"
UAC_IP = "127.0.0.2"
UAS_IP = "127.0.0.3"

#: Calls placed at once per relay: the relay must keep them apart although every caller (and every
#: callee) uses the same media address, as SIPp does: only the relay's own ports tell them apart.
CALLS = 3

#: Lines rtpengine writes that icerelay does not (see the module docstring).
RTPENGINE_ONLY = ("a=rtcp:",)


def _unavailable() -> str | None:
    for reason in (kamailio_support.unavailable_reason(), sipp_support.unavailable_reason()):
        if reason is not None:
            return reason
    return None


class Relay(Protocol):
    ng_port: int
    port_range: tuple[int, int]

    def stop(self) -> object: ...

    def log(self) -> str: ...


@dataclass
class QueryPoller:
    """Polls the relay with ng ``list`` + ``query`` while a call is up; keeps the last answer.

    This is how an operator's monitoring sees a live call, and it shows media counters rising
    before the BYE deletes the call (a deleted call can no longer be queried).
    """

    client: NgClient
    replies: list[dict[bytes, object]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.client.close()

    def _run(self) -> None:
        while not self._stop.wait(0.15):
            try:
                listed = self.client.request({"command": "list"})
                calls = listed.get(b"calls")
                for call_id in calls if isinstance(calls, list) else []:
                    reply = self.client.request({"command": "query", "call-id": call_id})
                    self.replies.append(dict(reply))
            except (NgError, OSError):
                continue

    def best(self) -> dict[bytes, object] | None:
        """The reply that counted the most RTP packets."""

        def packets(reply: dict[bytes, object]) -> int:
            totals = reply.get(b"totals")
            rtp = totals.get(b"RTP") if isinstance(totals, dict) else None
            count = rtp.get(b"packets") if isinstance(rtp, dict) else None
            return count if isinstance(count, int) else 0

        return max(self.replies, key=packets, default=None)


@dataclass
class CallRun:
    """One Kamailio call through one relay, and what was observed."""

    name: str
    relay: Relay
    call: CallOutcome
    query: Mapping[bytes, object] | None
    statistics: Mapping[bytes, object] | None
    workdir: Path
    kamailio_log: str


def _run_call(
    workdir: Path, start: Callable[[Path, int, int, int], Relay], name: str
) -> Iterator[CallRun]:
    reason = _unavailable()
    if reason is not None:
        pytest.skip(reason)
    ng_port, sip_port = free_ports(2, kinds=("udp",))
    block = free_ports(41, kinds=("udp",), consecutive=True)
    first = block[0] + (block[0] & 1)
    relay = start(workdir / "relay", ng_port, first, first + 39)
    try:
        kamailio = start_kamailio(workdir / "kamailio", sip_port=sip_port, ng_port=ng_port)
        try:
            poller = QueryPoller(NgClient(RELAY_IP, ng_port, timeout=0.5, retries=1))
            poller.start()
            try:
                call = place_call(
                    workdir / "sipp",
                    proxy=(RELAY_IP, sip_port),
                    uac_ip=UAC_IP,
                    uas_ip=UAS_IP,
                    calls=CALLS,
                )
            finally:
                poller.stop()
            with NgClient(RELAY_IP, ng_port) as client:
                statistics = dict(client.request({"command": "statistics"}))
        finally:
            kamailio.stop()
        # Stopping our relay flushes its accounting store; the tests read it afterwards.
        relay.stop()
        yield CallRun(name, relay, call, poller.best(), statistics, workdir, kamailio.log()[-4000:])
    finally:
        relay.stop()


def _start_icerelay(workdir: Path, ng_port: int, port_min: int, port_max: int) -> Relay:
    return start_relay(workdir, ng_port=ng_port, port_min=port_min, port_max=port_max)


def _start_rtpengine(workdir: Path, ng_port: int, port_min: int, port_max: int) -> Relay:
    reason = rtpengine_support.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return start_rtpengine(workdir, ng_port=ng_port, port_min=port_min, port_max=port_max)


@pytest.fixture(scope="module")
def icerelay_call(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CallRun]:
    yield from _run_call(tmp_path_factory.mktemp("kamailio-icerelay"), _start_icerelay, "icerelay")


@pytest.fixture(scope="module")
def rtpengine_call(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CallRun]:
    yield from _run_call(
        tmp_path_factory.mktemp("kamailio-rtpengine"), _start_rtpengine, "rtpengine"
    )


def _context(run: CallRun) -> str:
    relay_log = run.relay.log()[-3000:]
    return f"{run.call.logs()}\n--- kamailio ---\n{run.kamailio_log}\n--- relay ---\n{relay_log}"


def _rtp_packets(reply: Mapping[bytes, object] | None) -> int:
    totals = reply.get(b"totals") if reply else None
    rtp = totals.get(b"RTP") if isinstance(totals, dict) else None
    packets = rtp.get(b"packets") if isinstance(rtp, dict) else None
    return packets if isinstance(packets, int) else 0


# -- calls complete, media flows through the relay ---------------------------------------------


@pytest.mark.parametrize("relay_name", ["icerelay", "rtpengine"])
def test_call_completes_through_kamailio(relay_name: str, request: pytest.FixtureRequest) -> None:
    run: CallRun = request.getfixturevalue(f"{relay_name}_call")
    assert run.call.uac_status == 0, _context(run)
    assert run.call.uas_status == 0, _context(run)
    # ACK and BYE reached the callee through the proxy (they follow the Record-Route).
    received = [m.method_or_status for m in run.call.uas.messages() if m.direction == "received"]
    for method, count in (("INVITE", 2 * CALLS), ("ACK", 2 * CALLS), ("BYE", CALLS)):
        assert received.count(method) == count, received
    ok = [
        m
        for m in run.call.uac.messages()
        if m.direction == "received" and m.first_line.startswith("SIP/2.0 200")
    ]
    # A 200 to each INVITE, re-INVITE and BYE.
    assert len(ok) == 3 * CALLS, [m.first_line for m in ok]


@pytest.mark.parametrize("relay_name", ["icerelay", "rtpengine"])
def test_media_crosses_the_relay_both_ways(relay_name: str, request: pytest.FixtureRequest) -> None:
    run: CallRun = request.getfixturevalue(f"{relay_name}_call")
    reply = run.query
    assert reply is not None, f"the relay never listed the call\n{_context(run)}"
    tags = reply.get(b"tags")
    assert isinstance(tags, dict) and len(tags) == 2, reply
    # Each tag's media reports what that side sent to the relay: both sides sent RTP.
    for tag in tags.values():
        assert isinstance(tag, dict)
        medias = tag.get(b"medias")
        assert isinstance(medias, list) and medias, tag
        assert any(_tag_media_packets(media) > 0 for media in medias), (relay_name, tag)
    assert _rtp_packets(reply) > 0, reply


@pytest.mark.parametrize("relay_name", ["icerelay", "rtpengine"])
def test_hold_reinvite_keeps_the_relay_ports(
    relay_name: str, request: pytest.FixtureRequest
) -> None:
    """The in-dialog offer/answer of a hold re-INVITE: same call, same relay ports, hold kept."""
    run: CallRun = request.getfixturevalue(f"{relay_name}_call")
    call_ids = {
        m.header("Call-ID") for m in run.call.uac.messages() if m.method_or_status == "INVITE"
    }
    assert len(call_ids) == CALLS
    ports: set[int] = set()
    for call_id in call_ids:
        assert call_id is not None
        for first, again, hold in (
            ("offer", "re-offer", "a=sendonly"),
            ("answer", "re-answer", "a=recvonly"),
        ):
            before = _sdp_message(run, first, "received", call_id).body
            after = _sdp_message(run, again, "received", call_id).body
            assert _media_port(after) == _media_port(before), (before, after)
            assert hold in _lines(after) and "a=sendrecv" not in _lines(after), after
            ports.add(_media_port(after))
    # Two relay ports per call, none shared between calls.
    assert len(ports) == 2 * CALLS, ports


def _tag_media_packets(media: object) -> int:
    """Packets a tag's media received: icerelay writes ``packets``, rtpengine per stream."""
    if not isinstance(media, dict):
        return 0
    direct = media.get(b"packets")
    if isinstance(direct, int):
        return direct
    total = 0
    for stream in media.get(b"streams", []) if isinstance(media.get(b"streams"), list) else []:
        stats = stream.get(b"stats") if isinstance(stream, dict) else None
        packets = stats.get(b"packets") if isinstance(stats, dict) else None
        total += packets if isinstance(packets, int) else 0
    return total


def test_icerelay_statistics_after_the_call(icerelay_call: CallRun) -> None:
    statistics = icerelay_call.statistics
    assert statistics is not None
    totals = statistics[b"statistics"]
    assert isinstance(totals, dict)
    total = totals[b"totalstatistics"]
    current = totals[b"currentstatistics"]
    assert isinstance(total, dict) and isinstance(current, dict)
    # An offer and an answer for each INVITE and each re-INVITE.
    assert total[b"offers"] == 2 * CALLS and total[b"answers"] == 2 * CALLS, total
    ended = total[b"ended"]
    assert isinstance(ended, dict)
    assert {k: v for k, v in ended.items() if v} == {b"deleted": CALLS}, total
    # rtpengine_delete freed everything: no session and no port left.
    assert current[b"sessionsown"] == 0 and current[b"portsused"] == 0, current


def _tag(header: str | None) -> str:
    return (header or "").split("tag=")[-1]


def test_icerelay_accounting_records_match_the_calls(icerelay_call: CallRun) -> None:
    run = icerelay_call
    relay = run.relay
    assert isinstance(relay, RelayProcess)
    # What SIPp saw: each call's id and tags, and the relay ports each side was told to use.
    invites = [m for m in run.call.uac.messages() if m.direction == "sent" and m.body]
    answers = [
        m
        for m in run.call.uac.messages()
        if m.direction == "received" and m.method_or_status == "200" and m.body
    ]
    offers = [
        m
        for m in run.call.uas.messages()
        if m.direction == "received" and m.method_or_status == "INVITE"
    ]
    expected_calls = {
        (m.header("Call-ID"), _tag(m.header("From")), _tag(a.header("To")))
        for m in invites
        for a in answers
        if a.header("Call-ID") == m.header("Call-ID")
    }
    caller_ports = {a.header("Call-ID"): _media_port(a.body) for a in answers}
    callee_ports = {o.header("Call-ID"): _media_port(o.body) for o in offers}
    assert len(expected_calls) == CALLS, expected_calls

    with sqlite3.connect(relay.accounting) as db:
        db.row_factory = sqlite3.Row
        rows = [
            dict(row)
            for row in db.execute(
                "SELECT * FROM sessions JOIN streams ON streams.session_id = sessions.id"
            )
        ]
    assert {(r["call_id"], r["from_tag"], r["to_tag"]) for r in rows} == expected_calls, rows
    uac_media = f"{UAC_IP}:{run.call.uac_media_port}"
    uas_media = f"{UAS_IP}:{run.call.uas_media_port}"
    # SIPp sent exactly 50 packets of 172 bytes per call; the callee echoed each; loopback
    # loses none; and no call's packets were counted in another's.
    expected = (AUDIO_PACKETS, AUDIO_PACKETS * RTP_PACKET_SIZE)
    for row in rows:
        assert row["reason"] == "deleted" and row["answered"] is not None, row
        # Offer to BYE: the scenario's pause (1.6 s) plus signalling.
        assert 1.4 < row["duration"] < 6.0, row
        assert (row["stream_index"], row["media"], row["codec"]) == (0, "audio", "PCMA"), row
        assert (row["caller_address"], row["callee_address"]) == (uac_media, uas_media), row
        assert (row["caller_latched"], row["callee_latched"]) == (uac_media, uas_media), row
        # The ports the record names are the ones each side was told to send to.
        assert row["relay_port_caller"] == caller_ports[row["call_id"]], row
        assert row["relay_port_callee"] == callee_ports[row["call_id"]], row
        assert (row["packets_from_caller"], row["bytes_from_caller"]) == expected, row
        assert (row["packets_from_callee"], row["bytes_from_callee"]) == expected, row


# -- rewritten SDPs: icerelay vs rtpengine -------------------------------------------------------


#: The four SDPs of a call: (name, SIPp side that sends it, what it is, CSeq number).
DIRECTIONS = {
    "offer": ("uac", "INVITE", 1),
    "answer": ("uas", "200", 1),
    "re-offer": ("uac", "INVITE", 2),  # the hold re-INVITE: a=sendonly
    "re-answer": ("uas", "200", 2),  # a=recvonly
}


def _sdp_message(
    run: CallRun, direction: str, way: str, call_id: str | None = None
) -> sipp_support.SipMessage:
    """The message carrying one SDP of a call as one side sent it (``way="sent"``) or as the
    other side received it, rewritten by the relay (``way="received"``). First call if no id."""
    sender, kind, cseq = DIRECTIONS[direction]
    if way == "sent":
        side = run.call.uac if sender == "uac" else run.call.uas
    else:
        side = run.call.uas if sender == "uac" else run.call.uac
    for message in side.messages():
        if (
            message.direction == way
            and message.method_or_status == kind
            and message.body
            and (message.header("CSeq") or "").split()[0] == str(cseq)
            and (call_id is None or message.header("Call-ID") == call_id)
        ):
            return message
    raise AssertionError(f"{run.name}: no {way} {direction} (call {call_id})\n{_context(run)}")


def _received(run: CallRun, direction: str) -> sipp_support.SipMessage:
    """The message with the relay's rewritten offer (to the callee) or answer (to the caller)."""
    return _sdp_message(run, direction, "received")


def _lines(sdp: str) -> list[str]:
    return [line for line in sdp.replace("\r\n", "\n").split("\n") if line]


def _media_port(sdp: str) -> int:
    (line,) = [line for line in _lines(sdp) if line.startswith("m=")]
    return int(line.split()[1])


@dataclass(frozen=True)
class Rewrite:
    """What a relay did to one SDP, in the terms the flags speak of."""

    origin: str  # o= with the address cut off
    origin_address: str
    connections: tuple[str, ...]
    media_port: int
    media_rest: str  # m= without the port
    others: tuple[str, ...]  # every other line, in order


def _rewrite(sdp: str) -> Rewrite:
    lines = _lines(sdp)
    (origin,) = [line for line in lines if line.startswith("o=")]
    (media,) = [line for line in lines if line.startswith("m=")]
    kind, port, rest = media.split(" ", 2)
    return Rewrite(
        origin=origin.rsplit(" ", 1)[0],
        origin_address=origin.rsplit(" ", 1)[1],
        connections=tuple(line for line in lines if line.startswith("c=")),
        media_port=int(port),
        media_rest=f"{kind} {rest}",
        others=tuple(line for line in lines if not line.startswith(("o=", "c=", "m="))),
    )


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_rewritten_sdps_agree(
    direction: str, icerelay_call: CallRun, rtpengine_call: CallRun
) -> None:
    """What ``replace-origin replace-session-connection`` asks for, both relays do alike."""
    assert DEFAULT_FLAGS == "replace-origin replace-session-connection"
    rewrites: dict[str, Rewrite] = {}
    for run in (icerelay_call, rtpengine_call):
        sent = _sdp_message(run, direction, "sent").body
        got = _sdp_message(run, direction, "received").body
        before, after = _rewrite(sent), _rewrite(got)
        low, high = run.relay.port_range
        context = f"{run.name} {direction}:\n{sent}\n--->\n{got}"
        # replace-origin: o= names the relay; user, session id and version stay.
        assert after.origin_address == RELAY_IP != before.origin_address, context
        assert after.origin == before.origin, context
        # replace-session-connection (and the media's own c=): the relay's address.
        assert after.connections == (f"c=IN IP4 {RELAY_IP}",), context
        assert before.connections != after.connections, context
        # m=: a relay port (RTP even), same media, transport and formats.
        assert low <= after.media_port <= high and after.media_port % 2 == 0, context
        assert after.media_rest == before.media_rest, context
        rewrites[run.name] = after
        if run.name == "icerelay":
            # Nothing else touched, not even the order of lines.
            assert after.others == before.others, context
        else:
            # rtpengine adds its own lines (a=rtcp) and may move a=sendrecv; nothing else.
            kept = tuple(line for line in after.others if not line.startswith(RTPENGINE_ONLY))
            assert sorted(kept) == sorted(before.others), context
            # ... and its a=rtcp names the RTP port + 1: where RFC 3550 (and icerelay) put RTCP.
            rtcp = [line for line in after.others if line.startswith("a=rtcp:")]
            assert rtcp == [f"a=rtcp:{after.media_port + 1}"], context
    ours, theirs = rewrites["icerelay"], rewrites["rtpengine"]
    assert ours.origin == theirs.origin and ours.origin_address == theirs.origin_address
    assert ours.connections == theirs.connections
    assert ours.media_rest == theirs.media_rest
    theirs_comparable = tuple(line for line in theirs.others if not line.startswith(RTPENGINE_ONLY))
    assert sorted(ours.others) == sorted(theirs_comparable)


def test_icerelay_and_rtpengine_stop_cleanly(
    icerelay_call: CallRun, rtpengine_call: CallRun
) -> None:
    # Both relays were stopped by their fixtures before the tests ran (icerelay gracefully, so
    # its records were flushed); neither may have died with a signal or an error.
    for run in (icerelay_call, rtpengine_call):
        relay = run.relay
        process = getattr(relay, "process", None)
        assert process is not None and process.returncode is not None
        assert process.returncode == 0, (run.name, process.returncode, relay.log()[-2000:])


def test_sdp_differences_are_only_the_known_ones(
    icerelay_call: CallRun, rtpengine_call: CallRun
) -> None:
    """Pins down every textual difference between the two rewrites, so a new one is noticed."""
    for direction in DIRECTIONS:
        ours = _lines(_received(icerelay_call, direction).body)
        theirs = _lines(_received(rtpengine_call, direction).body)

        def normal(lines: list[str]) -> list[str]:
            # Ports differ by construction (each relay has its own range).
            return [
                line.split(" ")[0] + " <port> " + line.split(" ", 2)[2]
                if line.startswith("m=")
                else line
                for line in lines
                if not line.startswith("a=rtcp:")
            ]

        assert sorted(normal(ours)) == sorted(normal(theirs)), (ours, theirs)
        only_theirs = [line for line in theirs if line not in ours and not line.startswith("m=")]
        assert [line.split(":")[0] for line in only_theirs] == ["a=rtcp"], only_theirs
