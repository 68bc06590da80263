"""Detection versus attack strength near the tolerance, and false fails across torch thread counts (SPEC P5).

Run through ``python -m benchmarks.detection --parts roc [--quick] [--c 1 2]``; writes
``detection_roc.json``, ``detection_roc.md`` and ``detection_roc.png`` next to the other results.

1. **Strength curve** (real recomputation, in process): a small swarm trains on ``--roc-task``
   (``regression``, 100 inner steps a round; each round's base is the previous base minus the mean
   of 5 honest updates). In every measured round the author trains with ``t_a`` torch threads and a
   verifier recomputes the author's update with ``t_v`` threads (the 9 pairs of 1/2/4 in turn);
   both go through the run's codec (``int8``), and a check *flags* when
   :func:`~dai_swarm.verification.recompute.relative_distance` exceeds τ. Attacks on the author's
   update: shading (``s × Δ``), Gaussian noise of relative L2 norm ``k·τ``, lazy (``f × steps``
   trained, full count claimed), and the recomputable kinds of the SPEC §7 catalogue.
2. **From one check to 20 rounds** with the check scheme: each of the other ``n − 1`` peers checks
   an update with probability ``c/(n−1)``, so some check happens with ``1 − (1 − c/(n−1))^(n−1)``,
   which falls with ``n`` towards ``1 − e^(−c)`` (the value used: it holds for every n). Checks of one
   update are counted as fully correlated (an update that passes one check passes all), so the
   per-round detection is ``q = (1 − e^(−c)) × P(one check flags)`` and a persistent cheater is
   slashed within ``T`` rounds with ``1 − (1 − q)^(T − lag)`` (``lag`` = ``PROTOCOL_LAG``). The
   same is simulated with the real reputation rule (:func:`~dai_swarm.verification.simulate.detection_trial`,
   8 peers, ``p = c/7``, the cheater's update detectable in a round with the measured probability).
3. **False fails**: honest updates of ``--fp-task`` (``tinylm-small``, whose results do differ across
   thread counts; ``regression``'s do not), one distinct (peer, round) per check, the 9 (author,
   verifier) thread pairs in turn: every distance, the largest vs τ, and the count above τ.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import time

import torch

from dai_swarm.optim import codecs
from dai_swarm.tasks import load_task
from dai_swarm.verification.attacks import make_attack
from dai_swarm.verification.recompute import recompute_update, relative_distance
from dai_swarm.verification.simulate import PROTOCOL_LAG, detection_trial, tamper_update
from dai_swarm.verification.spotcheck import DEFAULT_TAU

SHADING = (0.90, 0.95, 0.98, 0.99, 0.995, 0.999)
NOISE_K = (0.1, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0)
LAZY_F = (0.5, 0.7, 0.9, 0.95, 0.99)
THREADS = (1, 2, 4)
PAIRS = tuple((a, v) for a in THREADS for v in THREADS)
#: catalogue kinds a recomputation judges (the others never reach a check: see NOT_RECOMPUTED)
CATALOGUE = ("sign_flip", "scale10", "scale1000", "gaussian", "alie", "ipm", "label_flip", "lazy", "copy", "replay",
             "nan", "wrong_shape")
NOT_RECOMPUTED = {
    "oversized": "refused by the frame decoder's size caps before any check",
    "forged DHT record": "refused by the record signature check",
    "forged_verdict / replayed_verdict": "verdicts, not updates: re-checked fails and standing decide (tests)",
    "sybil": "keys, not updates: standing rules (I7)",
}
HORIZON = 20
N_OTHERS = 4  # honest peers beside the author in the strength run (ALIE/IPM/copy need them)


def _key(i: int) -> str:
    return f"{i + 101:064x}"


def some_check(c: float, n: int | None = None) -> float:
    """Probability that at least one of the ``n − 1`` others checks an update (``n=None``: the n → ∞ bound)."""
    if n is None:
        return 1.0 - math.exp(-c)
    x = min(1.0, c / (n - 1))
    return 1.0 - (1.0 - x) ** (n - 1)


def within(q: float, horizon: int = HORIZON, lag: int = PROTOCOL_LAG) -> float:
    """Probability that a cheater detected with ``q`` per round is slashed within ``horizon`` rounds."""
    return 1.0 - (1.0 - q) ** max(0, horizon - lag)


def _noise(delta: dict, k: float, tau: float, gen: torch.Generator) -> dict:
    """``delta`` plus Gaussian noise whose L2 norm is ``k·τ·‖delta‖`` (over all tensors)."""
    noise = {n: torch.randn(t.shape, generator=gen) for n, t in delta.items()}
    nn_ = math.sqrt(sum(float((z.double() ** 2).sum()) for z in noise.values()))
    nd = math.sqrt(sum(float((t.double() ** 2).sum()) for t in delta.values()))
    return {n: t + noise[n] * (k * tau * nd / nn_) for n, t in delta.items()}


def strength_trials(task_name: str, rounds: int, steps: int, codec: str, tau: float,
                    seed: int = 0) -> tuple[dict, dict]:
    """Distances of every attacked update to the verifier's recomputation, ``{label: [distance, ...]}``,
    after the codec round trip (what a verifier judges) and before it (raw)."""
    task = load_task(task_name)
    model = task.build_model(seed)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(seed + 1)
    torch.manual_seed(seed + 2)  # tamper_update("gaussian") draws from the global generator
    author, others = _key(0), [_key(1 + j) for j in range(N_OTHERS)]
    flip = make_attack("label_flip").tamper_batch
    bases: list[dict] = []
    out: dict[str, list[float]] = {}
    raw: dict[str, list[float]] = {}

    def upd(peer: str, r: int, n_steps: int, **kw) -> dict:
        return recompute_update(task, bases[r], "roc", seed, peer, r, n_steps, model=model, raw=True, **kw)

    for r in range(rounds + 2):  # rounds 0 and 1 only train (a replay needs the update of round r − 2)
        bases.append(base)
        t_a, t_v = PAIRS[(r - 2) % len(PAIRS)]
        torch.set_num_threads(t_a if r >= 2 else 1)
        honest = upd(author, r, steps)
        peers = [upd(p, r, steps) for p in others]
        if r >= 2:
            attacked = {"honest": honest}
            attacked.update({f"shading {s:g}": {n: s * t for n, t in honest.items()} for s in SHADING})
            attacked.update({f"noise {k:g}τ": _noise(honest, k, tau, gen) for k in NOISE_K})
            attacked.update({f"lazy {f:g}": upd(author, r, max(1, round(f * steps))) for f in LAZY_F})
            pool = [honest] + peers
            for kind in ("sign_flip", "scale10", "scale1000", "gaussian", "alie", "ipm"):
                attacked[kind] = tamper_update(kind, honest, pool)
            attacked["label_flip"] = upd(author, r, steps, tamper_batch=flip)
            attacked["lazy"] = upd(author, r, max(1, steps // 2))
            attacked["copy"] = peers[0]
            attacked["replay"] = upd(author, r - 2, steps)
            torch.set_num_threads(t_v)
            ref_raw = upd(author, r, steps)
            ref = codecs.roundtrip(ref_raw, codec)
            for label, d in attacked.items():
                out.setdefault(label, []).append(relative_distance(codecs.roundtrip(d, codec), ref))
                raw.setdefault(label, []).append(relative_distance(d, ref_raw))
            first = sorted(honest)[0]  # NaN/Inf and a wrong shape: the decoder refuses them; a check would too
            nan = dict(honest, **{first: honest[first].clone()})
            nan[first].view(-1)[0] = float("nan")
            for store in (out, raw):
                store.setdefault("nan", []).append(relative_distance(nan, ref))
            wrong = dict(honest, **{first: torch.cat([honest[first].reshape(-1), torch.zeros(1)])})
            for store in (out, raw):
                store.setdefault("wrong_shape", []).append(relative_distance(wrong, ref))
        base = {n: base[n] - sum(u[n] for u in [honest] + peers) / (1 + len(peers)) for n in base}
    torch.set_num_threads(1)
    return out, raw


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    ph, d = k / n, 1 + z * z / n
    c = (ph + z * z / (2 * n)) / d
    h = z * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def _simulated(p_flag: float, c: float, trials: int, rng: random.Random, n: int = 8) -> float:
    """Slashed-within-HORIZON rate from the real reputation rule (n peers, one persistent cheater)."""
    res = [r for _ in range(trials) for r in detection_trial(rng, n_honest=n - 1, n_attackers=1, p=c / (n - 1),
                                                              cheat=p_flag, rounds=HORIZON)]
    return sum(r is not None for r in res) / len(res)


def summarize(dists: dict[str, list[float]], raw: dict[str, list[float]], tau: float, cs: list[float],
              sim_trials: int, seed: int = 3) -> list[dict]:
    """One row per attack label: checks, flagged, distances (after the codec and raw), per-round and
    20-round detection per c."""
    rng = random.Random(seed)
    rows = []
    for label, ds in dists.items():
        family = label.split(" ")[0] if " " in label else ("honest" if label == "honest" else "catalogue")
        flagged = sum(1 for d in ds if d > tau)
        p1 = flagged / len(ds)
        row = {"label": label, "family": family, "checks": len(ds), "flagged": flagged, "p_flag_one_check": p1,
               "ci95": [round(x, 4) for x in _wilson(flagged, len(ds))],
               "distance_min": min(ds), "distance_median": sorted(ds)[len(ds) // 2], "distance_max": max(ds),
               "median_over_tau": sorted(ds)[len(ds) // 2] / tau,
               "raw_median_over_tau": sorted(raw[label])[len(ds) // 2] / tau,
               "distances": [float(f"{d:.4g}") for d in ds], "per_c": {}}
        for c in cs:
            q = some_check(c) * p1
            row["per_c"][str(c)] = {
                "q_round": round(q, 6), "within_20": within(q),
                "q_round_n": {str(n): round(some_check(c, n) * p1, 6) for n in (4, 8, 16)},
                "simulated_within_20_n8": _simulated(p1, c, sim_trials, rng) if p1 > 0 else None}
        rows.append(row)
    return rows


def with_cs(res: dict, cs: list[float], seed: int = 3) -> dict:
    """The stored result with the per-round and 20-round columns (formula and simulation) for ``cs``,
    from the single-check rates it measured: no recomputation is repeated."""
    rng = random.Random(seed)
    res = _revive(res)
    for row in res["strength"]["rows"]:
        p1 = row["p_flag_one_check"]
        row["per_c"] = {str(c): row["per_c"].get(str(c)) or {
            "q_round": round(some_check(c) * p1, 6), "within_20": within(some_check(c) * p1),
            "q_round_n": {str(n): round(some_check(c, n) * p1, 6) for n in (4, 8, 16)},
            "simulated_within_20_n8": _simulated(p1, c, res["sim_trials"], rng) if p1 > 0 else None} for c in cs}
    res["cs"] = list(cs)
    return res


def honest_checks(task_name: str, checks: int, steps: int, codec: str, tau: float, seed: int = 0) -> dict:
    """``checks`` honest updates, each by a distinct (peer, round), spread evenly over the (author,
    verifier) thread pairs of :data:`PAIRS`. The bases follow one training trajectory (round r + 1's
    base is round r's minus one honest update); the work is grouped by pair so that torch's thread
    pool is resized twice per pair, not twice per check."""
    task = load_task(task_name)
    model = task.build_model(seed)
    t0 = time.time()
    rounds = -(-checks // len(PAIRS))
    torch.set_num_threads(1)
    bases = [{n: p.detach().clone() for n, p in model.named_parameters()}]
    for r in range(rounds - 1):
        step = recompute_update(task, bases[r], "roc-fp", seed, _key(999), r, steps, model=model, raw=True)
        bases.append({n: bases[r][n] - step[n] for n in step})
    per_pair: dict[str, list[float]] = {}
    raw_max: dict[str, float] = {}
    for j, (t_a, t_v) in enumerate(PAIRS):
        todo = [r for r in range(rounds) if r * len(PAIRS) + j < checks]
        torch.set_num_threads(t_a)
        mine = [recompute_update(task, bases[r], "roc-fp", seed, _key(1000 + j), r, steps, model=model, raw=True)
                for r in todo]
        torch.set_num_threads(t_v)
        pair, ds = f"{t_a}->{t_v}", []
        raw_max[pair] = 0.0
        for r, m in zip(todo, mine):
            ref = recompute_update(task, bases[r], "roc-fp", seed, _key(1000 + j), r, steps, model=model, raw=True)
            ds.append(relative_distance(codecs.roundtrip(m, codec), codecs.roundtrip(ref, codec)))
            raw_max[pair] = max(raw_max[pair], relative_distance(m, ref))
        per_pair[pair] = ds
    torch.set_num_threads(1)
    allv = [d for v in per_pair.values() for d in v]
    half = [max((d for v in per_pair.values() for d in v[i * len(v) // 2:(i + 1) * len(v) // 2]), default=0.0)
            for i in (0, 1)]
    return {"task": task_name, "steps": steps, "codec": codec, "tau": tau, "checks": len(allv), "rounds": rounds,
            "distances": [float(f"{d:.4g}") for d in allv],
            "recomputations": 2 * len(allv), "above_tau": sum(1 for d in allv if d > tau),
            "max_distance": max(allv), "max_over_tau": max(allv) / tau, "nonzero": sum(1 for d in allv if d > 0),
            "max_raw_distance": max(raw_max.values()), "max_first_half_rounds": half[0], "max_second_half_rounds": half[1],
            "per_pair": {k: {"checks": len(v), "max": max(v) if v else None, "above_tau": sum(1 for d in v if d > tau),
                             "nonzero": sum(1 for d in v if d > 0), "max_raw": raw_max[k]} for k, v in per_pair.items()},
            "wall_s": round(time.time() - t0, 1)}


def run(*, quick: bool, cs: list[float], roc_task: str = "regression", roc_steps: int = 100, roc_rounds: int = 90,
        fp_task: str = "tinylm-small", fp_steps: int = 3, fp_checks: int = 1008, sim_trials: int = 500,
        codec: str = "int8", tau: float = DEFAULT_TAU) -> dict:
    """Measure both parts; returns the JSON-able result (the caller writes it)."""
    if quick:
        roc_rounds, fp_checks, sim_trials = 4, 27, 20
    t0 = time.time()
    dists, raw = strength_trials(roc_task, roc_rounds, roc_steps, codec, tau)
    t1 = time.time()
    rows = summarize(dists, raw, tau, cs, sim_trials)
    fp = honest_checks(fp_task, fp_checks, fp_steps, codec, tau)
    return {"quick": quick, "note": ("--quick: few rounds and checks, not the published numbers" if quick else
                                     "full run"),
            "tau": tau, "codec": codec, "cs": cs, "sim_trials": sim_trials, "horizon": HORIZON, "lag": PROTOCOL_LAG,
            "scheme": "each of the other n-1 peers checks an update with probability c/(n-1); q uses the n->inf "
                      "bound 1-e^-c of 'some check happens', checks of one update counted as fully correlated",
            "strength": {"task": roc_task, "steps": roc_steps, "rounds": roc_rounds, "thread_pairs": len(PAIRS),
                         "wall_s": round(t1 - t0, 1), "rows": rows},
            "not_recomputed": NOT_RECOMPUTED, "false_fails": fp,
            "machine": {"torch": torch.__version__, "cpus": os.cpu_count(), "python": platform.python_version()},
            "wall_s": round(time.time() - t0, 1)}


def markdown(res: dict) -> str:
    """The tables of the result as markdown."""
    cs = [str(c) for c in res["cs"]]
    s = res["strength"]
    head = " | ".join(f"per round c={c} | ≤{res['horizon']} rounds c={c} | sim. n=8 c={c}" for c in cs)
    lines = [f"Strength curve: `{s['task']}`, {s['steps']} inner steps claimed, codec `{res['codec']}`, τ = "
             f"{res['tau']:g}, {s['rounds']} checks per row (author/verifier threads: the 9 pairs of 1/2/4). "
             f"{res['note']}. Per round: q = (1 − e^(−c)) × P(one check flags); ≤{res['horizon']} rounds: "
             f"1 − (1 − q)^({res['horizon']} − {res['lag']}); sim.: the real reputation rule, 8 peers, "
             f"{res['sim_trials']} runs (not run where no check flagged).", "",
             f"| attack | checks | median distance ÷ τ (raw, before the codec) | P(one check flags) | {head} |",
             "|---|---:|---:|---:|" + "---:|---:|---:|" * len(cs)]
    for r in s["rows"]:
        cells = []
        for c in cs:
            pc = r["per_c"][c]
            sim = pc["simulated_within_20_n8"]
            cells.append(f"{pc['q_round']:.3f} | {pc['within_20']:.4f} | {'-' if sim is None else f'{sim:.3f}'}")
        lines.append(f"| {r['label']} | {r['checks']} | {r['median_over_tau']:.3g} ({r['raw_median_over_tau']:.3g}) | "
                     f"{r['p_flag_one_check']:.3f} "
                     f"({r['flagged']}/{r['checks']}) | {' | '.join(cells)} |")
    lines += ["", "Never reach a recomputation: " + "; ".join(f"{k}: {v}" for k, v in res["not_recomputed"].items()),
              ""]
    f = res["false_fails"]
    lines += [f"False fails: `{f['task']}`, {f['steps']} inner steps, {f['checks']} honest checks ({f['rounds']} rounds,"
              f" one distinct update per check, {f['recomputations']} recomputations).", "",
              "| author→verifier threads | checks | nonzero distances | max distance | max ÷ τ | max raw (before the codec) "
              "| > τ |", "|---|---:|---:|---:|---:|---:|---:|"]
    for k, v in f["per_pair"].items():
        mx = v["max"] if v["max"] is not None else float("nan")
        lines.append(f"| {k} | {v['checks']} | {v['nonzero']} | {mx:.3g} | {mx / f['tau']:.3g} | {v['max_raw']:.3g} | "
                     f"{v['above_tau']} |")
    lines.append(f"| **all** | {f['checks']} | {f['nonzero']} | {f['max_distance']:.3g} | {f['max_over_tau']:.3g} | "
                 f"{f['max_raw_distance']:.3g} | **{f['above_tau']}** |")
    lines.append(f"\nLargest distance in the first half of the rounds {f['max_first_half_rounds']:.3g}, in the second "
                 f"half {f['max_second_half_rounds']:.3g} (the base trains along the rounds).")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: str) -> None:
    """Per family: P(one check flags) and 20-round detection per c vs strength; τ marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["strength"]["rows"]
    tau = res["tau"]
    fams = [("shading", "shading factor s (update = s × honest)", 1 - tau),
            ("noise", "Gaussian noise, ‖noise‖ ÷ ‖Δ‖ in units of τ", 1.0),
            ("lazy", "lazy: fraction f of the claimed steps trained", None)]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    for ax, (fam, xlabel, tau_x) in zip(axes, fams):
        sel = [r for r in rows if r["family"] == fam]
        xs = [float(r["label"].split(" ")[1].rstrip("τ")) for r in sel]
        ax.plot(xs, [r["p_flag_one_check"] for r in sel], "o-", label="one check flags")
        for c in res["cs"]:
            ax.plot(xs, [r["per_c"][str(c)]["within_20"] for r in sel], "s--", ms=4,
                    label=f"slashed ≤{res['horizon']} rounds, c={c:g}")
        if tau_x is not None:
            ax.axvline(tau_x, color="red", lw=1, ls=":", label=f"distance = τ ({tau:g})")
        if fam == "noise":
            ax.set_xscale("log")
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(fam)
        ax.legend(fontsize=6)
    axes[0].set_ylabel("probability")
    ax = axes[3]  # where the tolerance cuts: every measured distance, 0 and inf drawn at the edges
    fp = res["false_fails"]
    groups = [(f"honest, other threads\n({fp['task']})", fp["distances"])]
    for fam in ("honest", "shading", "noise", "lazy", "catalogue"):
        name = f"{fam} ({res['strength']['task']})" if fam == "honest" else fam
        groups.append((name, [d for r in rows if r["family"] == fam for d in r["distances"]]))
    lo, hi = 1e-7, 1e5
    jit = random.Random(0)
    for y, (_, ds) in enumerate(groups):
        xs = [min(hi, max(lo, d)) if isinstance(d, float) else hi for d in ds]
        ax.scatter(xs, [y + jit.uniform(-0.3, 0.3) for _ in xs], s=4, alpha=0.5,
                   c=["tab:red" if x > tau else "tab:blue" for x in xs])
    ax.axvline(tau, color="red", ls=":", label=f"τ = {tau:g} (red: flagged)")
    ax.set_xscale("log")
    ax.set_xlim(lo / 2, hi * 2)
    ax.set_yticks(range(len(groups)), [g for g, _ in groups], fontsize=7)
    ax.set_xlabel(f"distance after the codec (0 drawn at {lo:g}, inf at {hi:g})", fontsize=8)
    ax.set_title("every check: where τ cuts")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _revive(x):
    """The inverse of :func:`_finite`: "inf", "-inf" and "nan" strings back to floats."""
    if isinstance(x, str) and x in ("inf", "-inf", "nan"):
        return float(x)
    if isinstance(x, dict):
        return {k: _revive(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_revive(v) for v in x]
    return x


def _finite(x):
    """JSON without Infinity/NaN literals: non-finite floats become strings."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def write(res: dict, out_dir: str) -> None:
    """``detection_roc.json``, ``detection_roc.md`` and ``detection_roc.png`` in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "detection_roc.json"), "w") as f:
        json.dump(_finite(res), f, indent=1)
    with open(os.path.join(out_dir, "detection_roc.md"), "w") as f:
        f.write(markdown(res))
    plot(res, os.path.join(out_dir, "detection_roc.png"))
