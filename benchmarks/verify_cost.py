"""Verification CPU per peer versus its own training, on real peer processes, at several swarm sizes.

    python -m benchmarks.verify_cost [--peers 4 8 16] [--checks-per-update 0.25] [--quick]

For each size n, starts n ``dai-swarm peer`` processes in one region on loopback (one torch thread
each, :func:`dai_swarm.sim.realrun.run_real_swarm`), lets them train ``--rounds`` rounds, and reads
each peer's final status: ``train_cpu_s`` (CPU time of its training thread: inner steps, making and
announcing its update, loading bases) and
the spot-checker's ``verify_cpu_s`` (CPU time of its recomputations, checks and re-checks). The
figure is their ratio per peer: what checking others costs a peer, in units of its own training.
Both are thread CPU times, so an overloaded host slows them alike and the ratio still holds.

``--legacy`` also runs the size-8 swarm with the old rule (every peer checks every update it
receives with p = 0.2, i.e. c = 0.2 (n - 1)) as the before figure. Writes
``benchmarks/results/verify_cost.json``, ``.md`` and ``.png``. It loads the machine: run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from statistics import median

from dai_swarm.sim.realrun import run_real_swarm
from dai_swarm.verification.spotcheck import DEFAULT_CHECKS_PER_UPDATE, detection_per_round

OUT = "benchmarks/results/verify_cost"


def measure(n: int, c: float, *, rounds: int, round_s: float, steps: int, task: str, workdir: str) -> dict:
    """One real swarm of ``n`` peers at ``c`` checks per update; per-peer CPU figures."""
    run = run_real_swarm(os.path.join(workdir, f"n{n}-c{c:g}"), peers=n, regions=1, round_s=round_s,
                         until_round=rounds, task=task, max_inner_steps=steps, lead_s=20.0 + 4.0 * n,
                         run_id=f"vcost{n}", extra_args=("--checks-per-update", f"{c:g}"))
    peers = []
    for i, h in sorted(run["histories"].items()):
        st = h.get("status", {})
        trust = st.get("trust") or {}
        train, verify = float(st.get("train_cpu_s") or 0.0), float(trust.get("verify_cpu_s") or 0.0)
        peers.append({"peer": i, "train_cpu_s": round(train, 3), "verify_cpu_s": round(verify, 3),
                      "checks": trust.get("checks", 0), "rechecks": trust.get("rechecks", 0),
                      "rounds_trained": st.get("rounds_trained", 0),
                      "share": round(verify / train, 4) if train > 0 else None})
    shares = [p["share"] for p in peers if p["share"] is not None]
    train_all, verify_all = sum(p["train_cpu_s"] for p in peers), sum(p["verify_cpu_s"] for p in peers)
    checks = sum(p["checks"] for p in peers)
    trained = sum(p["rounds_trained"] for p in peers)
    return derive({"peers": n, "checks_per_update": c, "round_s": round_s, "rounds": rounds, "max_inner_steps": steps,
            "task": task, "histories": len(run["histories"]), "exit_codes": run["exit_codes"],
            "share_mean": round(verify_all / train_all, 4) if train_all > 0 else None,
            "share_median": round(median(shares), 4) if shares else None,
            "share_max": round(max(shares), 4) if shares else None,
            "checks_total": checks, "updates_trained": trained,
            "checks_per_update_measured": round(checks / trained, 3) if trained else None,
            "detection_per_round": round(detection_per_round(c, n), 4), "per_peer": peers})


def derive(row: dict) -> dict:
    """Add what one check costs against one update's training (CPU per check / CPU per trained
    update, all peers) and the share that cost gives at exactly c checks per update: the measured
    share also carries the luck of the draw (a few dozen checks per run)."""
    peers = row["per_peer"]
    checks = sum(p["checks"] + p["rechecks"] for p in peers)
    updates = sum(p["rounds_trained"] for p in peers)
    train, verify = sum(p["train_cpu_s"] for p in peers), sum(p["verify_cpu_s"] for p in peers)
    if checks and updates and train > 0:
        row["check_vs_update_cpu"] = round((verify / checks) / (train / updates), 4)
        row["share_at_c"] = round(row["checks_per_update"] * row["check_vs_update_cpu"], 4)
    return row


def _plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    new = [r for r in rows if not r.get("legacy")]
    ax.plot([r["peers"] for r in new], [100 * (r["share_mean"] or 0) for r in new], "o-",
            label=f"c = {new[0]['checks_per_update']:g} checks per update (all peers' CPU)")
    ax.plot([r["peers"] for r in new], [100 * (r["share_max"] or 0) for r in new], "v:", color="tab:blue", alpha=0.6,
            label="the busiest peer")
    ax.plot([r["peers"] for r in new], [100 * (r.get("share_at_c") or 0) for r in new], "^--", color="tab:green",
            label="at exactly c (measured cost of one check)")
    for r in (r for r in rows if r.get("legacy")):
        ax.plot([r["peers"]], [100 * (r["share_mean"] or 0)], "s", color="tab:red",
                label="before: p = 0.2 per received update")
    ax.axhline(25, color="grey", ls="--", lw=1, label="target 25%")
    ax.set_xlabel("peers in the region")
    ax.set_ylabel("verification CPU / own training CPU (%)")
    ax.set_xticks([r["peers"] for r in new])
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    """Run the swarms, print and write the report."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--checks-per-update", type=float, default=DEFAULT_CHECKS_PER_UPDATE)
    p.add_argument("--rounds", type=int, default=12, help="peers leave when the swarm reaches this round")
    p.add_argument("--round-s", type=float, default=None, help="round length (default: 2 s per peer, at least 10)")
    p.add_argument("--max-inner-steps", type=int, default=10)
    p.add_argument("--task", default="tinylm-small")
    p.add_argument("--legacy", action="store_true", help="also run 8 peers with the old p = 0.2 rule")
    p.add_argument("--quick", action="store_true", help="3 peers, 4 rounds (CI smoke run, no figure to quote)")
    p.add_argument("--workdir", default="/tmp/dai_swarm_verify_cost")
    p.add_argument("--out", default=OUT)
    p.add_argument("--report-only", action="store_true", help="re-render the table and figure from <out>.json")
    args = p.parse_args(argv)
    if args.report_only:
        with open(f"{args.out}.json") as fh:
            report = json.load(fh)
        report["rows"] = [derive(r) for r in report["rows"]]
        return _write(report, args.out, figure=not report.get("quick"))
    if args.quick and args.out == OUT:  # a smoke run never overwrites the committed figures
        args.out = os.path.join(args.workdir, "verify_cost_quick")
    sizes = [3] if args.quick else args.peers
    rounds = 4 if args.quick else args.rounds
    rows = []
    for n in sizes:
        round_s = args.round_s or max(10.0, 2.0 * n)
        print(f"{n} peers, c = {args.checks_per_update:g}, {rounds} rounds of {round_s:g} s ...", flush=True)
        rows.append(measure(n, args.checks_per_update, rounds=rounds, round_s=round_s, steps=args.max_inner_steps,
                            task=args.task, workdir=args.workdir))
    if args.legacy and not args.quick:
        print("8 peers, old rule (p = 0.2 per received update) ...", flush=True)
        row = measure(8, 0.2 * 7, rounds=rounds, round_s=args.round_s or 16.0, steps=args.max_inner_steps,
                      task=args.task, workdir=args.workdir)
        row["legacy"] = True
        rows.append(row)
    report = {"quick": args.quick, "machine": f"{os.cpu_count()} cores", "rows": rows}
    return _write(report, args.out, figure=not args.quick)


def _write(report: dict, out: str, *, figure: bool) -> int:
    rows = report["rows"]
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(f"{out}.json", "w") as fh:
        json.dump(report, fh, indent=1, sort_keys=True)
    lines = ["| peers | rule | verification / own training: all peers (median peer, busiest) | checks per update "
             "(measured) | one check / one update (CPU) | share at exactly c | detection per round (model) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        rule = "p = 0.2 per received update" if r.get("legacy") else f"c = {r['checks_per_update']:g}"
        share = (f"{100 * r['share_mean']:.1f}% ({100 * r['share_median']:.1f}%, {100 * r['share_max']:.1f}%)"
                 if r["share_mean"] is not None else "n/a")
        per = r.get("check_vs_update_cpu")
        at_c = f"{100 * r['share_at_c']:.1f}%" if r.get("share_at_c") is not None else "n/a"
        lines.append(f"| {r['peers']} | {rule} | {share} | {r['checks_per_update_measured']} | "
                     f"{per if per is not None else 'n/a'} | {at_c} | {100 * r['detection_per_round']:.1f}% |")
    table = "\n".join(lines)
    with open(f"{out}.md", "w") as fh:
        fh.write(table + "\n")
    if figure:
        _plot(rows, f"{out}.png")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
