"""Smoke test of ``python -m benchmarks.adaptive_rounds --quick``: real peers, JSON, markdown and PNG."""

from __future__ import annotations

import json
import os

import pytest

from benchmarks.adaptive_rounds import main

pytestmark = pytest.mark.integration


def test_quick_run_writes_results(tmp_path):
    out = str(tmp_path / "adaptive")
    assert main(["--quick", "--runs", "adaptive", "--workdir", str(tmp_path / "work"), "--out", out]) == 0
    for ext in ("json", "md", "png"):
        assert os.path.getsize(f"{out}.{ext}") > 0
    run = json.loads(open(f"{out}.json").read())["runs"]["adaptive"]
    assert run["exit_codes"] == [0, 0, 0], run
    assert run["counted_rounds"] >= 5 and run["samples_per_peer_round"] > 0, run
    assert all(r["round_s"] >= 0.5 for r in run["rounds"])  # never below the manifest's first length
