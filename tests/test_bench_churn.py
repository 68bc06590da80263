"""Smoke test of the churn benchmark: ``python -m benchmarks.churn --quick`` on real peer processes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from dai_swarm.errors import ConfigError
from dai_swarm.testing import alive_count, exponential_churn_schedule, scripted_churn_schedule

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_exponential_schedule_is_deterministic_and_keeps_slot_zero():
    a = exponential_churn_schedule(8, 100.0, 0.3, seed=3, byzantine=0.25, join_delay_s=2.0)
    assert a == exponential_churn_schedule(8, 100.0, 0.3, seed=3, byzantine=0.25, join_delay_s=2.0)
    assert all(p.stop_s is None and not p.byzantine for p in a if p.slot == 0)
    assert {p.slot for p in a if p.byzantine} and len({p.slot for p in a if p.byzantine}) == 2
    for t in (0.0, 50.0, 99.0):
        assert 1 <= alive_count(a, t) <= 8
    assert len(exponential_churn_schedule(4, 10.0, 0.0)) == 4


def test_scripted_schedule_rejects_overlaps_and_bad_times():
    ok = scripted_churn_schedule([{"slot": 0}, {"slot": 1, "stop_s": 5}, {"slot": 1, "start_s": 6}])
    assert [p.slot for p in ok] == [0, 1, 1]
    with pytest.raises(ConfigError):
        scripted_churn_schedule([{"slot": 1, "stop_s": 5}, {"slot": 1, "start_s": 4}])
    with pytest.raises(ConfigError):
        scripted_churn_schedule([{"slot": 1, "start_s": 5, "stop_s": 5}])
    with pytest.raises(ConfigError):
        scripted_churn_schedule([{"start_s": 1}])


@pytest.mark.integration
@pytest.mark.xdist_group("swarm8")  # an 8-peer swarm: never beside another (see test_attacks_processes)
@pytest.mark.timeout(290)
def test_quick_run_produces_complete_report(tmp_path):
    out = tmp_path / "churn"
    r = subprocess.run([sys.executable, "-m", "benchmarks.churn", "--quick", "--out", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((out / "churn.json").read_text())
    curve = report["systems"]["dai_swarm"]["curve"]
    assert len(curve["val_loss"]) >= 3 and all(math.isfinite(v) for v in curve["val_loss"])
    assert curve["val_loss"][-1] < curve["val_loss"][0]
    assert curve["samples"] == sorted(curve["samples"]) and curve["samples"][-1] > 0
    assert report["systems"]["dai_swarm"]["bytes"][-1]["traffic"] > 0
    assert report["departures"] >= 1
    cmp = report["comparison"]
    assert set(cmp["systems"]) == {"dai_swarm", "centralized", "sync_dp"}
    assert cmp["P1_reference"] == "sync_dp" and cmp["P1_loss_ratio"] is not None and cmp["P1_loss_ratio"] > 0
    assert cmp["P1_loss_ratio"] == cmp["systems"]["dai_swarm"]["loss_ratio_vs_sync_dp"]
    assert cmp["P1_loss_ratio_vs_centralized"] == cmp["systems"]["dai_swarm"]["loss_ratio_vs_centralized"]
    for name in ("loss_vs_samples.png", "loss_vs_time.png", "bytes.png", "peers_alive.png"):
        assert (out / name).stat().st_size > 1000
    assert "| dai_swarm |" in (out / "churn.md").read_text()


def test_compare_at_equal_samples_caps_at_the_centralized_budget():
    from benchmarks.churn_report import compare

    cen = {"curve": {"samples": [0, 100, 200], "val_loss": [4.0, 2.0, 1.0], "t": [0, 1, 2]}}
    short = {"curve": {"samples": [0, 150], "val_loss": [4.0, 3.0], "t": [0, 5]}, "n_slots": 2, "bytes": []}
    long = {"curve": {"samples": [0, 100, 300], "val_loss": [4.0, 3.0, 2.0], "t": [0, 5, 9]}, "n_slots": 2, "bytes": []}
    out = compare({"centralized": cen, "dai_swarm": short, "dai_swarm_clean": long}, target_loss=2.5)
    s, c = out["systems"]["dai_swarm"], out["systems"]["dai_swarm_clean"]
    assert s["compared_at_samples"] == 150 and s["loss_ratio_vs_centralized"] == 3.0 / 1.5
    # trained past the centralized budget: compared at 200 samples, its loss interpolated there (2.5)
    assert c["compared_at_samples"] == 200 and c["loss_ratio_vs_centralized"] == 2.5 / 1.0
    assert c["reached_target"] and c["samples_to_target"] == 300 and not s["reached_target"]


def test_p1_is_measured_against_synchronous_data_parallelism_when_it_ran():
    from benchmarks.churn_report import compare, markdown

    cen = {"curve": {"samples": [0, 100, 200], "val_loss": [4.0, 2.0, 1.0], "t": [0, 1, 2]}}
    dp = {"curve": {"samples": [0, 100, 200], "val_loss": [4.0, 3.0, 2.0], "t": [0, 1, 2]}, "n_slots": 2, "bytes": []}
    swarm = {"curve": {"samples": [0, 200], "val_loss": [4.0, 2.1], "t": [0, 5]}, "n_slots": 2, "bytes": []}
    out = compare({"centralized": cen, "sync_dp": dp, "dai_swarm": swarm}, target_loss=2.5)
    assert out["P1_reference"] == "sync_dp" and out["P1_loss_ratio"] == 2.1 / 2.0
    assert out["P1_loss_ratio_vs_centralized"] == 2.1 / 1.0
    assert "loss_ratio_vs_sync_dp" not in out["systems"]["sync_dp"]
    table = markdown({"comparison": out, "systems": {"centralized": cen, "sync_dp": dp, "dai_swarm": swarm}})
    assert "÷ synchronous DP with the same peers at equal samples (target ≤ 1.02): 1.05; ÷ centralized 2.1" in table
    along = out["systems"]["dai_swarm"]["loss_ratio_vs_sync_dp_along"]
    assert [p["samples"] for p in along] == [50, 100, 150, 200]
    assert along[1]["ratio"] == (4.0 + 2.1) / 2 / 3.0 and along[-1]["ratio"] == 2.1 / 2.0
    assert "P1 along the budget (dai_swarm ÷ sync DP): 50 samples" in table
    # a report of an older run (no sync_dp) keeps its centralized P1
    old = compare({"centralized": cen, "dai_swarm": swarm}, target_loss=2.5)
    assert old["P1_reference"] == "centralized" and old["P1_loss_ratio"] == 2.1


def test_hivemind_presets_are_valid_optimizer_settings():
    import inspect

    import hivemind
    from hivemind.compression import Float16Compression

    from benchmarks.hivemind_baseline import PRESETS, optimizer_options

    accepted = set(inspect.signature(hivemind.Optimizer.__init__).parameters)
    assert {"defaults", "local-updates"} <= set(PRESETS) and len(PRESETS) >= 3
    for name, preset in PRESETS.items():
        assert 0 < preset["tbs_factor"] <= 1, name
        assert set(optimizer_options(name)) <= accepted, name
    assert optimizer_options("defaults") == {}
    fp16 = optimizer_options("local-updates-fp16")
    assert isinstance(fp16["state_averaging_compression"], Float16Compression) and fp16["use_local_updates"]


def test_the_best_hivemind_run_is_p2_and_p3s_reference():
    from benchmarks.churn_report import best_hivemind, compare

    def run(losses, ts):
        return {"curve": {"samples": [0, 100, 200][:len(losses)], "val_loss": losses, "t": ts}, "n_slots": 2,
                "bytes": [{"t": 0, "traffic": 0}, {"t": 10, "traffic": 1000}]}

    cen = {"curve": {"samples": [0, 200], "val_loss": [4.0, 1.0], "t": [0, 1]}}
    results = {"centralized": cen, "dai_swarm": run([4.0, 2.0, 1.5], [0, 2, 4]),
               "hivemind:defaults": run([4.0, 3.5, 3.0], [0, 5, 10]),
               "hivemind:local-updates": run([4.0, 2.4, 1.9], [0, 4, 8]),
               "hivemind:small-batch": run([4.0, 2.2, 2.1], [0, 3, 9])}
    out = compare(results, target_loss=2.3)
    # small-batch reaches 2.3 first (3 s); local-updates ends lower but reaches it later (8 s)
    assert out["hivemind_reference"] == "hivemind:small-batch" == best_hivemind(out["systems"])
    assert out["P3_time_ratio"] == 2 / 3  # dai_swarm reached it at 2 s
    out = compare(results, target_loss=1.0)  # nobody reaches it: the lowest final loss
    assert out["hivemind_reference"] == "hivemind:local-updates" and "note" in out
    assert best_hivemind({"dai_swarm": out["systems"]["dai_swarm"]}) is None


def test_an_unknown_hivemind_preset_is_refused_before_anything_runs(capsys):
    from benchmarks.churn import main

    assert main(["--hivemind-presets", "fastest", "--out", "/nonexistent/never"]) == 2
    assert "unknown --hivemind-presets ['fastest']" in capsys.readouterr().err


def test_a_curve_that_dips_under_the_target_and_comes_back_has_not_stayed_there():
    from benchmarks.churn_report import reach, stays_below

    curve = {"samples": [0, 1, 2, 3, 4], "val_loss": [5.0, 2.0, 4.0, 2.2, 2.1], "t": [0, 10, 20, 30, 40]}
    assert reach(curve, 2.5)["t"] == 10 and stays_below(curve, 2.5)["t"] == 30
    assert stays_below(dict(curve, val_loss=[5.0, 2.0, 2.1, 2.2, 3.0]), 2.5) is None


def test_hivemind_samples_trained_come_from_the_workers_own_counters(tmp_path):
    from benchmarks.churn_report import compare, markdown, trained_samples

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text('{"t": 10, "event": "start", "epoch": 0}\n{"t": 11, "event": "epoch", "samples_local": 16}\n'
                 '{"t": 20, "event": "epoch", "samples_local": 320}\n')
    b.write_text('{"t": 15, "event": "epoch", "samples_local": 64}\n{"t": 30, "event": "end", "samples_local": 96}\n')
    assert trained_samples([str(a), str(b), str(tmp_path / "gone.json")], [10, 16, 25, 40]) == [0, 80, 384, 416]
    cen = {"curve": {"samples": [0, 500], "val_loss": [4.0, 1.0], "t": [0, 1]}}
    hm = {"curve": {"samples": [0, 500], "val_loss": [4.0, 3.0], "t": [0, 5], "samples_trained": [0, 416]},
          "n_slots": 2, "bytes": []}
    out = compare({"centralized": cen, "hivemind:defaults": hm}, target_loss=2.0)
    assert out["systems"]["hivemind:defaults"]["final_samples_trained"] == 416
    table = markdown({"comparison": out, "systems": {"centralized": cen, "hivemind:defaults": hm}})
    assert "| hivemind:defaults | 500 (416 trained) |" in table


def test_the_common_loss_is_the_worse_best_loss_and_a_run_that_only_diverged_has_none():
    from benchmarks.churn_report import common_target

    def run(losses, t_step=10.0, bytes_per_s=1000.0, slots=2):
        ts = [i * t_step for i in range(len(losses))]
        return {"curve": {"samples": [i * 100 for i in range(len(losses))], "val_loss": losses, "t": ts},
                "bytes": [{"t": t, "traffic": t * bytes_per_s * slots} for t in ts], "n_slots": slots}

    swarm = run([5.0, 3.0, 2.5, 2.4])
    dips = run([5.0, 2.6, 2.3, 7.7])  # dipped to 2.3, then blew up: it did reach 2.4 (at 20 s)
    ct = common_target({"dai_swarm": swarm, "other": dips}, {"dai_swarm": "dai_swarm", "other": "other"})
    assert ct["loss"] == 2.4 and ct["dai_swarm"]["t"] == 30.0 and ct["other"]["t"] == 20.0
    assert ct["P3_time_ratio"] == 1.5 and ct["P2_bytes_ratio"] == 1.5  # bytes grow with time here
    diverged = run([5.0, 6.0, 9.0, 12.0])  # never below where it started: nothing to compare at
    assert common_target({"dai_swarm": swarm, "other": diverged}, {"dai_swarm": "dai_swarm", "other": "other"}) is None
