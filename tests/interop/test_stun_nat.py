"""``stun-probe --behavior`` through real Linux NATs (nftables in network namespaces).

The client namespace sits behind a NAT namespace; the STUN server (ours, or coturn) runs in a
'public' namespace with two addresses so it can do RFC 5780. Per PEERS.md, ``masquerade`` is a
port-restricted cone (endpoint-independent mapping, address-and-port-dependent filtering) and
``masquerade random,fully-random`` is symmetric (address-and-port-dependent mapping).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.coturn import Coturn
from tests.support.netns import Lab, NatKind, NatLab, build_nat_lab
from tests.support.serve import ServeProcess, icerelay_command

pytestmark = [pytest.mark.interop, pytest.mark.netns]

PORT = 3478  # inside our own namespaces nothing else can hold it


def start_icerelay(lab: NatLab, serve_factory: Callable[..., ServeProcess]) -> None:
    primary, alternate = lab.server_addresses
    serve_factory(
        ["--stun-listen", f"{primary}:{PORT}", "--stun-alternate", alternate],
        host=primary,
        port=PORT,
        namespace=lab.public,
    )


def probe_behavior(lab: NatLab) -> dict[str, Any]:
    result = lab.client.run(
        *icerelay_command("stun-probe", f"{lab.server_addresses[0]}:{PORT}", "--behavior",
                          "--json", "--timeout", "1"),
        check=False, timeout=60,
    )  # fmt: skip
    ruleset = lab.nat.run("nft", "list", "ruleset", check=False).stdout
    assert result.returncode == 0, f"{result.stderr}\n{ruleset}"
    data: dict[str, Any] = json.loads(result.stdout)
    return data


@pytest.mark.parametrize(
    ("kind", "mapping"),
    [("cone", "endpoint-independent"), ("symmetric", "address-and-port-dependent")],
)
def test_behavior_behind_linux_nat(
    netns_lab: Lab, serve_factory: Callable[..., ServeProcess], kind: NatKind, mapping: str
) -> None:
    lab = build_nat_lab(netns_lab, kind)
    start_icerelay(lab, serve_factory)
    data = probe_behavior(lab)
    assert data["behind_nat"] is True
    assert data["local"].startswith(f"{lab.client_address}:")
    assert data["mapped"].startswith(f"{lab.nat_outside}:")
    assert data["other_address"] == f"{lab.server_addresses[1]}:{PORT + 1}"
    assert data["mapping"] == mapping
    # Linux conntrack only lets in answers from the exact address and port we sent to.
    assert data["filtering"] == "address-and-port-dependent"


def test_behavior_without_nat(netns_lab: Lab, serve_factory: Callable[..., ServeProcess]) -> None:
    lab = build_nat_lab(netns_lab, None)
    start_icerelay(lab, serve_factory)
    data = probe_behavior(lab)
    assert data["behind_nat"] is False
    assert data["mapped"] == data["local"]
    assert data["mapping"] == "endpoint-independent"
    assert data["filtering"] == "endpoint-independent"


def test_behavior_behind_cone_nat_against_coturn(
    netns_lab: Lab, coturn_factory: Callable[..., Coturn]
) -> None:
    lab = build_nat_lab(netns_lab, "cone")
    coturn_factory(listening_ips=lab.server_addresses, namespace=lab.public, port=PORT)
    data = probe_behavior(lab)
    assert data["mapped"].startswith(f"{lab.nat_outside}:")
    assert data["mapping"] == "endpoint-independent"
    assert data["filtering"] == "address-and-port-dependent"


def test_lab_is_torn_down_even_when_the_test_fails(netns_lab: Lab) -> None:
    """The helpers' promise to other tests: nothing is left behind after an exception."""
    from tests.support.netns import nat_lab, unavailable_reason

    assert unavailable_reason() is None
    names: list[str] = []
    with pytest.raises(RuntimeError, match="boom"), nat_lab("symmetric") as lab:
        names = [ns.name for ns in (lab.client, lab.nat, lab.public)]
        lab.client.popen("sleep", "30")
        raise RuntimeError("boom")
    existing = netns_lab.namespace("probe").run("ip", "netns", "list").stdout
    assert names and not any(name in existing for name in names)
