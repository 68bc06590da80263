"""Smoke test of ``python -m benchmarks.bytes --quick``: real peers of both codecs, JSON, markdown and PNG."""

from __future__ import annotations

import json
import os

import pytest

from benchmarks.bytes import main

pytestmark = pytest.mark.integration


def test_quick_run_measures_both_codecs(tmp_path):
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    for name in ("bytes.json", "bytes.md", "bytes.png"):
        assert os.path.getsize(tmp_path / name) > 0
    doc = json.loads((tmp_path / "bytes.json").read_text())
    assert {r["codec"] for r in doc["runs"]} == {"int8", "sparse"}
    assert doc["update"]["sparse"]["fraction_of_dense"] <= 0.01 < doc["update"]["int8"]["fraction_of_dense"]
    for r in doc["runs"]:  # the steady rounds carried payload and control bytes, and everyone trained
        assert r["payload_per_round"] > 0 and r["total_per_round"] > r["payload_per_round"], r
        assert r["stalls"]["empty_rounds"] == 0 and r["false_slashes"] == 0, r
