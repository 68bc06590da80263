"""Calibrate the spot-check tolerance τ from honest recomputations (SPEC I4).

For each task and each torch thread count (1, 2, 4) a SEPARATE process recomputes the same set of
honest updates with :func:`verification.recompute.recompute_update` (the one shared
implementation), from a base state that has trained a little; it writes every update as a
``none``-codec frame (our own bounded format, never pickle). The parent then computes the relative
L2 distance of every pair of processes for the same update, both raw and after the run's ``int8``
codec round trip (which is what verifiers compare), and sets ``τ = 10 × worst`` (rounded up to a
power of ten, never below 1e-6). Attack distances from the same run are listed for contrast.

Run: ``python -m benchmarks.calibrate_tau [--tasks regression tinylm-small] [--updates 8]``.
Writes ``benchmarks/results/tau_calibration.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time

OUT = os.path.join(os.path.dirname(__file__), "results", "tau_calibration.json")
THREADS = (1, 2, 4)
STEPS = {"regression": 50, "tinylm-small": 3}


def _keys(n: int) -> list[str]:
    return [f"{i + 7:064x}" for i in range(n)]


def worker(task_name: str, threads: int, n_updates: int, out_dir: str) -> None:
    """Child process: recompute ``n_updates`` honest updates with ``threads`` torch threads."""
    import torch

    torch.set_num_threads(threads)
    from dai_swarm.optim import codecs
    from dai_swarm.tasks import load_task
    from dai_swarm.verification.recompute import recompute_update

    task = load_task(task_name)
    base = {n: p.detach().clone() for n, p in task.build_model(0).named_parameters()}
    warm = recompute_update(task, base, "calib", 0, _keys(1)[0], 0, STEPS[task_name], raw=True)  # a trained base
    base = {n: base[n] - warm[n] for n in base}
    for i, key in enumerate(_keys(n_updates)):
        delta = recompute_update(task, base, "calib", 0, key, 1 + i, STEPS[task_name], raw=True)
        with open(os.path.join(out_dir, f"{task_name}.{threads}.{i}.frame"), "wb") as f:
            f.write(codecs.encode(delta, "none"))


def calibrate(tasks: list[str], n_updates: int) -> dict:
    """Spawn one process per (task, thread count), compare all pairs; return the report."""
    import torch

    from dai_swarm.optim import codecs
    from dai_swarm.verification.recompute import relative_distance
    from dai_swarm.verification.simulate import tamper_update

    report: dict = {"threads": list(THREADS), "updates_per_task": n_updates, "tasks": {}}
    worst_all = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for task_name in tasks:
            t = time.time()
            for threads in THREADS:
                subprocess.run([sys.executable, "-m", "benchmarks.calibrate_tau", "--worker", task_name, str(threads),
                                str(n_updates), tmp], check=True, timeout=1800)
            raw_d, int8_d, attack_d = [], [], {}
            for i in range(n_updates):
                dec = {th: codecs.decode(open(os.path.join(tmp, f"{task_name}.{th}.{i}.frame"), "rb").read(),
                                         max_bytes=codecs.MAX_BYTES)  # frames this benchmark wrote itself
                       for th in THREADS}
                q = {th: codecs.roundtrip(d, "int8") for th, d in dec.items()}
                for a, b in itertools.combinations(THREADS, 2):
                    raw_d.append(relative_distance(dec[a], dec[b]))
                    int8_d.append(relative_distance(q[a], q[b]))
                ref = q[1]
                for kind in ("sign_flip", "scale10", "gaussian"):
                    bad = codecs.roundtrip(tamper_update(kind, dec[1], [dec[1]]), "int8")
                    attack_d.setdefault(kind, []).append(relative_distance(bad, ref))
                if i > 0:  # another update of the same base (wrong steps/round/peer): replay, lazy, copy
                    attack_d.setdefault("other_update", []).append(relative_distance(q_prev, ref))
                q_prev = ref
            worst = max(raw_d + int8_d)
            worst_all = max(worst_all, worst)
            report["tasks"][task_name] = {
                "steps": STEPS[task_name], "pairs": len(raw_d), "max_raw": max(raw_d), "max_int8": max(int8_d),
                "nonzero_pairs": sum(1 for x in raw_d + int8_d if x > 0),
                "min_attack_distance": {k: min(v) for k, v in attack_d.items()}, "wall_s": round(time.time() - t, 1)}
    tau = max(1e-6, 10 ** math.ceil(math.log10(10 * worst_all))) if worst_all > 0 else 1e-6
    report.update({"worst_honest_distance": worst_all, "tau_min_10x": 10 * worst_all, "tau_recommended": tau,
                   "torch": torch.__version__})
    return report


def main(argv: list[str] | None = None) -> dict:
    """Calibrate, write the JSON next to the other results and print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["regression", "tinylm-small"])
    ap.add_argument("--updates", type=int, default=8)
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--worker", nargs=4, metavar=("TASK", "THREADS", "N", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), int(args.worker[2]), args.worker[3])
        return {}
    report = calibrate(args.tasks, args.updates)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))
    print("\n| task | pairs | max raw distance | max int8 distance | smallest attack distance |\n|---|---|---|---|---|")
    for name, r in report["tasks"].items():
        print(f"| {name} | {r['pairs']} | {r['max_raw']:.3g} | {r['max_int8']:.3g} | "
              f"{min(r['min_attack_distance'].values()):.3g} |")
    print(f"\nτ recommended: {report['tau_recommended']:g} (>= 10 x worst honest {report['worst_honest_distance']:.3g})")
    return report


if __name__ == "__main__":
    main()
