"""Read-only views of live state as plain, JSON-ready dicts (for HTTP, ``icerelay ctl``, cluster).

The services own their state; these functions only read it, at the moment a page or a scrape
asks, so nothing is done per packet. Engine times are on the event loop's monotonic clock: each
view is given the offset to wall-clock time and returns UNIX timestamps (seconds, float).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from icerelay.relay.dialogs import Session
from icerelay.relay.forwarding import ForwardingCounters, LegCounters
from icerelay.relay.records import StreamEndReason
from icerelay.relay.streams import A, B, Stream
from icerelay.turn.server.allocation import Allocation

__all__ = ["allocation_view", "leg_view", "session_view"]

CounterReader = Callable[[str], ForwardingCounters | None]


def _wall(value: float | None, offset: float) -> float | None:
    return None if value is None else round(value + offset, 3)


def _address(value: object) -> str | None:
    return None if value is None else str(value)


def leg_view(leg: LegCounters, offset: float) -> dict[str, Any]:
    """What arrived from one party: packets, bytes, drops, latched source, ICE checks seen."""
    return {
        "packets": leg.packets,
        "bytes": leg.bytes,
        "rtcp_packets": leg.rtcp_packets,
        "dropped": leg.dropped,
        "latched_rtp": _address(leg.latched_rtp),
        "latched_rtcp": _address(leg.latched_rtcp),
        "stun_requests": leg.stun_requests,
        "stun_nominations": leg.stun_nominations,
        "checks_authenticated": leg.checks_authenticated,
        "last_check": _wall(leg.last_check, offset),
        "last_nomination": _wall(leg.last_nomination, offset),
        "last_media": _wall(leg.last_media, offset),
        "last_packet": _wall(leg.last_packet, offset),
    }


def _ice_state(stream: Stream, counters: ForwardingCounters) -> str:
    """A one-word summary of ICE on a stream, as the relay sees it.

    ``none``: neither party offered ICE; ``offered``: ICE in the SDP, no check through the relay
    yet; ``checking``: checks cross the relay; ``nominated``: a nomination crossed the relay (the
    relay pair was selected); ``stepped-aside``: ICE chose a direct path and the relay left.
    """
    if stream.ended is StreamEndReason.ICE_DIRECT:
        return "stepped-aside"
    if not any(offer is not None and offer.ice for offer in stream.offers):
        return "none"
    legs = (counters.a, counters.b)
    if any(leg.stun_nominations or leg.last_nomination is not None for leg in legs):
        return "nominated"
    if any(leg.stun_requests or leg.checks_authenticated for leg in legs):
        return "checking"
    return "offered"


def _stream_view(
    stream: Stream,
    counters: CounterReader,
    offset: float,
    step_asides: Mapping[str, float],
) -> dict[str, Any]:
    live = counters(stream.key) if stream.installed else None
    numbers = live or stream.final or ForwardingCounters()
    peers = [stream.peer[side][0] for side in (A, B)]
    offers = stream.offers
    stepped = step_asides.get(stream.key)
    return {
        "index": stream.index,
        "key": stream.key,
        "media": stream.media,
        "codec": next((o.codec for o in (offers[B], offers[A]) if o is not None and o.codec), None),
        "state": "relaying" if stream.ended is None else "ended",
        "end_reason": None if stream.ended is None else str(stream.ended),
        "relay_ports": {"caller": stream.relay_ports[A], "callee": stream.relay_ports[B]},
        "sdp_peers": {"caller": _address(peers[A]), "callee": _address(peers[B])},
        "ice": {
            "state": _ice_state(stream, numbers),
            "offered": [offer is not None and offer.ice for offer in offers],
            "step_aside": stream.ended is StreamEndReason.ICE_DIRECT,
            "step_aside_time": stepped,
        },
        "caller": leg_view(numbers.a, offset),
        "callee": leg_view(numbers.b, offset),
    }


def session_view(
    session: Session,
    counters: CounterReader,
    offset: float,
    step_asides: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """One relayed session (a dialog of a call) with its streams.

    :param counters: the data plane's counters by forwarding key.
    :param offset: added to engine times to make wall-clock times.
    :param step_asides: wall-clock time of each step-aside, by stream key (the service keeps it).
    """
    asides = step_asides or {}
    return {
        "call_id": session.call_id,
        "from_tag": session.tags[A],
        "to_tag": session.tags[B],
        "via_branch": session.via_branch,
        "created": _wall(session.created, offset),
        "answered": _wall(session.answered, offset),
        "last_signal": _wall(session.last_signal, offset),
        "state": "answered" if session.answered is not None else "offered",
        "delete_at": _wall(session.delete_at, offset),
        "user_agents": {"caller": session.user_agents[A], "callee": session.user_agents[B]},
        "streams": [_stream_view(s, counters, offset, asides) for s in session.streams],
    }


def _host_port(value: tuple[str, int]) -> str:
    host, port = value
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def allocation_view(allocation: Allocation, now: float, offset: float) -> dict[str, Any]:
    """One TURN allocation: client, user, relayed addresses, permissions, channels, traffic."""
    transport, client, server = allocation.five_tuple
    return {
        "client": _host_port(client),
        "server": _host_port(server),
        "transport": transport,
        "username": allocation.username,
        "relayed": [_host_port(address) for _family, address in sorted(allocation.relays.items())],
        "created": _wall(allocation.created, offset),
        "expires_in": max(0, round(allocation.expires - now)),
        "permissions": sorted(
            peer for peer, until in allocation.permissions.items() if until > now
        ),
        "channels": [
            {"number": number, "peer": _host_port(channel.peer)}
            for number, channel in sorted(allocation.channels.items())
            if channel.expires > now
        ],
        "packets_to_peers": allocation.packets_to_peers,
        "bytes_to_peers": allocation.bytes_to_peers,
        "packets_to_client": allocation.packets_to_client,
        "bytes_to_client": allocation.bytes_to_client,
    }
