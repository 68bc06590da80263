"""``python -m benchmarks.bytes``: the quick run (a sparse swarm of real peers; JSON, markdown, PNG), and its
report of a run that measured nothing."""

from __future__ import annotations

import argparse
import json
import os

import pytest

from benchmarks.bytes import _report, main, measure


@pytest.mark.integration
@pytest.mark.xdist_group("swarm8")  # real peer processes: not beside a swarm
def test_quick_run_measures_a_sparse_swarm_and_both_update_sizes(tmp_path):
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    for name in ("bytes.json", "bytes.md", "bytes.png"):
        assert os.path.getsize(tmp_path / name) > 0
    doc = json.loads((tmp_path / "bytes.json").read_text())
    assert [r["codec"] for r in doc["runs"]] == ["sparse"]
    assert doc["update"]["sparse"]["fraction_of_dense"] <= 0.01 < doc["update"]["int8"]["fraction_of_dense"]
    for r in doc["runs"]:  # the steady rounds carried payload and control bytes, and everyone trained
        assert r["payload_per_round"] > 0 and r["total_per_round"] > r["payload_per_round"], r
        assert r["stalls"]["empty_rounds"] == 0 and r["false_slashes"] == 0, r


def test_a_run_that_never_got_going_is_reported_as_not_measured(tmp_path):
    """No peer history (the swarm never reached a round): payload and control are None and the
    table says "-", instead of a crash on NaN."""
    ns = argparse.Namespace(round_s=4.0, rounds=6, max_inner_steps=6)
    res = {"t0": 1000.0, "bytes": [{"t": 0.0, "traffic": 0}, {"t": 30.0, "traffic": 9000}],
           "curve": {"val_loss": [5.5], "samples": [0]}, "stalls": {"empty_rounds": 0, "disagreed_rounds": 0,
                                                                  "rounds": 0},
           "false_slashes": 0, "finished": False}
    row = {"codec": "int8", **measure(res, str(tmp_path), ns, 3)}
    assert row["payload_per_round"] is None and row["control_per_round"] is None
    assert row["control_over_payload"] is None and row["total_per_round"] >= 0
    doc = {"update": {"int8": {"bytes": 10, "fraction_of_dense": 0.2, "dense_fp32_bytes": 50}}, "runs": [row],
           "rounds": 6, "round_s": 4.0, "max_inner_steps": 6, "task": "tinylm-small"}
    assert "| int8 | 3 | 6 × 4.0, 6 |" in _report(doc) and "| - | - | - |" in _report(doc)
