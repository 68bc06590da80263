"""``dai-swarm status``: who is in a run right now — live peers, regions, manifest.

Joins the DHT as a client (it stores nothing and is never listed), reads the run's signed peer
records and region memberships, verifies each, and prints them as a table or, with ``--json``::

    {"run_id": ..., "peers": [{"peer_id", "region", "maddrs", "age_s", "version", ...}],
     "regions": {"eu": ["12D3...", ...]}, "manifest": {...} | null, "manifest_hash": "..." | null,
     "dropped": {...}}

With ``--manifest HASH`` only the manifest with that hash is shown; another one is an error.

Fields that later versions add to peer records (``metrics`` and any extra top-level field) are
passed through into the JSON unchanged.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING

from .dht.manifest import PIN_HEX, check_pin
from .dht.records import validate_name

if TYPE_CHECKING:
    from .dht.node import SwarmDHT

__all__ = ["add_parser", "collect_status", "run"]

EPILOG = """examples:
  dai-swarm status --run-id tinylm-42 --manifest 3f9a... --initial-peers /ip4/1.2.3.4/tcp/31337/p2p/12D3KooW...
  dai-swarm status --run-id tinylm-42 --initial-peers $(cat bootstrap.addr) --json | jq .peers
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``status`` on the dispatcher's sub-parsers."""
    p = subparsers.add_parser(
        "status",
        help="list a run's live peers, regions and manifest",
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run-id", required=True, help="the run to inspect")
    p.add_argument("--initial-peers", nargs="+", required=True, metavar="M", help="multiaddrs of any peers of the swarm")
    p.add_argument("--manifest", default=None, metavar="HASH",
                   help="the run's manifest hash from its join line: refuse any other manifest")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--timeout-s", type=float, default=30.0, help="give up joining the DHT after this long (default 30)")
    return p


def collect_status(dht: "SwarmDHT", run_id: str, manifest_hash: str | None = None) -> dict:
    """The status document of ``run_id`` as seen from ``dht`` (see the module docstring); with
    ``manifest_hash``, :class:`~dai_swarm.errors.ManifestPinMismatch` if the run's manifest differs."""
    validate_name(run_id, "run id")
    now = time.time()
    peers = []
    for signed in dht.peer_records(run_id):
        entry = signed.record.to_body()
        entry["age_s"] = round(max(0.0, now - signed.issued_at), 3)
        entry["expires_in_s"] = round(signed.expiration - now, 3)
        peers.append(entry)
    peers.sort(key=lambda p: (p["region"], p["peer_id"]))
    choice = dht.manifest_choice(run_id, manifest_hash=manifest_hash)
    manifest = choice.manifest if choice is not None else None
    return {
        "run_id": run_id,
        "peers": peers,
        "regions": dht.regions(run_id),
        "manifest": manifest.to_body() if manifest is not None else None,
        "manifest_hash": choice.hash if choice is not None else None,
        "dropped": {k: v for k, v in dht.counters.items() if k != "accepted"},
    }


def _render(doc: dict) -> None:
    from .display import rounded
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"run {doc['run_id']}: {len(doc['peers'])} live peers in {len(doc['regions'])} regions")
    for col in ("peer id", "region", "role", "version", "age s", "maddrs", "metrics"):
        table.add_column(col)
    for p in doc["peers"]:
        table.add_row(
            p["peer_id"][-12:], p["region"], p.get("role", ""), p.get("version", ""), f"{p['age_s']:.1f}",
            "\n".join(p.get("maddrs", [])), json.dumps(rounded(p.get("metrics", {})), sort_keys=True),
        )
    console = Console()
    console.print(table)
    if doc["manifest"]:
        m = doc["manifest"]
        console.print(f"manifest {doc['manifest_hash'][:PIN_HEX]}: task={m['task']} round_s={m['round_s']} "
                      f"codec={m['codec']} t0={m['t0']}")
    dropped = sum(doc["dropped"].values())
    if dropped:
        console.print(f"[yellow]dropped {dropped} invalid records: {doc['dropped']}[/yellow]")


def run(args: argparse.Namespace) -> int:
    """Join as a DHT client, print the status of ``--run-id``."""
    from .dht.node import SwarmDHT  # hivemind: only once the command runs
    from .identity import Identity

    validate_name(args.run_id, "run id")
    check_pin(args.manifest)
    with SwarmDHT(Identity.generate(), initial_peers=args.initial_peers, client_mode=True,
                  start_timeout_s=args.timeout_s) as dht:
        doc = collect_status(dht, args.run_id, args.manifest)
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        _render(doc)
    return 0
