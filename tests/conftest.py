"""Three lanes for pytest-xdist (``-n 3 --dist loadgroup``) on a 2-core machine.

About half of the suite's time is real peer processes waiting on round clocks, so the CPU sits
idle a third of the time; but two swarms beside a third CPU-heavy test miss their rounds. So:

* ``swarm8``: the 8-peer swarms, the Sybil flood and the export tests (marked in their modules);
  one at a time, never beside each other;
* ``procs``: every other ``integration`` test (real DHTs, daemons, peer processes), one at a time;
* ``unit``: everything else, in one worker at a lower CPU priority (nice ``UNIT_NICE``), so that it
  fills the idle time of the two process lanes instead of taking CPU from their peers.

A test that already names an xdist group keeps it: xdist joins all of a test's group names into
one new group, so adding a second mark would make a fourth lane beside the others.
"""

from __future__ import annotations

import os

import pytest

UNIT_NICE = 10  # CPU weight 110 against 1024: about a tenth of a busy core when the peers need both


def _group(item: pytest.Item) -> str | None:
    marks = list(item.iter_markers("xdist_group"))
    if marks:
        return None
    return "procs" if item.get_closest_marker("integration") is not None else "unit"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test without an xdist group with its lane (before xdist reads the marks); with
    fewer than three workers (e.g. ``-n 2`` on the unit tests alone) nothing changes."""
    if getattr(config, "workerinput", {}).get("workercount", 0) < 3:
        return
    for item in items:
        lane = _group(item)
        if lane is not None:
            item.add_marker(pytest.mark.xdist_group(lane))


_niced = False


def pytest_runtest_setup(item: pytest.Item) -> None:
    """The worker that runs the unit lane lowers its CPU priority once (its subprocesses inherit it)."""
    global _niced
    if _niced or not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if [m.args[0] for m in item.iter_markers("xdist_group") if m.args] == ["unit"]:
        os.nice(UNIT_NICE)
        _niced = True
