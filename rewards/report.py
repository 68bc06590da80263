"""Totals and ecosystem metrics from one or more reward logs.

Several logs (e.g. from several peers) are merged: round records are taken once per round number
(disagreeing copies are counted in ``round_disagreements``), local events (verdicts, joins,
leaves, slashes) are de-duplicated by their canonical body. Metrics:

- per contributor: ``reward`` + ``credit`` = ``total`` (units awarded), of which ``vested``
  (final), ``forfeited`` (lost to a slash) and ``pending`` (still in a verdict window, or held
  until the key earns standing, at the log's last round); records written before vesting
  (no ``"vesting"`` field) count as vested when awarded;
- ``effective_contributors``: exp of the Shannon entropy of contributors' *vested* shares (Hill
  number of order 1: N equal earners give N); ``inverse_simpson`` is given beside it;
- ``effective_regions``: the same over vested shares summed per region;
- ``gini``: Gini coefficient of vested units over every peer that earned or was included
  (``gini_awarded``: the same over awarded units, pending ones included);
- ``churn_rate``: (joins + leaves) per round divided by the mean number of included contributors;
- ``slashing_frequency``: slashed peers per round; ``slash_events``: slash records;
- ``verification_latency``: from verdict records (``latency_s`` if present, else
  ``issued_round - round`` in rounds): mean, p50, p95;
- ``provenance_depth``: rounds and distinct contributors behind the last state hash, and
  ``linked_rounds``: how many consecutive round records end at it, each naming the previous
  one's state as its parent (what an export of that state can prove, ``ledger verify --model``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Sequence

from dai_swarm.canonical import canonical_json

from .diff import iter_records
from .records import JOIN, LEAVE, ROUND, SLASH, VERDICT

__all__ = ["gini", "hill_number", "ledger_report", "plot_rewards"]


def hill_number(values: Iterable[float]) -> float:
    """exp(Shannon entropy) of the shares ``values / sum(values)``; 0.0 if nothing is positive."""
    vals = [v for v in values if v > 0]
    total = sum(vals)
    if total <= 0:
        return 0.0
    return math.exp(-sum((v / total) * math.log(v / total) for v in vals))


def gini(values: Sequence[float]) -> float:
    """Gini coefficient of ``values`` (0 = perfectly equal, towards 1 = one takes all)."""
    xs = sorted(values)
    n, total = len(xs), sum(xs)
    if n == 0 or total <= 0:
        return 0.0
    weighted = sum((i + 1) * x for i, x in enumerate(xs))
    return (2 * weighted) / (n * total) - (n + 1) / n


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _collect(paths: Sequence[str]):
    rounds: dict[int, dict] = {}
    round_bytes: dict[int, bytes] = {}
    disagreements: set[int] = set()
    events: dict[str, dict[bytes, dict]] = {VERDICT: {}, JOIN: {}, LEAVE: {}, SLASH: {}}
    for path in paths:
        for rec in iter_records(path):
            if rec.type == ROUND:
                r = int(rec.body.get("round", -1))
                if r in rounds and round_bytes[r] != rec.body_bytes:
                    disagreements.add(r)
                rounds.setdefault(r, rec.body)
                round_bytes.setdefault(r, rec.body_bytes)
            elif rec.type in events:
                events[rec.type].setdefault(canonical_json(rec.body), rec.body)
    return rounds, {k: list(v.values()) for k, v in events.items()}, disagreements


def _vested_in(body: dict) -> dict[str, int]:
    """Units a round record vests per peer: its ``vesting.vested``, or, in a record written before
    vesting, everything it awards."""
    vesting = body.get("vesting")
    if isinstance(vesting, dict):
        return {p: int(u) for p, u in vesting.get("vested", {}).items()}
    out: dict[str, int] = defaultdict(int)
    for row in body.get("contributors", []):
        out[row["peer"]] += int(row.get("reward", 0))
    for v in body.get("verifiers", []):
        out[v["peer"]] += int(v.get("credit", 0))
    return dict(out)


def _linked_rounds(rounds: dict[int, dict]) -> int:
    """Consecutive round records ending at the last one, each naming its predecessor's state as parent."""
    if not rounds:
        return 0
    r, n = max(rounds), 1
    while r - 1 in rounds and rounds[r].get("parent_hash") and rounds[r]["parent_hash"] == rounds[r - 1].get("state_hash"):
        r, n = r - 1, n + 1
    return n


def ledger_report(paths: str | Sequence[str]) -> dict:
    """Per-contributor totals and ecosystem metrics of the logs at ``paths`` (see module docstring)."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    rounds, events, disagreements = _collect(paths)
    totals: dict[str, dict] = defaultdict(lambda: {"reward": 0, "credit": 0, "samples": 0, "rounds": 0,
                                                   "verifications": 0, "slashed": 0, "vested": 0,
                                                   "forfeited": 0, "pending": 0})
    region_of: dict[str, str] = {}
    for j in events[JOIN]:
        if isinstance(j.get("peer"), str) and isinstance(j.get("region"), str):
            region_of.setdefault(j["peer"], j["region"])
    live, slashed_total, emitted = [], 0, 0
    for r in sorted(rounds):
        body = rounds[r]
        rows = body.get("contributors", [])
        live.append(len(rows))
        emitted += int(body.get("emission", 0)) - int(body.get("unallocated", 0))
        for row in rows:
            t = totals[row["peer"]]
            t["reward"] += int(row.get("reward", 0))
            t["samples"] += int(row.get("samples", 0))
            t["rounds"] += 1
            if isinstance(row.get("region"), str):
                region_of[row["peer"]] = row["region"]
        for v in body.get("verifiers", []):
            t = totals[v["peer"]]
            t["credit"] += int(v.get("credit", 0))
            t["verifications"] += int(v.get("verifications", 0))
        for p in body.get("slashed", []):
            totals[p]["slashed"] += 1
            slashed_total += 1
        for p, units in _vested_in(body).items():
            totals[p]["vested"] += units
        for p, units in (body.get("vesting") or {}).get("forfeited", {}).items():
            totals[p]["forfeited"] += int(units)
    last_vesting = next((rounds[r]["vesting"] for r in sorted(rounds, reverse=True)
                         if isinstance(rounds[r].get("vesting"), dict)), {})
    for p, units in last_vesting.get("unvested", {}).items():
        totals[p]["pending"] = int(units)
    earned = {p: t["reward"] + t["credit"] for p, t in totals.items()}
    vested = {p: t["vested"] for p, t in totals.items()}
    by_region: dict[str, int] = defaultdict(int)
    for p, units in vested.items():
        by_region[region_of.get(p, "unknown")] += units
    shares = [u for u in vested.values() if u > 0]
    total_units = sum(shares)
    inv_simpson = (1.0 / sum((u / total_units) ** 2 for u in shares)) if total_units else 0.0
    n_rounds = len(rounds)
    mean_live = (sum(live) / n_rounds) if n_rounds else 0.0
    churn_events = len(events[JOIN]) + len(events[LEAVE])
    latencies = []
    for v in events[VERDICT]:
        if isinstance(v.get("latency_s"), (int, float)):
            latencies.append(float(v["latency_s"]))
        elif isinstance(v.get("issued_round"), int) and isinstance(v.get("round"), int):
            latencies.append(float(v["issued_round"] - v["round"]))
    unit = "s" if any(isinstance(v.get("latency_s"), (int, float)) for v in events[VERDICT]) else "rounds"
    last = rounds[max(rounds)] if rounds else {}
    behind = {row["peer"] for body in rounds.values() for row in body.get("contributors", [])}
    return {
        "logs": paths,
        "rounds": n_rounds,
        "first_round": min(rounds) if rounds else None,
        "last_round": max(rounds) if rounds else None,
        "round_disagreements": sorted(disagreements),
        "units_emitted": emitted,
        "contributors": {p: dict(t, total=earned[p], region=region_of.get(p)) for p, t in sorted(totals.items())},
        "units_vested": sum(vested.values()),
        "units_pending": sum(t["pending"] for t in totals.values()),
        "units_forfeited": sum(t["forfeited"] for t in totals.values()),
        "vesting_window": last_vesting.get("window"),
        "effective_contributors": hill_number(vested.values()),
        "inverse_simpson": inv_simpson,
        "effective_regions": hill_number(by_region.values()),
        "regions": sorted(k for k, v in by_region.items() if v > 0),
        "gini": gini(list(vested.values())),
        "gini_awarded": gini(list(earned.values())),
        "churn_rate": (churn_events / n_rounds / mean_live) if n_rounds and mean_live else 0.0,
        "churn_events": churn_events,
        "slashing_frequency": slashed_total / n_rounds if n_rounds else 0.0,
        "slash_events": len(events[SLASH]),
        "verdicts": len(events[VERDICT]),
        "verification_latency": {
            "unit": unit, "count": len(latencies),
            "mean": sum(latencies) / len(latencies) if latencies else None,
            "p50": _percentile(latencies, 0.5) if latencies else None,
            "p95": _percentile(latencies, 0.95) if latencies else None,
        },
        "provenance_depth": {"rounds": n_rounds, "contributors": len(behind), "state_hash": last.get("state_hash"),
                             "linked_rounds": _linked_rounds(rounds)},
    }


def plot_rewards(paths: str | Sequence[str], png_path: str) -> str:
    """Write a PNG of cumulative units per contributor over rounds, vested (solid) and awarded
    (dashed: vested + pending + forfeited); returns ``png_path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [paths] if isinstance(paths, str) else list(paths)
    rounds, _, _ = _collect(paths)
    series: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    running: dict[str, int] = defaultdict(int)
    vested: dict[str, int] = defaultdict(int)
    for r in sorted(rounds):
        body = rounds[r]
        for row in body.get("contributors", []):
            running[row["peer"]] += int(row.get("reward", 0))
        for v in body.get("verifiers", []):
            running[v["peer"]] += int(v.get("credit", 0))
        for p, units in _vested_in(body).items():
            vested[p] += units
        for p, total in running.items():
            series[p].append((r, total, vested[p]))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    top = sorted(series, key=lambda p: (-vested[p], -running[p]))[:20]
    for p in top:
        xs, awarded, got = zip(*series[p])
        line, = ax.plot(xs, [y / 1e6 for y in got], label=p[:12])
        ax.plot(xs, [y / 1e6 for y in awarded], linestyle="--", color=line.get_color(), linewidth=0.8)
    ax.set_xlabel("round")
    ax.set_ylabel("cumulative units / 1e6 (solid: vested, dashed: awarded)")
    ax.set_title("Rewards per contributor" + (" (top 20)" if len(series) > 20 else ""))
    if top:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
