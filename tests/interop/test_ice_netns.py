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

The STUN/TURN server is coturn, and for the symmetric case also icerelay's own TURN server
(:mod:`tests.interop.ice_agents.turnd`); both agents share it. Needs root, ip, nft and coturn;
skipped otherwise.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.interop.ice_agents.session import AgentProcess, SessionResult, run_session, start_agent
from tests.interop.ice_agents.topology import ROOT, TwoSites, build_two_sites
from tests.support.coturn import Coturn
from tests.support.netns import Lab, Namespace, NatKind

pytestmark = [pytest.mark.interop, pytest.mark.netns]

TURN_USER, TURN_PASSWORD = "ice", "nat-secret"


def start_server(sites: TwoSites, request: pytest.FixtureRequest, relay: str) -> str:
    """The STUN/TURN server in the public namespace; returns its ``host:port``.

    coturn's fixture is asked for only here, so the icerelay-relay case runs without coturn.
    """
    if relay == "coturn":
        coturn_factory: Callable[..., Coturn] = request.getfixturevalue("coturn_factory")
        server = coturn_factory(
            namespace=sites.public,
            listening_ips=(sites.server_ip,),
            users=[(TURN_USER, TURN_PASSWORD)],
        )
        return f"{server.host}:{server.port}"
    address = f"{sites.server_ip}:3478"
    process = sites.public.popen(
        sys.executable, "-m", "tests.interop.ice_agents.turnd", "--listen", address,
        "--user", f"{TURN_USER}:{TURN_PASSWORD}", "--allow-peer", "203.0.113.0/24",
        cwd=str(ROOT), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        pytest.fail(f"icerelay TURN server did not start: {process.communicate(timeout=5)}")
    return address


def session(
    lab: Lab,
    request: pytest.FixtureRequest,
    left_kind: NatKind,
    right_kind: NatKind,
    right_impl: str = "icerelay",
    relay: str = "coturn",
) -> tuple[TwoSites, SessionResult]:
    if right_impl == "aioice":
        pytest.importorskip("aioice", reason="aioice not installed (test extra)")
    sites = build_two_sites(lab, left_kind, right_kind)
    address = start_server(sites, request, relay)

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
    netns_lab: Lab, request: pytest.FixtureRequest, right_impl: str
) -> None:
    sites, result = session(netns_lab, request, "cone", "cone", right_impl)
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


@pytest.mark.parametrize(
    ("relay", "right_impl"),
    [("coturn", "icerelay"), ("icerelay", "icerelay"), ("coturn", "aioice")],
    ids=["coturn-ours-ours", "icerelay-ours-ours", "coturn-ours-aioice"],
)
def test_symmetric_to_symmetric_goes_through_the_relay(
    netns_lab: Lab, request: pytest.FixtureRequest, relay: str, right_impl: str
) -> None:
    sites, result = session(netns_lab, request, "symmetric", "symmetric", right_impl, relay=relay)
    completed = result.left["completed"]
    # Some relayed candidate carries it (ours or the peer's, whichever the checks found first).
    assert "relay" in (completed["local_type"], completed["remote_type"]), result.left
    assert "relay" in pair_types(result, "right"), result.right
    assert sites.server_ip in completed["local"] + completed["remote"]
    assert result.left["data1"]["payload"].startswith("controlled")
    assert result.right["data1"]["payload"].startswith("controlling")
