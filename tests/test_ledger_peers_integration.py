"""Reward logs written by real peers of one run: identical round records, clean verify and diff."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from swarm_run import REPO, by_round, cleanup, spawn_peer, wait_all

pytestmark = pytest.mark.integration


def _cli(*args) -> dict:
    out = subprocess.run([sys.executable, "-m", "dai_swarm", "ledger", *args, "--json"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    return {"rc": out.returncode, **json.loads(out.stdout)}


def test_peers_write_identical_round_records(tmp_path):
    run_id = f"led-{os.getpid()}"
    # both peers must be up by round 0 (founders write the same chain from its start): p0 needs about
    # 10 s on a loaded machine before p1 can be given its address, and p1 as long again (at 20 s p1
    # arrived at round 2, as a joiner, and its log started there)
    t0 = float(int(time.time()) + 32)
    common = dict(run_id=run_id, task="regression", t0=t0, round_s=3.0, until_round=7, region="r0", max_inner_steps=20)
    peers = []
    try:
        p0 = spawn_peer(str(tmp_path), "p0", extra_args=["--ledger", str(tmp_path / "p0.ledger")], **common)
        peers.append(p0)
        boot = p0.addresses()
        peers.append(spawn_peer(str(tmp_path), "p1", initial_peers=boot,
                                extra_args=["--ledger", str(tmp_path / "p1.ledger")], **common))
        wait_all(peers, timeout_s=7 * 3.0 + 120)
    finally:
        cleanup(peers)
    a, b = str(tmp_path / "p0.ledger"), str(tmp_path / "p1.ledger")
    for path in (a, b):
        v = _cli("verify", path)
        assert v["rc"] == 0 and v["ok"] is True and v["records"] > 3, v
    d = _cli("diff", a, b)
    assert d["rc"] == 0, d
    h0, h1 = by_round(peers[0].history()), by_round(peers[1].history())
    common_rounds = sorted(set(h0) & set(h1))
    assert len(common_rounds) >= 3
    heads = [(h0[r]["ledger"], h1[r]["ledger"]) for r in common_rounds if h0[r].get("ledger") and h1[r].get("ledger")]
    assert heads and heads[-1][0] == heads[-1][1], heads
    rep = subprocess.run([sys.executable, "-m", "dai_swarm", "ledger", "report", a, b, "--json"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert rep.returncode == 0, rep.stderr
    report = json.loads(rep.stdout)
    print("REPORT", json.dumps(report)[:800])
    # a doctored round record is pinpointed by diff
    lines = open(b).read().splitlines(keepends=True)
    idx = next(i for i, line in enumerate(lines) if " round " in line)
    lines[idx] = lines[idx].replace('"samples":', '"samples":1', 1)
    with open(b, "w") as f:
        f.writelines(lines)
    v = _cli("verify", b)
    assert v["ok"] is False and v["first_bad"] == idx, (v, idx)
    d2 = subprocess.run([sys.executable, "-m", "dai_swarm", "ledger", "diff", a, b], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
    assert d2.returncode != 0 and f"record {idx}" in d2.stderr, d2.stderr
