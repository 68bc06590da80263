"""``dai-swarm demo``: a local swarm on loopback, live in the terminal (discovery-only first version).

Starts a bootstrap node and ``--peers`` peer processes split over two regions, shows them finding
each other in a live table, then shuts everything down cleanly — also on Ctrl+C — and prints a
summary (how long until every peer saw every other, regions, records dropped).
"""

from __future__ import annotations

import argparse
import json
import signal
import tempfile
import threading
import time

from .dht.node import SwarmDHT
from .identity import Identity
from .testing import SocketGuard, spawn_bootstrap, spawn_peer

__all__ = ["add_parser", "run"]

RUN_ID = "demo"
REGIONS = ("eu", "us")

EPILOG = """examples:
  dai-swarm demo
  dai-swarm demo --peers 6 --minutes 0.5
  dai-swarm demo --peers 4 --minutes 1 --json    # machine-readable summary at the end
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``demo`` on the dispatcher's sub-parsers."""
    p = subparsers.add_parser(
        "demo",
        help="run a local swarm on loopback with a live view",
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--peers", type=int, default=4, help="number of peer processes (default 4)")
    p.add_argument("--minutes", type=float, default=2.0, help="how long to run (default 2)")
    p.add_argument("--ttl-s", type=float, default=6.0, help="peer record TTL in seconds (default 6)")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    return p


def _table(doc_peers, regions, elapsed_s: float, expected: int):
    from rich.table import Table

    table = Table(title=f"dai-swarm demo — {len(doc_peers)}/{expected} peers visible, {elapsed_s:.0f} s")
    for col in ("peer", "region", "age s", "uptime s", "address"):
        table.add_column(col)
    for rec, age in doc_peers:
        table.add_row(rec.peer_id[-10:], rec.region, f"{age:.1f}", str(rec.metrics.get("uptime_s", "")),
                      rec.maddrs[0] if rec.maddrs else "")
    table.caption = "regions: " + ", ".join(f"{k}={len(v)}" for k, v in regions.items())
    return table


def run(args: argparse.Namespace) -> int:
    """Start the local swarm, show it live, stop it cleanly, print a summary."""
    from rich.console import Console
    from rich.live import Live

    if args.peers < 1:
        from .errors import ConfigError

        raise ConfigError("--peers must be at least 1")
    console = Console(stderr=args.json)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    procs, observer, summary = [], None, {"peers": args.peers, "interrupted": False}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dai-swarm-demo-") as workdir, SocketGuard():
        try:
            boot = spawn_bootstrap(workdir)
            procs.append(boot)
            initial = boot.wait_ready(60)
            console.print(f"bootstrap up: --initial-peers {' '.join(initial)}")
            for i in range(args.peers):
                procs.append(spawn_peer(workdir, RUN_ID, initial, name=f"peer{i}", region=REGIONS[i % 2],
                                        ttl_s=args.ttl_s))
            observer = SwarmDHT(Identity.generate(), initial_peers=initial, client_mode=True)
            all_seen_s = None
            deadline = started + args.minutes * 60
            with Live(console=console, refresh_per_second=4) as live:
                while not stop.is_set() and time.monotonic() < deadline:
                    now = time.time()
                    peers = [(s.record, now - s.issued_at) for s in observer.peer_records(RUN_ID)]
                    regions = observer.regions(RUN_ID)
                    elapsed = time.monotonic() - started
                    if all_seen_s is None and len(peers) == args.peers:
                        all_seen_s = elapsed
                        console.print(f"all {args.peers} peers visible after {elapsed:.1f} s")
                    live.update(_table(peers, regions, elapsed, args.peers))
                    stop.wait(1.0)
            summary.update(
                interrupted=stop.is_set(), visible_at_end=len(peers), all_visible_after_s=all_seen_s,
                regions={k: len(v) for k, v in regions.items()},
                dropped={k: v for k, v in observer.counters.items() if k != "accepted"},
            )
        finally:
            if observer is not None:
                observer.shutdown()
            codes = [p.stop() for p in reversed(procs)]
            summary["exit_codes"] = codes[::-1]
            summary["ran_s"] = round(time.monotonic() - started, 1)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        console.print(
            f"demo over after {summary['ran_s']} s: {summary.get('visible_at_end', 0)}/{args.peers} peers visible, "
            f"all visible after {summary.get('all_visible_after_s')} s, regions {summary.get('regions')}, "
            f"clean exits {sum(c == 0 for c in summary['exit_codes'])}/{len(summary['exit_codes'])}"
        )
    return 0
