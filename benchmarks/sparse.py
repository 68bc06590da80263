"""Sparse updates with error feedback vs int8 dense: loss at equal samples, bytes, verification.

A single-process simulation (no network) of ``n`` DiLoCo workers on ``tinylm-small``: each round
every worker runs the honest inner loop (:func:`~dai_swarm.verification.recompute.recompute_update`,
the batches :func:`assign` gives it) from the shared base, its update goes through the variant's
codec (dense codecs via ``codecs.roundtrip``; ``sparse`` via :func:`~dai_swarm.optim.feedback.feedback_step`
with its private buffer), the decoded updates are averaged (``weighted_mean``, equal weights) and
the outer step of ``optim/outer.py`` is applied. Every variant sees the same data and budget.

For the sparse variant marked ``verify``, each update is also recomputed on a second torch thread
count and every chunk is checked with :func:`~dai_swarm.verification.feedback_check.check_chunks`
(the author's buffers committed and proven): it counts exact passes, index mismatches (an honest
recomputation that keeps another position) and failures (false slashes), and the largest honest
difference relative to each chunk's max. On the Δ + e of that run it also measures bytes per
update for a grid of (chunk, k, bits) and the index coding alternatives.

Writes ``sparse.json``, ``sparse.md`` and ``sparse.png`` under ``--out``::

    python -m benchmarks.sparse                 # 4 workers, 30 rounds of 20 steps (about 10 min)
    python -m benchmarks.sparse --quick --out /tmp/sparse
    python -m benchmarks.sparse --only 1 --verify-threads 4 --out benchmarks/results/sparse_threads4
    python -m benchmarks.sparse --only 0 7 1 --delayed --no-verify --out benchmarks/results/sparse_delayed
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from typing import Any

import numpy as np
import torch
import zstandard

from dai_swarm.optim import codecs
from dai_swarm.optim.aggregate import weighted_mean
from dai_swarm.optim.codecs.codec_sparse import chunk_rows, rice_bits, select_topk
from dai_swarm.optim.feedback import buffer_refs, commit_buffer, feedback_step, prove_chunks, zero_buffer
from dai_swarm.optim.outer import OuterState, outer_step
from dai_swarm.swarm import outer_defaults
from dai_swarm.tasks import load_task
from dai_swarm.verification.feedback_check import check_chunks, detection_probability, sample_chunks
from dai_swarm.verification.recompute import recompute_update

__all__ = ["VARIANTS", "bytes_grid", "index_coding", "main", "simulate"]

#: (label, codec, codec params, feedback decay or None for no feedback, outer lr, outer momentum, verify)
VARIANTS = [
    ("int8 dense, Nesterov 0.6/0.9", "int8", {}, None, 0.6, 0.9, False),
    ("sparse + leaky EF 0.95, no outer momentum, lr 1.0", "sparse", {}, 0.95, 1.0, 0.0, True),
    ("sparse + EF, no outer momentum, lr 1.0", "sparse", {}, 1.0, 1.0, 0.0, False),
    ("sparse + EF, Nesterov 0.6/0.9", "sparse", {}, 1.0, 0.6, 0.9, False),
    ("sparse, no EF, Nesterov 0.6/0.9", "sparse", {}, None, 0.6, 0.9, False),
    ("sparse k=32 + leaky EF 0.95, no outer momentum, lr 1.0", "sparse", {"k": 32}, 0.95, 1.0, 0.0, False),
    ("int8 dense, no outer momentum, lr 1.0", "int8", {}, None, 1.0, 0.0, False),
    ("sparse + leaky EF 0.95, no outer momentum, lr 1.25", "sparse", {}, 0.95, 1.25, 0.0, False),
]
TRIALS, SAMPLE = 10, 8  # falsified-buffer trials per checked update, chunks sampled per check
GRID = [(4096, 64, 2), (4096, 32, 2), (4096, 128, 2), (4096, 64, 3), (4096, 64, 4), (1024, 16, 2), (16384, 256, 2)]


def _set_params(model: torch.nn.Module, params: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(params[n])


def simulate(task: Any, variant: tuple, *, workers: int, rounds: int, steps: int, seed: int = 0,
             verify_threads: int = 2, keep_acc: bool = False, delayed: bool = False, dc: float | None = None,
             verify_on: bool = True) -> dict[str, Any]:
    """Run one variant; returns its loss curve, bytes per update and (if it verifies) check counts.

    ``delayed``: the swarm's one-round-delayed outer step (:func:`~dai_swarm.optim.rules.compute_next_base`):
    round r trains from θ_r and its aggregate makes θ_{r+2} from θ_{r+1}, with the pseudo-gradient
    measured against θ_{r+1} by the fraction ``dc`` of the delay compensation (1: ``mean Δ + (θ_{r+1} − θ_r)``;
    0: none; None: a new run's default for the codec, :func:`dai_swarm.swarm.outer_defaults`). Otherwise the synchronous
    step of in-process DiLoCo."""
    label, codec, cparams, decay, lr, mu, verify = variant
    verify = verify and verify_on
    dc = outer_defaults(codec)[2] if dc is None else dc
    if delayed:
        label = f"{label}, delayed, compensation x{dc:g}"
    model, eval_model = task.build_model(seed), task.build_model(seed)
    state = OuterState.initial(dict(model.named_parameters()))
    bases = [state, state]  # delayed: the bases of rounds 0 and 1 are both θ0
    keys = [f"worker{i}" for i in range(workers)]
    bufs: list[dict[str, torch.Tensor] | None] = [None] * workers
    out: dict[str, Any] = {"label": label, "codec": codec, "params": cparams, "decay": decay, "outer_lr": lr,
                           "outer_momentum": mu, "samples": [0], "val_loss": [], "bytes": [], "accs": []}
    checks = {"chunks": 0, "ok": 0, "exact": 0, "index_mismatch": 0, "updates_with_mismatch": 0,
              "false_fail": 0, "max_rel_diff": 0.0, "max_distance": 0.0, "updates": 0,
              "tamper_trials": 0, "tamper_detected": 0, "tamper_expected": 0.0, "tamper_sample": SAMPLE}
    _set_params(eval_model, state.params)
    out["val_loss"].append(float(task.evaluate(eval_model)["loss"]))
    t0 = time.perf_counter()
    for r in range(rounds):
        torch.set_num_threads(1)
        sent = []
        if delayed:
            state = bases[r]
        for i, k in enumerate(keys):
            d = recompute_update(task, state.params, "sparse-bench", seed, k, r, steps, model=model, raw=True)
            if decay is None:
                blob = codecs.encode(d, codec, **cparams)
                sent.append(codecs.decode(blob, max_bytes=codecs.decode_cap_for(d, codec, **cparams)))
                out["bytes"].append(len(blob))
                continue
            buf = bufs[i] if bufs[i] is not None else zero_buffer(d)
            st = feedback_step(d, buf, decay=decay, **cparams)
            sent.append(st.sent)
            out["bytes"].append(len(st.blob))
            if keep_acc and i == 0 and r in (0, rounds // 2, rounds - 1):
                out["accs"].append({n: st.sent[n] + st.post[n] for n in d})
            if verify:
                _verify(task, state.params, k, r, steps, seed, st, decay, cparams, verify_threads, d, checks)
                torch.set_num_threads(1)
            bufs[i] = st.post
        agg = weighted_mean([(k, 1.0, s) for k, s in zip(keys, sent)])
        if delayed:
            nxt = bases[r + 1]
            agg = {n: torch.add(a, torch.mul(torch.sub(nxt.params[n], bases[r].params[n]), dc)) for n, a in agg.items()}
            bases.append(outer_step(nxt, agg, lr=lr, momentum=mu, nesterov=True))
            state = bases[-1]
        else:
            state = outer_step(state, agg, lr=lr, momentum=mu, nesterov=True)
        _set_params(eval_model, state.params)
        out["val_loss"].append(float(task.evaluate(eval_model)["loss"]))
        out["samples"].append((r + 1) * workers * steps * int(task.batch_size))
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    out["final_val_loss"] = out["val_loss"][-1]
    out["mean_bytes"] = float(np.mean(out["bytes"]))
    if verify:
        out["checks"] = checks
    return out


def _verify(task, base, peer, r, steps, seed, st, decay, cparams, threads, d_author, checks) -> None:
    """Recompute on ``threads`` threads and check every chunk of one update (counts into ``checks``)."""
    torch.set_num_threads(threads)
    d = recompute_update(task, base, "sparse-bench", seed, peer, r, steps, raw=True)
    refs = buffer_refs(st.pre, **cparams)
    ids = [c.chunk_id for c in refs]
    bits = codecs.get_codec("sparse").check_params(dict(cparams))["bits"]
    res = check_chunks(d, st.sent, prove_chunks(st.pre, ids, **cparams), prove_chunks(st.post, ids, **cparams),
                       commit_buffer(st.pre, **cparams), commit_buffer(st.post, **cparams), refs, bits=bits,
                       decay=decay)
    checks["updates"] += 1
    checks["max_distance"] = max(checks["max_distance"], res.distance)
    res = res.chunks
    checks["chunks"] += len(res)
    checks["ok"] += sum(c.ok for c in res)
    checks["exact"] += sum(c.exact for c in res)
    checks["index_mismatch"] += sum(c.index_mismatch for c in res)
    checks["updates_with_mismatch"] += int(any(c.index_mismatch for c in res))
    checks["false_fail"] += sum(not c.ok for c in res)
    _tamper_trials(d, st, refs, bits, decay, cparams, rng=random.Random(f"{peer}/{r}"), checks=checks)
    for ref in refs:
        a = (st.sent[ref.name] + st.post[ref.name]).reshape(-1)[ref.start : ref.start + ref.length]
        diff = (d_author[ref.name] - d[ref.name]).reshape(-1)[ref.start : ref.start + ref.length]
        if float(a.abs().max()) > 0:
            checks["max_rel_diff"] = max(checks["max_rel_diff"], float(diff.abs().max() / a.abs().max()))


def _tamper_trials(d, st, refs, bits, decay, cparams, *, rng: random.Random, checks: dict, trials: int = TRIALS,
                   sample: int = SAMPLE) -> None:
    """Falsify one random chunk of the committed post-round buffer (one value moved by half the
    chunk's norm), check ``sample`` random chunks, count detections against the expected rate."""
    pre_root, m = commit_buffer(st.pre, **cparams), len(refs)
    for _ in range(trials):
        ref = refs[rng.randrange(m)]
        post = {n: t.clone() for n, t in st.post.items()}
        a = (st.sent[ref.name] + st.post[ref.name]).reshape(-1)[ref.start : ref.start + ref.length]
        post[ref.name].view(-1)[ref.start + rng.randrange(ref.length)] += 0.5 * float(a.norm()) + 1e-3
        ids = sample_chunks(rng, m, sample)
        res = check_chunks(d, st.sent, prove_chunks(st.pre, ids, **cparams), prove_chunks(post, ids, **cparams),
                           pre_root, commit_buffer(post, **cparams), refs, bits=bits, decay=decay)
        checks["tamper_trials"] += 1
        checks["tamper_detected"] += int(not res.ok)
        checks["tamper_expected"] += detection_probability(m, 1, sample)


def index_coding(acc: dict[str, torch.Tensor], chunk: int = 4096, k: int = 64) -> dict[str, int]:
    """Bytes of the kept positions of ``acc`` under three codings: Rice (ours), 12-bit-style fixed
    width ``log2(chunk)`` bits, and that fixed width followed by zstd level 1."""
    r = rice_bits(chunk, k)
    width = chunk.bit_length() - 1
    rice = fixed = 0
    packed = []
    for t in acc.values():
        for block, _, kk in chunk_rows(t.reshape(-1).numpy(), chunk, k):
            cols = np.nonzero(select_topk(np.abs(block), kk))[1].reshape(-1, kk)
            gaps = np.diff(cols, axis=1, prepend=-1) - 1
            rice += (gaps.size * r + int((gaps >> r).sum()) + gaps.size + 7) // 8
            bits = np.unpackbits(cols.astype("<u2").view(np.uint8).reshape(-1, 2), axis=1, bitorder="little")
            packed.append(np.packbits(bits[:, :width].reshape(-1), bitorder="little").tobytes())
            fixed += len(packed[-1])
    zstd = len(zstandard.ZstdCompressor(level=1).compress(b"".join(packed)))
    return {"rice": rice, f"fixed_{width}_bit": fixed, f"fixed_{width}_bit_zstd": zstd}


def bytes_grid(accs: list[dict[str, torch.Tensor]]) -> list[dict[str, Any]]:
    """Payload bytes and relative L2 error of each (chunk, k, bits) of :data:`GRID` on ``accs``."""
    rows = []
    dense = 4 * sum(t.numel() for t in accs[0].values())
    for chunk, k, bits in GRID:
        sizes, errs = [], []
        for acc in accs:
            rt = codecs.roundtrip(acc, "sparse", chunk=chunk, k=k, bits=bits)
            sizes.append(len(codecs.encode(acc, "sparse", chunk=chunk, k=k, bits=bits)))
            num = sum(float((rt[n] - acc[n]).double().norm() ** 2) for n in acc)
            den = sum(float(acc[n].double().norm() ** 2) for n in acc)
            errs.append((num / den) ** 0.5)
        rows.append({"chunk": chunk, "k": k, "bits": bits, "bytes": int(np.mean(sizes)),
                     "vs_fp32": round(float(np.mean(sizes)) / dense, 5), "rel_l2": round(float(np.mean(errs)), 4)})
    return rows


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.4f}" if base == base else "-"  # base is NaN without an int8 run


def markdown(res: dict[str, Any]) -> str:
    """The results as markdown tables."""
    base = next((r["final_val_loss"] for r in res["runs"] if r["codec"] == "int8"), float("nan"))
    lines = [f"{res['workers']} workers x {res['rounds']} rounds x {res['steps']} inner steps on {res['task']} "
             f"({res['samples']:,} samples each; dense fp32 update {res['dense_bytes']:,} bytes)\n",
             "| variant | val loss at 1/4 | 1/2 | 3/4 of the samples | final val loss | vs int8 | bytes/update | vs fp32 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for run in res["runs"]:
        v, n = run["val_loss"], len(run["val_loss"]) - 1
        lines.append(f"| {run['label']} | {v[n // 4]:.3f} | {v[n // 2]:.3f} | {v[3 * n // 4]:.3f} | "
                     f"{run['final_val_loss']:.4f} | {_ratio(run['final_val_loss'], base)} | "
                     f"{run['mean_bytes']:.0f} | {run['mean_bytes'] / res['dense_bytes']:.4%} |")
    for run in res["runs"]:
        if "checks" in run:
            c = run["checks"]
            lines += ["", f"verification ({run['label']}, author 1 thread, verifier {res['verify_threads']}):",
                      "", "| chunk checks | passed | exact | index mismatches | updates with a mismatch | false fails "
                      "| max honest diff / chunk max | max distance (tau 1e-2) |", "|---:|---:|---:|---:|---:|---:|---:|---:|",
                      f"| {c['chunks']} | {c['ok']} | {c['exact']} | {c['index_mismatch']} | "
                      f"{c['updates_with_mismatch']} of {c['updates']} | {c['false_fail']} | {c['max_rel_diff']:.2e} | "
                      f"{c['max_distance']:.2e} |", "",
                      f"one falsified buffer chunk, {c['tamper_sample']} of {res['chunks']} chunks sampled per check: "
                      f"detected {c['tamper_detected']} of {c['tamper_trials']} "
                      f"(expected {c['tamper_expected']:.1f} = {c['tamper_expected'] / max(1, c['tamper_trials']):.1%})"]
    if res.get("grid"):
        lines += ["", "| chunk | k | bits | bytes/update | vs fp32 | rel L2 error of Δ+e |", "|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {g['chunk']} | {g['k']} | {g['bits']} | {g['bytes']} | {g['vs_fp32']:.3%} | {g['rel_l2']} |"
                  for g in res["grid"]]
        lines += ["", "index bytes per update (default chunk/k): " + json.dumps(res["index_coding"])]
    return "\n".join(lines)


def plot(res: dict[str, Any], path: str) -> None:
    """Validation loss against samples for every variant, and bytes per update."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    for run in res["runs"]:
        ax.plot(run["samples"], run["val_loss"], label=run["label"])
    ax.set_xlabel("samples (all workers)")
    ax.set_ylabel("validation loss (nats/byte)")
    ax.set_title(f"{res['task']}: {res['workers']} DiLoCo workers, {res['steps']} inner steps per round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    bx.barh([r["label"] for r in res["runs"]], [r["mean_bytes"] for r in res["runs"]])
    bx.set_xscale("log")
    bx.set_xlabel("bytes per update (log)")
    bx.axvline(0.01 * res["dense_bytes"], color="grey", ls="--", label="1% of dense fp32")
    bx.invert_yaxis()
    bx.legend(fontsize=8)
    bx.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run every variant; print JSON and markdown; write sparse.json, sparse.md and sparse.png."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="tinylm-small")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--steps", type=int, default=20, help="inner steps per round")
    ap.add_argument("--verify-threads", type=int, default=2, help="torch threads of the verifier's recomputation")
    ap.add_argument("--only", type=int, nargs="+", metavar="I", help="run only these variants (indices into VARIANTS)")
    ap.add_argument("--delayed", action="store_true", help="the swarm's one-round-delayed outer step (see simulate)")
    ap.add_argument("--dc", type=float, default=None,
                    help="with --delayed: fraction of the delay compensation (default: the swarm's, 1 for int8, 0.25 for sparse)")
    ap.add_argument("--seed", type=int, default=0, help="model init and data seed (default 0)")
    ap.add_argument("--lr", type=float, default=None, help="override the outer lr of the selected variants (sweeps)")
    ap.add_argument("--no-verify", action="store_true", help="skip the verification of the sparse variant")
    ap.add_argument("--quick", action="store_true", help="2 workers, 2 rounds of 2 steps, two variants (for CI)")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    variants = [VARIANTS[i] for i in args.only] if args.only else VARIANTS
    if args.lr is not None:
        variants = [(f"{v[0]}, outer lr set to {args.lr:g}", *v[1:4], args.lr, *v[5:]) for v in variants]
    if args.quick:
        args.workers, args.rounds, args.steps, variants = 2, 2, 2, VARIANTS[:2]
    task = load_task(args.task)
    runs = []
    for v in variants:
        runs.append(simulate(task, v, workers=args.workers, rounds=args.rounds, steps=args.steps, seed=args.seed,
                             verify_threads=args.verify_threads, keep_acc=v[6] and not args.no_verify,
                             delayed=args.delayed, dc=args.dc, verify_on=not args.no_verify))
        print(f"{v[0]}: final val loss {runs[-1]['final_val_loss']:.4f}, {runs[-1]['mean_bytes']:.0f} B/update, "
              f"{runs[-1]['wall_s']} s", flush=True)
    accs = [a for r in runs for a in r.pop("accs")]
    dense = 4 * sum(p.numel() for p in task.build_model(0).parameters())
    res = {"task": args.task, "workers": args.workers, "rounds": args.rounds, "steps": args.steps,
           "samples": args.workers * args.rounds * args.steps * int(task.batch_size), "dense_bytes": dense,
           "verify_threads": args.verify_threads, "quick": args.quick, "runs": runs, "seed": args.seed,
           "delayed": args.delayed, "dc": args.dc if args.delayed else None,
           "chunks": len(buffer_refs(dict(task.build_model(0).named_parameters()))),
           "grid": bytes_grid(accs) if accs else [], "index_coding": index_coding(accs[-1]) if accs else {}}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "sparse.json"), "w") as f:
        json.dump(res, f, indent=1)
    md = markdown(res)
    with open(os.path.join(args.out, "sparse.md"), "w") as f:
        f.write(md + "\n")
    plot(res, os.path.join(args.out, "sparse.png"))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
