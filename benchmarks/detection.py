"""Trust-layer numbers (SPEC P5 and the 25%-Byzantine loss check), measured with the pure core.

Run from the repo root: ``python -m benchmarks.detection [--trials 400] [--quick]``. Prints JSON
and markdown tables and writes ``benchmarks/results/detection.json`` and ``detection.png``.

1. **Detection**: verdict-level simulation (:func:`verification.simulate.detection_trial`) of
   attackers that cheat each round with probability ``c`` against ``V`` honest verifiers that check
   each update with probability ``p = 0.2``; the slash takes effect ``lag = 3`` rounds after the
   detecting round (vote, tally, next base). Expected: ``1 - (1 - q)^(T - lag)`` with per-round
   detection ``q = c * (1 - (1 - p)^V)`` (``q = p*c`` for one verifier), 95% Wilson interval.
2. **Honest verifications**: a real 8-peer regression swarm in one process, authors train with 1
   torch thread and verifiers recompute with 2: every distance, the largest vs τ, false slashes.
3. **Overhead**: CPU time of verification vs training, 200 inner steps per update (1 thread).
4. **Loss** with 25% Byzantine (2 of 8, sign flip / ALIE): spot checks + CenteredClip vs plain
   averaging without checks, vs no attack.
5. **ROC** (``--parts roc``, :mod:`benchmarks.detection_roc`): detection vs attack strength near τ
   (shading, Gaussian noise, lazy) and the catalogue, at ``--c`` expected checks per update and
   round; false fails over >= 1,000 honest checks across 1/2/4 torch threads. Writes
   ``detection_roc.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time

import torch

from benchmarks import detection_roc
from dai_swarm.tasks import load_task
from dai_swarm.verification.simulate import PROTOCOL_LAG, detection_trial, training_run
from dai_swarm.verification.spotcheck import DEFAULT_TAU

OUT_DIR = os.path.join(os.path.dirname(__file__), "results")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion."""
    if n == 0:
        return 0.0, 1.0
    ph = k / n
    d = 1 + z * z / n
    c = (ph + z * z / (2 * n)) / d
    h = z * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def detection(trials: int, p: float = 0.2, horizon: int = 20, seed: int = 1) -> list[dict]:
    """Slashed-within-``horizon`` rate per scenario, with the analytic expectation."""
    rng = random.Random(seed)
    rows = []
    for n_honest, n_att, cheat in ((6, 2, 1.0), (3, 1, 1.0), (2, 1, 1.0), (6, 2, 0.5), (3, 1, 0.3)):
        hits, total, rounds_to = 0, 0, []
        for _ in range(trials):
            res = detection_trial(rng, n_honest=n_honest, n_attackers=n_att, p=p, cheat=cheat, rounds=horizon)
            for r in res:
                total += 1
                if r is not None:
                    hits += 1
                    rounds_to.append(r)
        q = cheat * (1 - (1 - p) ** n_honest)
        expected = 1 - (1 - q) ** (horizon - PROTOCOL_LAG)
        lo, hi = wilson(hits, total)
        rows.append({"honest_verifiers": n_honest, "attackers": n_att, "cheat_prob": cheat, "p": p,
                     "attackers_simulated": total, "slashed_within_20": hits, "rate": hits / total,
                     "ci95": [round(lo, 4), round(hi, 4)], "expected": round(expected, 4),
                     "expected_in_ci": lo <= expected <= hi,
                     "mean_round_slashed": round(sum(rounds_to) / len(rounds_to), 2) if rounds_to else None})
    return rows


def honest_and_overhead(task, rounds: int, n_peers: int = 8, p: float = 0.2, steps: int = 10) -> dict:
    """Honest swarm, verifiers on another thread count: distances, false slashes, CPU overhead."""
    t = time.time()
    run = training_run(task, n_peers=n_peers, attackers={}, rounds=rounds, steps=steps, p=p, author_threads=1,
                       verifier_threads=2, rng=random.Random(7))
    d = run["honest_distances"]
    per_check = run["verify_cpu_s"] / max(1, run["checks"])
    per_update = run["train_cpu_s"] / (n_peers * rounds)
    return {"honest_verifications": run["honest_checks"], "false_slashes": run["false_slashes"],
            "max_honest_distance": max(d) if d else None, "nonzero_distances": sum(1 for x in d if x > 0),
            "tau": DEFAULT_TAU, "train_cpu_s": round(run["train_cpu_s"], 3), "verify_cpu_s": round(run["verify_cpu_s"], 3),
            "check_cost_vs_training_one_update": round(per_check / per_update, 4),
            "verify_vs_training_of_received_updates": round(run["verify_cpu_s"] / (run["train_cpu_s"] * (n_peers - 1)), 4),
            "fraction_checked_per_verifier": round(run["checks"] / (n_peers * (n_peers - 1) * rounds), 4),
            "p": p, "peers": n_peers, "rounds": rounds, "steps": steps, "wall_s": round(time.time() - t, 1)}


def overhead(task, rounds: int = 12, n_peers: int = 8, p: float = 0.2, steps: int = 200) -> dict:
    """Verification vs training CPU time at a realistic step count (regression peers run hundreds
    of inner steps per round), authors and verifiers both on 1 thread."""
    run = training_run(task, n_peers=n_peers, attackers={}, rounds=rounds, steps=steps, p=p, rng=random.Random(9))
    per_check = run["verify_cpu_s"] / max(1, run["checks"])
    per_update = run["train_cpu_s"] / (n_peers * rounds)
    received = run["train_cpu_s"] * (n_peers - 1)  # every update is received by the n-1 other peers
    return {"p": p, "peers": n_peers, "rounds": rounds, "steps": steps, "checks": run["checks"],
            "fraction_checked_per_verifier": round(run["checks"] / (n_peers * (n_peers - 1) * rounds), 4),
            "train_cpu_s": round(run["train_cpu_s"], 3), "verify_cpu_s": round(run["verify_cpu_s"], 3),
            "check_cost_vs_training_one_update": round(per_check / per_update, 4),
            "verify_vs_training_of_received_updates": round(run["verify_cpu_s"] / received, 4),
            "verify_vs_own_training": round(run["verify_cpu_s"] / run["train_cpu_s"], 4),
            "at_exactly_p": round(p * per_check / per_update, 4)}  # the sampled fraction varies around p


def loss(task, rounds: int, steps: int = 10, n_peers: int = 8, seeds: int = 4) -> dict:
    """Val loss (mean of the last 10 rounds, averaged over ``seeds`` runs with different batches):
    no attack vs 25% Byzantine with checks + CenteredClip, CenteredClip only, plain averaging."""
    def final(curve: list[float]) -> float:
        tail = curve[-10:]
        return sum(tail) / len(tail)

    def runs(**kw) -> tuple[float, list[float], dict]:
        vals, first, slashed = [], None, {}
        for s in range(seeds):
            r = training_run(task, n_peers=n_peers, rounds=rounds, steps=steps, p=0.2, run_id=f"sim{s}",
                             rng=random.Random(s), **kw)
            vals.append(final(r["val_loss"]))
            first = first or r["val_loss"]
            slashed.update({f"seed{s}/{k}": v for k, v in r["slashed_round"].items()})
        return sum(vals) / len(vals), first, slashed

    out = {"peers": n_peers, "byzantine": 2, "rounds": rounds, "steps": steps, "seeds": seeds,
           "measure": "val loss, mean of the last 10 rounds, averaged over seeds"}
    clean, curve, _ = runs(attackers={})
    clean_plain, _, _ = runs(attackers={}, verify=False, robust=False)
    out.update({"no_attack": clean, "no_attack_plain_mean": clean_plain, "curves": {"no_attack": curve}})
    for kind in ("sign_flip", "alie"):
        att = {n_peers - 2: kind, n_peers - 1: kind}
        ours, c1, slashed = runs(attackers=att)
        clip, c2, _ = runs(attackers=att, verify=False)
        plain, c3, _ = runs(attackers=att, verify=False, robust=False)
        out[kind] = {"checks_and_centered_clip": ours, "centered_clip_only": clip, "plain_mean": plain,
                     "slashed_round": slashed, "ratio_vs_no_attack": round(ours / clean, 4),
                     "plain_ratio_vs_no_attack": round(plain / clean, 4)}
        out["curves"].update({f"{kind}/ours": c1, f"{kind}/clip_only": c2, f"{kind}/plain": c3})
    return out


def _plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in result["loss"]["curves"].items():
        ax.plot(curve, label=name, lw=1.5 if "plain" not in name else 1.0)
    ax.set_yscale("log")
    ax.set_xlabel("round")
    ax.set_ylabel("val loss (regression)")
    ax.set_title("8 peers, 2 Byzantine (seed 0): spot checks + CenteredClip vs plain mean")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    """Run everything; print JSON and markdown; write results/detection.json and detection.png."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=400)
    ap.add_argument("--honest-rounds", type=int, default=95)
    ap.add_argument("--loss-rounds", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="small sizes (for tests)")
    ap.add_argument("--out", default=OUT_DIR)
    ap.add_argument("--parts", nargs="+", default=["detection", "honest", "overhead", "loss", "roc"],
                    help="run only these parts; the others are kept from an existing detection.json")
    ap.add_argument("--c", nargs="+", type=float, default=[0.25, 1.0],
                    help="roc: expected checks per update and round (each other peer checks with c/(n-1))")
    ap.add_argument("--fp-checks", type=int, default=1008, help="roc: honest checks for the false-fail count")
    ap.add_argument("--roc-rounds", type=int, default=90, help="roc: checks per attack strength")
    ap.add_argument("--roc-reuse", action="store_true",
                    help="roc: recompute the detection columns for --c from the stored detection_roc.json's "
                         "measured single-check rates (no recomputation)")
    args = ap.parse_args(argv)
    if args.quick:
        args.trials, args.honest_rounds, args.loss_rounds = 50, 4, 12
    torch.set_num_threads(1)
    task = load_task("regression")
    parts = {"detection": lambda: detection(args.trials), "honest": lambda: honest_and_overhead(task, args.honest_rounds),
             "overhead": lambda: overhead(task, rounds=2 if args.quick else 12, steps=50 if args.quick else 200),
             "loss": lambda: loss(task, args.loss_rounds)}
    os.makedirs(args.out, exist_ok=True)
    if "roc" in args.parts:
        stored = os.path.join(args.out, "detection_roc.json")
        if args.roc_reuse:  # new c values over the stored single-check measurements
            with open(stored) as fh:
                roc = detection_roc.with_cs(json.load(fh), args.c)
        else:
            roc = detection_roc.run(quick=args.quick, cs=args.c, fp_checks=args.fp_checks, roc_rounds=args.roc_rounds)
        detection_roc.write(roc, args.out)
        print(detection_roc.markdown(roc))
        if not set(args.parts) & set(parts):
            return {"roc": roc}
    path = os.path.join(args.out, "detection.json")
    result = json.load(open(path)) if os.path.exists(path) and set(args.parts) != set(parts) | {"roc"} else {}
    for name in parts:
        if name in args.parts:
            result[name] = parts[name]()
    with open(os.path.join(args.out, "detection.json"), "w") as f:
        json.dump(result, f, indent=1)
    _plot(result, os.path.join(args.out, "detection.png"))
    printable = {k: v for k, v in result.items()}
    printable["loss"] = {k: v for k, v in result["loss"].items() if k != "curves"}
    print(json.dumps(printable, indent=1))
    print("\n| V honest | c | rate slashed ≤20 rounds | 95% CI | expected 1-(1-q)^(T-lag) |\n|---|---|---|---|---|")
    for r in result["detection"]:
        print(f"| {r['honest_verifiers']} | {r['cheat_prob']} | {r['rate']:.4f} ({r['slashed_within_20']}/"
              f"{r['attackers_simulated']}) | {r['ci95']} | {r['expected']} |")
    h = result["honest"]
    print(f"\n| honest checks | false slashes | max honest distance | τ |"
          f"\n|---|---|---|---|\n| {h['honest_verifications']} | {h['false_slashes']} | "
          f"{h['max_honest_distance']:.3g} | {h['tau']} |")
    o = result["overhead"]
    print(f"\n| p | checked fraction | one check vs one update's training | verify / training of received updates |"
          f" same at exactly p | verify / own training |\n|---|---|---|---|---|---|\n| {o['p']} | "
          f"{o['fraction_checked_per_verifier']} | {o['check_cost_vs_training_one_update']} | "
          f"{o['verify_vs_training_of_received_updates']} | {o['at_exactly_p']} | {o['verify_vs_own_training']} |")
    lo = result["loss"]
    print("\n| attack (2 of 8) | checks + CenteredClip | CenteredClip only | plain mean | no attack |\n|---|---|---|---|---|")
    for kind in ("sign_flip", "alie"):
        print(f"| {kind} | {lo[kind]['checks_and_centered_clip']:.4f} | {lo[kind]['centered_clip_only']:.4f} | "
              f"{lo[kind]['plain_mean']:.4f} | {lo['no_attack']:.4f} |")
    return result


if __name__ == "__main__":
    main()
