"""Adaptive rounds against fixed ones, with real peer processes on this host.

    python -m benchmarks.adaptive_rounds --peers 8 --task tinylm-small --round-s 2 --rounds 20
    python -m benchmarks.adaptive_rounds --quick          # CI smoke: 3 peers, short run

Runs the same swarm (``--peers`` founders in one region, ``--round-s`` as the manifest's first
round length, one torch thread each) three times:

* ``fixed``: rounds stay at ``--round-s`` (the default of a run);
* ``adaptive``: ``--round-s-max`` (``--max-factor`` x ``--round-s``): rounds follow the replicated
  schedule (optim/schedule.py);
* ``tuned``: fixed rounds at the length the adaptive run settled on, as a person would pick by
  hand after seeing it: the reference for "the adaptation does not waste compute".

Per run: rounds closed, empty rounds (no peer's update agreed), disagreed rounds (the peers that
closed a round report more than one state hash), the round length over time, and the agreed
samples per peer, per round and per second of the run. Writes ``<out>.json``, ``<out>.md`` and
``<out>.png``. It loads the machine: run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from statistics import median

from dai_swarm.sim.realrun import run_real_swarm


def summarize(run: dict, skip: int) -> dict:
    """Per-round rows and totals from the peers' histories (rounds below ``skip`` are start-up)."""
    rows: dict[int, dict] = {}
    for h in run["histories"].values():
        for e in h["history"]:
            r = rows.setdefault(e["round"], {"round": e["round"], "hashes": [], "updates": [], "samples": [],
                                             "round_s": [], "time": [], "resynced": 0})
            r["hashes"].append(e["state_hash"] or "")
            r["resynced"] += bool(e.get("resynced"))
            r["updates"].append(e["updates"])
            r["samples"].append(e["samples"])
            r["round_s"].append(e.get("round_s") or run["round_s"])
            r["time"].append(e["time"])
    out = []
    for q in sorted(rows):
        r = rows[q]
        held = [x for x in r["hashes"] if x]
        out.append({"round": q, "peers": len(r["hashes"]), "hashes": len(set(held)),
                    "empty": max(r["updates"]) == 0, "disagreed": len(set(held)) > 1 or len(held) < len(r["hashes"]),
                    "resynced": r["resynced"],
                    "round_s": median(r["round_s"]), "samples": median(r["samples"]), "time": median(r["time"])})
    steady = [r for r in out if r["round"] >= skip]
    n = run["peers"]
    span = (steady[-1]["time"] - steady[0]["time"]) if len(steady) > 1 else 0.0
    return {
        "rounds": out, "rounds_closed": len(out), "empty_rounds": sum(r["empty"] for r in steady),
        "disagreed_rounds": sum(r["disagreed"] for r in steady), "counted_rounds": len(steady),
        "split_at_tally_rounds": sum(r["disagreed"] or r["resynced"] > 0 for r in steady),
        "resynced_peer_rounds": sum(r["resynced"] for r in steady),
        "final_round_s": out[-1]["round_s"] if out else None,
        "samples_per_peer_round": round(sum(r["samples"] for r in steady) / max(1, len(steady)) / n, 1),
        "samples_per_peer_s": round(sum(r["samples"] for r in steady[1:]) / n / span, 2) if span > 0 else None,
        "exit_codes": run["exit_codes"],
    }


def markdown(report: dict) -> str:
    """The summary table."""
    a = report["args"]
    lines = [f"# Adaptive rounds: {a['peers']} peers, {a['task']}, first rounds {a['round_s']} s, "
             f"until round {a['rounds']}", "",
             f"Machine: {report['machine']}. Rounds from {a['skip']} on are counted (before: start-up).", "",
             "Empty: no update agreed. Disagreed: peers ended the round on different state hashes (or none). "
             "Split at tally: disagreed, or some peer's tally was in a minority and it re-synced to the majority.", "",
             "| run | round length (s) | rounds counted | empty | disagreed | split at tally (re-synced peer-rounds) "
             "| agreed samples / peer / round | agreed samples / peer / s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in report["runs"].items():
        lengths = sorted({r["round_s"] for r in s["rounds"]})
        shown = f"{lengths[0]:g}" if len(lengths) == 1 else f"{lengths[0]:g} → {s['final_round_s']:g}"
        lines.append(f"| {name} | {shown} | {s['counted_rounds']} | {s['empty_rounds']} | {s['disagreed_rounds']} "
                     f"| {s['split_at_tally_rounds']} ({s['resynced_peer_rounds']}) | {s['samples_per_peer_round']} "
                     f"| {s['samples_per_peer_s']} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: str) -> None:
    """Round length and agreement per round, one line per run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for name, s in report["runs"].items():
        xs = [r["round"] for r in s["rounds"]]
        ax1.step(xs, [r["round_s"] for r in s["rounds"]], where="post", label=name)
        ax2.plot(xs, [r["samples"] / report["args"]["peers"] for r in s["rounds"]], marker="o", ms=3, label=name)
        bad = [r for r in s["rounds"] if r["empty"] or r["disagreed"] or r["resynced"]]
        ax2.scatter([r["round"] for r in bad], [r["samples"] / report["args"]["peers"] for r in bad], marker="x",
                    color="red", zorder=3)
    ax1.set_ylabel("round length (s)")
    ax2.set_ylabel("agreed samples / peer")
    ax2.set_xlabel("round (red x: empty, disagreed or split at the tally)")
    ax1.legend()
    ax1.set_title(f"{report['args']['peers']} peers, {report['args']['task']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    """Run the three swarms one after another, print and write the report."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", type=int, default=8)
    p.add_argument("--task", default="tinylm-small")
    p.add_argument("--round-s", type=float, default=2.0, help="the manifest's (first) round length")
    p.add_argument("--rounds", type=int, default=20, help="peers leave when the swarm reaches this round")
    p.add_argument("--max-inner-steps", type=int, default=20)
    p.add_argument("--max-factor", type=float, default=8.0, help="adaptive: --round-s-max = this x --round-s")
    p.add_argument("--skip", type=int, default=2, help="start-up rounds not counted (default 2)")
    p.add_argument("--lead-s", type=float, default=40.0, help="seconds from launch to round 0")
    p.add_argument("--runs", nargs="+", default=["fixed", "adaptive", "tuned"], choices=("fixed", "adaptive", "tuned"))
    p.add_argument("--workdir", default="/tmp/dai_swarm_adaptive_rounds")
    p.add_argument("--out", default="docs/results/adaptive_rounds")
    p.add_argument("--report-only", action="store_true", help="rebuild <out>.md/.png from the last run's histories")
    p.add_argument("--quick", action="store_true", help="CI smoke: 3 peers of regression, 0.5 s, 10 rounds")
    args = p.parse_args(argv)
    if args.quick:  # (a 20 s lead: the joiners, importing for 16 s beside another test, came after the run's end)
        args.peers, args.task, args.round_s, args.rounds, args.max_inner_steps, args.lead_s = 3, "regression", 0.5, 10, 5, 35.0
        args.runs = [r for r in args.runs if r != "tuned"]
    if args.report_only:  # rebuild the tables and plot from the peers' histories of the last run
        with open(f"{args.out}.json") as f:
            report = json.load(f)
        for name, old in report["runs"].items():
            folder = os.path.join(args.workdir, name)
            hist = {i: json.load(open(os.path.join(folder, f"p{i}.json"))) for i in range(report["args"]["peers"])
                    if os.path.exists(os.path.join(folder, f"p{i}.json"))}
            run = {"histories": hist, "peers": report["args"]["peers"], "round_s": old["first_round_s"],
                   "exit_codes": old["exit_codes"]}
            report["runs"][name] = dict(summarize(run, report["args"]["skip"]), wall_s=old["wall_s"],
                                        first_round_s=old["first_round_s"])
        return _write(report, args.out)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    report = {"args": vars(args), "machine": f"{os.cpu_count()} CPUs, the peers on {cpus} (e.g. taskset)", "runs": {}}
    settled = None
    for name in args.runs:
        if name == "tuned" and settled is None:
            print("tuned: needs the adaptive run first; skipped", file=sys.stderr)
            continue
        first = settled if name == "tuned" else args.round_s
        extra = ("--round-s-max", str(args.max_factor * first)) if name == "adaptive" else ()
        started = time.time()
        run = run_real_swarm(os.path.join(args.workdir, name), peers=args.peers, regions=1, round_s=first,
                             until_round=args.rounds, task=args.task, max_inner_steps=args.max_inner_steps,
                             lead_s=args.lead_s, run_id=f"adapt-{name}-{os.getpid()}", extra_args=extra,
                             longest_round_s=args.max_factor * first if extra else None)
        s = summarize(run, args.skip)
        s["wall_s"] = round(time.time() - started, 1)
        s["first_round_s"] = first
        report["runs"][name] = s
        if name == "adaptive":
            settled = s["final_round_s"]
        print(f"{name}: {s['counted_rounds']} rounds counted, {s['empty_rounds']} empty, {s['disagreed_rounds']} "
              f"disagreed, round length {first:g} -> {s['final_round_s']:g} s", file=sys.stderr)
    return _write(report, args.out)


def _write(report: dict, out: str) -> int:
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(f"{out}.json", "w") as f:
        json.dump(report, f, indent=1)
    with open(f"{out}.md", "w") as f:
        f.write(markdown(report))
    plot(report, f"{out}.png")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
