"""SIP dialogs (RFC 3261 section 12): the state two user agents share for one call.

A dialog is identified by Call-ID, local tag and remote tag. It remembers the route set (from
Record-Route, reversed on the caller's side), the remote target (the peer's Contact) and both
CSeq counters, and builds requests inside the dialog with loose routing (RFC 3261 section
12.2.1.1, ``;lr``) or, for old strict routers, the Request-URI replaced by the first route.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from icerelay.sip.errors import SipError
from icerelay.sip.message import (
    Headers,
    NameAddress,
    SipRequest,
    SipResponse,
    SipUri,
)


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local_address: NameAddress
    """Our From (caller) or To (callee) address, with our tag."""
    remote_address: NameAddress
    remote_target: SipUri
    route_set: list[NameAddress] = field(default_factory=list)
    local_seq: int = 0
    remote_seq: int | None = None
    early: bool = False

    @property
    def id(self) -> tuple[str, str, str]:
        return (self.call_id, self.local_tag, self.remote_tag)

    @classmethod
    def from_response(cls, request: SipRequest, response: SipResponse) -> Dialog:
        """The caller's dialog, from a 1xx-with-tag or 2xx to its INVITE (section 12.1.2)."""
        to = response.to_address
        if to.tag is None:
            raise SipError("a dialog needs a To tag in the response")
        contact = response.contact
        from_address = request.from_address
        if from_address.tag is None:
            raise SipError("our request has no From tag")
        return cls(
            call_id=request.call_id,
            local_tag=from_address.tag,
            remote_tag=to.tag,
            local_address=from_address,
            remote_address=to,
            remote_target=contact.uri if contact else request.request_uri,
            route_set=list(reversed(response.record_route)),
            local_seq=request.cseq[0],
            early=response.status < 200,
        )

    @classmethod
    def from_request(cls, request: SipRequest, local_tag: str) -> Dialog:
        """The callee's dialog, when it answers an INVITE (section 12.1.1)."""
        contact = request.contact
        if contact is None:
            raise SipError("an INVITE needs a Contact")
        from_address = request.from_address
        if from_address.tag is None:
            raise SipError("an INVITE needs a From tag")
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=from_address.tag,
            local_address=request.to_address.with_tag(local_tag),
            remote_address=from_address,
            remote_target=contact.uri,
            route_set=list(request.record_route),
            local_seq=0,
            remote_seq=request.cseq[0],
        )

    def update_from_response(self, response: SipResponse) -> None:
        """A 2xx confirms the dialog and may refresh the target (and, once, the route set)."""
        contact = response.contact
        if contact is not None:
            self.remote_target = contact.uri
        if self.early and response.status >= 200:
            self.route_set = list(reversed(response.record_route))
            self.early = False

    def matches(self, message: SipRequest | SipResponse, *, incoming: bool = True) -> bool:
        """Whether an in-dialog request from the peer belongs here (Call-ID and both tags)."""
        try:
            ours = message.to_address.tag if incoming else message.from_address.tag
            theirs = message.from_address.tag if incoming else message.to_address.tag
            return (message.call_id == self.call_id and ours == self.local_tag
                    and theirs == self.remote_tag)
        except SipError:
            return False

    def accept_remote_cseq(self, number: int) -> bool:
        """Section 12.2.2: a lower CSeq than the last one is out of order (answer 500)."""
        if self.remote_seq is not None and number < self.remote_seq:
            return False
        self.remote_seq = number
        return True

    def next_destination(self) -> SipUri:
        """The URI whose host and port the next request goes to (section 8.1.2)."""
        if self.route_set:
            return self.route_set[0].uri
        return self.remote_target

    def create_request(self, method: str, *, via: str, contact: NameAddress | None,
                       cseq: int | None = None) -> SipRequest:
        """A request inside the dialog (section 12.2.1.1); ``cseq`` for ACK/CANCEL reuse."""
        if cseq is None:
            self.local_seq += 1
            cseq = self.local_seq
        headers = Headers()
        headers.add("Via", via)
        uri = self.remote_target
        routes = list(self.route_set)
        if routes and not routes[0].uri.has_param("lr"):
            # Strict routing (RFC 2543 proxies): the first route becomes the Request-URI and
            # the remote target goes last in Route.
            uri = routes[0].uri.with_params(tuple(
                p for p in routes[0].uri.params if p[0] not in ("method", "maddr", "ttl")))
            routes = [*routes[1:], NameAddress(self.remote_target)]
        for route in routes:
            headers.add("Route", str(route))
        headers.add("Max-Forwards", "70")
        headers.add("From", str(self.local_address))
        headers.add("To", str(self.remote_address))
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{cseq} {method}")
        if contact is not None and method in ("INVITE", "UPDATE", "SUBSCRIBE", "REFER"):
            headers.add("Contact", str(contact))
        return SipRequest(headers=headers, method=method, uri=str(uri))
