"""Smoke test of ``python -m benchmarks.p1_floor --quick``: JSON, markdown and PNG, ratios defined."""

from __future__ import annotations

import json
import math

from benchmarks.p1_floor import SETTINGS, main


def test_quick_run_writes_results(tmp_path):
    assert main(["--quick", "--task", "regression", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "p1_floor.json").read_text())
    assert res["workers"] == 2 and len(res["settings"]) == 2
    for s in res["settings"]:
        assert s["rounds"] >= 1 and len(s["val_loss"]) == s["rounds"] + 1
        assert [p["samples"] for p in s["along"]][-1] == s["samples"][-1]
        assert all(math.isfinite(p["ratio"]) and p["ratio"] > 0 for p in s["along"])
    assert res["sync_dp"]["steps"] >= 1
    md = (tmp_path / "p1_floor.md").read_text()
    assert "| swarm default: int8" in md and "inner AdamW kept across rounds" in md
    assert (tmp_path / "p1_floor.png").read_bytes()[:4] == b"\x89PNG"
    assert SETTINGS[0][1:] == ("int8", 20, 0.6, 0.9)  # the swarm's defaults (Swarm: outer 0.6/0.9)
