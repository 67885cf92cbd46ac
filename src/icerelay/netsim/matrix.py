"""The RFC 4787 NAT matrix: does ICE connect between every pair of NAT behaviours, and how?

Each side is either on the public Internet or behind a NAT with one of the nine combinations of
mapping and filtering behaviour (endpoint-independent, address-dependent,
address-and-port-dependent). Every cell runs one full ICE session on the simulator (both agents
gathering from a STUN server, trickling candidates to each other) and records whether it
connected and with which candidate types, with or without a TURN server. :func:`format_matrix`
renders the table that ``icerelay nat-matrix`` prints::

    print(format_matrix(nat_matrix()))            # direct traversal only
    print(format_matrix(nat_matrix(turn=True)))   # with a relay to fall back on
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from icerelay.netsim.nat import Behaviour, NatConfig
from icerelay.netsim.scenario import IceScenario

NAT_TYPES: tuple[NatConfig | None, ...] = (
    None,
    *(NatConfig(mapping, filtering) for mapping in Behaviour for filtering in Behaviour),
)
"""No NAT, then the nine mapping x filtering combinations."""


def nat_label(config: NatConfig | None) -> str:
    """``open`` for no NAT, else e.g. ``EIM/APDF``."""
    return "open" if config is None else config.name


@dataclass(frozen=True)
class MatrixCell:
    """One ICE session between a left and a right NAT type."""

    left: str
    right: str
    connected: bool
    pair_types: str
    """``local/remote`` candidate types of the left agent's selected pair (``-`` if none)."""
    time_to_connected: float | None
    """Virtual seconds from the start until both agents were connected."""


def nat_matrix(
    nat_types: Sequence[NatConfig | None] = NAT_TYPES,
    *,
    seed: int = 0,
    rtt: float = 0.02,
    timeout: float = 60.0,
    turn: bool = False,
    outer_nat: NatConfig | None = None,
) -> list[MatrixCell]:
    """Run every (left, right) combination of ``nat_types``; row-major order.

    With ``turn`` both agents also gather relayed candidates from a TURN server (icerelay's own
    engine) on the public side, so every cell should connect, through the relay where nothing
    else works. With ``outer_nat`` both sides sit behind one more NAT (carrier-grade NAT): a
    direct path then also needs that NAT to hairpin (``NatConfig(hairpinning=...)``).
    """
    cells: list[MatrixCell] = []
    for left in nat_types:
        for right in nat_types:
            scenario = IceScenario(
                left_nat=left, right_nat=right, outer_nat=outer_nat, seed=seed, rtt=rtt, turn=turn
            )
            result = scenario.run(timeout, until_completed=False)
            cells.append(
                MatrixCell(
                    left=nat_label(left),
                    right=nat_label(right),
                    connected=result.connected,
                    pair_types=result.pair_types,
                    time_to_connected=result.time_to_connected,
                )
            )
    return cells


def format_matrix(cells: Sequence[MatrixCell]) -> str:
    """A text table: rows are the left agent's NAT, columns the right agent's; each cell shows
    the left agent's selected pair as ``local/remote`` candidate types, or ``FAIL``."""
    rows: list[str] = []
    for cell in cells:
        if cell.left not in rows:
            rows.append(cell.left)
    columns: list[str] = []
    for cell in cells:
        if cell.right not in columns:
            columns.append(cell.right)
    lookup = {(cell.left, cell.right): cell for cell in cells}

    def text(cell: MatrixCell | None) -> str:
        if cell is None:
            return ""
        return cell.pair_types if cell.connected else "FAIL"

    width = max([len(label) for label in rows + columns] + [len(text(c)) for c in cells]) + 2
    lines = ["left \\ right".ljust(width) + "".join(c.ljust(width) for c in columns)]
    for row in rows:
        lines.append(
            row.ljust(width) + "".join(text(lookup.get((row, c))).ljust(width) for c in columns)
        )
    connected = sum(1 for cell in cells if cell.connected)
    lines.append(f"{connected}/{len(cells)} connected (candidate types: left local/left remote)")
    return "\n".join(lines)
