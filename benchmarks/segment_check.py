"""A cheaper check, measured: recompute two committed segments instead of the whole round.

    python -m benchmarks.segment_check [--rounds 20] [--steps 30] [--segments 5] [--quick]

The scheme (docs/design.md "Verification cost"; not wired into the protocol): the author of an
update trains its H inner steps in S segments of s = H/S steps and commits, in its announcement,
to the SHA-256 of its inner state (parameters and inner-optimizer state) at every segment
boundary. A verifier privately draws one segment k < S − 1, fetches the committed states at its
two ends from the author (checked against the commitments), replays the author's hash-assigned
batches of that segment from its start and compares the end with the committed one (relative L2
≤ τ on the segment's step); it also replays the last segment from its committed start and
compares the result with the announced update (after the codec round trip), so any tampering
with the final update is always caught. Cost: 2s of H steps plus the bytes of three inner states.

Measured here with real recomputation (in-process, ``tinylm-small``, the author and verifier at
torch thread counts cycling through the 9 pairs of 1/2/4): per attack, the rate at which one such
check flags it, against the full recomputation's; the CPU of one check against one update's
training; the bytes fetched per check; and the largest honest distance against τ. Writes
``benchmarks/results/segment_check.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import random
import sys
import time

import torch
from safetensors.torch import save as save_safetensors

from dai_swarm.optim import codecs
from dai_swarm.tasks import load_task
from dai_swarm.verification.assignment import samples_for
from dai_swarm.verification.attacks import make_attack
from dai_swarm.verification.recompute import apply_base, recompute_update, relative_distance
from dai_swarm.verification.spotcheck import DEFAULT_TAU

OUT = "benchmarks/results/segment_check"
PAIRS = [(a, v) for a in (1, 2, 4) for v in (1, 2, 4)]


def _state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    return {"params": {n: p.detach().clone() for n, p in model.named_parameters()},
            "opt": copy.deepcopy(opt.state_dict())}


def _digest(state: dict) -> tuple[str, int]:
    """SHA-256 of a committed state as it would travel (safetensors of the parameters and the
    inner optimizer's tensors) and its size in bytes."""
    flat = {f"p.{n}": t.contiguous() for n, t in state["params"].items()}
    for pid, entry in state["opt"]["state"].items():
        for name, v in entry.items():
            flat[f"o.{pid}.{name}"] = (v if torch.is_tensor(v) else torch.tensor(v)).contiguous()
    data = save_safetensors(flat)
    return hashlib.sha256(data).hexdigest(), len(data)


def _load(model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    apply_base(model, state["params"])
    opt.load_state_dict(copy.deepcopy(state["opt"]))


def _steps(task, model, opt, batches, *, tamper_batch=None) -> None:
    for indices in batches:
        batch = task.get_batch(indices)
        if tamper_batch is not None:
            batch = tamper_batch(batch)
        task.loss(model, batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def author_chain(task, model, base: dict, batches: list, segments: int, *, skip: set[int] = frozenset(),
                 tamper_batch=None) -> list[dict]:
    """The committed states at the S + 1 segment boundaries. Segments in ``skip`` are not trained:
    the lazy author commits the same state at both ends (it claims their steps anyway)."""
    apply_base(model, base)
    opt = task.inner_optimizer(model.parameters())
    opt.zero_grad(set_to_none=True)
    s = len(batches) // segments
    chain = [_state(model, opt)]
    for k in range(segments):
        if k not in skip:
            _steps(task, model, opt, batches[k * s:(k + 1) * s], tamper_batch=tamper_batch)
        chain.append(_state(model, opt))
    return chain


def _segment_distance(task, model, chain: list[dict], k: int, batches: list) -> float:
    """Replay segment ``k`` from its committed start; relative distance of the committed step."""
    opt = task.inner_optimizer(model.parameters())
    _load(model, opt, chain[k])
    s = len(batches) // (len(chain) - 1)
    _steps(task, model, opt, batches[k * s:(k + 1) * s])
    start, end = chain[k]["params"], chain[k + 1]["params"]
    mine = {n: start[n] - p.detach() for n, p in model.named_parameters()}
    theirs = {n: start[n] - end[n] for n in start}
    return relative_distance(theirs, mine)


def _last_distance(task, model, chain: list[dict], base: dict, payload: dict, batches: list, codec: str) -> float:
    """Replay the last segment from its committed start; distance of the announced update to base − result."""
    opt = task.inner_optimizer(model.parameters())
    _load(model, opt, chain[-2])
    s = len(batches) // (len(chain) - 1)
    _steps(task, model, opt, batches[-s:])
    mine = codecs.roundtrip({n: base[n] - p.detach() for n, p in model.named_parameters()}, codec)
    return relative_distance(payload, mine)


def run(*, rounds: int, steps: int, segments: int, task_name: str = "tinylm-small", codec: str = "int8",
        tau: float = DEFAULT_TAU, seed: int = 0) -> dict:
    """Measure the segment check against the full recomputation (see the module docstring)."""
    task = load_task(task_name)
    model = task.build_model(seed)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    rng = random.Random(seed)
    flip = make_attack("label_flip").tamper_batch
    results: dict[str, list[bool]] = {}
    full: dict[str, list[bool]] = {}
    honest_max, cpu_check, cpu_update, nbytes = 0.0, [], [], []
    for r in range(rounds):
        t_a, t_v = PAIRS[r % len(PAIRS)]
        peer = f"{r + 1:064x}"
        batches = samples_for("seg", seed, peer, r, steps, int(task.batch_size), len(task.dataset))
        torch.set_num_threads(t_a)
        c0 = time.thread_time()
        honest = author_chain(task, model, base, batches, segments)
        cpu_update.append(time.thread_time() - c0)
        final = {n: base[n] - honest[-1]["params"][n] for n in base}
        lazy_one = {rng.randrange(segments - 1)}  # one segment's steps skipped (the last is always checked)
        lazy_half = set(rng.sample(range(segments - 1), (segments - 1) // 2))
        cases = {  # label -> (committed chain, announced update before the codec)
            "honest": (honest, final),
            "shading 0.9": (honest, {n: 0.9 * t for n, t in final.items()}),
            "sign_flip": (honest, {n: -t for n, t in final.items()}),
            "scale10": (honest, {n: 10 * t for n, t in final.items()}),
            f"lazy: 1 of {segments} segments skipped": None,
            f"lazy: {len(lazy_half)} of {segments} segments skipped": None,
            "label_flip (every batch)": None,
        }
        for label, skip, tb in ((f"lazy: 1 of {segments} segments skipped", lazy_one, None),
                                (f"lazy: {len(lazy_half)} of {segments} segments skipped", lazy_half, None),
                                ("label_flip (every batch)", frozenset(), flip)):
            chain = author_chain(task, model, base, batches, segments, skip=skip, tamper_batch=tb)
            cases[label] = (chain, {n: base[n] - chain[-1]["params"][n] for n in base})
        torch.set_num_threads(t_v)
        for label, (chain, update) in cases.items():
            payload = codecs.roundtrip(update, codec)
            k = rng.randrange(segments - 1)  # the verifier's private draw
            c0 = time.thread_time()
            d_seg = _segment_distance(task, model, chain, k, batches)
            d_last = _last_distance(task, model, chain, base, payload, batches, codec)
            if label == "honest":
                cpu_check.append(time.thread_time() - c0)
                nbytes.append(sum(_digest(chain[i])[1] for i in (k, k + 1, segments - 1)))
                honest_max = max(honest_max, d_seg, d_last)
            results.setdefault(label, []).append(max(d_seg, d_last) > tau)
            ref = recompute_update(task, chain[0]["params"], "seg", seed, peer, r, steps, codec=codec, model=model)
            full.setdefault(label, []).append(relative_distance(payload, ref) > tau)  # the full recomputation
        base = {n: base[n] - 0.5 * final[n] for n in base}  # the base moves on (a damped honest step)
    torch.set_num_threads(1)
    payload_bytes = len(codecs.encode(final, codec))
    return {"task": task_name, "steps": steps, "segments": segments, "rounds": rounds, "tau": tau, "codec": codec,
            "flag_rate": {k: sum(v) / len(v) for k, v in results.items()},
            "full_flag_rate": {k: sum(v) / len(v) for k, v in full.items()}, "checks_per_label": rounds,
            "honest_max_distance": honest_max, "honest_max_over_tau": honest_max / tau,
            "check_vs_update_cpu": sum(cpu_check) / sum(cpu_update), "recomputed_steps_share": 2 / segments,
            "bytes_per_check_median": sorted(nbytes)[len(nbytes) // 2], "payload_bytes_int8": payload_bytes}


def main(argv=None) -> int:
    """Run, print and write the report."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=18, help="checks per attack (author/verifier thread pairs cycle)")
    p.add_argument("--steps", type=int, default=30, help="inner steps H per update")
    p.add_argument("--segments", type=int, default=5, help="segments S (s = H/S steps each)")
    p.add_argument("--quick", action="store_true", help="3 rounds of 10 steps (CI smoke run, no figure to quote)")
    p.add_argument("--out", default=OUT)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.out = 3, 10, os.path.join("/tmp", "segment_check_quick")
    res = run(rounds=args.rounds, steps=args.steps, segments=args.segments)
    res["quick"] = args.quick
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(f"{args.out}.json", "w") as fh:
        json.dump(res, fh, indent=1, sort_keys=True)
    lines = [f"Segment check: `{res['task']}`, H = {res['steps']} steps in S = {res['segments']} segments, "
             f"{res['rounds']} checks per row, τ = {res['tau']:g}, codec `{res['codec']}`.", "",
             "| attack | one segment check flags | a full recomputation of the same update flags |",
             "|---|---:|---:|"]
    for label, rate in res["flag_rate"].items():
        lines.append(f"| {label} | {rate:.3f} | {res['full_flag_rate'][label]:.3f} |")
    lines += ["", f"- one check's CPU ÷ one update's training: {res['check_vs_update_cpu']:.3f} "
                  f"(2 of {res['segments']} segments recomputed = {res['recomputed_steps_share']:.2f})",
              f"- bytes fetched per check (three committed inner states): {res['bytes_per_check_median']:,} "
              f"(the update itself, int8: {res['payload_bytes_int8']:,})",
              f"- largest honest distance {res['honest_max_distance']:.3g} = {res['honest_max_over_tau']:.3g} τ"]
    table = "\n".join(lines) + "\n"
    with open(f"{args.out}.md", "w") as fh:
        fh.write(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
