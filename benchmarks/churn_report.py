"""Figures of the churn benchmark: curves from raw run data, P1-P3 ratios, markdown table, PNG plots.

Every system's result is a dict with ``curve`` (aligned lists ``samples``, ``val_loss``, ``t``:
seconds since training started), ``bytes`` (samples of the fleet: ``t``, ``alive``, ``traffic``
= bytes sent + received by all its peers so far) and ``n_slots``. Bytes per peer = traffic / n_slots.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

__all__ = ["DILOCO", "at_samples", "best_hivemind", "common_target", "compare", "markdown", "plots", "reach", "rebuild", "ratios_along",
           "stays_below", "traffic_at", "trained_samples"]


def at_samples(curve: dict, samples: float) -> float | None:
    """Validation loss of ``curve`` at ``samples`` (linear interpolation; None outside its range)."""
    xs, ys = curve["samples"], curve["val_loss"]
    for i in range(1, len(xs)):
        if xs[i - 1] <= samples <= xs[i]:
            if xs[i] == xs[i - 1]:
                return ys[i]
            w = (samples - xs[i - 1]) / (xs[i] - xs[i - 1])
            return ys[i - 1] + w * (ys[i] - ys[i - 1])
    return ys[0] if xs and samples == xs[0] else None


def reach(curve: dict, target: float) -> dict | None:
    """First point of ``curve`` at or below ``target``: ``{"t", "samples", "val_loss"}``, or None."""
    for s, v, t in zip(curve["samples"], curve["val_loss"], curve["t"]):
        if v is not None and v <= target:
            return {"t": t, "samples": s, "val_loss": v}
    return None


def stays_below(curve: dict, target: float) -> dict | None:
    """First point of ``curve`` from which every later point is at or below ``target`` (a noisy
    curve that dips under the target and comes back does not count until it stays), or None."""
    hit = None
    for s, v, t in zip(curve["samples"], curve["val_loss"], curve["t"]):
        if v is None or v > target:
            hit = None
        elif hit is None:
            hit = {"t": t, "samples": s, "val_loss": v}
    return hit


def trained_samples(logs: Sequence[str], times: Sequence[float]) -> list[int]:
    """Samples the hivemind workers trained by each of ``times`` (Unix), from their own counters.

    hivemind counts epoch x target batch size, which under churn is not what was trained (a worker
    that loads the collaboration's state jumps epochs; a killed worker's progress record counts until
    it expires). Each worker logs its own count at each epoch change and at its end, so this is a
    lower bound that lags by at most one epoch per worker. Unreadable logs count 0."""
    import json

    workers = []
    for path in logs:
        try:
            with open(path) as f:
                rows = [json.loads(line) for line in f if line.strip()]
        except (OSError, ValueError):
            continue
        workers.append([(float(r["t"]), int(r["samples_local"])) for r in rows if "samples_local" in r])
    return [sum(max((n for t, n in w if t <= when), default=0) for w in workers) for when in times]


def traffic_at(samples: Sequence[dict], t: float) -> float | None:
    """Total bytes of a fleet at time ``t`` (linear interpolation of its samples)."""
    pts = [(p["t"], p["traffic"]) for p in samples]
    if not pts:
        return None
    if t <= pts[0][0]:
        return float(pts[0][1])
    for (t0, b0), (t1, b1) in zip(pts, pts[1:]):
        if t0 <= t <= t1:
            return b0 + (b1 - b0) * ((t - t0) / (t1 - t0) if t1 > t0 else 1.0)
    return float(pts[-1][1])


#: the DiLoCo-on-hivemind reference's row (:mod:`benchmarks.churn_diloco`), P2's second reference
DILOCO = "diloco-hivemind"

#: fractions of the compared budget at which P1's ratio is also reported
ALONG = (0.25, 0.5, 0.75, 1.0)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def ratios_along(curve: dict, ref: dict, n: float) -> list[dict]:
    """``curve``'s loss ÷ ``ref``'s at each :data:`ALONG` fraction of ``n`` samples (both curves are
    dicts with aligned ``samples`` and ``val_loss``)."""
    return [{"samples": round(n * f), "ratio": _ratio(at_samples(curve, n * f), at_samples(ref, n * f))}
            for f in ALONG]


def best_hivemind(per: dict[str, dict]) -> str | None:
    """The best hivemind run among ``per``'s rows (``hivemind`` or ``hivemind:<preset>``): the one
    that reached the target soonest, else the lowest final loss; None if there is none."""
    names = [n for n in per if n == "hivemind" or n.startswith("hivemind:")]
    if not names:
        return None
    return min(names, key=lambda n: (not per[n]["reached_target"], per[n]["time_to_target_s"] or 0.0,
                                     per[n]["final_val_loss"], n))


def compare(results: dict[str, dict], target_loss: float) -> dict[str, Any]:
    """P1-P3 and per-system figures at ``target_loss``."""
    cen, dp = results["centralized"], results.get("sync_dp")
    per: dict[str, dict] = {}
    for name, r in results.items():
        c = r["curve"]
        hit, stay = reach(c, target_loss), stays_below(c, target_loss)
        row = {"final_samples": c["samples"][-1], "final_val_loss": c["val_loss"][-1],
               "wall_s": c["t"][-1], "reached_target": hit is not None,
               "time_to_target_s": hit["t"] if hit else None, "samples_to_target": hit["samples"] if hit else None,
               "time_to_stay_below_target_s": stay["t"] if stay else None}
        if c.get("samples_trained"):  # hivemind: what its workers' own counters say they trained
            row["final_samples_trained"] = c["samples_trained"][-1]
        if r.get("bytes"):
            n = r["n_slots"]
            total = r["bytes"][-1]["traffic"]
            row["bytes_per_peer_total"] = total / n
            row["bytes_per_peer_to_target"] = traffic_at(r["bytes"], hit["t"]) / n if hit else None
        if name != "centralized":
            # at the system's final samples, or at the centralized run's budget if it trained more
            n = min(c["samples"][-1], cen["curve"]["samples"][-1])
            ref = at_samples(cen["curve"], n)
            row["compared_at_samples"] = n
            row["centralized_loss_at_equal_samples"] = ref
            row["loss_ratio_vs_centralized"] = _ratio(at_samples(c, n), ref)
        if dp is not None and name not in ("centralized", "sync_dp"):
            n = min(c["samples"][-1], dp["curve"]["samples"][-1])
            row["sync_dp_loss_at_equal_samples"] = at_samples(dp["curve"], n)
            row["loss_ratio_vs_sync_dp"] = _ratio(at_samples(c, n), row["sync_dp_loss_at_equal_samples"])
            # along the budget, not only at its end (early in training the large-batch floor dominates)
            row["loss_ratio_vs_sync_dp_along"] = ratios_along(c, dp["curve"], n)
        per[name] = row
    hm_name = best_hivemind(per)
    dai, hm = per.get("dai_swarm"), per.get(hm_name) if hm_name else None
    out: dict[str, Any] = {"target_loss": target_loss, "systems": per, "hivemind_reference": hm_name}
    # P1: against synchronous data parallelism with the same peers when it ran (the right reference:
    # the limit of n workers); reports of older runs have only the centralized one
    out["P1_reference"] = "sync_dp" if dp is not None else "centralized"
    out["P1_loss_ratio"] = dai and dai.get("loss_ratio_vs_sync_dp" if dp is not None else "loss_ratio_vs_centralized")
    out["P1_loss_ratio_vs_centralized"] = dai and dai["loss_ratio_vs_centralized"]
    if dai and hm:
        out["P2_bytes_ratio"] = _ratio(dai.get("bytes_per_peer_to_target"), hm.get("bytes_per_peer_to_target"))
        out["P3_time_ratio"] = _ratio(dai["time_to_target_s"], hm["time_to_target_s"])
        out["common_target"] = common_target(results, {"dai_swarm": "dai_swarm", "hivemind": hm_name})
        if not hm["reached_target"]:
            out["note"] = (f"hivemind.Optimizer ({hm_name}, the best of its runs) did not reach the target loss "
                           f"within its run; P2/P3 ratios are undefined. Its figures over the whole run: see "
                           f"systems[{hm_name!r}]")
    dl = per.get(DILOCO)
    if dai and dl:
        out["P2_bytes_ratio_vs_diloco"] = _ratio(dai.get("bytes_per_peer_to_target"),
                                                 dl.get("bytes_per_peer_to_target"))
        out["P3_time_ratio_vs_diloco"] = _ratio(dai["time_to_target_s"], dl["time_to_target_s"])
        out["common_target_diloco"] = common_target(results, {"dai_swarm": "dai_swarm", DILOCO: DILOCO})
        if not dl["reached_target"]:
            out["note_diloco"] = (f"{DILOCO} did not reach the target loss within its run; P2 against it is "
                                  f"undefined. Its figures over the whole run: see systems[{DILOCO!r}]")
    return out


def common_target(results: dict[str, dict], systems: dict[str, str]) -> dict | None:
    """Bytes per peer and wall-clock of two systems (``{name: results key}``, the first dai_swarm) at
    the loss both reached: the worse of their best evaluated losses. None when that loss is not
    below where both started (a run that only diverged: no common loss worth comparing at)."""
    curves = {name: [v for v in results[key]["curve"]["val_loss"] if v is not None] for name, key in systems.items()}
    if not all(curves.values()):
        return None
    common = max(min(c) for c in curves.values())
    if any(common >= c[0] for c in curves.values()):
        return None
    at = {}
    for name, key in systems.items():
        r, hit = results[key], reach(results[key]["curve"], common)
        total = traffic_at(r.get("bytes") or [], hit["t"]) if hit else None
        at[name] = {"t": hit and hit["t"], "bytes_per_peer": None if total is None else total / r["n_slots"]}
    a, b = list(systems)
    return {"loss": common, **at, "P2_bytes_ratio": _ratio(at[a]["bytes_per_peer"], at[b]["bytes_per_peer"]),
            "P3_time_ratio": _ratio(at[a]["t"], at[b]["t"])}


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if abs(v) >= 1e5:
            return f"{v / 1e6:.2f} M"
        return f"{v:.{digits}g}"
    return str(v)


def markdown(report: dict) -> str:
    """The side-by-side table and the P1-P3 lines."""
    cmp = report["comparison"]
    lines = [f"target loss {cmp['target_loss']:.4f} (val, nats/byte)", "",
             "| system | samples | final val loss | ÷ sync DP @ equal samples | ÷ centralized @ equal samples | "
             "wall s | reached target | s to target | bytes/peer to target | bytes/peer total | stalls | slashes |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for name, row in cmp["systems"].items():
        extra = report["systems"][name]
        trained = f" ({row['final_samples_trained']} trained)" if "final_samples_trained" in row else ""
        lines.append(f"| {name} | {row['final_samples']}{trained} | {_fmt(row['final_val_loss'])} | "
                     f"{_fmt(row.get('loss_ratio_vs_sync_dp'))} | "
                     f"{_fmt(row.get('loss_ratio_vs_centralized'))} | {_fmt(row['wall_s'], 3)} | "
                     f"{_fmt(row['reached_target'])} | {_fmt(row['time_to_target_s'], 3)} | "
                     f"{_fmt(row.get('bytes_per_peer_to_target'))} | {_fmt(row.get('bytes_per_peer_total'))} | "
                     f"{_fmt(extra.get('stalls', {}).get('empty_rounds'))} | {_fmt(extra.get('slashes'))} |")
    ref = cmp.get("P1_reference", "centralized")
    ref_name = "synchronous DP with the same peers" if ref == "sync_dp" else "centralized"
    lines += ["", f"- P1 val loss ÷ {ref_name} at equal samples (target ≤ 1.02): {_fmt(cmp.get('P1_loss_ratio'))}"
              + (f"; ÷ centralized {_fmt(cmp.get('P1_loss_ratio_vs_centralized'))}" if ref == "sync_dp" else ""),
              f"- P2 bytes/peer to target, dai_swarm ÷ {cmp.get('hivemind_reference') or 'hivemind'} "
              f"(target ≤ 0.01): {_fmt(cmp.get('P2_bytes_ratio'))}",
              f"- P3 wall-clock to target, dai_swarm ÷ {cmp.get('hivemind_reference') or 'hivemind'} "
              f"(target ≤ 0.8): {_fmt(cmp.get('P3_time_ratio'))}"]
    if DILOCO in cmp["systems"]:
        lines.append(f"- P2 bytes/peer to target, dai_swarm ÷ {DILOCO} (target ≤ 0.1): "
                     f"{_fmt(cmp.get('P2_bytes_ratio_vs_diloco'))}; wall-clock to target ÷ {DILOCO}: "
                     f"{_fmt(cmp.get('P3_time_ratio_vs_diloco'))}")
    along = (cmp["systems"].get("dai_swarm") or {}).get("loss_ratio_vs_sync_dp_along")
    if along:
        lines.append("- P1 along the budget (dai_swarm ÷ sync DP): " + ", ".join(
            f"{p['samples']} samples {_fmt(p['ratio'])}" for p in along))
    ct = cmp.get("common_target")
    if ct:
        lines.append(f"- at the loss both swarms reached ({ct['loss']:.4f}): bytes/peer dai_swarm ÷ hivemind "
                     f"{_fmt(ct['P2_bytes_ratio'])}, wall-clock dai_swarm ÷ hivemind {_fmt(ct['P3_time_ratio'])} "
                     f"({_fmt(ct['dai_swarm']['t'], 3)} s vs {_fmt(ct['hivemind']['t'], 3)} s)")
    ct = cmp.get("common_target_diloco")
    if ct:
        lines.append(f"- at the loss dai_swarm and {DILOCO} both reached ({ct['loss']:.4f}): bytes/peer dai_swarm ÷ "
                     f"{DILOCO} {_fmt(ct['P2_bytes_ratio'])}, wall-clock {_fmt(ct['P3_time_ratio'])} "
                     f"({_fmt(ct['dai_swarm']['t'], 3)} s vs {_fmt(ct[DILOCO]['t'], 3)} s)")
    for key in ("note", "note_diloco"):
        if cmp.get(key):
            lines.append(f"- {cmp[key]}")
    return "\n".join(lines)


def plots(report: dict, out_dir: str) -> list[str]:
    """Write loss_vs_samples.png, loss_vs_time.png, bytes.png, peers_alive.png; return their paths."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = report["systems"]
    target = report["comparison"]["target_loss"]
    paths = []

    def save(fig, ax, name, xlabel, ylabel):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)

    for key, name, xlabel in (("samples", "loss_vs_samples.png", "samples (dataset items in the canonical state)"),
                              ("t", "loss_vs_time.png", "seconds since training started")):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for label, r in systems.items():
            ax.plot(r["curve"][key], r["curve"]["val_loss"], marker=".", label=label)
        ax.axhline(target, color="grey", ls="--", label="target loss")
        ax.set_title(f"validation loss vs {'samples' if key == 'samples' else 'wall-clock'}")
        save(fig, ax, name, xlabel, "validation loss (nats/byte)")
    for key, name, ylabel in (("traffic", "bytes.png", "MB per peer (sent + received)"),
                              ("alive", "peers_alive.png", "peer processes alive")):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for label, r in systems.items():
            pts = r.get("bytes") or []
            if pts:
                scale = 1e6 * r["n_slots"] if key == "traffic" else 1
                ax.plot([p["t"] for p in pts], [p[key] / scale for p in pts], label=label)
        if key == "traffic":
            ax.set_yscale("log")
        ax.set_title("bytes on the wire per peer" if key == "traffic" else "live peers")
        save(fig, ax, name, "seconds since training started", ylabel)
    return paths


def rebuild(out_dir: str, target_loss: float | None = None) -> str:
    """Recompute comparison, table and plots from ``out_dir/churn.json`` (no new runs); returns the table."""
    import json
    import os

    path = os.path.join(out_dir, "churn.json")
    with open(path) as f:
        report = json.load(f)
    target = report["comparison"]["target_loss"] if target_loss is None else target_loss
    report["comparison"] = compare(report["systems"], target)
    report["plots"] = plots(report, out_dir)
    table = markdown(report)
    with open(path, "w") as f:
        json.dump(report, f, indent=1, default=str)
    with open(os.path.join(out_dir, "churn.md"), "w") as f:
        f.write(table + "\n")
    return table
