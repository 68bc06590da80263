"""``python -m benchmarks.sybil_flood``: the report from recorded runs (the swarms themselves run in
``test_sybil_processes.py``; the benchmark's numbers are in docs/results/sybil_flood/)."""

from __future__ import annotations

import json

import pytest

from benchmarks.sybil_flood import compare, main, markdown, standing_from


def _run(arm: str, losses: dict[int, float], slashed: int | None = 5) -> dict:
    return {"arm": arm, "wall_s": 100.0, "val_loss": {str(k): v for k, v in losses.items()},
            "peers_disagreeing": {str(k): False for k in losses}, "cheater_slashed_in_base": slashed,
            "sybil_records": 12_000 if arm == "flood" else 0}


RUNS = [_run("flood", {8: 0.040, 9: 0.033, 10: 0.030}), _run("clean", {8: 0.036, 9: 0.032, 10: 0.030}),
        _run("flood", {8: 0.034, 9: 0.031}), _run("clean", {8: 0.034, 9: 0.030, 10: 0.026}, slashed=None)]


def test_compare_takes_the_rounds_every_run_recorded_and_the_ratio_of_the_arms_means():
    rows = compare(RUNS)
    assert [r["round"] for r in rows] == [8, 9]  # round 10 is missing from one flooded run
    assert rows[0]["flood"] == pytest.approx(0.037) and rows[0]["clean"] == pytest.approx(0.035)
    assert rows[0]["ratio"] == pytest.approx(0.037 / 0.035)
    assert (rows[1]["clean_min"], rows[1]["clean_max"]) == (0.030, 0.032)
    assert compare([r for r in RUNS if r["arm"] == "flood"]) == []  # nothing to compare with


def test_report_only_rebuilds_the_tables_and_plot(tmp_path):
    out = str(tmp_path / "flood")
    report = {"args": {"runs": 2, "until": 12, "join_round": 5}, "machine": "2 CPUs", "commit": "abc1234",
              "runs": RUNS, "compare": []}
    with open(out + ".json", "w") as f:
        json.dump(report, f)
    assert main(["--report-only", "--out", out]) == 0
    text = open(out + ".md").read()
    assert "| 8 | 0.0370 | 0.0350 | 1.057 |" in text and "| 3 | clean | 8-10 | None | ? / ? | 0 |" in text
    assert "Last 2 rounds (8-9): flood mean 0.0345, clean mean 0.0330, flood ÷ clean 1.045; last round 1.032." in text
    assert (tmp_path / "flood.png").stat().st_size > 10_000
    assert markdown(json.load(open(out + ".json"))) == text


def test_standing_from_reads_the_first_round_each_newcomer_held_standing():
    hist = lambda rounds: {"history": [{"round": r, "standing": r in rounds} for r in range(3, 11)]}  # noqa: E731
    peers = [{}] * 4 + [hist({4, 5, 9, 10}), hist(set())]
    assert standing_from(peers) == {"p4": 4, "joiner": None}
