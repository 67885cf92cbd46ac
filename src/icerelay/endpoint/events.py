"""What the call controller (:class:`~icerelay.endpoint.call.CallController`) tells its driver.

Small frozen dataclasses, read with ``controller.next_event()``. :class:`PortsWanted` is the one
request among them: the controller never binds a socket, so it asks the driver for local UDP
ports and waits for :meth:`~icerelay.endpoint.call.CallController.ports_bound`.
"""

from __future__ import annotations

from dataclasses import dataclass

from icerelay.endpoint.options import PhoneResult


@dataclass(frozen=True)
class PortsWanted:
    """Bind local UDP ports for media and hand their addresses to ``ports_bound``.

    Plain RTP (``ice`` False) wants an even RTP port and the odd one above it for RTCP
    (RFC 3550 section 11) on ``hosts[0]``; ICE wants one port per component on each of
    ``hosts``. ``port_range`` (inclusive) is rtp.conf's rtpstart/rtpend, or None for any port.
    """

    ice: bool
    components: int
    hosts: tuple[str, ...]
    port_range: tuple[int, int] | None = None


@dataclass(frozen=True)
class Notice:
    """A line of progress for the user ("call answered", "media: PCMU/8000, ptime 20 ms")."""

    text: str


@dataclass(frozen=True)
class DebugLine:
    """A line of ``--debug`` output: a SIP message as sent or received, an ICE check."""

    text: str


@dataclass(frozen=True)
class CallAnswered:
    """The call is established: our INVITE got a 2xx, or we sent ours."""


@dataclass(frozen=True)
class MediaStarted:
    """Our RTP session started, over plain RTP or the pair ICE selected."""

    codec: str
    ice_pair: str | None


@dataclass(frozen=True)
class CallEnded:
    """The SIP call ended (BYE, CANCEL, a failure response, a timeout)."""

    reason: str


@dataclass(frozen=True)
class CallFinished:
    """The controller is done; ``result`` says how the call went. Close it and stop."""

    result: PhoneResult


CallEvent = (PortsWanted | Notice | DebugLine | CallAnswered | MediaStarted | CallEnded
             | CallFinished)
