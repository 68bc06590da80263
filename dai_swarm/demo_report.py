"""What ``dai-swarm demo`` shows: the live table, the dashboard screenshot, the summary and the plot.

Kept apart from :mod:`dai_swarm.cmd_demo` (which starts and stops processes) so the pieces can be
tested on recorded data. Everything reads the peers' ``/status.json`` documents and history files
(see :mod:`dai_swarm.metrics`); nothing here invents a figure a peer did not report.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from .display import megabytes, num

__all__ = ["CHROMIUM_FLAGS", "chromium_binary", "console", "finish", "live_table", "live_view", "screenshot",
           "swarm_curve"]

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def console(stderr: bool = False):
    """The rich console the demo prints to (stderr when stdout carries JSON)."""
    from rich.console import Console

    con = Console(stderr=stderr, highlight=False)
    return con if con.is_terminal else Console(stderr=stderr, highlight=False, width=150)


def chromium_binary() -> str | None:
    """Path of an installed Chromium (Debian ``chromium``), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def run_chromium(url: str, *extra: str, timeout_s: float = 90.0) -> subprocess.CompletedProcess:
    """Run headless Chromium once on ``url`` with a fresh profile; ``extra`` e.g. ``--dump-dom``."""
    binary = chromium_binary()
    if binary is None:
        raise FileNotFoundError("chromium is not installed (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="dai-swarm-chromium-") as profile:
        return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
                              capture_output=True, text=True, timeout=timeout_s)


def screenshot(url: str, path: str, wait_ms: int = 4000) -> bool:
    """Write a 1400x1000 PNG of the dashboard at ``url`` to ``path``; False if Chromium is missing or fails."""
    if chromium_binary() is None:
        return False
    try:
        run_chromium(url, f"--virtual-time-budget={wait_ms}", "--window-size=1400,1000", "--hide-scrollbars",
                     f"--screenshot={os.path.abspath(path)}")
    except (OSError, subprocess.TimeoutExpired):
        return False
    return os.path.exists(path) and os.path.getsize(path) > 0


class _LineView:
    """Stand-in for rich's Live when the output is not a terminal: one line per peer every 15 s."""

    def __init__(self, con):
        self.console, self.last = con, 0.0

    def update(self, table: Any) -> None:
        now = time.time()
        if now - self.last >= 15.0:
            self.last = now
            self.console.print(table)


@contextmanager
def live_view(con) -> Iterator[Any]:
    """A live-updating table on a terminal; periodic plain tables otherwise."""
    if con.is_terminal:
        from rich.live import Live

        with Live(console=con, refresh_per_second=2, transient=False) as live:
            yield live
    else:
        yield _LineView(con)


def _mb(traffic: dict | None, link: str) -> str:
    if not traffic:
        return "-"
    n = sum((traffic.get(d) or {}).get(link, 0) for d in ("sent", "received"))
    return megabytes(n)


def live_table(peers: Sequence[Any], run_id: str, until_round: int, events: Sequence[dict], t0: float):
    """The demo's live table: one row per peer process (name, region, state, round, hash, loss, bytes)."""
    from rich.table import Table

    now = time.time()
    phase = f"round 0 in {t0 - now:.0f} s" if now < t0 else f"{now - t0:.0f} s since round 0"
    table = Table(title=f"dai-swarm demo · run {run_id} · {phase} · ends at round {until_round}",
                  caption=" · ".join(_event_text(e) for e in events[-3:]) or "peers start, find each other, train")
    for col in ("peer", "region", "process", "round", "peers seen", "state hash", "agree", "val loss", "samples",
                "intra MB", "cross MB"):
        table.add_column(col, justify="right" if col in ("round", "samples", "intra MB", "cross MB") else "left")
    for p in peers:
        s = p.status
        ag = s.get("agreement") or {}
        agree = f"{ag['agree']}/{ag['total']}" if ag.get("total") else "-"
        val = s.get("val_loss")
        style = "dim" if p.fate != "running" else ("green" if s else "yellow")
        table.add_row(p.name, p.region, p.fate if p.fate != "running" else ("training" if s else "starting"),
                      str(s.get("round", "-")), str(len(s.get("peers", []))) if s else "-",
                      str(s.get("state_hash") or "-")[:10], agree, num(val) if isinstance(val, float) else "-",
                      str(s.get("samples", "-")), _mb(s.get("traffic"), "intra"), _mb(s.get("traffic"), "cross"),
                      style=style)
    return table


def _event_text(e: dict) -> str:
    if e["event"] == "kill":
        return f"[red]{e['peer']} SIGKILLed at round {e['round']}[/]"
    if e["event"] == "join":
        return f"[green]{e['peer']} joins at round {e['round']}[/]"
    if e["event"] == "screenshot":
        return f"dashboard screenshot at round {e['round']}"
    return str(e)


def swarm_curve(history: Sequence[dict]) -> tuple[list[int], list[float]]:
    """(cumulative swarm samples, validation loss) per closed round of one peer's history."""
    xs, ys, total = [], [], 0
    for h in history:
        total += int(h.get("samples") or 0)
        if isinstance(h.get("val_loss"), (int, float)):
            xs.append(total)
            ys.append(float(h["val_loss"]))
    return xs, ys


def _samples_at(history: Sequence[dict], round: int) -> int | None:
    total, found = 0, None
    for h in history:
        total += int(h.get("samples") or 0)
        if h.get("round", 0) <= round:
            found = total
    return found


def _interp(xs: Sequence[float], ys: Sequence[float], x: float) -> float | None:
    if not xs or x < xs[0] or x > xs[-1]:
        return None
    for (xa, ya), (xb, yb) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if xa <= x <= xb:
            return ya if xb == xa else ya + (yb - ya) * (x - xa) / (xb - xa)
    return ys[-1]


def _history(p: Any, workdir: str) -> list[dict]:
    path = os.path.join(workdir, f"{p.name}.json")
    try:
        with open(path) as f:
            return list(json.load(f)["history"])
    except (OSError, ValueError, KeyError):
        return list(p.status.get("history", []))


def plot(curves: dict[str, tuple[list, list]], events: Sequence[dict], path: str, title: str) -> None:
    """Loss vs samples for the swarm and the centralized reference, churn events marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for label, (xs, ys) in curves.items():
        if xs:
            ax.plot(xs, ys, marker="o" if len(xs) < 40 else None, ms=3, label=label)
    for e in events:
        if e.get("samples") is not None:
            ax.axvline(e["samples"], color="red" if e["event"] == "kill" else "green", ls="--", alpha=0.6,
                       label=f"{e['peer']} {'killed' if e['event'] == 'kill' else 'joins'} (round {e['round']})")
    ax.set_xlabel("samples (dataset items consumed, whole swarm)")
    ax.set_ylabel("validation loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def finish(peers: Sequence[Any], events: list[dict], args: Any, out: str, workdir: str, until_round: int,
           con) -> dict:
    """Summary table, centralized reference, plot and ``summary.json``; returns the summary."""
    from rich.table import Table

    histories = {p.name: _history(p, workdir) for p in peers}
    table = Table(title="dai-swarm demo: summary")
    for col in ("peer", "region", "fate", "rounds closed", "last round", "state hash", "val loss", "intra MB",
                "cross MB"):
        table.add_column(col)
    rows = []
    for p in peers:
        h = histories[p.name]
        last = h[-1] if h else {}
        row = {"peer": p.name, "region": p.region, "fate": p.fate, "exit_code": p.proc.proc.returncode,
               "rounds_closed": len(h), "last_round": last.get("round"), "state_hash": last.get("state_hash"),
               "val_loss": last.get("val_loss"), "traffic": last.get("traffic")}
        rows.append(row)
        table.add_row(p.name, p.region, p.fate, str(len(h)), str(last.get("round", "-")),
                      str(last.get("state_hash") or "-")[:12],
                      num(row["val_loss"]) if isinstance(row["val_loss"], float) else "-",
                      _mb(row["traffic"], "intra"), _mb(row["traffic"], "cross"))
    con.print(table)
    survivors = [r for r in rows if r["fate"] == "finished"]
    final_round = max((r["last_round"] for r in survivors if r["last_round"] is not None), default=None)
    final_hashes: dict[str, set] = {}  # regions hold different states between cross-region merges
    for r in survivors:
        if r["last_round"] == final_round:
            final_hashes.setdefault(r["region"], set()).add(r["state_hash"])
    agree = bool(final_hashes) and all(len(v) == 1 for v in final_hashes.values())
    ref_peer = max(peers, key=lambda p: (sum(int(h.get("samples") or 0) for h in histories[p.name]), p.fate == "finished"))
    xs, ys = swarm_curve(histories[ref_peer.name])
    for e in events:
        if e["event"] in ("kill", "join"):
            e["samples"] = _samples_at(histories[ref_peer.name], e["round"])
    curves = {f"swarm ({len(peers)} peer processes, seen by {ref_peer.name})": (xs, ys)}
    reference = dp = None
    if not args.no_reference and xs:
        from .reference import run_centralized, run_sync_dp

        budget = min(xs[-1], args.reference_samples)
        con.print(f"references: {args.task}, {budget} samples, 1 thread: centralized, then synchronous "
                  f"data-parallel with {args.peers} workers…")
        reference = run_centralized(args.task, samples=budget, eval_every=max(1, budget // 20), threads=1)
        curves["centralized (1 process)"] = (reference["samples"], reference["val_loss"])
        dp = run_sync_dp(args.task, samples=budget, workers=args.peers, eval_every=max(1, budget // 20), threads=1)
        curves[f"synchronous data-parallel ({args.peers} workers, all-reduce every step)"] = (dp["samples"],
                                                                                              dp["val_loss"])
    png = os.path.join(out, "loss_vs_samples.png")
    if xs:
        plot(curves, events, png, f"{args.task}: swarm vs references at equal samples")
    at_equal = _interp(reference["samples"], reference["val_loss"], xs[-1]) if reference and xs else None
    dp_equal = _interp(dp["samples"], dp["val_loss"], xs[-1]) if dp and xs else None
    summary = {
        "ok": agree, "out": out, "task": args.task, "until_round": until_round,
        "peer_processes": rows, "events": events, "final_round": final_round, "final_hashes_agree": agree,
        "final_hashes": {k: sorted(v) for k, v in sorted(final_hashes.items())},
        "swarm": {"samples": xs[-1] if xs else 0, "val_loss": ys[-1] if ys else None, "curve_from": ref_peer.name},
        "centralized": None if reference is None else {
            "samples": reference["samples"][-1], "val_loss": reference["final_val_loss"],
            "val_loss_at_swarm_samples": at_equal, "samples_per_s": reference["samples_per_s"]},
        "sync_dp": None if dp is None else {
            "workers": args.peers, "samples": dp["samples"][-1], "val_loss": dp["final_val_loss"],
            "val_loss_at_swarm_samples": dp_equal},
        "plot": png if xs else None,
        "screenshot": next((e["path"] for e in events if e["event"] == "screenshot"), None),
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    verdict = "[green]agree within each region[/]" if agree else "[red]DISAGREE within a region[/]"
    con.print(f"final round {final_round}: {len(survivors)} surviving peers, state hashes {verdict}; "
              f"swarm val loss {num(summary['swarm']['val_loss'])} after {summary['swarm']['samples']} samples")
    if summary["centralized"]:
        c = summary["centralized"]
        eq = num(at_equal)
        con.print(f"centralized: val loss {num(c['val_loss'])} after {c['samples']} samples "
                  f"(at the swarm's {summary['swarm']['samples']} samples: {eq})")
    if summary["sync_dp"]:
        d = summary["sync_dp"]
        con.print(f"synchronous data-parallel, {d['workers']} workers: val loss {num(d['val_loss'])} after "
                  f"{d['samples']} samples (at the swarm's {summary['swarm']['samples']} samples: "
                  f"{num(d['val_loss_at_swarm_samples'])})")
    con.print(f"wrote [cyan]{png}[/], summary.json and peer logs under [cyan]{out}[/]")
    return summary
