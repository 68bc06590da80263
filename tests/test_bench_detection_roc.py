"""Smoke test of ``python -m benchmarks.detection --quick --parts roc``: files, no false fail, the
catalogue always flagged, the strength curve cut where the tolerance is."""

from __future__ import annotations

import json
import math
import os

from benchmarks.detection import main
from benchmarks.detection_roc import CATALOGUE, some_check, within


def test_check_scheme_formulas():
    assert some_check(1.0) == 1 - math.exp(-1.0)
    assert some_check(1.0, 8) > some_check(1.0, 16) > some_check(1.0)  # falls with n towards 1 - e^-c
    assert some_check(2.0, 2) == 1.0 and within(0.0) == 0.0 and within(1.0) == 1.0
    assert within(0.5, horizon=5, lag=3) == 0.75


def test_quick_roc_run_writes_results(tmp_path):
    res = main(["--quick", "--parts", "roc", "--out", str(tmp_path)])["roc"]
    for name in ("detection_roc.json", "detection_roc.md", "detection_roc.png"):
        assert os.path.getsize(tmp_path / name) > 0
    assert not os.path.exists(tmp_path / "detection.json")  # the other parts were not asked for
    assert json.loads((tmp_path / "detection_roc.json").read_text())["quick"] is True
    fp = res["false_fails"]
    assert fp["checks"] == 27 and fp["above_tau"] == 0 and fp["max_distance"] < res["tau"]
    assert set(fp["per_pair"]) == {f"{a}->{v}" for a in (1, 2, 4) for v in (1, 2, 4)}
    rows = {r["label"]: r for r in res["strength"]["rows"]}
    assert rows["honest"]["flagged"] == 0
    for kind in CATALOGUE:  # every recomputable catalogue attack is flagged by every check
        assert rows[kind]["p_flag_one_check"] == 1.0, kind
        assert rows[kind]["per_c"]["1.0"]["within_20"] >= 0.99
    assert rows["shading 0.9"]["p_flag_one_check"] == 1.0 and rows["shading 0.999"]["flagged"] == 0
    assert rows["noise 10τ"]["p_flag_one_check"] == 1.0 and rows["lazy 0.5"]["p_flag_one_check"] == 1.0
