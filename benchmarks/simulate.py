"""Simulate a large swarm over the real protocol core: regional clustering vs flat exchange.

    python -m benchmarks.simulate --peers 1000 --regions 10 --rounds 15 --churn 0.3 --byzantine 0.1
    python -m benchmarks.simulate --calibrate --peers 8 --regions 2 --round-s 8 --rounds 8 --out docs/results/sim_calibration

Runs :mod:`dai_swarm.sim` once per exchange mode with the same seed and population, prints a JSON
summary and a markdown table, and writes ``<out>.json`` plus PNGs (``<out>_timeline.png``: loss vs
simulated time, peers alive, slashes, round completion; ``<out>_bytes.png``: bytes per link class).

``--calibrate`` instead runs real ``dai-swarm peer`` processes on loopback (no churn, no attackers)
and the simulator on the same configuration, and reports per round how far the simulator's bytes
per link class and round completion times are from the measured ones.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from dai_swarm.identity import Identity
from dai_swarm.sim import LinkSpec, SimConfig, simulate

MODES = ("clustered", "flat")


def parse(argv=None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", type=int, default=1000)
    p.add_argument("--regions", type=int, default=10)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--round-s", type=float, default=10.0)
    p.add_argument("--task", default="regression")
    p.add_argument("--codec", default="int8")
    p.add_argument("--k", type=int, default=3, help="cross-region merge period (clustered mode)")
    p.add_argument("--max-inner-steps", type=int, default=2)
    p.add_argument("--churn", type=float, default=0.3)
    p.add_argument("--byzantine", type=float, default=0.1)
    p.add_argument("--check-prob", type=float, default=0.1)
    p.add_argument("--intra", default="0.005,12.5e6", help="intra-region latency_s,bytes_per_s")
    p.add_argument("--cross", default="0.08,2.5e6", help="cross-region latency_s,bytes_per_s")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/results/sim_1000", help="output prefix (json, png)")
    p.add_argument("--calibrate", action="store_true", help="compare with a real multi-process run on loopback")
    p.add_argument("--workdir", default="/tmp/dai_swarm_calibration", help="real run's files (--calibrate)")
    p.add_argument("--lead-s", type=float, default=120.0, help="real run: seconds from launch to round 0")
    return p.parse_args(argv)


def _link(text: str) -> LinkSpec:
    lat, bw = (float(x) for x in text.split(","))
    return LinkSpec(lat, bw)


def table(results: dict) -> str:
    """Markdown comparison table of the modes."""
    lines = ["| mode | rounds | stalled | late bases | cross bytes | intra bytes | val loss first -> last | "
             "slashes (byzantine) | peers total | wall s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for mode, (rows, s) in results.items():
        lines.append(f"| {mode} | {s['rounds']} | {s['stalled_rounds']} | {s['late_bases']} | {s['bytes']['cross']:,} | "
                     f"{s['bytes']['intra']:,} | {s['val_loss_first']:.4f} -> {s['val_loss_last']:.4f} | "
                     f"{s['slashes']} ({s['slashed_byzantine']}) | {s['peers_total']} | {s['wall_s']:.0f} |")
    return "\n".join(lines)


def plot(results: dict, out: str) -> list[str]:
    """Write the timeline and bytes PNGs; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(11, 7))
    for mode, (rows, _) in results.items():
        t = [r["time_s"] for r in rows]
        ax[0][0].plot(t, [r["val_loss"] for r in rows], marker="o", label=mode)
        ax[0][1].plot(t, [r["alive"] for r in rows], marker=".", label=f"{mode}: alive")
        ax[0][1].plot(t, [r["voters"] for r in rows], ls="--", label=f"{mode}: voters")
        cum, acc = [], 0
        for r in rows:
            acc += r["new_slashes"]
            cum.append(acc)
        ax[1][0].step(t, cum, where="post", label=mode)
        ax[1][1].plot([r["round"] for r in rows], [r["completion_median_s"] for r in rows], marker="o",
                      label=f"{mode}: median")
        ax[1][1].plot([r["round"] for r in rows], [r["completion_max_s"] for r in rows], ls="--",
                      label=f"{mode}: max")
    ax[0][0].set(title="validation loss vs simulated time", xlabel="s", ylabel="MSE")
    ax[0][1].set(title="peers alive / voting", xlabel="s")
    ax[1][0].set(title="slashes (cumulative)", xlabel="s")
    ax[1][1].set(title="base of round r+2 ready, after end(r)", xlabel="round r", ylabel="s")
    for a in ax.flat:
        a.legend(fontsize=7)
        a.grid(alpha=0.3)
    fig.tight_layout()
    paths = [f"{out}_timeline.png", f"{out}_bytes.png"]
    fig.savefig(paths[0], dpi=90)
    plt.close(fig)
    fig, ax = plt.subplots(1, 1, figsize=(8, 4))
    width = 0.2
    for k, (mode, (rows, _)) in enumerate(results.items()):
        x = [r["round"] for r in rows]
        for j, link in enumerate(("intra", "cross")):
            off = (2 * k + j - 1.5) * width
            ax.bar([v + off for v in x], [max(1, r["bytes"][link]) for r in rows], width, label=f"{mode} {link}")
    ax.set(yscale="log", title="bytes per round per link class", xlabel="round", ylabel="bytes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=90)
    plt.close(fig)
    return paths


def _err(sim: float, real: float) -> float | None:
    return round((sim - real) / real, 4) if real else None


def calibrate(args: argparse.Namespace) -> int:
    """Real run, then the simulator on the same configuration; print and write the comparison."""
    from dai_swarm.sim.realrun import per_round, run_real_swarm

    real = run_real_swarm(args.workdir, peers=args.peers, regions=args.regions, round_s=args.round_s,
                          until_round=args.rounds, task=args.task, k=args.k, max_inner_steps=args.max_inner_steps,
                          lead_s=args.lead_s)
    real_rows = per_round(real)
    loopback = LinkSpec(0.0002, 1e9)
    # the simulated peers are the real ones: their keys and run id give them the same batches, hence the
    # same updates and payload sizes (host CPU time is what the simulator does not model)
    keys = tuple(Identity.load(os.path.join(args.workdir, f"p{i}.key")).public_key_hex for i in range(args.peers))
    cfg = SimConfig(peers=args.peers, regions=args.regions, rounds=args.rounds, round_s=args.round_s, task=args.task,
                    codec=args.codec, cross_region_period=args.k, max_inner_steps=args.max_inner_steps,
                    speed_median=1000.0, speed_sigma=0.0, intra=loopback, cross=loopback, check_prob=0.0,
                    seed=args.seed, dht_hop_s=0.01, run_id=real["run_id"], keys=keys)
    sim_rows, summary = simulate(cfg)
    sim_by_round = {r["round"]: r for r in sim_rows}
    full = [r for r in real_rows if r["peers"] == args.peers and r["round"] in sim_by_round]
    comp = []
    for r in full[1:]:  # the first row of each peer has no earlier traffic snapshot to subtract
        s = sim_by_round[r["round"]]
        comp.append({"round": r["round"], "real_bytes": r["bytes"], "sim_bytes": s["bytes"],
                     "err_intra": _err(s["bytes"]["intra"], r["bytes"]["intra"]),
                     "err_cross": _err(s["bytes"]["cross"], r["bytes"]["cross"]) if r["bytes"]["cross"] else None,
                     "real_completion_median_s": r["completion_median_s"],
                     "sim_completion_median_s": s["completion_median_s"],
                     "real_completion_max_s": r["completion_max_s"], "sim_completion_max_s": s["completion_max_s"],
                     "real_updates": r["updates_median"], "sim_included": s["included"],
                     "real_regions_in_agreement": r["regions_in_agreement"],
                     "sim_regions_in_agreement": s["regions_in_agreement"]})
    tot_real = {k: sum(c["real_bytes"][k] for c in comp) for k in ("intra", "cross")}
    tot_sim = {k: sum(c["sim_bytes"][k] for c in comp) for k in ("intra", "cross")}
    out = {"rows": comp, "real_rows": real_rows, "total_real": tot_real, "total_sim": tot_sim,
           "total_err": {k: _err(tot_sim[k], tot_real[k]) for k in tot_real},
           "completion_err_median_s": round(sorted(c["sim_completion_median_s"] - c["real_completion_median_s"]
                                                   for c in comp)[len(comp) // 2], 3) if comp else None,
           "real_pss_kib": real["pss_kib"], "exit_codes": real["exit_codes"], "sim_summary": summary}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(f"{args.out}.json", "w") as fh:
        json.dump(out, fh, indent=1, sort_keys=True, default=str)
    print(json.dumps({k: v for k, v in out.items() if k not in ("real_rows", "sim_summary")}, indent=1, default=str))
    lines = ["| round | real intra B | sim intra B | err | real cross B | sim cross B | real done (median/max) s | "
             "sim done (median/max) s | real updates | sim updates | regions agreed (real / sim) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in comp:
        lines.append(f"| {c['round']} | {c['real_bytes']['intra']:,} | {c['sim_bytes']['intra']:,} | {c['err_intra']} | "
                     f"{c['real_bytes']['cross']:,} | {c['sim_bytes']['cross']:,} | "
                     f"{c['real_completion_median_s']:.2f} / {c['real_completion_max_s']:.2f} | "
                     f"{c['sim_completion_median_s']:.2f} / {c['sim_completion_max_s']:.2f} | "
                     f"{c['real_updates']} | {c['sim_included']} | {c['real_regions_in_agreement']} / "
                     f"{c['sim_regions_in_agreement']} |")
    with open(f"{args.out}.md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main(argv=None) -> int:
    """Run the modes (or ``--calibrate``), print JSON and the table, write the files."""
    args = parse(argv)
    torch.set_num_threads(1)
    if args.calibrate:
        return calibrate(args)
    base = SimConfig(peers=args.peers, regions=args.regions, rounds=args.rounds, round_s=args.round_s,
                     task=args.task, codec=args.codec, cross_region_period=args.k,
                     max_inner_steps=args.max_inner_steps, churn=args.churn, byzantine=args.byzantine,
                     check_prob=args.check_prob, intra=_link(args.intra), cross=_link(args.cross), seed=args.seed)
    results = {}
    for mode in args.modes.split(","):
        results[mode] = simulate(base.with_(exchange=mode))
        print(f"{mode}: {results[mode][1]['wall_s']:.0f} s wall", file=sys.stderr, flush=True)
    out = {"modes": {m: {"summary": s, "rows": rows} for m, (rows, s) in results.items()}}
    if "clustered" in results and "flat" in results:
        c, f = results["clustered"][1]["bytes"]["cross"], results["flat"][1]["bytes"]["cross"]
        out["cross_bytes_ratio_flat_over_clustered"] = f / c if c else None
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(f"{args.out}.json", "w") as fh:
        json.dump(out, fh, indent=1, sort_keys=True)
    out["pngs"] = plot(results, args.out)
    print(json.dumps({"cross_bytes_ratio_flat_over_clustered": out.get("cross_bytes_ratio_flat_over_clustered"),
                      **{m: {k: v for k, v in s.items() if k != "config"} for m, (_, s) in results.items()},
                      "pngs": out["pngs"]}, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
