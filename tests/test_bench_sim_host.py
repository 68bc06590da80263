"""Smoke test of ``python -m benchmarks.sim_host --quick``: host costs measured, the simulator's
prediction of the round length a swarm needs, JSON, markdown and PNG."""

from __future__ import annotations

import json
import os

from benchmarks.sim_host import main


def test_quick_run_predicts_the_round_length_a_small_host_needs(tmp_path):
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    for name in ("sim_host.json", "sim_host.md", "sim_host.png"):
        assert os.path.getsize(tmp_path / name) > 0
    doc = json.loads((tmp_path / "sim_host.json").read_text())
    short, long = doc["predicted"]
    # 3 peers on one core, 0.25 CPU s of protocol work each per round: a 0.5 s round cannot hold it
    assert short["round_s"] == 0.5 and short["empty_rounds"] == short["counted_rounds"] > 0
    assert short["late_bases"] > 0 and short["samples_per_peer_round"] == 0
    assert long["empty_rounds"] == 0 and long["disagreed_rounds"] == 0 and long["samples_per_peer_round"] > 0
    assert doc["needed_round_s"] == 3.0 and doc["costs"]["steps_per_s"] > 0 and doc["protocol_cpu_measured"] is None
