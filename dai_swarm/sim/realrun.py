"""Real multi-process runs on this host, for calibrating the simulator and the 32-peer scale test.

:func:`run_real_swarm` starts ``dai-swarm peer`` processes on loopback with a shared ``--t0`` (the
first peer starts the swarm, the others join through its address), samples each peer's memory
(PSS of the peer process and its daemon children, from ``/proc/<pid>/smaps_rollup``; the
peak total per peer, with the peer process's own share at that sample) while they
run, waits for them to leave at ``--until-round`` and returns their ``--history-file`` contents.
:func:`per_round` turns the histories into per-round figures comparable with a simulation row.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from statistics import median

from dai_swarm.testing import founding_peers
from dai_swarm.dht import _proc
from dai_swarm.dht.records import MAX_FOUNDERS

__all__ = ["mem_available_kib", "pss_kib", "per_round", "run_real_swarm"]


def _pss_one(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid: int) -> tuple[int, int]:
    """(PSS of ``pid`` and all its descendants, PSS of ``pid`` alone) in KiB; 0 once gone."""
    own = _pss_one(pid)
    return own + sum(_pss_one(c) for c in _proc.descendants(pid)), own


def mem_available_kib() -> int:
    """``MemAvailable`` of this host in KiB (from /proc/meminfo; a large number if unreadable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 1 << 40


def run_real_swarm(workdir: str, *, peers: int, regions: int, round_s: float, until_round: int,
                   task: str = "regression", k: int = 3, max_inner_steps: int = 4, lead_s: float = 30.0,
                   run_id: str = "calib", extra_args: tuple = (), sample_s: float = 5.0,
                   min_free_kib: int = 1_500_000, longest_round_s: float | None = None) -> dict:
    """Run ``peers`` real peer processes until round ``until_round``; returns histories and memory.
    ``longest_round_s``: with adaptive rounds, the longest a round may grow (the wait is sized on it).

    If the host's available memory drops below ``min_free_kib`` the peers are stopped early
    (``aborted_low_memory`` in the result) rather than pushing the shared machine into swap.
    """
    os.makedirs(workdir, exist_ok=True)
    for name in os.listdir(workdir):  # a stale address file or history from an earlier run would be read as ours
        if name.startswith("p") and name.endswith((".addr", ".json", ".log")):
            os.unlink(os.path.join(workdir, name))
    t0 = int(time.time() + lead_s)
    common = [sys.executable, "-m", "dai_swarm", "peer", "--run-id", run_id, "--task", task, "--round-s", str(round_s),
              "--until-round", str(until_round), "--t0", str(t0), "--host-maddrs", "/ip4/127.0.0.1/tcp/0",
              "--threads", "1", "--quiet", "--cross-region-period", str(k), "--max-inner-steps", str(max_inner_steps),
              *extra_args]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    procs, logs = [], []
    addr = os.path.join(workdir, "p0.addr")

    # every region holds standing: the first peers, round-robin over the regions, up to the manifest's cap
    founding = founding_peers(workdir, [f"p{i}" for i in range(min(peers, MAX_FOUNDERS))])

    def spawn(i: int, initial: list[str]) -> None:
        log = open(os.path.join(workdir, f"p{i}.log"), "wb")
        args = [*common, "--region", f"r{i % regions}", "--history-file", os.path.join(workdir, f"p{i}.json"),
                *founding.get(f"p{i}", [])]
        if i == 0:
            args += ["--address-file", addr]
        if initial:
            args += ["--initial-peers", *initial]
        procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                      start_new_session=True))
        logs.append(log)

    spawn(0, [])
    deadline = time.time() + lead_s
    while not os.path.exists(addr) and time.time() < deadline:
        time.sleep(0.2)
    initial = [line.strip() for line in open(addr) if line.strip()][:1] if os.path.exists(addr) else []
    for i in range(1, peers):
        spawn(i, initial)
    pss: dict[int, int] = {}
    pss_main: dict[int, int] = {}
    aborted, min_avail = False, mem_available_kib()
    try:
        end = t0 + (until_round + 3) * max(round_s, longest_round_s or 0.0) + 120  # adaptive rounds may grow
        while any(p.poll() is None for p in procs) and time.time() < end:
            min_avail = min(min_avail, mem_available_kib())
            if min_avail < min_free_kib:
                aborted = True
                break
            if time.time() > t0 + round_s:
                for i, p in enumerate(procs):
                    if p.poll() is None:
                        total, own = pss_kib(p.pid)
                        if total > pss.get(i, 0):
                            pss[i], pss_main[i] = total, own
            time.sleep(sample_s)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        for log in logs:
            log.close()
    histories = {}
    for i in range(peers):
        path = os.path.join(workdir, f"p{i}.json")
        if os.path.exists(path):
            with open(path) as f:
                histories[i] = json.load(f)
    return {"t0": t0, "round_s": round_s, "peers": peers, "regions": regions, "run_id": run_id,
            "histories": histories,
            "pss_kib": pss, "pss_main_kib": pss_main, "aborted_low_memory": aborted,
            "min_mem_available_kib": min_avail, "exit_codes": [p.returncode for p in procs]}


def per_round(run: dict) -> list[dict]:
    """Per round: bytes received per link class (summed over peers), completion after end(r),
    whether every peer of each region reported the same state hash at the tally (its candidate, or
    the majority's after a re-sync there), per region ``[peers on the most common hash, peers
    reporting]``, and ``trained_from``: per region ``[peers whose update of this round started from
    the most common base, peers that announced an update]`` (a peer re-synced later than its tally
    still trains from the canonical base)."""
    t0, T = run["t0"], run["round_s"]
    rows: dict[int, dict] = {}
    for i, h in run["histories"].items():
        prev = None
        region = h["status"].get("region", f"r{int(i) % run['regions']}")
        for e in h["history"]:
            q = e["round"]
            recv = e["traffic"]["received"]
            row = rows.setdefault(q, {"round": q, "bytes": {"intra": 0, "cross": 0}, "completion": [],
                                      "hashes": {}, "bases": {}, "peers": 0, "updates": []})
            if prev is not None and prev["round"] == q - 1:
                for link in ("intra", "cross"):
                    row["bytes"][link] += recv.get(link, 0) - prev["traffic"]["received"].get(link, 0)
            row["completion"].append(e["time"] - (t0 + (q + 1) * T))
            row["hashes"].setdefault(region, []).append(e["state_hash"])
            if e.get("trained_from"):
                row["bases"].setdefault(region, []).append(e["trained_from"])
            row["peers"] += 1
            row["updates"].append(e["updates"])
            prev = e
    out = []
    for q in sorted(rows):
        r = rows[q]
        out.append({"round": q, "bytes": r["bytes"], "peers": r["peers"],
                    "completion_median_s": round(median(r["completion"]), 3),
                    "completion_max_s": round(max(r["completion"]), 3),
                    "updates_median": median(r["updates"]),
                    "regions_in_agreement": sum(1 for s in r["hashes"].values() if len(set(s)) == 1),
                    "regions": len(r["hashes"]),
                    "majority": {g: [Counter(s).most_common(1)[0][1], len(s)] for g, s in sorted(r["hashes"].items())},
                    "trained_from": {g: [Counter(s).most_common(1)[0][1], len(s)] for g, s in sorted(r["bases"].items())}})
    return out
