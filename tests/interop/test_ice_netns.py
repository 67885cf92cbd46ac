"""ICE through real Linux NATs in network namespaces (nftables masquerade), agents as processes.

Topology (:func:`tests.interop.ice_agents.topology.build_two_sites`): two private sites, each
behind its own NAT, and coturn as the STUN and TURN server on the 'public' segment. Each agent
runs in its site's namespace (:mod:`tests.interop.ice_agents.agent`); the test relays their
credentials and candidates, as a SIP proxy would carry the SDP.

- cone - cone (``masquerade``: endpoint-independent mapping, port-restricted filtering): the
  agents' checks open each other's NAT and the session goes direct, server-reflexive to
  server-reflexive, although relayed candidates are on offer too;
- symmetric - symmetric (``masquerade random,fully-random``): every destination gets a new NAT
  port, so the srflx addresses are useless to the peer and only the TURN relay connects.

coturn is the relay because both agents share one server (icerelay's TURN server refuses relay-
to-relay on one server today, see NOTES.md). Needs root, ip, nft and coturn; skipped otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.interop.ice_agents.session import AgentProcess, SessionResult, run_session, start_agent
from tests.interop.ice_agents.topology import TwoSites, build_two_sites
from tests.support.coturn import Coturn
from tests.support.netns import Lab, Namespace, NatKind

pytestmark = [pytest.mark.interop, pytest.mark.netns]

TURN_USER, TURN_PASSWORD = "ice", "nat-secret"


def session(
    lab: Lab,
    coturn_factory: Callable[..., Coturn],
    left_kind: NatKind,
    right_kind: NatKind,
    right_impl: str = "icerelay",
) -> tuple[TwoSites, SessionResult]:
    sites = build_two_sites(lab, left_kind, right_kind)
    server = coturn_factory(
        namespace=sites.public,
        listening_ips=(sites.server_ip,),
        users=[(TURN_USER, TURN_PASSWORD)],
    )
    address = f"{server.host}:{server.port}"

    def agent(name: str, impl: str, role: str, host: str, ns: Namespace) -> AgentProcess:
        options = [
            "--role", role, "--host", host, "--stun", address, "--turn", address,
            "--turn-user", TURN_USER, "--turn-password", TURN_PASSWORD, "--timeout", "20",
        ]  # fmt: skip
        return start_agent(name, impl, options, ns)

    left = agent("left", "icerelay", "controlling", sites.left.address, sites.left.host)
    right = agent("right", right_impl, "controlled", sites.right.address, sites.right.host)
    return sites, run_session(left, right, timeout=25)


def pair_types(result: SessionResult, side: str) -> tuple[str, str]:
    report = getattr(result, side)["connected"]
    return report["local_type"], report["remote_type"]


@pytest.mark.parametrize("right_impl", ["icerelay", "aioice"])
def test_cone_to_cone_goes_direct_via_srflx(
    netns_lab: Lab, coturn_factory: Callable[..., Coturn], right_impl: str
) -> None:
    sites, result = session(netns_lab, coturn_factory, "cone", "cone", right_impl)
    completed = result.left["completed"]
    # Our (controlling) agent sends from its host base through the NAT mapping that the STUN
    # server reported: the local candidate of the valid pair is the srflx one; the peer is
    # reached at its srflx address (or that same mapping, learned as peer-reflexive).
    assert (completed["local_type"], completed["remote_type"]) in {
        ("srflx", "srflx"),
        ("srflx", "prflx"),
    }, result.left
    assert completed["local"].startswith(sites.left.nat_outside + ":")
    assert completed["remote"].startswith(sites.right.nat_outside + ":")
    assert "relay" not in pair_types(result, "right"), result.right
    # Media went both ways.
    assert result.left["data1"]["payload"].startswith("controlled")
    assert result.right["data1"]["payload"].startswith("controlling")


def test_symmetric_to_symmetric_goes_through_the_relay(
    netns_lab: Lab, coturn_factory: Callable[..., Coturn]
) -> None:
    sites, result = session(netns_lab, coturn_factory, "symmetric", "symmetric")
    completed = result.left["completed"]
    # Some relayed candidate carries it (ours or the peer's, whichever the checks found first).
    assert "relay" in (completed["local_type"], completed["remote_type"]), result.left
    assert "relay" in pair_types(result, "right"), result.right
    assert sites.server_ip in completed["local"] + completed["remote"]
    assert result.left["data1"]["payload"].startswith("controlled")
    assert result.right["data1"]["payload"].startswith("controlling")
