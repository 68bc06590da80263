"""Which round length does a swarm on given hardware need? The simulator with host CPU time.

Measures one peer's protocol work on this machine (:func:`dai_swarm.sim.host.measure_host_costs`:
inner steps per second, encode, per-update aggregation, base install plus evaluation, one torch
thread), then simulates ``--peers`` peers sharing ``--host-cores`` cores at each ``--round-s`` and
counts what the real adaptive-rounds benchmark counts (``benchmarks.adaptive_rounds``, rounds from
``--skip`` on): empty rounds (nothing included), disagreed rounds (a peer without the base, or two
bases in the region), samples per peer per round. Where ``--real`` names that benchmark's JSON,
its fixed-length runs stand beside the prediction at their round lengths.

Usage::

    python -m benchmarks.sim_host                 # 8 peers of tinylm-small on 2 cores, 1-10 s rounds
    python -m benchmarks.sim_host --quick         # CI smoke: regression, 3 peers, 2 lengths

Writes ``sim_host.json``, ``sim_host.md`` and ``sim_host.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Sequence

__all__ = ["main", "predict"]

REAL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "results",
                    "adaptive_rounds.json")


def predict(cfg, skip: int) -> dict:
    """Simulate ``cfg`` and count its steady rounds the way ``benchmarks.adaptive_rounds`` does."""
    from dai_swarm.sim import simulate

    t = time.perf_counter()
    rows, _ = simulate(cfg)
    steady = [r for r in rows if r["round"] >= skip]
    disagreed = [r["regions_in_agreement"] < r["regions"] or r["no_state"] > 0 or r["voters"] < r["alive"]
                 for r in steady]
    return {"round_s": cfg.round_s, "counted_rounds": len(steady),
            "empty_rounds": sum(r["included"] == 0 for r in steady), "disagreed_rounds": sum(disagreed),
            "late_bases": sum(r["late_bases"] for r in steady),
            "samples_per_peer_round": round(sum(r["samples"] for r in steady) / max(1, len(steady)) / cfg.peers, 1),
            "sim_wall_s": round(time.perf_counter() - t, 1)}


def _cpu_ticks(marker: str) -> dict[int, int]:
    """utime + stime (clock ticks) of every process whose command line names ``marker`` (peer
    processes and their DHT processes), and of the p2p daemons they started."""
    out, parents = {}, {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        parents[int(pid)] = (int(fields[1]), int(fields[11]) + int(fields[12]), marker.encode() in cmd, b"p2pd" in cmd)
    ours = {pid for pid, (_, _, mine, _) in parents.items() if mine}
    for pid, (ppid, ticks, mine, p2pd) in parents.items():
        if mine or (p2pd and ppid in ours):
            out[pid] = ticks
    return out


def measure_protocol_cpu(task: str, peers: int, round_s: float, rounds: int, max_inner_steps: int, skip: int,
                         steps_per_s: float, workdir: str) -> dict:
    """Real ``dai-swarm peer`` processes (one region, ``benchmarks.churn``'s launcher): CPU seconds
    of every process of theirs (peer, DHT process, p2p daemon) over the steady rounds, minus the
    inner steps their included samples took at ``steps_per_s``, per peer and round."""
    import threading

    from dai_swarm.tasks import load_task

    from .churn import run_swarm
    from .churn_fleet import PeerLife

    ns = argparse.Namespace(task=task, round_s=round_s, rounds=rounds, max_inner_steps=max_inner_steps, codec="int8",
                             regions=1, cross_region_period=5, attack=None, peers=peers, lead_s=20.0 + 2.0 * peers,
                             initial_loss=None)
    label, samples, stop = f"simhost-{os.getpid()}", [], threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            samples.append((time.time(), _cpu_ticks(label)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        res = run_swarm(ns, [PeerLife(slot=i, start_s=0.0) for i in range(peers)], label, workdir)
    finally:
        stop.set()
        sampler.join(5)
    t_a = res["t0"] + skip * round_s
    start = next((ticks for t, ticks in samples if t >= t_a), {})
    last: dict[int, int] = {}
    for t, ticks in samples:
        last.update(ticks)
    hz = os.sysconf("SC_CLK_TCK")
    cpu_s = sum(v - start.get(pid, 0) for pid, v in last.items()) / hz
    counted = max(1, rounds - skip)
    batch = int(load_task(task).batch_size)
    curve = res["curve"]  # cumulative included samples, by base round (q + 2)
    before = [n for n, r in zip(curve["samples"], curve["round"]) if r - 2 < skip]
    included = (curve["samples"][-1] if curve["samples"] else 0) - (before[-1] if before else 0)
    train_s = included / batch / steps_per_s
    return {"peers": peers, "round_s": round_s, "rounds_counted": counted, "cpu_s": round(cpu_s, 2),
            "train_cpu_s": round(train_s, 2), "protocol_cpu_s": round((cpu_s - train_s) / peers / counted, 3),
            "stalls": res["stalls"]}


def _real(path: str | None) -> dict:
    """The real benchmark's fixed-length runs (fixed and hand-tuned), by round length."""
    if not path or not os.path.exists(path):
        return {}
    with open(path) as f:
        doc = json.load(f)
    out = {}
    for name in ("fixed", "tuned"):
        run = doc["runs"].get(name)
        if run:
            out[name] = {k: run[k] for k in ("final_round_s", "counted_rounds", "empty_rounds", "disagreed_rounds",
                                             "samples_per_peer_round")}
    return {"args": doc["args"], "machine": doc.get("machine"), "runs": out}


def _report(doc: dict) -> str:
    a, c = doc["args"], doc["costs"]
    lines = ["# Round length a swarm needs: simulator with host CPU time", "",
             f"{a['peers']} peers of `{a['task']}` sharing {a['host_cores']} cores, one region, {a['rounds']} rounds, "
             f"at most {a['max_inner_steps']} inner steps; rounds from {a['skip']} on counted. Host costs measured on "
             f"this machine (one torch thread): {c['steps_per_s']:.1f} inner steps/s, encode {1e3 * c['encode_s']:.1f} "
             f"ms, aggregation {1e3 * c['compute_s_per_update']:.1f} ms per included update, base install + evaluation "
             f"{1e3 * c['apply_s']:.1f} ms; other protocol work (DHT process, p2p daemon, checks) "
             f"{c['protocol_cpu_s']:.3f} CPU s per peer and round"
             + (" (measured on real peers, below)." if doc.get("protocol_cpu_measured") else " (given)."), "",
             "| round length (s) | empty rounds | disagreed rounds | late bases (peer-rounds) | samples / peer / round |",
             "|---:|---:|---:|---:|---:|"]
    for p in doc["predicted"]:
        lines.append(f"| {p['round_s']:g} | {p['empty_rounds']} of {p['counted_rounds']} | {p['disagreed_rounds']} | "
                     f"{p['late_bases']} | {p['samples_per_peer_round']} |")
    lines += ["", f"Predicted need: **{doc['needed_round_s']} s** (the shortest length with no empty round, at most "
              "one disagreed round and samples per round within 10% of the longest length's)."]
    m = doc.get("protocol_cpu_measured")
    if m:
        lines += ["", f"Measured on real peers: {m['peers']} `dai-swarm peer` processes, {m['round_s']} s rounds, "
                  f"{m['rounds_counted']} steady rounds: {m['cpu_s']} CPU s in all their processes, of which "
                  f"{m['train_cpu_s']} s for the inner steps of the included samples; stalls {m['stalls']}."]
    real = doc.get("real") or {}
    if real.get("runs"):
        ra = real["args"]
        lines += ["", f"Real peers (`benchmarks.adaptive_rounds`, {ra['peers']} peers of `{ra['task']}`, "
                  f"{real.get('machine')}):", "", "| run | round length (s) | empty | disagreed | samples / peer / round |",
                  "|---|---:|---:|---:|---:|"]
        for name, r in real["runs"].items():
            lines.append(f"| {name} | {r['final_round_s']:g} | {r['empty_rounds']} of {r['counted_rounds']} | "
                         f"{r['disagreed_rounds']} | {r['samples_per_peer_round']} |")
    return "\n".join(lines) + "\n"


def _plot(doc: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    xs = [p["round_s"] for p in doc["predicted"]]
    ax.plot(xs, [p["samples_per_peer_round"] for p in doc["predicted"]], "o-", label="simulated (host CPU model)")
    for name, r in ((doc.get("real") or {}).get("runs") or {}).items():
        ax.plot([r["final_round_s"]], [r["samples_per_peer_round"]], "s", ms=8, label=f"real peers: {name}")
    ax.set_xlabel("round length (s)")
    ax.set_ylabel("samples per peer per round")
    ax.set_title(f"{doc['args']['peers']} peers on {doc['args']['host_cores']} cores")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0, or 1 when ``--quick`` sanity checks fail."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.sim_host", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example: python -m benchmarks.sim_host --peers 8 --host-cores 2 --round-s 2 4 8")
    p.add_argument("--task", default="tinylm-small", help="task (default tinylm-small)")
    p.add_argument("--peers", type=int, default=8, help="peers (default 8)")
    p.add_argument("--host-cores", type=float, default=2.0, help="cores the peers share (default 2)")
    p.add_argument("--round-s", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0, 6.6, 10.0])
    p.add_argument("--rounds", type=int, default=18, help="rounds per simulation (default 18)")
    p.add_argument("--max-inner-steps", type=int, default=20, help="inner steps per round at most (default 20)")
    p.add_argument("--skip", type=int, default=2, help="start-up rounds not counted (default 2)")
    p.add_argument("--protocol-cpu-s", type=float, default=None, metavar="S",
                   help="CPU seconds per peer and round outside the timed steps (DHT process, p2p daemon, checks); "
                        "default: measured on real peers at --measure-round-s")
    p.add_argument("--measure-round-s", type=float, default=6.6, help="round length of that measurement (default 6.6)")
    p.add_argument("--measure-rounds", type=int, default=10, help="rounds of that measurement (default 10)")
    p.add_argument("--real", default=REAL, help="the real adaptive-rounds JSON to compare with ('' for none)")
    p.add_argument("--quick", action="store_true", help="CI smoke: regression, 3 peers, 1 core, 0.2 and 3 s rounds")
    p.add_argument("--out", default="out/sim_host", help="output folder (default out/sim_host)")
    args = p.parse_args(argv)
    if args.quick:
        args.task, args.peers, args.host_cores, args.round_s, args.rounds, args.real = \
            "regression", 3, 1.0, [0.5, 3.0], 6, ""
        args.protocol_cpu_s = 0.25 if args.protocol_cpu_s is None else args.protocol_cpu_s
    import torch

    from dai_swarm.sim import SimConfig
    from dai_swarm.sim.host import measure_host_costs

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the simulated peers train the way `dai-swarm peer --threads 1` does
    try:
        costs = measure_host_costs(args.task)
        measured = None
        if args.protocol_cpu_s is None:
            print(f"measuring real peers: {args.peers} x {args.task}, {args.measure_rounds} rounds of "
                  f"{args.measure_round_s} s ...", flush=True)
            measured = measure_protocol_cpu(args.task, args.peers, args.measure_round_s, args.measure_rounds,
                                            args.max_inner_steps, args.skip, costs.steps_per_s,
                                            os.path.join(args.out, "real"))
            print(f"  {measured}", flush=True)
            args.protocol_cpu_s = max(0.0, measured["protocol_cpu_s"])
        base = SimConfig(peers=args.peers, regions=1, rounds=args.rounds, task=args.task, speed_sigma=0.0,
                         max_inner_steps=args.max_inner_steps, host_cores=args.host_cores, check_prob=0.0,
                         evaluate=False, protocol_cpu_s=args.protocol_cpu_s, **costs.sim_fields())
        predicted = []
        for round_s in sorted(args.round_s):
            predicted.append(predict(base.with_(round_s=round_s), args.skip))
            print(f"  {round_s:g} s: {predicted[-1]}", flush=True)
    finally:
        torch.set_num_threads(threads)
    best = max(x["samples_per_peer_round"] for x in predicted)
    ok = [x["round_s"] for x in predicted if x["empty_rounds"] == 0 and x["disagreed_rounds"] <= 1
          and x["samples_per_peer_round"] >= 0.9 * best]
    doc = {"args": vars(args), "costs": {**vars(costs), "protocol_cpu_s": args.protocol_cpu_s},
           "protocol_cpu_measured": measured, "predicted": predicted, "needed_round_s": min(ok) if ok else None,
           "real": _real(args.real)}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "sim_host.json"), "w") as f:
        json.dump(doc, f, indent=1)
    with open(os.path.join(args.out, "sim_host.md"), "w") as f:
        f.write(_report(doc))
    _plot(doc, os.path.join(args.out, "sim_host.png"))
    print(_report(doc))
    if args.quick:  # 0.5 s rounds are too short for 3 peers on one core with 0.25 s of protocol work each
        short, long = predicted
        return 0 if short["empty_rounds"] > 0 and long["empty_rounds"] == 0 and doc["needed_round_s"] == 3.0 else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
