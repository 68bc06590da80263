"""What a flood of fresh keys costs an established swarm: val loss flooded against clean.

    python -m benchmarks.sybil_flood --runs 3                   # ~12 min on 2 cores
    python -m benchmarks.sybil_flood --report-only              # rebuild .md/.png from the JSON

One harness (:func:`benchmarks.attack_swarm.run_swarm`), regression task, 6 s rounds, until round
``--until``: three founders p0-p2 (honest, established from round 0), p3 a cheater (``sign_flip``),
p4 and a joiner p5 that starts at round ``--join-round``. In the ``flood`` arm p4 runs ``--attack
sybil`` (:mod:`dai_swarm.verification.sybil`: every round 1,000 fresh-key votes for a poisoned
state, 50 fresh-key offers of it, 40 fresh keys announcing sign-flipped updates, one oversized
announcement) at nice 19, as if on a machine of its own: its records still reach, load and are
checked by the honest peers' DHTs, but it does not take their CPU. In the ``clean`` arm p4 is an
honest peer (the attacker's own key trains honestly too, so the arms differ only by the flood).
Arms alternate (flood, clean, flood, ...) so that slow drifts of the machine hit both alike.

Per run: the honest peers' val loss per round (they agree; the mean is taken where they do not),
the rounds recorded and the base in which the cheater was slashed. The report compares the arms'
mean val loss round by round (the Sybil issue's must-show: within 3% of a clean run) and shows
the spread of the clean runs (run-to-run noise). Writes ``<out>.json``, ``<out>.md``, ``<out>.png``.
It loads the machine: run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from statistics import mean

HONEST = (0, 1, 2, 5)
CHEATER, ATTACKER, JOINER = 3, 4, 5


def run_once(arm: str, workdir: str, until: int, join_round: int, index: int) -> dict:
    """One swarm of the ``arm`` ("flood" or "clean"); the honest peers' val loss per round."""
    from benchmarks.attack_swarm import first_slash, run_swarm

    kinds = [None, None, None, "sign_flip", "sybil" if arm == "flood" else None, None]
    started = time.time()
    peers = run_swarm(workdir, kinds, until_round=until, run_id=f"flood-bench-{arm}-{index}-{os.getpid()}",
                      late={JOINER: join_round}, founders=3, nice={ATTACKER: 19})
    losses: dict[int, list[float]] = {}
    for i in HONEST:
        for h in peers[i]["history"]:
            if h.get("val_loss") is not None:
                losses.setdefault(int(h["round"]), []).append(float(h["val_loss"]))
    key = peers[CHEATER]["status"].get("public_key", "")
    counters = peers[ATTACKER]["status"].get("counters", {}) if arm == "flood" else {}
    return {"arm": arm, "wall_s": round(time.time() - started, 1),
            "val_loss": {str(r): mean(v) for r, v in sorted(losses.items())},
            "peers_disagreeing": {str(r): max(v) - min(v) > 0 for r, v in sorted(losses.items())},
            "cheater_slashed_in_base": first_slash(peers, key[:12]) if key else None,
            "sybil_records": counters.get("sybil_records", 0), "standing_from": standing_from(peers)}


def standing_from(peers: list) -> dict:
    """The first round in which p4 (the attacker's own key in the flood arm, trained honestly; an honest
    newcomer in the clean arm) and the joiner held standing, by their own history (None: never)."""
    out = {}
    for name, i in (("p4", ATTACKER), ("joiner", JOINER)):
        held = [int(h["round"]) for h in peers[i].get("history", []) if h.get("standing")]
        out[name] = min(held) if held else None
    return out


def compare(runs: list[dict]) -> list[dict]:
    """Per round recorded by every run: each arm's mean val loss, flood ÷ clean, the clean spread."""
    by_arm = {a: [r for r in runs if r["arm"] == a] for a in ("flood", "clean")}
    if not by_arm["flood"] or not by_arm["clean"]:
        return []
    common = set.intersection(*(set(r["val_loss"]) for r in runs))
    rows = []
    for q in sorted(common, key=int):
        f = [r["val_loss"][q] for r in by_arm["flood"]]
        c = [r["val_loss"][q] for r in by_arm["clean"]]
        rows.append({"round": int(q), "flood": mean(f), "clean": mean(c), "ratio": mean(f) / mean(c),
                     "clean_min": min(c), "clean_max": max(c), "flood_min": min(f), "flood_max": max(f)})
    return rows


def markdown(report: dict) -> str:
    """The per-run and per-round tables."""
    a = report["args"]
    lines = [f"# Sybil flood against an established swarm: regression, 6 s rounds, until round {a['until']}", "",
             f"Machine: {report['machine']}. Code: {report.get('commit', '?')}. Arms alternate; "
             f"{a['runs']} run(s) each. Val loss of the honest peers (founders p0-p2 and the joiner).", "",
             "| run | arm | rounds recorded | cheater slashed in base | standing from round: p4 / joiner "
             "| fresh-key records | wall (s) |",
             "|---:|---|---|---:|---|---:|---:|"]
    for i, r in enumerate(report["runs"]):
        rounds = sorted(int(q) for q in r["val_loss"])
        span = f"{rounds[0]}-{rounds[-1]}" if rounds else "none"
        st = r.get("standing_from") or {}
        lines.append(f"| {i} | {r['arm']} | {span} | {r['cheater_slashed_in_base']} | {st.get('p4', '?')} / "
                     f"{st.get('joiner', '?')} | {r['sybil_records']:,} | {r['wall_s']} |")
    lines += ["", "| round | flood mean | clean mean | flood ÷ clean | flood range | clean range |",
              "|---:|---:|---:|---:|---|---|"]
    for row in report["compare"]:
        lines.append(f"| {row['round']} | {row['flood']:.4f} | {row['clean']:.4f} | {row['ratio']:.3f} "
                     f"| {row['flood_min']:.4f}-{row['flood_max']:.4f} | {row['clean_min']:.4f}-{row['clean_max']:.4f} |")
    tail = report["compare"][-3:]
    if tail:
        f, c = mean(x["flood"] for x in tail), mean(x["clean"] for x in tail)
        lines += ["", f"Last {len(tail)} rounds ({tail[0]['round']}-{tail[-1]['round']}): flood mean {f:.4f}, "
                      f"clean mean {c:.4f}, flood ÷ clean {f / c:.3f}; last round {tail[-1]['ratio']:.3f}."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: str) -> None:
    """Val loss per round: each run thin, each arm's mean thick (log scale)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"flood": "tab:red", "clean": "tab:blue"}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in report["runs"]:
        xs = sorted(int(q) for q in r["val_loss"])
        ax.plot(xs, [r["val_loss"][str(q)] for q in xs], color=colors[r["arm"]], alpha=0.3, lw=1)
    rows = report["compare"]
    for arm in ("flood", "clean"):
        ax.plot([x["round"] for x in rows], [x[arm] for x in rows], color=colors[arm], lw=2.5, label=f"{arm} (mean)")
    ax.set_yscale("log")
    ax.set_xlabel("round")
    ax.set_ylabel("val loss (honest peers)")
    ax.set_title("40 sign-flipping fresh keys + 1,000 fresh voters a round, against 3 founders")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _commit() -> str:
    """The short commit hash of the code measured."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def main(argv=None) -> int:
    """Run the arms alternately, print and write the report."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="runs per arm (default 3)")
    p.add_argument("--until", type=int, default=12, help="peers leave at this round (default 12)")
    p.add_argument("--join-round", type=int, default=5, help="round at which the joiner p5 starts")
    p.add_argument("--workdir", default="/tmp/dai_swarm_sybil_flood")
    p.add_argument("--out", default="docs/results/sybil_flood/sybil_flood")
    p.add_argument("--report-only", action="store_true", help="rebuild <out>.md/.png from <out>.json")
    p.add_argument("--quick", action="store_true", help="one run per arm, until round 8")
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.until = 1, 8
    if args.report_only:
        with open(f"{args.out}.json") as f:
            report = json.load(f)
        report["compare"] = compare(report["runs"])
        return _write(report, args.out)
    report = {"args": vars(args), "machine": f"{os.cpu_count()} CPUs", "commit": _commit(), "runs": []}
    for i in range(2 * args.runs):
        arm = ("flood", "clean")[i % 2]
        run = run_once(arm, os.path.join(args.workdir, f"{arm}{i}"), args.until, args.join_round, i)
        report["runs"].append(run)
        last = max(run["val_loss"], key=int, default=None)
        print(f"run {i} ({arm}): rounds to {last}, val loss {run['val_loss'].get(last, float('nan')):.4f}, "
              f"cheater slashed in base {run['cheater_slashed_in_base']}", file=sys.stderr, flush=True)
        report["compare"] = compare(report["runs"])
        _write(report, args.out, quiet=True)  # a partial report survives an interrupted run
    return _write(report, args.out)


def _write(report: dict, out: str, quiet: bool = False) -> int:
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(f"{out}.json", "w") as f:
        json.dump(report, f, indent=1)
    with open(f"{out}.md", "w") as f:
        f.write(markdown(report))
    if report["compare"]:
        plot(report, f"{out}.png")
    if not quiet:
        print(markdown(report))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
