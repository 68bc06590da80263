"""Reference trainers: one model, one process, the task's inner optimiser, a sample budget.

Two references the swarm is measured against (SPEC P1: validation loss at equal samples):

- *centralized* (:func:`run_centralized`): one worker, the task's batch per step;
- *synchronous data-parallel* (:func:`run_sync_dp`): ``n`` workers, each with the task's batch,
  whose gradients are averaged (an fp32 all-reduce) before every step of one shared model. This
  is what ``n`` peers that all-reduce every step would compute, so it is the sample-efficiency
  limit of ``n`` workers; it runs in one process because the arithmetic, not the network, is what
  is compared (each worker's loss is divided by ``n`` and back-propagated into the same
  gradients: the mean of the workers' gradients, DDP's all-reduce average).

It trains ``task.build_model(seed)`` with ``task.inner_optimizer`` on uniformly sampled dataset
items until ``samples`` items have been consumed, evaluating on the task's fixed held-out slice
every ``eval_every`` samples. ``dai-swarm demo`` and the benchmarks use them::

    from dai_swarm.reference import run_centralized, run_sync_dp
    result = run_centralized("tinylm-small", samples=4800, eval_every=480, threads=1)
    dp8 = run_sync_dp("tinylm-small", samples=4800, workers=8, eval_every=480, threads=1)
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any, Callable

import torch

from .errors import ConfigError
from .tasks import Task, load_task

__all__ = ["run_centralized", "run_sync_dp"]


def run_centralized(task: Task | str, samples: int, eval_every: int, *, seed: int = 0,
                    threads: int | None = None, data_seed: int = 0, label: str | None = None,
                    on_eval: Callable[[dict[str, float]], None] | None = None, workers: int = 1) -> dict[str, Any]:
    """Train one model on ``samples`` dataset items and return its loss curve.

    ``task`` is a :class:`~dai_swarm.tasks.Task` or a spec for :func:`~dai_swarm.tasks.load_task`.
    Batches hold ``task.batch_size`` items drawn uniformly (with replacement) by a generator seeded
    with ``data_seed``; the last batch is cut to fit the budget. ``threads`` sets
    ``torch.set_num_threads`` for the run (restored afterwards). ``on_eval`` is called with each
    evaluation point. ``label`` names the run in the result and plot (default: the spec or task
    name). Returned lists ``samples``, ``val_loss``, ``wall_s`` (seconds since the
    start, evaluations included), ``eval_s`` and ``train_loss`` (mean since the previous point)
    are aligned; the first point is the untrained model. ``workers`` > 1: synchronous
    data-parallel steps of ``workers`` batches (see :func:`run_sync_dp`).
    """
    if isinstance(task, str):
        label = label or task
        task = load_task(task)
    label = label or task.name
    if samples <= 0 or eval_every <= 0 or workers < 1:
        raise ConfigError(f"samples, eval_every and workers must be positive, got {samples}, {eval_every}, {workers}")
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return {"label": label, "workers": workers, **_train(task, samples, eval_every, seed, data_seed, on_eval,
                                                               workers)}
    finally:
        torch.set_num_threads(old_threads)


def run_sync_dp(task: Task | str, samples: int, workers: int, eval_every: int, **kwargs: Any) -> dict[str, Any]:
    """Synchronous data-parallel reference: ``workers`` workers of the task's batch each, gradients
    averaged before every step of one model (module docstring), until ``samples`` items were used.

    Same arguments and result as :func:`run_centralized`; each step consumes ``workers`` batches
    (the last step's batches are cut to fit the budget), so ``steps`` is about ``1/workers`` of the
    centralized run's. The default label is ``"sync DP x<workers>"``.
    """
    kwargs.setdefault("label", f"sync DP x{workers}")
    return run_centralized(task, samples, eval_every, workers=workers, **kwargs)


def _train(task: Task, samples: int, eval_every: int, seed: int, data_seed: int,
           on_eval: Callable[[dict[str, float]], None] | None, workers: int = 1) -> dict[str, Any]:
    model = task.build_model(seed)
    opt = task.inner_optimizer(model.parameters())
    gen = torch.Generator().manual_seed(data_seed)
    n_items = len(task.dataset)
    curve: dict[str, list] = {"samples": [], "val_loss": [], "wall_s": [], "eval_s": [], "train_loss": []}
    losses: list[float] = []
    t0 = time.perf_counter()
    train_s = 0.0

    def record(done: int) -> None:
        t_eval = time.perf_counter()
        metrics = task.evaluate(model)
        eval_s = time.perf_counter() - t_eval
        point = {"samples": done, "val_loss": float(metrics["loss"]), "wall_s": time.perf_counter() - t0,
                 "eval_s": eval_s, "train_loss": sum(losses) / len(losses) if losses else float("nan")}
        for k, v in point.items():
            curve[k].append(v)
        losses.clear()
        if on_eval:
            on_eval(point)

    record(0)
    done, next_eval, steps = 0, eval_every, 0
    while done < samples:
        t_step = time.perf_counter()
        sizes = []
        for _ in range(workers):  # each worker's batch; the sum of loss/workers is the all-reduced mean
            k = min(task.batch_size, samples - done - sum(sizes))
            if k <= 0:
                break
            sizes.append(k)
            idx = torch.randint(n_items, (k,), generator=gen).tolist()
            loss = task.loss(model, task.get_batch(idx))
            (loss / workers if workers > 1 else loss).backward()
            losses.append(loss.item())
        if len(sizes) < workers:  # the budget's last step: average over the workers that had data
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.mul_(workers / len(sizes))
        opt.step()
        opt.zero_grad(set_to_none=True)
        train_s += time.perf_counter() - t_step
        done += sum(sizes)
        steps += 1
        if done >= next_eval or done == samples:
            record(done)
            next_eval = (done // eval_every + 1) * eval_every
    entropy = task.unigram_entropy() if hasattr(task, "unigram_entropy") else None
    curve["train_loss"][0] = None  # no training before the first point
    return {
        "task": task.name,
        "config": task.config(),
        "config_hash": task.config_hash(),
        "seed": seed,
        "data_seed": data_seed,
        "threads": torch.get_num_threads(),
        "batch_size": task.batch_size,
        "n_params": sum(p.numel() for p in model.parameters()),
        "steps": steps,
        **curve,
        "final_val_loss": curve["val_loss"][-1],
        "unigram_entropy": entropy,
        "train_s": train_s,
        "samples_per_s": samples / train_s if train_s > 0 else None,
        "eval_s_mean": sum(curve["eval_s"]) / len(curve["eval_s"]),
        "total_wall_s": time.perf_counter() - t0,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor(),
                    "cores": os.cpu_count()},
    }
