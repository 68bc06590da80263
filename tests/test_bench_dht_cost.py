"""Smoke test of ``python -m benchmarks.dht_cost --quick``: real DHT nodes, JSON, markdown and PNG."""

from __future__ import annotations

import json
import os

import pytest

from benchmarks.dht_cost import main

pytestmark = pytest.mark.integration


def test_quick_run_measures_reads_and_writes(tmp_path):
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    for name in ("dht_cost.json", "dht_cost.md", "dht_cost.png"):
        assert os.path.getsize(tmp_path / name) > 0
    rows = json.loads((tmp_path / "dht_cost.json").read_text())["rows"]
    assert [r["records"] for r in rows] == [1, 4]
    # a read returns every record under the key, and costs more when the key holds more of them
    assert all(r["records_seen_min"] == r["records"] for r in rows)
    assert rows[1]["bytes_per_read"] > rows[0]["bytes_per_read"] > 0
