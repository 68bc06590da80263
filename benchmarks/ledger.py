"""Reward-log benchmark (SPEC P6, R1): durable appends/s and verify speed vs raw SHA-256.

    python -m benchmarks.ledger                 # appends/s and verify MB/s
    python -m benchmarks.ledger --kills 1000    # also the SIGKILL crash campaign (R1)

Appends: one thread appends ``--records`` local-event records (and, separately, round records
with 16 contributors) through RewardLog with group commit (fdatasync per batch, a signed
checkpoint closing each batch); the clock stops when the last receipt is durable.
Verify: on the same file, best of ``--repeats``: raw SHA-256 of the whole file in one call, raw
SHA-256 of each record line (the least any per-record hash chain must do), our fast verify
(chain, sequence, CRC of the tail, checkpoint signatures), our full verify (plus Merkle roots and
round-chain heads), and, for the format choice, a plain "JSON object per line" check
(``json.loads`` + SHA-256 per line). Prints JSON, then a markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time

from dai_swarm.identity import Identity
from dai_swarm.rewards import Contributor, RewardLog, compute_round_record
from dai_swarm.rewards.crashtest import run_crash_campaign
from dai_swarm.rewards.verify import scan


def _appends(path: str, n: int, batch_size: int, kind: str) -> dict:
    ident = Identity.generate()
    if kind == "round":
        bodies = [compute_round_record(r, [Contributor(f"{i:064x}", 100 + i, 0.5 + i / 40, "eu") for i in range(16)],
                                       {f"{i:064x}": 1 for i in range(4)}, [], "ab" * 32) for r in range(n)]
    else:
        bodies = [{"peer": f"{i % 997:064x}", "round": i // 100, "region": "eu-west", "subject": f"{i % 13:064x}"}
                  for i in range(n)]
    with RewardLog(path, ident, batch_size=batch_size, flush_interval_s=0.005) as log:
        t0 = time.perf_counter()
        if kind == "round":
            for body in bodies:
                last = log.append_round(body)
        else:
            for body in bodies:
                last = log.append("verdict", body)
        last.wait()
        dt = time.perf_counter() - t0
    size = os.path.getsize(path)
    return {"kind": kind, "records": n, "seconds": round(dt, 3), "appends_per_s": round(n / dt),
            "bytes_per_record": round(size / n), "batch_size": batch_size}


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _verify_speeds(path: str, repeats: int) -> dict:
    with open(path, "rb") as f:
        buf = f.read()
    mb = len(buf) / 1e6
    sha = hashlib.sha256

    def per_record():
        lines = buf.split(b"\n")
        return [sha(line).digest() for line in lines]

    def json_lines():
        for line in buf.split(b"\n")[:-1]:
            json.loads(line[line.find(b" ", 82) + 1 : -9])
            sha(line).digest()

    fast_res = scan(buf, full=False)
    assert fast_res.first_bad is None and fast_res.signed == fast_res.records
    t = {
        "raw_sha256_whole_file": _best(lambda: sha(buf).digest(), repeats),
        "raw_sha256_per_record": _best(per_record, repeats),
        "verify_fast": _best(lambda: scan(buf, full=False), repeats),
        "verify_full": _best(lambda: scan(buf, full=True), repeats),
        "json_loads_per_line": _best(json_lines, repeats),
    }
    out = {"bytes": len(buf), "records": fast_res.records}
    for k, v in t.items():
        out[k + "_MBps"] = round(mb / v, 1)
    for k in ("verify_fast", "verify_full"):
        out[k + "_vs_per_record_sha256"] = round(t["raw_sha256_per_record"] / t[k], 3)
        out[k + "_vs_whole_file_sha256"] = round(t["raw_sha256_whole_file"] / t[k], 3)
    return out


def main() -> None:
    """Run the benchmark and print JSON and a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--round-records", type=int, default=20_000)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kills", type=int, default=0, help="also run the SIGKILL crash campaign with this many kills")
    ap.add_argument("--dir", default=None, help="directory for the log files (default: a temp dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        res = {"appends": [_appends(os.path.join(d, "events.log"), args.records, args.batch_size, "event"),
                           _appends(os.path.join(d, "rounds.log"), args.round_records, args.batch_size, "round")]}
        res["verify_events_log"] = _verify_speeds(os.path.join(d, "events.log"), args.repeats)
        res["verify_rounds_log"] = _verify_speeds(os.path.join(d, "rounds.log"), args.repeats)
        if args.kills:
            res["crash"] = run_crash_campaign(d, args.kills, seed=7)
    res["cpu_count"] = os.cpu_count()
    print(json.dumps(res, indent=2))
    print("\n| measure | value | target |\n|---|---|---|")
    for a in res["appends"]:
        print(f"| durable appends/s ({a['kind']} records, {a['bytes_per_record']} B, batch {a['batch_size']}) "
              f"| {a['appends_per_s']:,} | ≥ 100,000 |")
    for name in ("verify_events_log", "verify_rounds_log"):
        v = res[name]
        print(f"| {name}: raw sha256 whole file / per record | {v['raw_sha256_whole_file_MBps']} / "
              f"{v['raw_sha256_per_record_MBps']} MB/s | |")
        print(f"| {name}: verify fast / full | {v['verify_fast_MBps']} / {v['verify_full_MBps']} MB/s | |")
        print(f"| {name}: fast verify vs per-record sha256 (vs whole-file) | {v['verify_fast_vs_per_record_sha256']}x "
              f"({v['verify_fast_vs_whole_file_sha256']}x) | ≥ 0.5x |")
        print(f"| {name}: JSON-object-per-line check (format alternative) | {v['json_loads_per_line_MBps']} MB/s | |")
    if "crash" in res:
        c = res["crash"]
        print(f"| SIGKILLs / acknowledged records | {c['kills']:,} / {c['acknowledged']:,} | ≥ 1,000 kills |")
        print(f"| acknowledged records lost / corrupt accepted | {c['lost']} / {c['corrupt_accepted']} | 0 / 0 |")


if __name__ == "__main__":
    main()
