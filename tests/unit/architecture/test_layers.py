"""The shape of the tree: layers as packages, one direction of dependency, small files.

DESIGN.md's layers, bottom to top. A module may import from its own layer or a layer below, never
from above; no two top-level packages import each other; wire formats and engines touch no I/O,
clock or randomness of their own (time and randomness are passed in), so that they run alike under
asyncio, in the simulator with a virtual clock, and in benchmarks.

The imports are read from the source with :mod:`ast`, so the check sees exactly what the files say.
Imports under ``if TYPE_CHECKING:`` are left out: a type hint (``random.Random`` for an injected
generator) costs nothing at run time.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[3] / "src"
PACKAGE = SOURCE / "icerelay"

#: Top-level packages (and modules) of icerelay by layer, bottom first.
LAYERS: list[tuple[str, frozenset[str]]] = [
    ("wire formats", frozenset({"errors", "net", "counters", "numbers", "stun", "sdp", "bencode"})),
    ("engines", frozenset({"ice", "turn", "relay", "control", "sip", "endpoint", "probe"})),
    # The simulator is a virtual world built from the engines; only commands and tests use it.
    ("simulator", frozenset({"netsim"})),
    ("I/O shells", frozenset({"aio", "dataplane"})),
    ("daemons", frozenset({"daemon"})),
    ("commands", frozenset({"commands", "__main__"})),
]
LAYER_OF = {name: index for index, (_, names) in enumerate(LAYERS) for name in names}
PURE_LAYERS = {"wire formats", "engines"}

#: What a wire-format or engine module must not import: the event loop, sockets, the clock,
#: randomness, threads, processes.
FORBIDDEN_IN_PURE = frozenset(
    {"asyncio", "socket", "time", "random", "secrets", "threading", "selectors", "ssl",
     "subprocess"}
)

MAX_LINES = 1000

#: Offences allowed for a while ("icerelay.x.y:LINE imports z", "icerelay.x reads os.urandom",
#: "x/y.py has more than 1000 lines"), each removed by the change that fixes it. Empty since
#: the architecture issue; a stale entry fails :func:`test_pending_list_holds_only_real_offences`.
PENDING: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. icerelay.relay.sessions
    target: str  # the imported module, e.g. icerelay.stun.message or asyncio
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                for child in node.body:
                    lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(path: Path) -> list[Import]:
    module = _module_name(path)
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_lines(tree)
    found: list[Import] = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [Import(module, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if path.name != "__init__.py":
                    base.pop()
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append(Import(module, target, node.lineno))
    return found


def _top(module: str) -> str:
    """icerelay.relay.sessions -> relay; icerelay.bencode -> bencode."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _all_imports() -> list[Import]:
    return [found for path in _sources() for found in _imports(path)]


def test_every_top_level_package_has_a_layer() -> None:
    unplaced = {_top(_module_name(path)) for path in _sources()} - set(LAYER_OF) - {"icerelay"}
    assert not unplaced, f"put these in LAYERS (and in DESIGN.md's picture): {sorted(unplaced)}"


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    upward = []
    for found in _all_imports():
        if not found.target.startswith("icerelay.") or _top(found.module) == "icerelay":
            continue
        source, target = _top(found.module), _top(found.target)
        if LAYER_OF.get(target, -1) > LAYER_OF.get(source, 99):
            upward.append(f"{found.module}:{found.line} imports {found.target}")
    upward = [offence for offence in upward if offence not in PENDING]
    assert not upward, "\n".join(upward)


def test_no_two_packages_import_each_other() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for found in _all_imports():
        if found.target.startswith("icerelay."):
            source, target = _top(found.module), _top(found.target)
            if source != target and source != "icerelay":
                edges[source].add(target)
    cycles = sorted(
        f"{a} <-> {b}" for a in edges for b in edges[a] if a < b and a in edges.get(b, set())
    )
    assert not cycles, cycles


def test_wire_formats_and_engines_do_no_io_of_their_own() -> None:
    pure = {name for name, index in LAYER_OF.items() if LAYERS[index][0] in PURE_LAYERS}
    offenders = []
    for found in _all_imports():
        if _top(found.module) not in pure:
            continue
        root = found.target.split(".")[0]
        if root in FORBIDDEN_IN_PURE:
            offenders.append(f"{found.module}:{found.line} imports {found.target}")
    for path in _sources():
        if _top(_module_name(path)) in pure and "os.urandom" in path.read_text():
            offenders.append(f"{_module_name(path)} reads os.urandom")
    # Take randomness as a parameter (random.Random in tests, SystemRandom in the shells).
    offenders = [offence for offence in offenders if offence not in PENDING]
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("path", _sources(), ids=lambda path: str(path.relative_to(SOURCE)))
def test_no_source_file_over_the_limit(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    if f"{path.relative_to(PACKAGE)} has more than {MAX_LINES} lines" in PENDING:
        return
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines (limit {MAX_LINES}): split it by job"


def test_pending_list_holds_only_real_offences() -> None:
    """Fixing an offence means deleting its PENDING entry (the line numbers are part of it)."""
    pure = {name for name, index in LAYER_OF.items() if LAYERS[index][0] in PURE_LAYERS}
    real = set()
    for found in _all_imports():
        real.add(f"{found.module}:{found.line} imports {found.target}")
    for path in _sources():
        if _top(_module_name(path)) in pure and "os.urandom" in path.read_text():
            real.add(f"{_module_name(path)} reads os.urandom")
        if len(path.read_text().splitlines()) > MAX_LINES:
            real.add(f"{path.relative_to(PACKAGE)} has more than {MAX_LINES} lines")
    assert not PENDING - real, sorted(PENDING - real)
