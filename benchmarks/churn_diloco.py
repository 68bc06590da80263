"""The churn benchmark's ``diloco-hivemind`` reference: DiLoCo on hivemind, the way OpenDiLoCo does it.

One :mod:`benchmarks.diloco_baseline` worker per slot of the same churn schedule, task, sample budget
and Byzantine slots as the dai_swarm peers: H = the peers' ``--max-inner-steps`` inner steps of the
task's AdamW, then the pseudo-gradients all-reduced through a hivemind ``DecentralizedAverager``
(``--diloco-compression``, default fp16 as OpenDiLoCo reports) and an outer Nesterov SGD step at
dai_swarm's outer lr and momentum (0.6 / 0.9). No verification: the Byzantine slots scale their
pseudo-gradients the way the attack does (:data:`benchmarks.hivemind_baseline.GRADIENT_ATTACKS`).
Its samples are the observer's: the sum of its groups' gathered sample counts.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any, Sequence

from . import churn_report
from .churn_fleet import LifeRecord, baseline_argv, log_tail, observer_curve, read_jsonl, run_fleet

__all__ = ["LABEL", "add_arguments", "averaging_summary", "diloco_curve", "run_diloco"]

LABEL = churn_report.DILOCO  # "diloco-hivemind"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The churn benchmark's ``--diloco-*`` options."""
    p.add_argument("--diloco-compression", choices=("none", "fp16"), default="fp16",
                   help="DiLoCo reference: pseudo-gradient all-reduce compression (default fp16, as OpenDiLoCo)")
    p.add_argument("--diloco-matchmaking-time", type=float, default=3.0,
                   help="DiLoCo reference: hivemind matchmaking time, s (default 3)")
    p.add_argument("--diloco-averaging-timeout", type=float, default=30.0,
                   help="DiLoCo reference: give up an all-reduce after this many s, step alone (default 30)")


def diloco_curve(rows: Sequence[dict], t0: float, initial_loss: float) -> dict[str, list]:
    """The observer's curve from its log rows: (samples, val_loss, t since ``t0``, epoch) after each
    outer step, from (0, ``initial_loss``, 0, 0); samples are the swarm's count in each row."""
    return observer_curve(rows, t0, initial_loss, lambda row: row.get("samples"))


def averaging_summary(logs: Sequence[Sequence[dict]]) -> dict[str, Any]:
    """Outer steps of every worker: how many were averaged, their group sizes, the first errors, and
    the state downloads (``logs``: one list of rows per worker, the observer's first)."""
    steps = [r for rows in logs for r in rows if r.get("event") == "epoch"]
    sizes = [r.get("group_size") or 1 for r in steps if r.get("averaged")]
    loads = [r for rows in logs for r in rows if r.get("event") == "load_state"]
    obs = [r for r in (logs[0] if logs else []) if r.get("event") == "epoch"]
    return {"outer_steps": len(steps), "averaged": len(sizes), "alone": len(steps) - len(sizes),
            "mean_group_size": round(sum(sizes) / len(sizes), 3) if sizes else None,
            "max_group_size": max(sizes, default=None),
            "observer_group_sizes": [r.get("group_size") if r.get("averaged") else 1 for r in obs],
            "errors": [r["error"] for r in steps if r.get("error")][:5],
            "state_loads": len(loads), "state_loads_ok": sum(1 for r in loads if r.get("ok"))}


def run_diloco(args: argparse.Namespace, schedule, workdir: str, net=None) -> dict[str, Any]:
    """Run DiLoCo-on-hivemind workers on ``schedule``; the result has the shape of
    :func:`benchmarks.churn.run_hivemind`'s (label ``diloco-hivemind``, curve, bytes, lives, settings).

    Uses ``args``: task, peers, samples, max_inner_steps, attack, lead_s, initial_loss, rounds, round_s,
    hivemind_limit_s (time limit, default max(120, 2 x rounds x round_s)) and the ``--diloco-*`` options."""
    from .diloco_baseline import GRADIENT_ATTACKS, OUTER_LR, OUTER_MOMENTUM

    t0 = math.ceil(time.time() + args.lead_s)
    run_id = f"churn-dl-{int(t0)}"

    def argv(rec: LifeRecord, peers: list[str]) -> list[str]:
        return baseline_argv("benchmarks.diloco_baseline", args, run_id, t0, rec, peers, net,
                             ["--inner-steps", str(args.max_inner_steps), "--compression", args.diloco_compression,
                              "--matchmaking-time", str(args.diloco_matchmaking_time),
                              "--averaging-timeout", str(args.diloco_averaging_timeout)], GRADIENT_ATTACKS)

    limit = args.hivemind_limit_s or max(120.0, 2.0 * args.rounds * args.round_s)
    fleet, observer, done = run_fleet(workdir, schedule, t0, argv, limit, net)
    records = [observer] + [r for r in fleet.records if r is not observer]
    curve = diloco_curve(read_jsonl(observer.history_file), t0, args.initial_loss)
    curve["samples_trained"] = churn_report.trained_samples([r.history_file for r in fleet.records],
                                                            [t0 + t for t in curve["t"]])
    return {"label": LABEL, "run_id": run_id, "t0": t0, "finished": done, "time_limit_s": limit,
            "n_slots": args.peers, "curve": curve, "bytes": fleet.samples, "lives": fleet.summary(),
            "averaging": averaging_summary([read_jsonl(r.history_file) for r in records]),
            "settings": {"inner_steps": args.max_inner_steps, "batch_size_per_step": "task batch",
                         "inner_optimizer": "task inner optimizer (AdamW), never reset (as OpenDiLoCo)",
                         "outer_optimizer": f"SGD lr {OUTER_LR}, momentum {OUTER_MOMENTUM}, Nesterov "
                                            "(dai_swarm's dense-codec outer step)",
                         "all_reduce": f"hivemind DecentralizedAverager, uniform weights, compression "
                                       f"{args.diloco_compression}; pseudo-gradient and parameters each step",
                         "verification": "none",
                         "matchmaking_time": args.diloco_matchmaking_time,
                         "averaging_timeout": args.diloco_averaging_timeout,
                         "byzantine_slots": (f"pseudo-gradient x {GRADIENT_ATTACKS[args.attack]} ({args.attack})"
                                             if args.attack in GRADIENT_ATTACKS else "honest (no gradient form)")},
            "observer_log_tail": log_tail(observer.log_path)}
