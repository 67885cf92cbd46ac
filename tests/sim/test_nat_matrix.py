"""The RFC 4787 NAT matrix: which NAT combinations ICE traverses without a relay, and how."""

from __future__ import annotations

import pytest

from icerelay.netsim import NatConfig
from icerelay.netsim.matrix import NAT_TYPES, MatrixCell, format_matrix, nat_label, nat_matrix

CONES = ("EIM/EIF", "EIM/ADF", "EIM/APDF")
SYMMETRIC = "APDM/APDF"


@pytest.fixture(scope="module")
def matrix() -> dict[tuple[str, str], MatrixCell]:
    return {(cell.left, cell.right): cell for cell in nat_matrix()}


def test_matrix_covers_no_nat_and_the_nine_behaviours(
    matrix: dict[tuple[str, str], MatrixCell],
) -> None:
    assert len(NAT_TYPES) == 10
    assert len(matrix) == 100
    assert nat_label(None) == "open" and nat_label(NAT_TYPES[1]) == "EIM/EIF"


def test_a_public_peer_always_connects(matrix: dict[tuple[str, str], MatrixCell]) -> None:
    for label in map(nat_label, NAT_TYPES):
        assert matrix[("open", label)].connected
        assert matrix[(label, "open")].connected
    assert matrix[("open", "open")].pair_types == "host/host"
    assert matrix[("open", "EIM/APDF")].pair_types == "host/srflx"
    # Behind a symmetric NAT the peer only learns the mapping from the check: peer-reflexive.
    assert matrix[("open", SYMMETRIC)].pair_types == "host/prflx"


def test_cones_connect_directly_via_server_reflexive_candidates(
    matrix: dict[tuple[str, str], MatrixCell],
) -> None:
    for left in CONES:
        for right in CONES:
            cell = matrix[(left, right)]
            assert cell.connected and cell.pair_types == "srflx/srflx", cell


def test_symmetric_nats_need_a_relay(matrix: dict[tuple[str, str], MatrixCell]) -> None:
    assert not matrix[(SYMMETRIC, SYMMETRIC)].connected
    # Port-restricted cone vs symmetric: the classic case without a direct path.
    assert not matrix[("EIM/APDF", SYMMETRIC)].connected
    assert not matrix[(SYMMETRIC, "EIM/APDF")].connected


def test_symmetric_behind_a_permissive_cone_connects_via_peer_reflexive(
    matrix: dict[tuple[str, str], MatrixCell],
) -> None:
    for cone in ("EIM/EIF", "EIM/ADF"):
        assert matrix[(cone, SYMMETRIC)].pair_types == "srflx/prflx"
        assert matrix[(SYMMETRIC, cone)].pair_types == "prflx/srflx"


def test_matrix_is_symmetric(matrix: dict[tuple[str, str], MatrixCell]) -> None:
    for (left, right), cell in matrix.items():
        assert cell.connected == matrix[(right, left)].connected, (left, right)


def test_connected_cells_are_fast(matrix: dict[tuple[str, str], MatrixCell]) -> None:
    for cell in matrix.values():
        if cell.connected:
            assert cell.time_to_connected is not None and cell.time_to_connected < 0.5, cell


def test_format_matrix(matrix: dict[tuple[str, str], MatrixCell]) -> None:
    table = format_matrix(list(matrix.values()))
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["left", "\\", "right"]
    assert len(lines) == 12
    assert lines[1].split()[0] == "open"
    assert "FAIL" in lines[-2]
    connected = sum(cell.connected for cell in matrix.values())
    assert lines[-1].startswith(f"{connected}/100 connected")


def test_subset_of_types(matrix: dict[tuple[str, str], MatrixCell]) -> None:
    cells = nat_matrix([None, NatConfig()], seed=1)
    assert [(c.left, c.right) for c in cells] == [
        ("open", "open"),
        ("open", "EIM/APDF"),
        ("EIM/APDF", "open"),
        ("EIM/APDF", "EIM/APDF"),
    ]


@pytest.fixture(scope="module")
def turn_matrix() -> dict[tuple[str, str], MatrixCell]:
    return {(cell.left, cell.right): cell for cell in nat_matrix(turn=True)}


def test_with_turn_every_cell_connects(turn_matrix: dict[tuple[str, str], MatrixCell]) -> None:
    failed = [key for key, cell in turn_matrix.items() if not cell.connected]
    assert failed == []


def test_relay_is_the_last_resort(
    turn_matrix: dict[tuple[str, str], MatrixCell],
    matrix: dict[tuple[str, str], MatrixCell],
) -> None:
    for key, cell in turn_matrix.items():
        if matrix[key].connected:
            # A direct path exists: ICE must not settle for the relay.
            assert "relay" not in cell.pair_types, key
        else:
            assert "relay" in cell.pair_types, key
    assert "relay" in turn_matrix[(SYMMETRIC, SYMMETRIC)].pair_types
