"""Session snapshots: a session's whole state as a JSON-ready dict, and back (pure).

A relay that shares its calls (Redis, :mod:`icerelay.daemon.cluster`) writes each session as a
snapshot; the instance that adopts the calls of a dead one rebuilds the sessions from them and
the engine takes them over (:meth:`~icerelay.relay.sessions.SessionEngine.restore`). A snapshot
holds what the call needs to go on where it stopped: its tags, each stream's offers (so re-offers
and ICE-restart detection still work), relay ports, where each party is (the latched addresses
first: the party's NAT mapping, which the SDP may not name), the relay's own ICE credentials,
rtcp-mux decisions, streams already ended (ICE went direct, rejected...), the counters at
the moment of writing, so the call's record counts what crossed either instance, and the
record's id, so that the call is recorded once whichever instance records it.

Times: the engine's clock is a process's monotonic clock, which means nothing in another
process. Snapshots carry Unix times; ``wall_offset`` (wall clock minus engine clock) converts
both ways.

:data:`VERSION` is written in every snapshot; a reader refuses a version it does not know
(:class:`~icerelay.errors.RelayError`), as it refuses a malformed one: Redis is shared, and
what comes back from it is input like any other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from icerelay.errors import RelayError, SdpError
from icerelay.relay.dialogs import Session
from icerelay.relay.forwarding import ForwardingCounters, LegCounters
from icerelay.relay.plans import StreamOffer
from icerelay.relay.policy import IcePriority
from icerelay.relay.ports import PortPair
from icerelay.relay.records import StreamEndReason
from icerelay.relay.streams import A, B, Stream
from icerelay.sdp import Candidate, Direction, IceCredentials
from icerelay.stun import Address

__all__ = ["VERSION", "Snapshot", "export_session", "restore_session"]

VERSION = 1

#: A snapshot: a JSON-ready dictionary.
Snapshot = dict[str, Any]

_E = TypeVar("_E", IcePriority, StreamEndReason)

# Session fields holding engine-clock times (converted to and from Unix times).
_SESSION_TIMES = ("created", "last_signal", "answered", "delete_at", "deleted_at")


def export_session(
    session: Session,
    counters: Mapping[str, ForwardingCounters | None],
    *,
    wall_offset: float,
) -> Snapshot:
    """The snapshot of ``session``; ``counters`` maps stream keys to their counters now."""
    streams = []
    for stream in session.streams:
        live = counters.get(stream.key) if stream.installed else stream.final
        streams.append(_export_stream(stream, live, wall_offset))
    times = {
        name: _shift(getattr(session, name, None), wall_offset)
        for name in _SESSION_TIMES
        if hasattr(session, name)
    }
    return {
        "version": VERSION,
        "call_id": session.call_id,
        "tags": list(session.tags),
        "via_branch": session.via_branch,
        **times,
        "pending": session.pending,
        "strict_source": session.strict_source,
        "ice_priority": None if session.ice_priority is None else str(session.ice_priority),
        "user_agents": list(session.user_agents),
        "metadata": dict(session.metadata),
        "record_id": session.record_id,
        "streams": streams,
    }


def restore_session(
    snapshot: Mapping[str, Any], *, wall_offset: float
) -> tuple[Session, dict[int, ForwardingCounters]]:
    """Rebuild a session (id 0: the engine gives it one) and the counters each stream had.

    The counters are keyed by stream index. A stream's party addresses are its latched ones
    when the snapshot has them: that is where the party's packets really came from, and the
    adopting relay must send there before the party sends again. RelayError if the snapshot is
    malformed or of an unknown version.
    """
    try:
        return _restore(snapshot, wall_offset)
    except RelayError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, SdpError) as error:
        raise RelayError(f"malformed session snapshot: {type(error).__name__}: {error}") from None


def _restore(
    snapshot: Mapping[str, Any], wall_offset: float
) -> tuple[Session, dict[int, ForwardingCounters]]:
    if snapshot.get("version") != VERSION:
        raise RelayError(f"session snapshot version {snapshot.get('version')!r} is not {VERSION}")
    tags = [_text(tag) for tag in snapshot["tags"]]
    if len(tags) != 2 or tags[A] is None:
        raise ValueError("tags must be [from-tag, to-tag]")
    created = _unshift(snapshot["created"], wall_offset)
    last_signal = _unshift(snapshot["last_signal"], wall_offset)
    assert created is not None and last_signal is not None
    session = Session(
        id=0,
        call_id=str(snapshot["call_id"]),
        tags=tags,
        via_branch=_text(snapshot.get("via_branch")),
        created=created,
        last_signal=last_signal,
        answered=_unshift(snapshot.get("answered"), wall_offset),
        pending=_side(snapshot.get("pending")),
        strict_source=bool(snapshot.get("strict_source", False)),
        ice_priority=_enum(IcePriority, snapshot.get("ice_priority")),
        delete_at=_unshift(snapshot.get("delete_at"), wall_offset),
        user_agents=[_text(agent) for agent in snapshot.get("user_agents", [None, None])][:2],
        metadata={str(k): str(v) for k, v in dict(snapshot.get("metadata", {})).items()},
        # Optional: a snapshot written before record ids were carried has none, and the
        # adopting engine then gives the session one of its own.
        record_id=str(snapshot.get("record_id") or ""),
    )
    for name in _SESSION_TIMES[3:]:
        # Set by name: ``deleted_at`` (when the first delete arrived) is a newer field.
        if hasattr(session, name) and snapshot.get(name) is not None:
            setattr(session, name, _unshift(snapshot[name], wall_offset))
    counters: dict[int, ForwardingCounters] = {}
    for position, item in enumerate(snapshot["streams"]):
        stream, stream_counters = _restore_stream(item, wall_offset)
        if stream.index != position:
            raise ValueError(f"stream {position} says index {stream.index}")
        session.streams.append(stream)
        if stream_counters is not None:
            counters[stream.index] = stream_counters
    return session, counters


# -- streams ------------------------------------------------------------------------------------


def _export_stream(
    stream: Stream, counters: ForwardingCounters | None, wall_offset: float
) -> Snapshot:
    return {
        "index": stream.index,
        "key": stream.key,
        "media": stream.media,
        "ports": [None if pair is None else pair.rtp for pair in stream.ports],
        "family": list(stream.family),
        "offers": [None if offer is None else _export_offer(offer) for offer in stream.offers],
        "peer": [[_address(rtp), _address(rtcp)] for rtp, rtcp in stream.peer],
        "ice_credentials": [_credentials(c) for c in stream.ice_credentials],
        "ended": None if stream.ended is None else str(stream.ended),
        "installed": stream.installed,
        "relay_ports": list(stream.relay_ports),
        "mux_sent": list(stream.mux_sent),
        "counters": None if counters is None else _export_counters(counters, wall_offset),
    }


def _restore_stream(
    item: Mapping[str, Any], wall_offset: float
) -> tuple[Stream, ForwardingCounters | None]:
    ports = [_pair(port) for port in item["ports"]]
    family = [int(value) for value in item["family"]]
    if len(ports) != 2 or len(family) != 2 or any(f not in (4, 6) for f in family):
        raise ValueError("ports and family must have two sides")
    offers = [None if o is None else _restore_offer(o) for o in item["offers"]]
    peer = [(_to_address(rtp), _to_address(rtcp)) for rtp, rtcp in item["peer"]]
    relay_ports = tuple(None if p is None else int(p) for p in item["relay_ports"])
    counters = (
        None if item.get("counters") is None else _restore_counters(item["counters"], wall_offset)
    )
    if counters is not None:
        # Where each party's packets last came from beats what its SDP said (a NAT).
        for side, leg in ((A, counters.a), (B, counters.b)):
            if leg.latched_rtp is not None:
                rtcp = leg.latched_rtcp or peer[side][1]
                peer[side] = (leg.latched_rtp, rtcp)
    stream = Stream(
        index=int(item["index"]),
        key=str(item["key"]),
        media=str(item["media"]),
        ports=ports,
        family=family,
        offers=offers[:2],
        peer=peer[:2],
        ice_credentials=[_to_credentials(c) for c in item["ice_credentials"]][:2],
        ended=_enum(StreamEndReason, item.get("ended")),
        installed=bool(item.get("installed", False)),
        relay_ports=(relay_ports[0], relay_ports[1]),
        mux_sent=[None if m is None else bool(m) for m in item["mux_sent"]][:2],
    )
    if stream.ended is not None:
        # An ended stream holds no ports; its counters are its final numbers.
        stream.ports = [None, None]
        stream.installed = False
        stream.final = counters
    return stream, counters


def _export_offer(offer: StreamOffer) -> Snapshot:
    return {
        "index": offer.index,
        "media": offer.media,
        "proto": offer.proto,
        "address": offer.address,
        "port": offer.port,
        "rtcp_address": offer.rtcp_address,
        "rtcp_port": offer.rtcp_port,
        "rtcp_mux": offer.rtcp_mux,
        "direction": str(offer.direction),
        "ice": offer.ice,
        "component_2": offer.component_2,
        "codec": offer.codec,
        "remote_candidates": [list(item) for item in offer.remote_candidates],
        "ice_credentials": _credentials(offer.ice_credentials),
        "candidates": [candidate.to_sdp() for candidate in offer.candidates],
        "payload_types": list(offer.payload_types),
    }


def _restore_offer(item: Mapping[str, Any]) -> StreamOffer:
    return StreamOffer(
        index=int(item["index"]),
        media=str(item["media"]),
        proto=str(item["proto"]),
        address=_text(item.get("address")),
        port=int(item["port"]),
        rtcp_address=_text(item.get("rtcp_address")),
        rtcp_port=int(item["rtcp_port"]),
        rtcp_mux=bool(item["rtcp_mux"]),
        direction=Direction(item["direction"]),
        ice=bool(item["ice"]),
        component_2=bool(item["component_2"]),
        codec=_text(item.get("codec")),
        remote_candidates=tuple(
            (int(component), str(address), int(port))
            for component, address, port in item.get("remote_candidates", [])
        ),
        ice_credentials=_to_credentials(item.get("ice_credentials")),
        candidates=tuple(Candidate.parse(text) for text in item.get("candidates", [])),
        payload_types=tuple(str(pt) for pt in item.get("payload_types", [])),
    )


# -- counters -----------------------------------------------------------------------------------

# LegCounters fields are exported by kind, so that fields added later travel too: counts as
# integers, times shifted to Unix time, addresses as [host, port].
_ADDRESS_FIELDS = ("latched_rtp", "latched_rtcp")


def _export_counters(counters: ForwardingCounters, wall_offset: float) -> Snapshot:
    return {"a": _export_leg(counters.a, wall_offset), "b": _export_leg(counters.b, wall_offset)}


def _export_leg(leg: LegCounters, wall_offset: float) -> Snapshot:
    out: Snapshot = {}
    for item in dataclasses.fields(leg):
        value = getattr(leg, item.name)
        if item.name in _ADDRESS_FIELDS:
            out[item.name] = _address(value)
        elif isinstance(value, float):
            out[item.name] = value + wall_offset
        elif isinstance(value, int) or value is None:
            out[item.name] = value
    return out


def _restore_counters(item: Mapping[str, Any], wall_offset: float) -> ForwardingCounters:
    return ForwardingCounters(
        a=_restore_leg(item["a"], wall_offset), b=_restore_leg(item["b"], wall_offset)
    )


def _restore_leg(item: Mapping[str, Any], wall_offset: float) -> LegCounters:
    leg = LegCounters()
    for spec in dataclasses.fields(leg):
        if spec.name not in item:
            continue
        value = item[spec.name]
        if spec.name in _ADDRESS_FIELDS:
            setattr(leg, spec.name, _to_address(value))
        elif isinstance(getattr(leg, spec.name), int) and not isinstance(value, float):
            setattr(leg, spec.name, int(value))
        elif value is None or isinstance(value, float | int):
            # A time (or None): Unix time back to this engine's clock.
            setattr(leg, spec.name, None if value is None else float(value) - wall_offset)
    return leg


# -- small values -------------------------------------------------------------------------------


def _shift(value: float | None, wall_offset: float) -> float | None:
    return None if value is None else value + wall_offset


def _unshift(value: object, wall_offset: float) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float):
        raise TypeError(f"expected a time, got {value!r}")
    return float(value) - wall_offset


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _side(value: object) -> int | None:
    if value is None:
        return None
    if value not in (A, B):
        raise ValueError(f"side {value!r} is not 0 or 1")
    return int(value)


def _enum(kind: type[_E], value: object) -> _E | None:
    return None if value is None else kind(str(value))


def _pair(value: object) -> PortPair | None:
    if value is None:
        return None
    port = int(value)  # type: ignore[call-overload]
    if port % 2 or not 0 < port < 65535:
        raise ValueError(f"relay port {port} is not an even port")
    return PortPair(port)


def _address(address: Address | None) -> list[object] | None:
    return None if address is None else [address.host, address.port]


def _to_address(value: object) -> Address | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"expected [host, port], got {value!r}")
    return Address(str(value[0]), int(value[1]))


def _credentials(credentials: IceCredentials | None) -> list[str] | None:
    return None if credentials is None else [credentials.ufrag, credentials.pwd]


def _to_credentials(value: object) -> IceCredentials | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"expected [ufrag, pwd], got {value!r}")
    return IceCredentials(str(value[0]), str(value[1]))
