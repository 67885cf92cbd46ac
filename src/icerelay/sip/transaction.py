"""SIP transactions (RFC 3261 section 17, with RFC 6026's Accepted states), sans I/O.

Four state machines, one per kind: client INVITE (timers A, B, D; M), client non-INVITE (E, F,
K), server INVITE (G, H, I; L) and server non-INVITE (J). Time is passed in; each transaction
queues what to send in :attr:`outbox` (the user agent drains it) and reports to its user through
:attr:`responses` (client) or its state. Over a reliable transport nothing is retransmitted and
the wait timers are zero, as the RFC says.

Why RFC 6026: without its Accepted state, a retransmitted 2xx to an INVITE would reach no
transaction; with it the client passes every 2xx up (so the UA re-sends its ACK) and the server
absorbs retransmitted INVITEs while the UA retransmits the 2xx itself.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from icerelay.sip.message import Headers, SipRequest, SipResponse

T1 = 0.5
T2 = 4.0
T4 = 5.0

Address = tuple[str, int]


def same_hop_request(invite: SipRequest, method: str, to: str) -> SipRequest:
    """A request that follows ``invite`` hop by hop: the ACK for a non-2xx answer (section
    17.1.1.3) or a CANCEL (section 9.1). Both keep the INVITE's top Via (so its branch: the
    next hop matches them to the INVITE transaction), Route set, Request-URI, From, Call-ID and
    CSeq number; only ``To`` (the ACK takes the response's, with its tag) and the method differ.
    """
    headers = Headers()
    headers.add("Via", invite.headers.values("Via")[0])
    for route in invite.headers.get_all("Route"):
        headers.add("Route", route)
    headers.add("Max-Forwards", "70")
    headers.add("From", invite._required("From"))
    headers.add("To", to)
    headers.add("Call-ID", invite.call_id)
    headers.add("CSeq", f"{invite.cseq[0]} {method}")
    return SipRequest(headers=headers, method=method, uri=invite.uri)


class State(enum.Enum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    ACCEPTED = "accepted"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass(frozen=True)
class Timers:
    """T1/T2/T4 (RFC 3261 section 17.1.1.1 and table 4); tests shorten them."""

    t1: float = T1
    t2: float = T2
    t4: float = T4


class _Transaction:
    def __init__(self, request: SipRequest, destination: Address, now: float, *,
                 reliable: bool, timers: Timers) -> None:
        self.request = request
        self.destination = destination
        self.reliable = reliable
        self.timers = timers
        self.state = State.TRYING
        self.outbox: deque[tuple[bytes, Address]] = deque()
        self.timed_out = False
        self._deadlines: dict[str, float] = {}
        self.created = now

    @property
    def branch(self) -> str:
        return self.request.top_via.branch or ""

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    def next_timer(self) -> float | None:
        return min(self._deadlines.values()) if self._deadlines else None

    def handle_timer(self, now: float) -> None:
        for name, deadline in sorted(self._deadlines.items(), key=lambda item: item[1]):
            if deadline <= now and self._deadlines.get(name) == deadline:
                del self._deadlines[name]
                self._fire(name, now)

    def _fire(self, name: str, now: float) -> None:
        raise NotImplementedError

    def _send(self, data: bytes, destination: Address | None = None) -> None:
        self.outbox.append((data, destination or self.destination))

    def _terminate(self) -> None:
        self.state = State.TERMINATED
        self._deadlines.clear()


class ClientTransaction(_Transaction):
    """Client INVITE (section 17.1.1) or non-INVITE (section 17.1.2) transaction.

    Every response the user must see is appended to :attr:`responses`; a timeout (B or F) or a
    transport failure sets :attr:`timed_out` (the user acts as if it got 408).
    """

    def __init__(self, request: SipRequest, destination: Address, now: float, *,
                 reliable: bool = False, timers: Timers | None = None) -> None:
        super().__init__(request, destination, now, reliable=reliable, timers=timers or Timers())
        self.invite = request.method == "INVITE"
        self.responses: deque[SipResponse] = deque()
        self.final: SipResponse | None = None
        self._data = request.to_bytes()
        self._interval = self.timers.t1
        self.state = State.CALLING if self.invite else State.TRYING
        self._send(self._data)
        if not reliable:
            self._deadlines["A" if self.invite else "E"] = now + self._interval
        self._deadlines["B" if self.invite else "F"] = now + 64 * self.timers.t1
        self._ack: bytes | None = None

    def _fire(self, name: str, now: float) -> None:
        t = self.timers
        if name == "A" and self.state is State.CALLING:
            self._send(self._data)
            self._interval *= 2
            self._deadlines["A"] = now + self._interval
        elif name == "E" and self.state in (State.TRYING, State.PROCEEDING):
            self._send(self._data)
            # In Proceeding the interval is T2 (section 17.1.2.2): the server is alive.
            self._interval = t.t2 if self.state is State.PROCEEDING else min(
                2 * self._interval, t.t2)
            self._deadlines["E"] = now + self._interval
        elif name in ("B", "F") and self.state in (State.CALLING, State.TRYING,
                                                    State.PROCEEDING):
            self.timed_out = True
            self._terminate()
        elif name in ("D", "K", "M"):
            self._terminate()

    def receive(self, response: SipResponse, now: float) -> None:
        """A response whose top Via branch and CSeq method matched this transaction."""
        status = response.status
        if self.invite:
            self._receive_invite(response, status, now)
        else:
            self._receive_non_invite(response, status, now)

    def _receive_invite(self, response: SipResponse, status: int, now: float) -> None:
        if self.state in (State.CALLING, State.PROCEEDING):
            self._deadlines.pop("A", None)
            if status < 200:
                self.state = State.PROCEEDING
                self.responses.append(response)
            elif status < 300:
                self.final = response
                self.responses.append(response)
                self.state = State.ACCEPTED
                self._deadlines.pop("B", None)
                self._deadlines["M"] = now + 64 * self.timers.t1
            else:
                self.final = response
                self.responses.append(response)
                self._ack = self._make_ack(response).to_bytes()
                self._send(self._ack)
                self.state = State.COMPLETED
                self._deadlines.pop("B", None)
                self._deadlines["D"] = now + (0.0 if self.reliable else 32.0)
        elif self.state is State.ACCEPTED and 200 <= status < 300:
            self.responses.append(response)  # a retransmitted 2xx: the UA re-sends its ACK
        elif self.state is State.COMPLETED and status >= 300 and self._ack is not None:
            self._send(self._ack)  # our ACK was lost

    def _receive_non_invite(self, response: SipResponse, status: int, now: float) -> None:
        if self.state not in (State.TRYING, State.PROCEEDING):
            return
        if status < 200:
            self.state = State.PROCEEDING
            self.responses.append(response)
            return
        self.final = response
        self.responses.append(response)
        self.state = State.COMPLETED
        self._deadlines.pop("E", None)
        self._deadlines.pop("F", None)
        self._deadlines["K"] = now + (0.0 if self.reliable else self.timers.t4)

    def _make_ack(self, response: SipResponse) -> SipRequest:
        """The ACK for a non-2xx final response (section 17.1.1.3): same branch, To with tag."""
        return same_hop_request(self.request, "ACK", response._required("To"))

    def cancel_timers(self) -> None:
        """Stop retransmitting (the UA gave up on this request)."""
        self._terminate()


class ServerTransaction(_Transaction):
    """Server INVITE (section 17.2.1) or non-INVITE (section 17.2.2) transaction.

    ``destination`` is where responses go (Via with received/rport, RFC 3581). The user calls
    :meth:`respond`; retransmitted requests are answered from here and never reach the user.
    """

    def __init__(self, request: SipRequest, destination: Address, now: float, *,
                 reliable: bool = False, timers: Timers | None = None) -> None:
        super().__init__(request, destination, now, reliable=reliable, timers=timers or Timers())
        self.invite = request.method == "INVITE"
        self.state = State.PROCEEDING if self.invite else State.TRYING
        self.last_response: SipResponse | None = None
        self._last_data: bytes | None = None
        self._interval = self.timers.t1
        self.acked = False

    def respond(self, response: SipResponse, now: float) -> None:
        """Send a response (the user's decision)."""
        if self.state in (State.COMPLETED, State.CONFIRMED, State.TERMINATED, State.ACCEPTED):
            return
        self.last_response = response
        self._last_data = response.to_bytes()
        self._send(self._last_data)
        status = response.status
        if status < 200:
            if not self.invite:
                self.state = State.PROCEEDING
            return
        if self.invite and status < 300:
            # The UA core retransmits the 2xx until the ACK (section 13.3.1.4); we absorb
            # retransmitted INVITEs meanwhile (RFC 6026 Accepted, timer L).
            self.state = State.ACCEPTED
            self._deadlines["L"] = now + 64 * self.timers.t1
        elif self.invite:
            self.state = State.COMPLETED
            if not self.reliable:
                self._deadlines["G"] = now + self._interval
            self._deadlines["H"] = now + 64 * self.timers.t1
        else:
            self.state = State.COMPLETED
            self._deadlines["J"] = now + (0.0 if self.reliable else 64 * self.timers.t1)

    def receive_request(self, request: SipRequest, now: float) -> None:
        """A request that matched this transaction: a retransmission, or the ACK of a non-2xx."""
        if request.method == "ACK":
            if self.invite and self.state is State.COMPLETED:
                self.acked = True
                self.state = State.CONFIRMED
                self._deadlines.pop("G", None)
                self._deadlines.pop("H", None)
                self._deadlines["I"] = now + (0.0 if self.reliable else self.timers.t4)
            return
        if self._last_data is not None and self.state in (State.PROCEEDING, State.COMPLETED):
            self._send(self._last_data)

    def _fire(self, name: str, now: float) -> None:
        if name == "G" and self.state is State.COMPLETED and self._last_data is not None:
            self._send(self._last_data)
            self._interval = min(2 * self._interval, self.timers.t2)
            self._deadlines["G"] = now + self._interval
        elif name == "H" and self.state is State.COMPLETED:
            self.timed_out = True  # the ACK never came
            self._terminate()
        elif name in ("I", "J", "L"):
            self._terminate()
