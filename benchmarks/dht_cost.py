"""What one DHT read and one DHT write of a round record cost on the wire, by records per key.

The protocol keeps a round's records of one kind (``update.r0`` of round 5, ...) as one hivemind
dictionary value, one subkey per signer. ``nodes`` in-process :class:`~dai_swarm.dht.SwarmDHT`
nodes on loopback; for each count ``k`` of signers, ``k`` of them publish an update announcement
(about 1 KB signed), then every node reads the key once (``get_round_records``: hivemind
``get(latest=True)``) and one more node publishes (a store). Bytes are what the nodes' p2pd daemons
relayed (``(rchar + wchar) / 2`` summed over all nodes: each wire byte counted at both ends, as in
:mod:`benchmarks.bytes` where a peer's figure is its own sent + received).

Usage::

    python -m benchmarks.dht_cost                 # 8 nodes, k = 1, 2, 4, 8
    python -m benchmarks.dht_cost --quick         # CI smoke: 4 nodes, k = 1, 4

Writes ``dht_cost.json``, ``dht_cost.md`` and ``dht_cost.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Sequence

__all__ = ["main", "measure"]


def _io(nodes) -> int:
    from .churn_fleet import p2pd_io_bytes

    return sum((p2pd_io_bytes(n._dht.pid) or 0) for n in nodes) // 2


def _announcement(node, round: int) -> dict:
    return {"run_id": "cost", "round": round, "base_hash": "a" * 64, "peer": node.identity.public_key_hex, "steps": 8,
            "samples": 128, "codec": "sparse", "digest": "b" * 64, "size_bytes": 4535, "region": "r0",
            "p2p_id": "12D3KooW" + "x" * 44, "ef": {"pre": "c" * 64, "post": "d" * 64, "pre_blob": "e" * 64,
                                                   "post_blob": "f" * 64}}


def measure(n_nodes: int, counts: Sequence[int]) -> list[dict]:
    """Bytes per read and per write of a key holding ``k`` records, for each ``k`` in ``counts``."""
    from dai_swarm.testing import launch_dht_swarm, shutdown_all

    nodes = launch_dht_swarm(n_nodes)
    out = []
    try:
        time.sleep(2.0)
        for i, k in enumerate(counts):
            r = 10 + i  # one round key per count
            for node in nodes[:k]:
                node.publish_round_record("cost", "update.r0", r, _announcement(node, r), ttl_s=120)
            time.sleep(0.5)
            before = _io(nodes)
            got = [len(node.get_round_records("cost", "update.r0", r)) for node in nodes]
            read = (_io(nodes) - before) / len(nodes)
            writer = nodes[k % len(nodes)]
            before = _io(nodes)
            writer.publish_round_record("cost", "update.r0", r + 100, _announcement(writer, r + 100), ttl_s=120)
            write_fresh = _io(nodes) - before
            write_full = None
            if k < len(nodes):  # one more signer joins the key that holds k records (the protocol's case)
                before = _io(nodes)
                writer.publish_round_record("cost", "update.r0", r, _announcement(writer, r), ttl_s=120)
                write_full = _io(nodes) - before
            out.append({"records": k, "nodes": n_nodes, "bytes_per_read": round(read), "records_seen_min": min(got),
                        "bytes_per_write_to_fresh_key": write_fresh, "bytes_per_write_to_this_key": write_full})
            print(f"k = {k}: {out[-1]['bytes_per_read']:,} B per read (all {k} seen by {min(got) == k}), "
                  f"{write_fresh:,} B per write to a fresh key, {write_full} to this one", flush=True)
    finally:
        shutdown_all(nodes)
    return out


def _report(doc: dict) -> str:
    lines = ["# Cost of one DHT read and write of round records", "",
             f"{doc['nodes']} in-process DHT nodes on loopback; an update announcement is about 1 KB signed.", "",
             "| records under the key | bytes per read | every node saw all | bytes per write, fresh key | "
             "bytes per write, this key |", "|---:|---:|---|---:|---:|"]
    for r in doc["rows"]:
        full = r["bytes_per_write_to_this_key"]
        lines.append(f"| {r['records']} | {r['bytes_per_read']:,} | {r['records_seen_min'] == r['records']} | "
                     f"{r['bytes_per_write_to_fresh_key']:,} | {'-' if full is None else f'{full:,}'} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0, or 1 when ``--quick`` sanity checks fail."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.dht_cost", description=__doc__.split("\n\n")[0],
                                epilog="example: python -m benchmarks.dht_cost --nodes 8 --records 1 2 4 8")
    p.add_argument("--nodes", type=int, default=8, help="DHT nodes (default 8)")
    p.add_argument("--records", type=int, nargs="+", default=[1, 2, 4, 8], help="records per key")
    p.add_argument("--quick", action="store_true", help="CI smoke: 4 nodes, 1 and 4 records")
    p.add_argument("--out", default="out/dht_cost", help="output folder (default out/dht_cost)")
    args = p.parse_args(argv)
    if args.quick:
        args.nodes, args.records = 4, [1, 4]
    if max(args.records) > args.nodes:
        p.error("--records may not exceed --nodes (each record has its own signer node)")
    doc = {"nodes": args.nodes, "rows": measure(args.nodes, args.records)}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "dht_cost.json"), "w") as f:
        json.dump(doc, f, indent=1)
    with open(os.path.join(args.out, "dht_cost.md"), "w") as f:
        f.write(_report(doc))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ks = [r["records"] for r in doc["rows"]]
    ax.plot(ks, [r["bytes_per_read"] / 1e3 for r in doc["rows"]], "o-", label="one read (per reading node)")
    ax.set_xlabel("records under the key (signers)")
    ax.set_ylabel("kB on the wire")
    ax.set_title(f"DHT read cost, {args.nodes} nodes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "dht_cost.png"), dpi=120)
    plt.close(fig)
    print(_report(doc))
    if args.quick:
        rows = doc["rows"]
        return 0 if all(r["records_seen_min"] == r["records"] and r["bytes_per_read"] > 0 for r in rows) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
