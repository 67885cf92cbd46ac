"""``icerelay nat-matrix``: the RFC 4787 NAT matrix of ICE sessions on the simulator.

Every cell is one complete ICE session between two icerelay agents on :mod:`icerelay.netsim`
(virtual time, deterministic for a seed): the left agent behind one NAT type, the right agent
behind another, both gathering from a STUN server and, in the TURN table, from a TURN server
too. The cell shows the candidate types of the left agent's selected pair (``local/remote``) or
``FAIL``. Without options both tables are printed: first direct traversal only, then with TURN,
which must connect everywhere.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import click


@click.command("nat-matrix")
@click.option(
    "--turn/--no-turn",
    default=None,
    help="Only the table with a TURN server (--turn) or without (--no-turn); default: both.",
)
@click.option("--seed", default=0, show_default=True, help="Simulator seed (runs are exact).")
@click.option(
    "--rtt",
    "rtt_ms",
    default=20.0,
    show_default=True,
    help="Round-trip time between the two sides' networks, in milliseconds.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per table, one a line.")
def nat_matrix_command(turn: bool | None, seed: int, rtt_ms: float, as_json: bool) -> None:
    """Run ICE across every pair of NAT behaviours (simulated) and print who connects, and how.

    Rows are the left agent's NAT, columns the right agent's: open (no NAT) and the nine
    mapping/filtering combinations of RFC 4787 (EIM/ADM/APDM x EIF/ADF/APDF).
    """
    if rtt_ms < 0:
        raise click.BadParameter("must not be negative", param_hint="--rtt")
    # Imported here: the simulator is not needed by the other commands (serve starts faster).
    from icerelay.netsim import matrix

    variants = [False, True] if turn is None else [turn]
    for index, with_turn in enumerate(variants):
        cells = matrix.nat_matrix(seed=seed, rtt=rtt_ms / 1000.0, turn=with_turn)
        if as_json:
            table = {"turn": with_turn, "seed": seed, "rtt_ms": rtt_ms}
            click.echo(json.dumps({**table, "cells": [asdict(cell) for cell in cells]}))
            continue
        if index:
            click.echo()
        click.echo("with a TURN server:" if with_turn else "without TURN (direct traversal):")
        click.echo(matrix.format_matrix(cells))


nat_matrix = nat_matrix_command
"""The command object :mod:`icerelay.commands.main` registers."""
