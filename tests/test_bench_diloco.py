"""The churn benchmark's DiLoCo-on-hivemind reference: the worker's arithmetic, its report row, and
three real ``benchmarks.diloco_baseline`` workers averaging on loopback."""

from __future__ import annotations

import argparse
import math

import pytest
import torch

from benchmarks.diloco_baseline import OuterState, contributed_delta, group_figures, pseudo_gradient


def test_a_sign_flipping_worker_contributes_minus_its_pseudo_gradient():
    outer = [torch.tensor([1.0, 2.0]), torch.tensor([[0.5]])]
    local = [torch.tensor([0.5, 2.5]), torch.tensor([[0.25]])]
    delta = pseudo_gradient(outer, local)
    assert [d.tolist() for d in delta] == [[0.5, -0.5], [[0.25]]]
    assert [d.tolist() for d in contributed_delta(delta, "sign_flip")] == [[-0.5, 0.5], [[-0.25]]]
    assert [d.tolist() for d in contributed_delta(delta, "scale10")] == [[5.0, -5.0], [[2.5]]]
    honest = contributed_delta(delta, None)
    assert [d.tolist() for d in honest] == [[0.5, -0.5], [[0.25]]] and honest[0] is not delta[0]
    assert delta[0].tolist() == [0.5, -0.5]  # the worker's own Δ is left as it was
    with pytest.raises(ValueError, match="unknown attack"):
        contributed_delta(delta, "replay")


def test_group_figures_count_only_well_formed_entries():
    gathered = {"a": {"samples": 160, "epoch": 3}, "b": {"samples": 160, "epoch": 4},
                "c": {"samples": -5, "epoch": "x"}, "d": None, "e": {"samples": True, "epoch": 9.0}}
    assert group_figures(gathered) == (5, 320, 4)
    assert group_figures(None) == (0, 0, -1)


def test_the_outer_step_is_nesterov_sgd_and_a_snapshot_loads_back():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    state = OuterState(model, lr=0.6, momentum=0.9)
    ref = [p.detach().clone() for p in model.parameters()]
    buf = [torch.zeros_like(p) for p in ref]
    for k in range(3):
        delta = [torch.full_like(p, 0.1 * (k + 1)) for p in ref]
        state.step(delta, samples=100)
        for i, g in enumerate(delta):  # buf = mu buf + g; θ -= lr (g + mu buf)
            buf[i] = 0.9 * buf[i] + g
            ref[i] = ref[i] - 0.6 * (g + 0.9 * buf[i])
    for p, q, r in zip(state.params, model.parameters(), ref):
        assert torch.allclose(p, r, atol=1e-6) and torch.equal(p.detach(), q.detach())
    assert (state.epoch, state.samples) == (3, 300)
    meta, tensors, _ = state.snapshot()
    other = OuterState(torch.nn.Linear(3, 2), lr=0.6, momentum=0.9)
    assert other.load(meta, tensors) is None
    assert (other.epoch, other.samples) == (3, 300)
    assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(other.params, state.params))
    assert "do not match" in other.load(meta, tensors[:-1])
    assert "metadata" in other.load({"epoch": 1}, tensors)
    assert "non-finite" in other.load(meta, [t * float("nan") for t in tensors])
    assert other.epoch == 3  # a refused state changes nothing


def test_the_diloco_row_is_p2s_second_reference():
    from benchmarks.churn_diloco import averaging_summary, diloco_curve
    from benchmarks.churn_report import compare, markdown

    rows = [{"t": 100.0, "event": "start", "epoch": 0, "samples": 0},
            {"t": 103.0, "event": "epoch", "epoch": 1, "samples": 480, "val_loss": 2.0, "group_size": 3,
             "averaged": True, "error": None},
            {"t": 106.0, "event": "epoch", "epoch": 2, "samples": 640, "val_loss": 1.5, "group_size": 1,
             "averaged": False, "error": "TimeoutError: "},
            {"t": 107.0, "event": "end", "epoch": 2, "samples": 640}]
    curve = diloco_curve(rows, 100.0, 4.0)
    assert curve == {"samples": [0, 480, 640], "val_loss": [4.0, 2.0, 1.5], "t": [0.0, 3.0, 6.0], "epoch": [0, 1, 2]}
    summary = averaging_summary([rows, [{"event": "load_state", "ok": True}]])
    assert (summary["averaged"], summary["alone"], summary["max_group_size"], summary["state_loads_ok"]) == (1, 1, 3, 1)
    assert summary["observer_group_sizes"] == [3, 1]

    def traffic(total):
        return [{"t": 0, "traffic": 0}, {"t": 10, "traffic": total}]

    cen = {"curve": {"samples": [0, 640], "val_loss": [4.0, 1.0], "t": [0, 1]}}
    swarm = {"curve": {"samples": [0, 640], "val_loss": [4.0, 1.6], "t": [0, 5]}, "n_slots": 2, "bytes": traffic(100)}
    dl = {"curve": curve, "n_slots": 2, "bytes": traffic(2000)}
    out = compare({"centralized": cen, "dai_swarm": swarm, "diloco-hivemind": dl}, target_loss=1.8)
    # dai_swarm reached 1.8 at 5 s (25 bytes/peer), diloco at 6 s (600 bytes/peer)
    assert out["P2_bytes_ratio_vs_diloco"] == 50 / 1200 and out["P3_time_ratio_vs_diloco"] == 5 / 6
    table = markdown({"comparison": out, "systems": {"centralized": cen, "dai_swarm": swarm, "diloco-hivemind": dl}})
    assert "| diloco-hivemind | 640 |" in table
    assert "- P2 bytes/peer to target, dai_swarm ÷ diloco-hivemind (target ≤ 0.1): 0.04167" in table
    out = compare({"centralized": cen, "dai_swarm": swarm, "diloco-hivemind": dl}, target_loss=1.2)
    assert out["P2_bytes_ratio_vs_diloco"] is None and "P2 against it is undefined" in out["note_diloco"]


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_three_diloco_workers_average_and_the_observer_learns(tmp_path):
    from benchmarks.churn_diloco import run_diloco
    from dai_swarm.tasks import load_task
    from dai_swarm.testing import exponential_churn_schedule
    from swarm_run import cleanup

    task = load_task("regression")
    args = argparse.Namespace(task="regression", peers=3, samples=3 * 5 * task.batch_size * 4, max_inner_steps=5,
                              attack=None, lead_s=12.0, initial_loss=float(task.evaluate(task.build_model(0))["loss"]),
                              rounds=4, round_s=2.0, hivemind_limit_s=90.0, diloco_compression="fp16",
                              diloco_matchmaking_time=2.0, diloco_averaging_timeout=20.0)
    try:
        res = run_diloco(args, exponential_churn_schedule(3, 60.0, 0.0), str(tmp_path / "diloco"))
    finally:
        cleanup([])
    logs = "\n".join(f"--- {life['name']}: {life}" for life in res["lives"]) + "\n" + res["observer_log_tail"]
    assert res["finished"], logs
    assert [life["exit_code"] for life in res["lives"]] == [0, 0, 0], logs
    avg = res["averaging"]
    assert avg["max_group_size"] and avg["max_group_size"] >= 2, (avg, logs)
    curve = res["curve"]
    assert len(curve["val_loss"]) >= 3 and all(math.isfinite(v) for v in curve["val_loss"]), curve
    assert curve["val_loss"][-1] < curve["val_loss"][0], curve
    # it learns, not just moves: a broken averaging (e.g. θ replaced by zeros) stalls near the start
    assert min(curve["val_loss"][1:]) < 0.5 * curve["val_loss"][0], curve
    assert curve["samples"][-1] >= args.samples and curve["samples"] == sorted(curve["samples"]), curve
    assert res["bytes"][-1]["traffic"] > 0
