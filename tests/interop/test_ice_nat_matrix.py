"""``icerelay nat-matrix``: the installed command prints the simulator's NAT matrix.

Runs the real CLI in a subprocess (as a user would) and checks the table against what RFC 4787
behaviours allow: with TURN every cell connects; without it, open and cone-to-cone cells connect
directly and a symmetric NAT facing a port-restricted one cannot.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "icerelay", "nat-matrix", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def cells(output: str) -> dict[tuple[str, str], dict[str, Any]]:
    (line,) = output.splitlines()
    table = json.loads(line)
    return {(cell["left"], cell["right"]): cell for cell in table["cells"]}


def test_with_turn_everything_connects() -> None:
    result = run_cli("--turn", "--json")
    assert result.returncode == 0, result.stderr
    table = cells(result.stdout)
    assert len(table) == 100
    assert all(cell["connected"] for cell in table.values())
    # Both sides symmetric: only a relay can carry it.
    assert "relay" in table[("APDM/APDF", "APDM/APDF")]["pair_types"]
    # Open on both sides: host to host, no relay wasted.
    assert table[("open", "open")]["pair_types"] == "host/host"


def test_without_turn_matches_rfc4787() -> None:
    result = run_cli("--no-turn", "--json")
    assert result.returncode == 0, result.stderr
    table = cells(result.stdout)
    assert table[("EIM/APDF", "EIM/APDF")] | {"time_to_connected": None} == {
        "left": "EIM/APDF",
        "right": "EIM/APDF",
        "connected": True,
        "pair_types": "srflx/srflx",
        "time_to_connected": None,
    }
    assert not table[("APDM/APDF", "APDM/APDF")]["connected"]
    assert not table[("APDM/APDF", "EIM/APDF")]["connected"]
    assert table[("APDM/APDF", "EIM/EIF")]["connected"]


def test_text_tables() -> None:
    result = run_cli()
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "without TURN (direct traversal):" in out and "with a TURN server:" in out
    assert "100/100 connected" in out, out
    header = next(line for line in out.splitlines() if line.startswith("left \\ right"))
    assert header.split()[3:] == [
        "open",
        "EIM/EIF",
        "EIM/ADF",
        "EIM/APDF",
        "ADM/EIF",
        "ADM/ADF",
        "ADM/APDF",
        "APDM/EIF",
        "APDM/ADF",
        "APDM/APDF",
    ]


def test_bad_rtt_is_a_usage_error() -> None:
    result = run_cli("--rtt", "-5")
    assert result.returncode == 2
