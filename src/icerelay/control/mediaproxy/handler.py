"""Runs MediaProxy dispatcher commands on the relay's session engine.

The module says, per stream, only what the relay needs: media type, address, port, direction and
whether the party does ICE. The handler turns that into typed stream offers for the engine's
structured core (:meth:`~icerelay.relay.sessions.SessionEngine.update`) and answers with the
relay address and ports of the plan; the module rewrites the SDP itself.
"""

from __future__ import annotations

import ipaddress

from icerelay.control.mediaproxy.commands import (
    ERROR_REPLY,
    REMOVED_REPLY,
    MediaproxyRemove,
    MediaproxyStream,
    MediaproxyUpdate,
    format_update_reply,
    parse_command,
)
from icerelay.counters import Counters
from icerelay.errors import ControlError, IcerelayError
from icerelay.relay.dialogs import DialogRef
from icerelay.relay.options import RelayOptions
from icerelay.relay.plans import Exchange, StreamOffer, is_unspecified
from icerelay.relay.sessions import SessionEngine
from icerelay.sdp import Direction

__all__ = ["DEFAULT_MAX_STREAMS", "MediaproxyHandler", "stream_offers"]


#: Streams one ``update`` may list; each holds up to four relay ports.
DEFAULT_MAX_STREAMS = 32


class MediaproxyHandler:
    """Runs mediaproxy commands against a :class:`SessionEngine`; replies are the wire lines.

    :param max_streams: entries one ``update``'s ``media`` may list (more: ``error``, nothing
        allocated, counted as ``error.too_many_streams``).
    :param counters: failures are counted there as ``error.<counter>`` (``malformed_command``,
        ``too_many_streams``, ``too_many_sessions``, ``relay``...) besides the total :attr:`errors`.
    """

    def __init__(
        self,
        engine: SessionEngine,
        *,
        max_streams: int = DEFAULT_MAX_STREAMS,
        counters: Counters | None = None,
    ) -> None:
        self.engine = engine
        self.max_streams = max_streams
        self.counters = counters if counters is not None else Counters()
        self.errors = 0
        #: The last failure, for the shell to log (at a bounded rate): the module only reads
        #: the word "error".
        self.last_error: IcerelayError | None = None

    def handle(self, data: bytes, now: float) -> bytes:
        """Parse and run one command; the reply line (``\\r\\n`` included)."""
        try:
            command = parse_command(data)
            if isinstance(command, MediaproxyRemove):
                self.engine.delete(
                    command.call_id,
                    now,
                    from_tag=command.from_tag,
                    to_tag=command.to_tag,
                )
                return REMOVED_REPLY
            return self._update(command, now)
        except IcerelayError as error:
            # The module reads only the word "error"; the reason is for our counters and log.
            self.errors += 1
            default = "malformed_command" if isinstance(error, ControlError) else "relay"
            self.counters.count(f"error.{error.counter or default}")
            self.last_error = error
            return ERROR_REPLY

    def _update(self, command: MediaproxyUpdate, now: float) -> bytes:
        if len(command.streams) > self.max_streams:
            raise ControlError(
                f"too many media streams: {len(command.streams)} (at most {self.max_streams})",
                counter="too_many_streams",
                remote=True,
            )
        engine = self.engine
        offers = stream_offers(command)
        metadata = tuple(
            (key, value)
            for key, value in (
                ("from_uri", command.from_uri),
                ("to_uri", command.to_uri),
                ("dialog_id", command.dialog_id),
            )
            if value
        )
        # Which party sent this SDP, and is it an offer or an answer? "request" comes from the
        # From party, "reply" from the To party; it answers when that party has an offer to
        # answer (a late offer puts the offer in the 200 OK and the answer in the ACK).
        sender, receiver = (
            (command.to_tag, command.from_tag)
            if command.is_reply
            else (command.from_tag, command.to_tag)
        )
        if sender is None:
            raise ControlError("a reply needs a to_tag")
        if receiver is not None and engine.awaits_answer_from(command.call_id, sender):
            # An answer names the offerer first, as ng's answer does.
            exchange, dialog = Exchange.ANSWER, DialogRef(command.call_id, receiver, sender)
        else:
            exchange, dialog = Exchange.OFFER, DialogRef(command.call_id, sender, receiver)
        plan = engine.update(
            dialog,
            exchange,
            offers,
            now,
            options=RelayOptions(received_from=command.signaling_ip),
            user_agent=command.user_agent,
            metadata=metadata,
        )
        # One address for all streams: the first relayed one's (a held stream's c=0.0.0.0
        # stays the party's business), else the relay's IPv4 address.
        address = next(
            (
                stream.address
                for stream, offer in zip(plan.streams, offers, strict=True)
                if stream is not None and not _held_by_address(offer)
            ),
            None,
        )
        if address is None:
            address = engine.config.advertised_address(4)
        ports = [
            stream.rtp_port if stream is not None else offer.port
            for stream, offer in zip(plan.streams, offers, strict=True)
        ]
        return format_update_reply(address, ports)


def stream_offers(command: MediaproxyUpdate) -> list[StreamOffer]:
    """What the module said about each stream, as the engine's stream offers."""
    if not command.streams:
        raise ControlError("'media' lists no streams")
    signaling_ip = command.signaling_ip
    return [_offer(index, stream, signaling_ip) for index, stream in enumerate(command.streams)]


def _offer(index: int, stream: MediaproxyStream, signaling_ip: str | None) -> StreamOffer:
    address = stream.address
    if signaling_ip is not None and _private(address) and not _private(signaling_ip):
        # A phone behind a NAT writes its private address; the signalling source is where
        # it really is (MediaProxy's long-standing rule). Latching confirms it.
        address = signaling_ip
    port = stream.port
    return StreamOffer(
        index=index,
        media=stream.media,
        proto="RTP/AVP",
        address=address,
        port=port,
        # RTCP on the next port (RFC 3550 §11): the module does not pass a=rtcp or a=rtcp-mux.
        rtcp_address=address,
        rtcp_port=port + 1 if port else 0,
        rtcp_mux=False,
        direction=Direction(stream.direction) if stream.direction else Direction.SENDRECV,
        # The module only says "this party does ICE"; that is enough for the engine to take
        # silence after ICE went around the relay for a direct path, not a dead call. (The
        # module writes its own relay candidate into the real SDP.)
        ice=stream.ice and port != 0,
        component_2=False,
        # The module does not pass the payload types, so the record names no codec.
        codec=None,
        remote_candidates=(),
    )


def _held_by_address(offer: StreamOffer) -> bool:
    return offer.address is not None and is_unspecified(offer.address)


# Where phones behind NATs live: RFC 1918, shared address space (RFC 6598), link-local, ULA.
_PRIVATE = tuple(
    ipaddress.ip_network(network)
    for network in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "fc00::/7",
        "fe80::/10",
    )
)


def _private(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip.version == network.version and ip in network for network in _PRIVATE)
