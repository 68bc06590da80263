"""Suite-wide scheduling on a small machine (README, "Tests").

The real-process tests run in two serial lanes, the xdist groups ``swarm8`` (the big swarms) and
``procs`` (the other swarms, demos and walkthroughs); a third worker takes everything else. Those
other tests run at a lower CPU priority (nice 10): on a 2-core machine the lanes' peers must keep
to their round clocks, and a third worker at full priority made three of them miss rounds
(measured: 13:47 with 3 timing failures). Lowering the priority back needs root, so elsewhere
nothing is changed (and a third worker is then best left out: ``-n 2``).
"""

from __future__ import annotations

import os

import pytest

LANES = frozenset({"swarm8", "procs"})
OTHER_TESTS_NICE = 10


def _lane(item: pytest.Item) -> bool:
    marker = item.get_closest_marker("xdist_group")
    if marker is None:
        return False
    name = marker.args[0] if marker.args else marker.kwargs.get("name")
    return name in LANES


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Run lane tests at normal priority and every other test at ``OTHER_TESTS_NICE`` (root only)."""
    if not hasattr(os, "setpriority") or os.geteuid() != 0:
        return
    target = 0 if _lane(item) else OTHER_TESTS_NICE
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) != target:
            os.setpriority(os.PRIO_PROCESS, 0, target)
    except OSError:
        pass
