"""A small SIP user agent (RFC 3261), sans I/O: calls with SDP offer/answer, nothing more.

It places and answers calls (INVITE, provisional and final responses, ACK, BYE, CANCEL),
answers OPTIONS, sends and answers re-INVITEs, follows Record-Route, asks for ``rport``
(RFC 3581) and answers from the port a request came from when the peer asked for it, and answers
Digest challenges (401/407). One :class:`UserAgent` owns one transport address; the driver feeds it
messages and time and sends what it returns. Over UDP it retransmits; over TCP (``transport="TCP"``
for our requests; for the peer's, the Via says) it does not, and answers on the connection the
request came on (the driver maps the source address to it)::

    ua = UserAgent(("192.0.2.10", 5060), user="alice", rng=random.SystemRandom())
    call = ua.call("sip:bob@192.0.2.20", offer_sdp, now)
    ua.receive(data, source, now)
    for data, destination in ua.datagrams_to_send(now): ...
    ua.next_timer() / ua.handle_timer(now)
    while (event := ua.next_event()) is not None: ...   # IncomingCall, CallAnswered, CallEnded
    ua.answer(call, answer_sdp, now) / ua.hangup(call, now) / ua.reinvite(call, sdp, now)

The UA core (section 13.3.1.4) retransmits a 2xx to an INVITE until the ACK comes, and re-sends
its ACK for every retransmitted 2xx it gets; the transactions do the rest (:mod:`.transaction`).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from icerelay.sip.auth import Challenge, authorization
from icerelay.sip.dialog import Dialog
from icerelay.sip.errors import SipError
from icerelay.sip.message import (
    Headers,
    NameAddress,
    SipRequest,
    SipResponse,
    SipUri,
    Via,
    make_response,
    new_branch,
    new_tag,
    parse_message,
)
from icerelay.sip.transaction import (
    Address,
    ClientTransaction,
    ServerTransaction,
    State,
    Timers,
    same_hop_request,
)

if TYPE_CHECKING:
    from random import Random

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS"
SDP = "application/sdp"
MAX_AUTH_ATTEMPTS = 2

Trace = Callable[[str, bytes, Address], None]
"""Called with ("sent" | "received", message bytes, peer address) for ``--debug`` output."""


class CallState(enum.Enum):
    CALLING = "calling"            # INVITE sent, nothing or 100 back
    EARLY = "early"                # a provisional response with a tag (ringing)
    INCOMING = "incoming"          # INVITE received, not answered yet
    CONFIRMED = "confirmed"        # 2xx sent or received: media may flow
    TERMINATING = "terminating"    # BYE or CANCEL sent, waiting for the answer
    TERMINATED = "terminated"


@dataclass(eq=False)
class Call:
    """One call (an INVITE dialog) as the application sees it."""

    call_id: str
    outgoing: bool
    local_tag: str
    invite: SipRequest
    state: CallState
    remote_sdp: bytes | None = None
    local_sdp: bytes | None = None
    dialog: Dialog | None = None
    end_reason: str = ""
    end_status: int | None = None
    destination: Address = ("0.0.0.0", 0)
    _invite_tx: ClientTransaction | ServerTransaction | None = None
    _auth_attempts: int = 0
    _got_provisional: bool = False
    _cancel_pending: bool = False
    _ack: tuple[bytes, Address] | None = None
    _ok: tuple[bytes, Address] | None = None  # our 2xx, retransmitted until ACK
    _ok_interval: float = 0.0
    _ok_next: float | None = None
    _ok_deadline: float = 0.0
    _pending_reinvite: ServerTransaction | None = None
    _reinvite_tx: ClientTransaction | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def established(self) -> bool:
        return self.state is CallState.CONFIRMED

    @property
    def provisional_received(self) -> bool:
        """Whether our INVITE got a provisional response, so a CANCEL can go now (9.1)."""
        return self._got_provisional


@dataclass(frozen=True)
class IncomingCall:
    call: Call
    offer: bytes | None
    request: SipRequest


@dataclass(frozen=True)
class CallProgress:
    call: Call
    status: int
    reason: str
    body: bytes


@dataclass(frozen=True)
class CallAnswered:
    """Our INVITE got a 2xx (and we sent the ACK)."""

    call: Call
    answer: bytes


@dataclass(frozen=True)
class CallConfirmed:
    """The ACK for our 2xx arrived."""

    call: Call


@dataclass(frozen=True)
class CallEnded:
    call: Call
    reason: str
    status: int | None = None


@dataclass(frozen=True)
class ReinviteReceived:
    call: Call
    offer: bytes


@dataclass(frozen=True)
class ReinviteAnswered:
    call: Call
    answer: bytes


@dataclass(frozen=True)
class ReinviteFailed:
    call: Call
    status: int


@dataclass(frozen=True)
class OptionsAnswered:
    status: int
    response: SipResponse | None


Event = (IncomingCall | CallProgress | CallAnswered | CallConfirmed | CallEnded
         | ReinviteReceived | ReinviteAnswered | ReinviteFailed | OptionsAnswered)


@dataclass
class _ClientEntry:
    transaction: ClientTransaction
    purpose: str  # invite, reinvite, bye, cancel, options
    call: Call | None


def uri_address(uri: SipUri) -> Address:
    """Where a request for ``uri`` goes: its host and port (5060, or 5061 for sips)."""
    host = uri.param("maddr") or uri.host
    return host, uri.port or (5061 if uri.scheme == "sips" else 5060)


class UserAgent:
    """The sans-I/O SIP user agent of one transport address (UDP)."""

    def __init__(
        self,
        local: Address,
        *,
        user: str = "icerelay",
        display_name: str | None = None,
        username: str | None = None,
        password: str | None = None,
        user_agent: str = "icerelay",
        transport: str = "UDP",
        timers: Timers | None = None,
        trace: Trace | None = None,
        rng: Random,
    ) -> None:
        self.local = local
        self.rng = rng
        """Call-IDs, tags, branches and cnonces (random.SystemRandom() outside tests)."""
        self.user = user
        self.display_name = display_name
        self.username = username or user
        self.password = password
        self.user_agent = user_agent
        self.transport = transport.upper()
        self.reliable = self.transport != "UDP"
        self.timers = timers or Timers()
        self.trace = trace
        self.calls: dict[str, Call] = {}
        self.public_address: Address | None = None
        """Our address as the last server saw it (Via received/rport, RFC 3581)."""
        self.malformed = 0
        self._client: dict[tuple[str, str], _ClientEntry] = {}
        self._server: dict[tuple[str, str], ServerTransaction] = {}
        self._outbox: list[tuple[bytes, Address]] = []
        self._events: deque[Event] = deque()

    # -- addresses --------------------------------------------------------------------------------

    @property
    def contact(self) -> NameAddress:
        host, port = self.public_address or self.local
        params = () if self.transport == "UDP" else (("transport", self.transport.lower()),)
        return NameAddress(SipUri(host, self.user, port, params=params))

    def _via(self) -> str:
        host, port = self.local
        params = (("branch", new_branch(self.rng)), ("rport", None))
        return str(Via(self.transport, host, port, params))

    # -- sans-I/O surface -------------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def next_timer(self) -> float | None:
        timers = [t for entry in self._client.values()
                  if (t := entry.transaction.next_timer()) is not None]
        timers += [t for tx in self._server.values() if (t := tx.next_timer()) is not None]
        timers += [c._ok_next for c in self.calls.values() if c._ok_next is not None]
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        for entry in list(self._client.values()):
            entry.transaction.handle_timer(now)
        for tx in list(self._server.values()):
            tx.handle_timer(now)
        for call in list(self.calls.values()):
            self._retransmit_ok(call, now)
        self._pump(now)

    def receive(self, data: bytes, source: Address, now: float) -> None:
        """Feed one message from ``source``: a UDP datagram, or one message framed off a TCP
        connection (the Via says which transport it came over). Malformed messages are
        counted and dropped."""
        if not data.strip(b"\r\n"):
            return  # RFC 5626 keep-alive (CRLF)
        try:
            message = parse_message(data)
        except SipError:
            self.malformed += 1
            return
        if self.trace is not None:
            self.trace("received", data, source)
        try:
            if isinstance(message, SipResponse):
                self._receive_response(message, now)
            else:
                self._receive_request(message, source, now)
        except SipError:
            self.malformed += 1  # a message missing what we needed to act on it
        self._pump(now)

    # -- application calls ------------------------------------------------------------------------

    def call(self, target: str, sdp: bytes, now: float, *, proxy: Address | None = None,
             from_user: str | None = None) -> Call:
        """Send an INVITE with ``sdp`` as the offer; through ``proxy`` (a preloaded Route,
        RFC 3261 section 8.1.2) if given, else straight to the URI's host and port."""
        uri = SipUri.parse(target if ":" in target.split("@")[0] or target.startswith(
            ("sip:", "sips:")) else "sip:" + target)
        host, port = self.local
        local_tag = new_tag(self.rng)
        from_address = NameAddress(SipUri(host, from_user or self.user, port),
                                   self.display_name, (("tag", local_tag),))
        headers = Headers()
        headers.add("Via", self._via())
        if proxy is not None:
            headers.add("Route", f"<sip:{_host_port(proxy)};lr>")
        headers.add("Max-Forwards", "70")
        headers.add("From", str(from_address))
        headers.add("To", str(NameAddress(uri.with_params(()))))
        call_id = f"{self.rng.randbytes(8).hex()}@{host}"
        headers.add("Call-ID", call_id)
        headers.add("CSeq", "1 INVITE")
        headers.add("Contact", str(self.contact))
        headers.add("Allow", ALLOW)
        headers.add("User-Agent", self.user_agent)
        headers.add("Content-Type", SDP)
        request = SipRequest(headers=headers, body=sdp, method="INVITE", uri=str(uri))
        destination = proxy or uri_address(uri)
        call = Call(call_id=call_id, outgoing=True, local_tag=local_tag, invite=request,
                    state=CallState.CALLING, local_sdp=sdp, destination=destination)
        self.calls[call_id] = call
        call._invite_tx = self._start_client(request, destination, now, "invite", call)
        self._pump(now)
        return call

    def ringing(self, call: Call, now: float) -> None:
        """Send 180 Ringing for an incoming call."""
        tx = call._invite_tx
        if isinstance(tx, ServerTransaction) and call.state is CallState.INCOMING:
            response = make_response(call.invite, 180, to_tag=call.local_tag)
            response.headers.add("Contact", str(self.contact))
            tx.respond(response, now)
            self._pump(now)

    def answer(self, call: Call, sdp: bytes, now: float) -> None:
        """Accept an incoming call with ``sdp`` as the answer (200 OK)."""
        tx = call._invite_tx
        if not isinstance(tx, ServerTransaction) or call.state is not CallState.INCOMING:
            raise SipError("only an incoming call that is not answered yet can be answered")
        call.dialog = Dialog.from_request(call.invite, call.local_tag)
        call.local_sdp = sdp
        response = self._ok_with_sdp(call.invite, call.local_tag, sdp)
        tx.respond(response, now)
        self._start_ok_retransmission(call, response, tx.destination, now)
        call.state = CallState.CONFIRMED
        self._pump(now)

    def reject(self, call: Call, now: float, status: int = 486) -> None:
        tx = call._invite_tx
        if isinstance(tx, ServerTransaction) and call.state is CallState.INCOMING:
            tx.respond(make_response(call.invite, status, to_tag=call.local_tag), now)
            self._end(call, "rejected", status)
            self._pump(now)

    def hangup(self, call: Call, now: float) -> None:
        """End the call whatever its state: CANCEL, BYE, or a 486 to an unanswered INVITE."""
        if call.state is CallState.INCOMING:
            self.reject(call, now, 486)
        elif call.state in (CallState.CALLING, CallState.EARLY):
            call.state = CallState.TERMINATING
            if call._got_provisional:
                self._send_cancel(call, now)
            else:
                call._cancel_pending = True  # RFC 3261 section 9.1: wait for a provisional
        elif call.state is CallState.CONFIRMED:
            call.state = CallState.TERMINATING
            self._send_in_dialog(call, "BYE", now, purpose="bye")
        self._pump(now)

    def reinvite(self, call: Call, sdp: bytes, now: float) -> None:
        """Send a new offer inside the dialog (e.g. ICE's updated offer, RFC 8445 section 8.1)."""
        if call.state is not CallState.CONFIRMED or call.dialog is None:
            raise SipError("a re-INVITE needs an established call")
        if _pending(call._reinvite_tx):
            raise SipError("a re-INVITE is already in progress")  # else 491 glare
        call.local_sdp = sdp
        call._reinvite_tx = self._send_in_dialog(call, "INVITE", now, purpose="reinvite",
                                                 body=sdp)
        self._pump(now)

    def accept_reinvite(self, call: Call, sdp: bytes, now: float) -> None:
        """Answer the peer's re-INVITE (:class:`ReinviteReceived`) with ``sdp``."""
        tx = call._pending_reinvite
        if tx is None:
            raise SipError("no re-INVITE to answer")
        call._pending_reinvite = None
        call.local_sdp = sdp
        response = self._ok_with_sdp(tx.request, call.local_tag, sdp)
        tx.respond(response, now)
        self._start_ok_retransmission(call, response, tx.destination, now)
        self._pump(now)

    def reject_reinvite(self, call: Call, now: float, status: int = 488) -> None:
        """Refuse the peer's re-INVITE (488 Not Acceptable Here by default); the call goes on
        with the session it had (RFC 3261 section 14.2)."""
        tx = call._pending_reinvite
        if tx is None:
            raise SipError("no re-INVITE to answer")
        call._pending_reinvite = None
        tx.respond(make_response(tx.request, status, to_tag=call.local_tag), now)
        self._pump(now)

    def options(self, target: str, now: float, *, destination: Address | None = None) -> None:
        """Send OPTIONS (a ping); the result comes as :class:`OptionsAnswered`."""
        uri = SipUri.parse(target)
        host, port = self.local
        headers = Headers()
        headers.add("Via", self._via())
        headers.add("Max-Forwards", "70")
        headers.add("From", str(NameAddress(SipUri(host, self.user, port), None,
                                            (("tag", new_tag(self.rng)),))))
        headers.add("To", str(NameAddress(uri)))
        headers.add("Call-ID", f"{self.rng.randbytes(8).hex()}@{host}")
        headers.add("CSeq", "1 OPTIONS")
        headers.add("Accept", SDP)
        request = SipRequest(headers=headers, method="OPTIONS", uri=str(uri))
        self._start_client(request, destination or uri_address(uri), now, "options", None)
        self._pump(now)

    # -- sending ----------------------------------------------------------------------------------

    def _start_client(self, request: SipRequest, destination: Address, now: float,
                      purpose: str, call: Call | None) -> ClientTransaction:
        tx = ClientTransaction(request, destination, now, reliable=self.reliable,
                               timers=self.timers)
        self._client[(tx.branch, request.method)] = _ClientEntry(tx, purpose, call)
        return tx

    def _send(self, data: bytes, destination: Address) -> None:
        if self.trace is not None:
            self.trace("sent", data, destination)
        self._outbox.append((data, destination))

    def _ok_with_sdp(self, request: SipRequest, tag: str, sdp: bytes) -> SipResponse:
        response = make_response(request, 200, to_tag=tag, body=sdp, content_type=SDP)
        for route in request.headers.get_all("Record-Route"):
            response.headers.add("Record-Route", route)  # section 12.1.1: copy into 2xx
        response.headers.add("Contact", str(self.contact))
        response.headers.add("Allow", ALLOW)
        response.headers.add("User-Agent", self.user_agent)
        return response

    def _start_ok_retransmission(self, call: Call, response: SipResponse,
                                 destination: Address, now: float) -> None:
        if _reliable(response.top_via):
            return  # section 13.3.1.4: a stream delivers the 2xx; no retransmission
        call._ok = (response.to_bytes(), destination)
        call._ok_interval = self.timers.t1
        call._ok_next = now + call._ok_interval
        call._ok_deadline = now + 64 * self.timers.t1

    def _retransmit_ok(self, call: Call, now: float) -> None:
        if call._ok is None or call._ok_next is None or now < call._ok_next:
            return
        if now >= call._ok_deadline:
            # Section 13.3.1.4: no ACK within 64*T1 -> the session is over: BYE.
            call._ok = call._ok_next = None
            if call.state is CallState.CONFIRMED:
                call.state = CallState.TERMINATING
                call.end_reason = "no ACK"
                self._send_in_dialog(call, "BYE", now, purpose="bye")
            return
        self._send(*call._ok)
        call._ok_interval = min(2 * call._ok_interval, self.timers.t2)
        call._ok_next = now + call._ok_interval

    def _send_in_dialog(self, call: Call, method: str, now: float, *, purpose: str,
                        body: bytes = b"") -> ClientTransaction:
        assert call.dialog is not None
        request = call.dialog.create_request(method, via=self._via(), contact=self.contact)
        request.headers.add("User-Agent", self.user_agent)
        if body:
            request.headers.add("Content-Type", SDP)
            request.body = body
        destination = uri_address(call.dialog.next_destination())
        return self._start_client(request, destination, now, purpose, call)

    def _send_cancel(self, call: Call, now: float) -> None:
        """CANCEL the INVITE (section 9.1): same branch, Request-URI, Call-ID, From, To, Route."""
        invite = call.invite
        request = same_hop_request(invite, "CANCEL", invite._required("To"))
        self._start_client(request, call.destination, now, "cancel", call)

    def _send_ack(self, call: Call, invite: SipRequest) -> None:
        """The ACK for a 2xx: a new transaction of its own, sent by the UA core (13.2.2.4)."""
        assert call.dialog is not None
        ack = call.dialog.create_request("ACK", via=self._via(), contact=None,
                                         cseq=invite.cseq[0])
        for name in ("Authorization", "Proxy-Authorization"):
            for value in invite.headers.get_all(name):
                ack.headers.add(name, value)
        data = ack.to_bytes()
        destination = uri_address(call.dialog.next_destination())
        call._ack = (data, destination)
        self._send(data, destination)

    def _pump(self, now: float) -> None:
        """Move what transactions queued to the wire, and their results to the application."""
        for key, entry in list(self._client.items()):
            tx = entry.transaction
            while tx.outbox:
                self._send(*tx.outbox.popleft())
            while tx.responses:
                self._client_response(entry, tx.responses.popleft(), now)
            if tx.timed_out:
                tx.timed_out = False
                self._client_timeout(entry, now)
            if tx.terminated:
                del self._client[key]
        for key, server in list(self._server.items()):
            while server.outbox:
                self._send(*server.outbox.popleft())
            if server.timed_out:
                server.timed_out = False
                call = self.calls.get(server.request.call_id)
                if call is not None and server.request.method == "INVITE":
                    self._end(call, "no ACK for the error response", None)
            if server.terminated:
                del self._server[key]
        for call_id, call in list(self.calls.items()):
            if call.state is CallState.TERMINATED and call._ok is None and not any(
                    e.call is call for e in self._client.values()):
                del self.calls[call_id]

    # -- responses --------------------------------------------------------------------------------

    def _receive_response(self, response: SipResponse, now: float) -> None:
        via = response.top_via
        self._learn_public_address(via)
        _, method = response.cseq
        entry = self._client.get((via.branch or "", method))
        if entry is not None:
            entry.transaction.receive(response, now)
            return
        # A 2xx retransmission after the INVITE transaction ended: re-send our ACK.
        call = self.calls.get(response.call_id)
        if (call is not None and method == "INVITE" and 200 <= response.status < 300
                and call._ack is not None):
            self._send(*call._ack)

    def _learn_public_address(self, via: Via) -> None:
        if _reliable(via):
            return  # over TCP rport is the connection's ephemeral port, not where we listen
        received, rport = via.param("received"), via.rport
        if received or rport:
            host = received or self.local[0]
            self.public_address = (host, rport or self.local[1])

    def _client_response(self, entry: _ClientEntry, response: SipResponse, now: float) -> None:
        call = entry.call
        status = response.status
        if entry.purpose == "options":
            if status >= 200:
                self._events.append(OptionsAnswered(status, response))
            return
        if call is None:
            return
        if (entry.purpose in ("invite", "reinvite") and status in (401, 407)
                and self._retry_with_auth(entry, response, now)):
            return
        if entry.purpose == "invite":
            self._invite_response(call, entry.transaction, response, now)
        elif entry.purpose == "reinvite":
            if 200 <= status < 300:
                if call.dialog is not None:
                    call.dialog.update_from_response(response)
                self._send_ack(call, entry.transaction.request)
                if entry.transaction.state is State.ACCEPTED and call.remote_sdp != response.body:
                    call.remote_sdp = response.body or call.remote_sdp
                    self._events.append(ReinviteAnswered(call, response.body))
            elif status >= 300:
                self._events.append(ReinviteFailed(call, status))
                if status in (408, 481):  # section 14.1: the dialog is gone
                    self._end(call, f"re-INVITE failed: {status}", status)
        elif entry.purpose == "bye" and status >= 200:
            self._end(call, call.end_reason or "local hangup", None)
        elif entry.purpose == "cancel":
            pass  # the INVITE's 487 ends the call

    def _invite_response(self, call: Call, tx: ClientTransaction, response: SipResponse,
                         now: float) -> None:
        status = response.status
        if status < 200:
            call._got_provisional = True
            if call._cancel_pending:
                call._cancel_pending = False
                self._send_cancel(call, now)
                return
            if response.to_address.tag and status > 100 and call.state is CallState.CALLING:
                call.dialog = Dialog.from_response(tx.request, response)
                call.state = CallState.EARLY
            if status > 100:
                self._events.append(CallProgress(call, status, response.reason, response.body))
            return
        if status < 300:
            if call.dialog is None or call.dialog.early:
                call.dialog = Dialog.from_response(tx.request, response)
            elif response.to_address.tag != call.dialog.remote_tag:
                # A second 2xx from another fork: accept and hang it up at once.
                other = Dialog.from_response(tx.request, response)
                stray = Call(call.call_id + "#fork", True, call.local_tag, tx.request,
                             CallState.TERMINATING, dialog=other)
                self._send_ack(stray, tx.request)
                self._send_in_dialog(stray, "BYE", now, purpose="bye")
                return
            call.dialog.update_from_response(response)
            first = call._ack is None
            self._send_ack(call, tx.request)
            if not first:
                return
            if call.state is CallState.TERMINATING:
                # We cancelled but the callee answered first: ACK, then BYE.
                call.state = CallState.CONFIRMED
                self.hangup(call, now)
                return
            call.state = CallState.CONFIRMED
            call.remote_sdp = response.body
            self._events.append(CallAnswered(call, response.body))
            return
        if status == 487 and call.state is CallState.TERMINATING:
            self._end(call, "cancelled", status)
        else:
            self._end(call, f"{status} {response.reason}".strip(), status)

    def _retry_with_auth(self, entry: _ClientEntry, response: SipResponse, now: float) -> bool:
        call = entry.call
        if self.password is None or call is None or call._auth_attempts >= MAX_AUTH_ATTEMPTS:
            return False
        if call.state is CallState.TERMINATING:
            return False
        proxy = response.status == 407
        header = response.headers.get("Proxy-Authenticate" if proxy else "WWW-Authenticate")
        if header is None:
            return False
        try:
            challenge = Challenge.parse(header, proxy=proxy)
        except SipError:
            return False
        call._auth_attempts += 1
        old = entry.transaction.request
        request = SipRequest(headers=old.headers.copy(), body=old.body, method=old.method,
                             uri=old.uri)
        number = old.cseq[0] + 1
        request.headers.set("CSeq", f"{number} {old.method}")
        request.headers.replace_first_value("Via", self._via())
        request.headers.set(challenge.header_name, authorization(
            challenge, username=self.username, password=self.password, method=old.method,
            uri=old.uri, rng=self.rng))
        if call.dialog is not None and entry.purpose == "reinvite":
            call.dialog.local_seq = number
        tx = self._start_client(request, entry.transaction.destination, now, entry.purpose,
                                call)
        if entry.purpose == "invite":
            call.invite = request
            call._invite_tx = tx
            call._got_provisional = False
        else:
            call._reinvite_tx = tx
        return True

    def _client_timeout(self, entry: _ClientEntry, now: float) -> None:
        call = entry.call
        if entry.purpose == "options":
            self._events.append(OptionsAnswered(408, None))
        elif call is None:
            return
        elif entry.purpose == "invite":
            self._end(call, "timeout", 408)
        elif entry.purpose == "reinvite":
            self._events.append(ReinviteFailed(call, 408))
            self._end(call, "re-INVITE timed out", 408)
        elif entry.purpose == "bye":
            self._end(call, call.end_reason or "local hangup (BYE unanswered)", None)
        elif entry.purpose == "cancel" and call.state is CallState.TERMINATING:
            self._end(call, "cancelled (no answer to CANCEL)", None)

    def _end(self, call: Call, reason: str, status: int | None) -> None:
        if call.state is CallState.TERMINATED:
            return
        call.state = CallState.TERMINATED
        call.end_reason = reason
        call.end_status = status
        call._ok = call._ok_next = None
        self._events.append(CallEnded(call, reason, status))

    # -- requests ---------------------------------------------------------------------------------

    def _receive_request(self, request: SipRequest, source: Address, now: float) -> None:
        via = request.top_via
        destination = self._response_address(request, via, source)
        method = request.method
        key = (via.branch or "", "INVITE" if method == "ACK" else method)
        server = self._server.get(key)
        if server is not None and (method != "ACK" or server.state is State.COMPLETED):
            server.receive_request(request, now)
            return
        if method == "ACK":
            self._receive_ack(request, now)
            return
        tx = ServerTransaction(request, destination, now, reliable=_reliable(via),
                               timers=self.timers)
        self._server[(via.branch or "", method)] = tx
        handler = {
            "INVITE": self._receive_invite,
            "BYE": self._receive_bye,
            "CANCEL": self._receive_cancel,
            "OPTIONS": self._receive_options,
        }.get(method)
        if handler is None:
            response = make_response(request, 501 if method not in ("REGISTER", "SUBSCRIBE",
                                                                    "NOTIFY", "REFER", "INFO",
                                                                    "UPDATE", "MESSAGE",
                                                                    "PRACK") else 405,
                                     to_tag=new_tag(self.rng))
            response.headers.add("Allow", ALLOW)
            tx.respond(response, now)
            return
        handler(request, tx, now)

    def _response_address(self, request: SipRequest, via: Via, source: Address) -> Address:
        """RFC 3261 section 18.2.2 with RFC 3581: add received/rport, answer the source port."""
        updated = via
        if via.host != source[0]:
            updated = updated.with_param("received", source[0])
        if via.has_param("rport"):
            updated = updated.with_param("received", source[0]).with_param("rport",
                                                                            str(source[1]))
        if updated is not via:
            request.headers.replace_first_value("Via", str(updated))
        if via.has_param("rport") or _reliable(via):
            # RFC 3261 section 18.2.2: over a stream the response goes back on the connection
            # the request came on, which the driver knows by its source address.
            return source
        return updated.response_address()

    def _receive_invite(self, request: SipRequest, tx: ServerTransaction, now: float) -> None:
        to_tag = request.to_address.tag
        if to_tag is not None:
            call = self._find_dialog_call(request)
            if call is None or call.dialog is None:
                tx.respond(make_response(request, 481), now)
                return
            if not call.dialog.accept_remote_cseq(request.cseq[0]):
                tx.respond(make_response(request, 500), now)
                return
            if call._pending_reinvite is not None or _pending(call._reinvite_tx):
                tx.respond(make_response(request, 491), now)  # glare (section 14.2)
                return
            contact = request.contact
            if contact is not None:
                call.dialog.remote_target = contact.uri
            call._pending_reinvite = tx
            call.remote_sdp = request.body or call.remote_sdp
            self._events.append(ReinviteReceived(call, request.body))
            return
        if request.call_id in self.calls:
            tx.respond(make_response(request, 482, "Loop Detected", to_tag=new_tag(self.rng)), now)
            return
        if request.body and request.content_type not in (None, SDP):
            tx.respond(make_response(request, 415, to_tag=new_tag(self.rng)), now)
            return
        tx.respond(make_response(request, 100), now)
        call = Call(call_id=request.call_id, outgoing=False, local_tag=new_tag(self.rng),
                    invite=request,
                    state=CallState.INCOMING, remote_sdp=request.body or None,
                    destination=tx.destination, _invite_tx=tx)
        self.calls[request.call_id] = call
        self._events.append(IncomingCall(call, request.body or None, request))

    def _receive_ack(self, request: SipRequest, now: float) -> None:
        call = self._find_dialog_call(request)
        if call is None or call._ok is None:
            return  # a late or duplicate ACK: nothing to do
        call._ok = call._ok_next = None
        if call.state is CallState.CONFIRMED and not call.extra.get("acked"):
            call.extra["acked"] = True
            if not call.outgoing:
                self._events.append(CallConfirmed(call))

    def _receive_bye(self, request: SipRequest, tx: ServerTransaction, now: float) -> None:
        call = self._find_dialog_call(request)
        if call is None:
            tx.respond(make_response(request, 481), now)
            return
        tx.respond(make_response(request, 200), now)
        self._end(call, "remote hangup", None)

    def _receive_cancel(self, request: SipRequest, tx: ServerTransaction, now: float) -> None:
        invite_tx = self._server.get((request.top_via.branch or "", "INVITE"))
        if invite_tx is None:
            tx.respond(make_response(request, 481), now)
            return
        call = self.calls.get(request.call_id)
        tag = call.local_tag if call is not None else new_tag(self.rng)
        tx.respond(make_response(request, 200, to_tag=tag), now)
        if call is not None and call.state is CallState.INCOMING:
            invite_tx.respond(make_response(invite_tx.request, 487, to_tag=tag), now)
            self._end(call, "cancelled by the caller", 487)

    def _receive_options(self, request: SipRequest, tx: ServerTransaction, now: float) -> None:
        response = make_response(request, 200, to_tag=new_tag(self.rng))
        response.headers.add("Allow", ALLOW)
        response.headers.add("Accept", SDP)
        response.headers.add("User-Agent", self.user_agent)
        tx.respond(response, now)

    def _find_dialog_call(self, request: SipRequest) -> Call | None:
        call = self.calls.get(request.call_id)
        if call is None or call.dialog is None or not call.dialog.matches(request):
            return None
        return call


def _reliable(via: Via) -> bool:
    """Whether the message with this top Via travels over a stream (no retransmissions)."""
    return via.transport not in ("UDP", "DTLS")


def _pending(tx: ClientTransaction | None) -> bool:
    """Whether our INVITE still waits for its final response (glare, RFC 3261 section 14)."""
    return tx is not None and tx.state in (State.CALLING, State.PROCEEDING)


def _host_port(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
