"""Smoke test of ``python -m benchmarks.sparse --quick``: JSON, markdown and PNG, checks without false fails."""

from __future__ import annotations

import json
import os

from benchmarks.sparse import index_coding, main


def test_quick_run_writes_results(tmp_path):
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    for name in ("sparse.json", "sparse.md", "sparse.png"):
        assert os.path.getsize(tmp_path / name) > 0
    res = json.loads((tmp_path / "sparse.json").read_text())
    int8, sparse = res["runs"]
    assert sparse["mean_bytes"] <= 0.01 * res["dense_bytes"] < int8["mean_bytes"]
    c = sparse["checks"]
    assert c["chunks"] > 0 and c["false_fail"] == 0 and c["ok"] == c["chunks"]
    assert res["grid"] and res["index_coding"]["rice"] < res["index_coding"]["fixed_12_bit"]


def test_index_coding_counts_every_kept_position():
    import torch

    acc = {"w": torch.randn(8192, generator=torch.Generator().manual_seed(0))}
    out = index_coding(acc)
    assert out["fixed_12_bit"] == 2 * 64 * 12 // 8
