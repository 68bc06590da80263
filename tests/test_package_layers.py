"""The subsystem packages import in one direction (no cycles), and no module outgrows the guide.

Layers, lowest first: ``dht`` (discovery and records) and ``rewards`` (the reward log) import none
of the other subsystems; ``optim`` (the round protocol) may import ``dht``; ``verification`` may
import ``optim``. The composition — a peer's runtime wiring protocol, checks and rewards together —
lives in ``dai_swarm/runtime.py`` and ``dai_swarm/swarm.py``, above all four. Every import is
counted, including those inside functions.
"""

from __future__ import annotations

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBSYSTEMS = ("optim", "dht", "verification", "rewards")
ALLOWED = {"dht": set(), "rewards": set(), "optim": {"dht"}, "verification": {"optim", "dht"}}
MAX_LINES = 400


def _modules(package: str):
    for root, _, files in os.walk(os.path.join(REPO, package)):
        for name in files:
            if name.endswith(".py"):
                yield os.path.join(root, name)


def _imported_subsystems(path: str, package: str) -> set[str]:
    """The other subsystems a module imports, absolute (``dai_swarm.X``) or relative (``..X``)."""
    tree = ast.parse(open(path).read(), path)
    depth = os.path.relpath(path, os.path.join(REPO, package)).count(os.sep) + 1  # dots to reach dai_swarm
    out = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names = [node.module or ""]
            elif node.level >= depth:  # relative import that climbs out of the package
                names = ["dai_swarm." + (node.module or "")] if node.module else \
                        ["dai_swarm." + a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "dai_swarm" and len(parts) > 1 and parts[1] in SUBSYSTEMS:
                out.add(parts[1])
    out.discard(package)
    return out


@pytest.mark.parametrize("package", SUBSYSTEMS)
def test_subsystem_imports_point_one_way(package):
    bad = {os.path.relpath(p, REPO): sorted(used - ALLOWED[package])
           for p in _modules(package) if (used := _imported_subsystems(p, package)) - ALLOWED[package]}
    assert not bad, f"{package} may import only {sorted(ALLOWED[package])}: {bad}"


def test_no_cycle_among_subsystems():
    edges = {pkg: set().union(*(_imported_subsystems(p, pkg) for p in _modules(pkg))) for pkg in SUBSYSTEMS}

    def visit(node: str, path: tuple) -> None:
        assert node not in path, f"import cycle: {' -> '.join(path + (node,))}"
        for nxt in sorted(edges[node]):
            visit(nxt, path + (node,))

    for pkg in SUBSYSTEMS:
        visit(pkg, ())


def test_modules_stay_under_the_size_guide():
    big = {}
    for package in (*SUBSYSTEMS, "dai_swarm"):
        for path in _modules(package):
            n = sum(1 for _ in open(path))
            if n > MAX_LINES:
                big[os.path.relpath(path, REPO)] = n
    assert not big, f"modules over {MAX_LINES} lines: {big}"


@pytest.mark.parametrize("argv", [["--help"], ["ledger", "--help"], ["peer", "--help"], ["task", "--help"]])
def test_the_command_line_answers_help_and_ledger_without_torch_or_hivemind(argv):
    """``dai-swarm --help`` and the reward-log commands load neither torch nor hivemind (~2.3 s):
    the public names that need them are imported on first use."""
    import subprocess
    import sys

    probe = ("import runpy, sys; sys.argv = ['dai-swarm', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('dai_swarm', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print('LOADED', sorted(m for m in ('torch', 'hivemind') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert "LOADED []" in out.stdout, (out.stdout[-800:], out.stderr[-2000:])


def test_the_lazy_public_names_resolve_to_the_real_objects():
    import dai_swarm
    from dai_swarm.optim.optimizer import SwarmOptimizer
    from dai_swarm.swarm import Swarm

    assert dai_swarm.Swarm is Swarm and dai_swarm.SwarmOptimizer is SwarmOptimizer
    assert set(dai_swarm.__all__) <= set(dir(dai_swarm))
    with pytest.raises(AttributeError):
        dai_swarm.NoSuchName  # noqa: B018
