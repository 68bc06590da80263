"""32 real peer processes on one host: memory per peer and state-hash agreement.

    python -m benchmarks.scale32 --peers 32 --regions 2 --round-s 60 --rounds 7
    python -m benchmarks.scale32 --peers 32 --regions 1 --round-s 20 --round-s-max 160 --rounds 10 \
        --out docs/results/sim_scale32_adaptive

Starts ``--peers`` ``dai-swarm peer`` processes on loopback (small task, capped inner steps, one
torch thread each), samples each peer's PSS (peer process plus its p2p daemon children, from
``/proc/<pid>/smaps_rollup``) while they run, and checks from their history files that, for every
round, all peers of a region that closed it report the same state hash (at their tally) and
trained that round from the same base. Prints JSON and a markdown
table and writes ``<out>.json``. With ``--round-s-max`` rounds adapt (``round_lengths``: the lengths the
peers ran each round with; completion times are then measured against the first length's clock
and mean little). It loads the machine heavily: run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from statistics import median

from dai_swarm.sim.realrun import per_round, run_real_swarm


def main(argv=None) -> int:
    """Run the swarm, print and write the report."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", type=int, default=32)
    p.add_argument("--regions", type=int, default=2)
    p.add_argument("--round-s", type=float, default=60.0,
                   help="round length (default 60: 32 peers on 2 cores run 25-50 s behind the clock)")
    p.add_argument("--rounds", type=int, default=7, help="peers leave when the swarm reaches this round")
    p.add_argument("--task", default="regression")
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--max-inner-steps", type=int, default=4)
    p.add_argument("--lead-s", type=float, default=150.0, help="seconds from launch to round 0 (start-up)")
    p.add_argument("--round-s-max", type=float, default=None,
                   help="let rounds adapt up to this length (docs/design.md, 'Rounds that fit the swarm')")
    p.add_argument("--workdir", default="/tmp/dai_swarm_scale32")
    p.add_argument("--out", default="docs/results/sim_scale32")
    args = p.parse_args(argv)
    run = run_real_swarm(args.workdir, peers=args.peers, regions=args.regions, round_s=args.round_s,
                         until_round=args.rounds, task=args.task, k=args.k, max_inner_steps=args.max_inner_steps,
                         lead_s=args.lead_s, run_id="scale32",
                         extra_args=("--round-s-max", str(args.round_s_max)) if args.round_s_max else (),
                         longest_round_s=args.round_s_max)
    rows = per_round(run)
    pss = sorted(run["pss_kib"].values())
    main_only = sorted(run["pss_main_kib"].values())
    report = {
        "peers": args.peers, "regions": args.regions, "round_s": args.round_s, "histories": len(run["histories"]),
        "exit_codes": run["exit_codes"], "aborted_low_memory": run["aborted_low_memory"],
        "min_mem_available_mib": round(run["min_mem_available_kib"] / 1024),
        "pss_mib": {"median": round(median(pss) / 1024, 1), "min": round(pss[0] / 1024, 1),
                    "max": round(pss[-1] / 1024, 1), "total": round(sum(pss) / 1024, 1), "sampled": len(pss)}
        if pss else None,
        "pss_main_process_mib_median": round(median(main_only) / 1024, 1) if main_only else None,
        "rounds": rows,
        "all_rounds_agree": bool(rows) and all(r["regions_in_agreement"] == r["regions"] for r in rows),
        "all_trained_from_agree": bool(rows) and all(a == b for r in rows for a, b in r["trained_from"].values()),
        "minority_candidates": sum(b - a for r in rows for a, b in r["majority"].values()),
        "peer_rounds": sum(r["peers"] for r in rows),
        "round_s_max": args.round_s_max,
        # per round, the length every peer ran it with (adaptive rounds; one value per round when agreed)
        "round_lengths": {str(e["round"]): sorted({h2.get("round_s") for h in run["histories"].values()
                                                   for h2 in h["history"] if h2["round"] == e["round"]})
                          for h in list(run["histories"].values())[:1] for e in h["history"]},
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(f"{args.out}.json", "w") as fh:
        json.dump(report, fh, indent=1, sort_keys=True)
    print(json.dumps(report, indent=1))
    print("| round | peers reporting | regions agreeing | on majority hash per region | trained from the majority "
          "base | median updates | done after end(r), median / max s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        maj = ", ".join(f"{g} {a}/{b}" for g, (a, b) in r["majority"].items())
        base = ", ".join(f"{g} {a}/{b}" for g, (a, b) in r["trained_from"].items()) or "-"
        print(f"| {r['round']} | {r['peers']} | {r['regions_in_agreement']}/{r['regions']} | {maj} | {base} | "
              f"{r['updates_median']} | {r['completion_median_s']:.2f} / {r['completion_max_s']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
