"""The candidates the relay adds for itself (the MediaProxy ICE design, done to RFC 8445/8839).

When a party's stream carries ICE, the relay adds itself as a ``typ relay`` candidate, so the
``c=``/``m=`` default destination -- now the relay -- is one of the candidates (no ``ice-mismatch``
at the far end) and ICE may still find a direct path. ``ICE=force`` makes the relay an ICE-lite
agent whose ``typ host`` candidate is the only one.
"""

from __future__ import annotations

import zlib

from icerelay.relay.plans import StreamPlan
from icerelay.relay.policy import IceMode, IcePriority, candidate_priority
from icerelay.sdp import Candidate

__all__ = ["candidates_to_add", "relay_candidates", "relay_foundation"]


def relay_foundation(address: str) -> str:
    """A stable foundation for the relay's candidates on ``address``.

    RFC 8445 §5.1.1.3: candidates of the same type from the same base share a foundation, and
    different ones must differ. ``R`` marks the relay (as MediaProxy's design does); the CRC of
    the address keeps two relay addresses apart and is unlikely to equal a peer's foundation.
    """
    return f"R{zlib.crc32(address.encode('ascii')):08x}"


def relay_candidates(
    plan: StreamPlan, priority: IcePriority, *, component_2: bool, candidate_type: str = "relay"
) -> list[Candidate]:
    """The candidate lines the relay inserts for one stream (none for ``IcePriority.NONE``)."""
    if priority is IcePriority.NONE:
        return []
    type_preference = priority.type_preference
    if candidate_type == "host":
        # The ICE-lite relay of ICE=force is the only candidate; its type is host (RFC 8445 §2.5).
        type_preference = 126
    foundation = relay_foundation(plan.address)
    components = [(1, plan.rtp_port)]
    if component_2:
        components.append((2, plan.rtcp_port))
    # A relayed candidate names its mapped address in raddr/rport; the relay's is itself.
    relayed = candidate_type == "relay"
    return [
        Candidate(
            foundation=foundation,
            component=component,
            transport="UDP",
            priority=candidate_priority(type_preference, component),
            address=plan.address,
            port=port,
            type=candidate_type,
            related_address=plan.address if relayed else None,
            related_port=port if relayed else None,
        )
        for component, port in components
    ]


def candidates_to_add(
    plan: StreamPlan,
    ice: IceMode,
    priority: IcePriority,
    *,
    carries_ice: bool,
    component_2: bool,
    rtcp_mux: bool,
) -> tuple[Candidate, ...]:
    """What the relay adds to one stream of a party's SDP.

    :param carries_ice: the party's stream has ICE credentials and candidates.
    :param component_2: the party's stream has RTCP (component 2) candidates.
    :param rtcp_mux: the stream, as forwarded, multiplexes RTCP (``ICE=force`` then needs no
        component 2).
    """
    if ice is IceMode.REMOVE:
        return ()
    if ice is IceMode.FORCE:
        forced = relay_candidates(
            plan, IcePriority.HIGH, component_2=not rtcp_mux, candidate_type="host"
        )
        return tuple(forced)
    if not carries_ice:
        return ()
    # DEFAULT and FORCE_RELAY: c=/m= (or, under FORCE_RELAY, the candidates alone) name the
    # relay; listing it as a candidate keeps that default among the candidates, so the far agent
    # runs ICE instead of declaring ice-mismatch.
    return tuple(relay_candidates(plan, priority, component_2=component_2))
