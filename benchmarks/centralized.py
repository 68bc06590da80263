"""Centralized reference run: one model, one process, the task's inner optimiser, a sample budget.

This is the baseline the swarm is measured against (SPEC P1: val loss at equal samples). It
trains ``task.build_model(seed)`` with ``task.inner_optimizer`` on uniformly sampled dataset
items until ``samples`` items have been consumed, evaluating on the task's fixed held-out slice
every ``eval_every`` samples. It prints the result as JSON and a markdown table and writes
``centralized_<task>.json`` and ``centralized_<task>.png`` under ``--out``.

    python -m benchmarks.centralized --task tinylm --samples 16000 --threads 1
    python -m benchmarks.centralized --task tinylm-small --samples 4800 --out out/bench

As a function (used by the churn benchmark and the demo)::

    from benchmarks.centralized import run_centralized   # or: from dai_swarm.reference import run_centralized
    result = run_centralized("tinylm-small", samples=4800, eval_every=480)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Sequence

from dai_swarm.reference import run_centralized
from dai_swarm.tasks import load_task

__all__ = ["main", "markdown_table", "plot", "run_centralized"]


def markdown_table(result: dict[str, Any]) -> str:
    """The loss curve as a markdown table (bits per byte shown when the loss is in nats/byte)."""
    entropy = result.get("unigram_entropy")
    lines = ["| samples | val loss | val bits/byte | train loss | wall s |", "|---:|---:|---:|---:|---:|"]
    for s, v, tl, w in zip(result["samples"], result["val_loss"], result["train_loss"], result["wall_s"]):
        bpb = f"{v / math.log(2):.3f}" if entropy is not None else "-"
        tl_s = f"{tl:.4f}" if tl is not None else "-"
        lines.append(f"| {s} | {v:.4f} | {bpb} | {tl_s} | {w:.1f} |")
    if entropy is not None:
        lines.append(f"\nunigram entropy of the corpus: {entropy:.4f} nats/byte ({entropy / math.log(2):.3f} bits); "
                     f"final val loss {result['final_val_loss']:.4f} = {result['final_val_loss'] / entropy:.3f}x of it")
    name = result.get("label", result["task"])
    lines.append(f"{name}: {result['n_params']:,} params, {result['steps']} steps of {result['batch_size']}, "
                 f"{result['threads']} thread(s), train {result['train_s']:.1f} s "
                 f"({result['samples_per_s']:.1f} samples/s), evaluate {result['eval_s_mean'] * 1000:.0f} ms mean")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str) -> None:
    """Write the validation (and training) loss curve against samples to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(result["samples"], result["val_loss"], marker="o", ms=3, label="validation loss")
    tl = [(s, v) for s, v in zip(result["samples"], result["train_loss"]) if v is not None]
    if tl:
        ax.plot(*zip(*tl), ls=":", label="train loss (mean since previous point)")
    if result.get("unigram_entropy") is not None:
        ax.axhline(result["unigram_entropy"], color="grey", ls="--", label="unigram entropy of corpus")
    ax.set_xlabel("samples (dataset items consumed)")
    ax.set_ylabel("loss (nats)" if result.get("unigram_entropy") is not None else "loss")
    name = result.get("label", result["task"])
    ax.set_title(f"centralized {name}: {result['n_params']:,} params, {result['threads']} thread(s)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _parse_option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.replace("-", "_"), value


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.centralized", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example:\n  python -m benchmarks.centralized --task tinylm-small --samples 4800")
    p.add_argument("--task", default="tinylm", help="built-in task name or module:attr (default tinylm)")
    p.add_argument("--samples", type=int, default=16_000, help="sample budget: dataset items consumed")
    p.add_argument("--eval-every", type=int, default=None, help="samples between evaluations (default samples/20)")
    p.add_argument("--seed", type=int, default=0, help="model seed")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the batch sampler")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--option", action="append", type=_parse_option, default=[], metavar="KEY=VALUE",
                   help="task option override, repeatable (e.g. --option lr=3e-3)")
    p.add_argument("--out", default="out/centralized", help="directory for the JSON and PNG (default out/centralized)")
    args = p.parse_args(argv)

    task = load_task(args.task, **dict(args.option))
    eval_every = args.eval_every or max(task.batch_size, args.samples // 20)
    progress = lambda pt: print(f"samples {pt['samples']:>8}  val {pt['val_loss']:.4f}  {pt['wall_s']:7.1f} s",  # noqa: E731
                                file=sys.stderr, flush=True)
    result = run_centralized(task, args.samples, eval_every, seed=args.seed, threads=args.threads,
                             data_seed=args.data_seed, label=args.task, on_eval=progress)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"centralized_{args.task.replace(':', '_').replace('/', '_')}")
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1)
    plot(result, stem + ".png")
    print(json.dumps(result))
    print()
    print(markdown_table(result))
    print(f"\nwrote {stem}.json and {stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
