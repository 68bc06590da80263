"""The centralized reference trainer (benchmarks/centralized.py) as a function and as a script."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks.centralized import main, markdown_table, run_centralized
from dai_swarm.errors import ConfigError
from dai_swarm.tasks import RegressionTask


def test_run_centralized_curve_is_aligned_and_falls():
    threads = torch.get_num_threads()
    seen = []
    res = run_centralized(RegressionTask(), samples=1000, eval_every=320, threads=1, on_eval=seen.append)
    assert torch.get_num_threads() == threads, "the thread count is restored"
    assert res["samples"] == [0, 320, 640, 960, 1000]
    assert res["steps"] == 32 and res["threads"] == 1 and res["label"] == "regression"
    for key in ("val_loss", "wall_s", "eval_s", "train_loss"):
        assert len(res[key]) == len(res["samples"]), key
    assert res["train_loss"][0] is None
    assert res["final_val_loss"] == res["val_loss"][-1] < res["val_loss"][0] / 5
    assert res["wall_s"] == sorted(res["wall_s"])
    assert [p["samples"] for p in seen] == res["samples"]
    assert res["unigram_entropy"] is None
    json.dumps(res, allow_nan=False)
    assert "| 1000 |" in markdown_table(res)


def test_run_centralized_is_reproducible():
    a = run_centralized("regression", samples=256, eval_every=128, threads=1)
    b = run_centralized("regression", samples=256, eval_every=128, threads=1)
    assert a["val_loss"] == b["val_loss"]
    c = run_centralized("regression", samples=256, eval_every=128, threads=1, data_seed=1)
    assert c["val_loss"][-1] != a["val_loss"][-1]
    with pytest.raises(ConfigError):
        run_centralized("regression", samples=0, eval_every=1)


def test_script_writes_json_png_and_table(tmp_path, capsys):
    rc = main(["--task", "tinylm-small", "--samples", "320", "--eval-every", "160", "--option", "n_layer=1",
               "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "centralized_tinylm-small.json").read_text())
    assert data["config"]["n_layer"] == 1 and data["samples"] == [0, 160, 320]
    assert data["unigram_entropy"] > 2.0 and data["final_val_loss"] < data["val_loss"][0]
    assert (tmp_path / "centralized_tinylm-small.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "| samples | val loss |" in out and "unigram entropy" in out


def test_sync_dp_averages_the_workers_gradients_before_each_step():
    """One step of 2 workers = the mean of their two gradients applied once, to the same model."""
    from dai_swarm.reference import run_sync_dp
    from dai_swarm.tasks import load_task

    task = load_task("regression")
    b = task.batch_size
    res = run_sync_dp(task, samples=2 * b, workers=2, eval_every=2 * b, threads=1)
    assert res["steps"] == 1 and res["workers"] == 2 and res["samples"] == [0, 2 * b]
    assert res["label"] == "sync DP x2"
    model, gen = task.build_model(0), torch.Generator().manual_seed(0)
    opt = task.inner_optimizer(model.parameters())
    grads = []
    for _ in range(2):
        idx = torch.randint(len(task.dataset), (b,), generator=gen).tolist()
        model.zero_grad()
        task.loss(model, task.get_batch(idx)).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for p, g0, g1 in zip(model.parameters(), *grads):
        p.grad = (g0 + g1) / 2
    opt.step()
    assert abs(res["val_loss"][-1] - float(task.evaluate(model)["loss"])) < 1e-6
    # a budget that is not a multiple of a step: the last step averages the workers that had data
    odd = run_sync_dp(task, samples=2 * b + 5, workers=2, eval_every=10 ** 6, threads=1)
    assert odd["steps"] == 2 and odd["samples"][-1] == 2 * b + 5 and all(map(math.isfinite, odd["val_loss"]))
    with pytest.raises(ConfigError):
        run_sync_dp(task, samples=10, workers=0, eval_every=10)
