"""Bytes per peer per round of real peer processes, dense int8 against sparse with error feedback.

For each codec and swarm size n, n ``dai-swarm peer`` processes train ``tinylm-small`` in one
region on loopback (no churn, no attacker; :func:`benchmarks.churn.run_swarm`, the default
``checks_per_update``). Measured per peer and round, over the rounds after the first two (start-up
and the joins' state downloads left out) and before the last one:

* **total**: what the peer's p2pd daemon relayed (``(rchar + wchar) / 2`` from ``/proc``, the
  churn benchmark's measure: DHT records, polls, payloads, libp2p framing and encryption);
* **payload**: update, region-delta and buffer-blob bytes the peer sent and received over the
  payload protocol (its own :class:`~dai_swarm.optim.exchange.Traffic` counters);
* **control** = total − payload (DHT records, heartbeats and polling, stream set-up);
* **update bytes**: one tinylm-small update under the codec, encoded in this process from a real
  pseudo-gradient (with error feedback for ``sparse``), and its ratio to dense fp32;
* the observer's (slot 0) validation loss at the end, with the samples the swarm trained.

Usage::

    python -m benchmarks.bytes                      # n = 4, 8; int8 and sparse; ~10 minutes
    python -m benchmarks.bytes --peers 4 8 16       # the issue's curve (16 peers: ~9 GB RAM)
    python -m benchmarks.bytes --quick              # CI smoke: n = 3, 6 rounds of 4 s, sparse swarm

Writes ``bytes.json``, ``bytes.md`` and ``bytes.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from typing import Any, Sequence

from dai_swarm.testing import PeerLife

__all__ = ["main", "update_bytes"]


def update_bytes(codec: str, task_name: str = "tinylm-small") -> dict:
    """Bytes of one real update of ``task_name`` under ``codec`` (a few AdamW steps from the initial
    model; ``sparse``: the second round of error feedback, the buffer then being non-zero)."""

    from dai_swarm.optim import codecs
    from dai_swarm.optim.feedback_chain import FeedbackAuthor
    from dai_swarm.tasks import load_task

    task = load_task(task_name)
    model = task.build_model(0)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = task.inner_optimizer(model.parameters())
    deltas, bs = [], task.batch_size
    for i in range(16):
        loss = task.loss(model, task.get_batch(range(i * bs, (i + 1) * bs)))
        loss.backward()
        opt.step()
        opt.zero_grad()
        if i % 8 == 7:
            deltas.append({n: start[n] - p.detach() for n, p in model.named_parameters()})
    dense = 4 * sum(t.numel() for t in start.values())
    if codec == "sparse":
        author = FeedbackAuthor(start, {})
        blob = [author.step(r, d)[0] for r, d in enumerate(deltas)][-1]
    else:
        blob = codecs.encode(deltas[-1], codec, **codecs.RUN_CODEC_PARAMS)
    return {"bytes": len(blob), "dense_fp32_bytes": dense, "fraction_of_dense": len(blob) / dense}


def _at(points: list[tuple[float, Any]], t: float) -> Any:
    """The value of the last point at or before ``t`` (the first point if none)."""
    best = points[0][1]
    for when, value in points:
        if when > t:
            break
        best = value
    return best


def _payload(traffic: dict) -> int:
    return sum(traffic.get("sent", {}).values()) + sum(traffic.get("received", {}).values())


def _along(values: list[float], fraction: float) -> float:
    """The evaluation at ``fraction`` of the run (index 0 is the initial model)."""
    return values[min(len(values) - 1, max(1, round(fraction * (len(values) - 1))))]


def measure(res: dict, workdir: str, args: argparse.Namespace, n: int) -> dict:
    """Per-peer bytes per round (total, payload, control) over the steady rounds of one run."""
    t0, round_s = res["t0"], args.round_s
    ta, tb = t0 + 2 * round_s, t0 + (args.rounds - 1) * round_s
    rounds = args.rounds - 3
    samples = [(res["t0"] + p["t"], p["traffic"]) for p in res["bytes"]]
    total = (_at(samples, tb) - _at(samples, ta)) / n / rounds
    payloads = []
    for name in sorted(os.listdir(workdir)):
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(workdir, name)) as f:
                hist = json.load(f).get("history", [])
        except (OSError, ValueError):
            continue
        points = [(h["time"], _payload(h["traffic"])) for h in hist if h.get("traffic") and h.get("time")]
        if points:
            payloads.append((_at(points, tb) - _at(points, ta)) / rounds)
    curve = res["curve"]
    if not payloads:  # no peer recorded a round (it never got going): nothing to divide, said so
        print(f"  no peer history with traffic in {workdir}: payload and control not measured", flush=True)
    payload = sum(payloads) / len(payloads) if payloads else None
    return {"peers": n, "rounds": args.rounds, "round_s": round_s, "max_inner_steps": args.max_inner_steps,
            "rounds_measured": rounds, "total_per_round": round(total),
            "payload_per_round": round(payload) if payload is not None else None,
            "control_per_round": round(total - payload) if payload is not None else None,
            "control_over_payload": (total - payload) / payload if payload else None,
            "final_val_loss": curve["val_loss"][-1], "final_samples": curve["samples"][-1],
            "val_loss_along": [_along(curve["val_loss"], f) for f in (0.25, 0.5, 0.75, 1.0)],
            "stalls": res["stalls"], "false_slashes": res["false_slashes"], "finished": res["finished"]}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bytes", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example: python -m benchmarks.bytes --peers 4 8 --rounds 14")
    p.add_argument("--peers", type=int, nargs="+", default=[4, 8], help="swarm sizes (default 4 8)")
    p.add_argument("--codecs", nargs="+", default=None, choices=("int8", "sparse"),
                   help="codecs whose swarms run (default both; --quick: sparse, the int8 swarm's plumbing is the "
                        "same and every other real-peer test runs int8). Update sizes are always of both")
    p.add_argument("--rounds", type=int, default=14, help="rounds per run (default 14)")
    p.add_argument("--round-s", type=float, default=6.0, help="round length (default 6 s)")
    p.add_argument("--max-inner-steps", type=int, default=8, help="inner steps per round (default 8)")
    p.add_argument("--quick", action="store_true", help="CI smoke: n = 3, 6 rounds of 4 s, one swarm")
    p.add_argument("--out", default="out/bytes", help="output folder (default out/bytes)")
    return p


def _report(doc: dict) -> str:
    lines = ["# Bytes per peer per round: int8 (dense) vs sparse (error feedback)", "",
             f"Task {doc['task']}, one region, loopback, {doc['rounds']} rounds of {doc['round_s']} s, "
             f"{doc['max_inner_steps']} inner steps; steady rounds only (module docstring).", "",
             "| codec | one update (bytes) | ÷ dense fp32 |", "|---|---:|---:|"]
    for codec, u in doc["update"].items():
        lines.append(f"| {codec} | {u['bytes']:,} | {100 * u['fraction_of_dense']:.2f}% |")
    lines += ["", "| codec | peers | rounds × s, steps | total / peer / round | payload | control | control ÷ payload "
              "| total ÷ dense fp32 | final val loss | samples | empty / disagreed rounds |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    dense = next(iter(doc["update"].values()))["dense_fp32_bytes"]
    for r in doc["runs"]:
        ratio = "-" if r["control_over_payload"] is None else f"{r['control_over_payload']:.2f}"
        how = (f"{r.get('rounds', doc['rounds'])} × {r.get('round_s', doc['round_s'])}, "
               f"{r.get('max_inner_steps', doc['max_inner_steps'])}")
        lines.append(f"| {r['codec']} | {r['peers']} | {how} | {r['total_per_round']:,} | {_count(r['payload_per_round'])} | "
                     f"{_count(r['control_per_round'])} | {ratio} | {r['total_per_round'] / dense:.2f} | "
                     f"{r['final_val_loss']:.4f} | {r['final_samples']:,} | {r['stalls']['empty_rounds']} / "
                     f"{r['stalls']['disagreed_rounds']} of {r['stalls']['rounds']} |")
    lines += ["", "A run with empty or disagreed rounds was overloaded (its peers missed rounds and re-synced whole "
              "states): its figures are not a steady state."]
    return "\n".join(lines) + "\n"


def _count(v: int | None) -> str:
    """A byte count for the table, "-" where it was not measured."""
    return "-" if v is None else f"{v:,}"


def _plot(doc: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    dense = next(iter(doc["update"].values()))["dense_fp32_bytes"]
    for codec in doc["codecs"]:
        runs = [r for r in doc["runs"] if r["codec"] == codec and r["payload_per_round"] is not None]
        ns = [r["peers"] for r in runs]
        ax.plot(ns, [r["total_per_round"] / dense for r in runs], "o-", label=f"{codec}: total (p2pd)")
        ax.plot(ns, [r["payload_per_round"] / dense for r in runs], "s--", label=f"{codec}: payload")
    ax.axhline(0.2, color="grey", lw=0.8, ls=":", label="target: 20% of one dense copy")
    ax.set_xlabel("peers in the region")
    ax.set_ylabel("bytes per peer per round ÷ dense fp32 model")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title("Per-peer traffic per round (loopback)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render(path: str) -> None:
    """Re-write ``bytes.md`` and ``bytes.png`` next to an existing ``bytes.json``."""
    with open(path) as f:
        doc = json.load(f)
    out = os.path.dirname(path)
    with open(os.path.join(out, "bytes.md"), "w") as f:
        f.write(_report(doc))
    _plot(doc, os.path.join(out, "bytes.png"))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0, or 1 when ``--quick`` sanity checks fail."""
    args = _parser().parse_args(argv)
    if args.quick:
        args.peers, args.rounds, args.round_s, args.max_inner_steps = [3], 6, 4.0, 6
    if args.codecs is None:
        args.codecs = ["sparse"] if args.quick else ["int8", "sparse"]
    from dai_swarm.tasks import load_task

    from .churn import run_swarm

    task = load_task("tinylm-small")
    initial_loss = float(task.evaluate(task.build_model(0))["loss"])
    os.makedirs(args.out, exist_ok=True)
    doc: dict[str, Any] = {"task": "tinylm-small", "rounds": args.rounds, "round_s": args.round_s,
                           "max_inner_steps": args.max_inner_steps, "codecs": args.codecs, "host": platform.node(),
                           "update": {c: update_bytes(c) for c in ("int8", "sparse")}, "runs": []}
    for n in args.peers:
        for codec in args.codecs:
            ns = argparse.Namespace(task="tinylm-small", round_s=args.round_s, rounds=args.rounds,
                                    max_inner_steps=args.max_inner_steps, codec=codec, regions=1,
                                    cross_region_period=5, attack=None, peers=n, lead_s=20.0 + 2.0 * n,
                                    initial_loss=initial_loss)
            workdir = os.path.join(args.out, f"{codec}-{n}")
            os.makedirs(workdir, exist_ok=True)
            t = time.time()
            print(f"{codec}, {n} peers: {args.rounds} rounds of {args.round_s} s ...", flush=True)
            res = run_swarm(ns, [PeerLife(slot=i, start_s=0.0) for i in range(n)], f"bytes-{codec}-{n}", workdir)
            row = {"codec": codec, **measure(res, workdir, ns, n), "wall_s": round(time.time() - t, 1)}
            print(f"  total {row['total_per_round']:,} B/peer/round, payload {_count(row['payload_per_round'])}, "
                  f"control {_count(row['control_per_round'])}; val loss {row['final_val_loss']:.4f}", flush=True)
            doc["runs"].append(row)
    with open(os.path.join(args.out, "bytes.json"), "w") as f:
        json.dump(doc, f, indent=1)
    render(os.path.join(args.out, "bytes.json"))
    print(_report(doc))
    if args.quick:
        ok = all(r["finished"] and math.isfinite(r["final_val_loss"]) and (r["payload_per_round"] or 0) > 0
                 and r["false_slashes"] == 0 for r in doc["runs"])
        ok = ok and doc["update"].get("sparse", {"bytes": 0})["bytes"] < doc["update"].get("int8", {"bytes": 1})["bytes"]
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
