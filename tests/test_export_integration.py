"""The model out, with real processes: export, provenance check against the reward log, resume.

Three peers train ``tinylm-small``; while they run, ``dai-swarm export`` fetches round N's agreed
state through two different peers, and every peer checkpoints itself. The exports must be
byte-identical, load with ``safetensors`` and the task's ``build_model``, reach the val loss the
swarm reported for round N, and pass ``ledger verify --model`` (a re-signed export with altered
weights must fail); the three peers' reward logs hold the same round records. Then every peer
stops, a new peer resumes the run from the export in a fresh DHT, two more join it (one of them
given a peer's checkpoint of round N with ``--resume``: with the run live it joins instead of
starting another generation), and training continues from the exported loss with a reward log
whose first new round record names the exported state as its parent. An export of another run is
refused.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from dai_swarm import testing
from swarm_run import REPO, by_round, cleanup, spawn_peer, wait_all

# beside an 8-peer attack swarm (which checks every update) on 2 cores, the exporter's first dials to
# the peers failed and libp2p backed them off for the whole 90 s: never run beside one
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("swarm8")]

ROUND_S = 5.0
N = 6  # the round exported
UNTIL = 13  # the first run's peers leave at this round


def _cli(*args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dai_swarm", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))


def _export(run_id: str, peer_addrs: list[str], out: str, *extra: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "dai_swarm", "export", "--run-id", run_id, "--initial-peers", *peer_addrs,
            "--out", out, "--round", str(N), "--host-maddrs", "/ip4/127.0.0.1/tcp/0", "--timeout", "90", "--json",
            *extra]
    err = open(f"{out}.log", "w")  # the whole log stays beside the export (a failure shows its tail)
    try:
        return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True,
                                env=dict(os.environ, OMP_NUM_THREADS="1", DAI_SWARM_LOGLEVEL="DEBUG"))
    finally:
        err.close()


def _records(path: str, rtype: str) -> list[dict]:
    from dai_swarm.rewards.diff import iter_records
    return [r.body for r in iter_records(path) if r.type == rtype]


@pytest.mark.timeout(600)
def test_export_verify_and_resume(tmp_path):
    from safetensors.torch import load_file

    import dai_swarm
    from dai_swarm.export import load_export, write_export

    run_id = f"exp-{os.getpid()}"
    t0 = float(int(time.time()) + 25)
    # the exports must find the peers still there: on a loaded 2-core machine an export's first dial
    # failed and libp2p's back-off outlasted peers leaving at round 12
    common = dict(run_id=run_id, task="tinylm-small", t0=t0, round_s=ROUND_S, until_round=UNTIL, max_inner_steps=15,
                  region="r0", cross_region_period=1000)
    peers, procs = [], []
    w = str(tmp_path)

    def extra(name: str) -> list[str]:
        return ["--ledger", f"{w}/{name}.ledger", "--checkpoint-dir", f"{w}/{name}-ckpt", "--checkpoint-every", "2"]

    try:
        p0 = spawn_peer(w, "p0", extra_args=extra("p0"), **common)
        peers.append(p0)
        boot = p0.addresses()
        for name in ("p1", "p2"):
            peers.append(spawn_peer(w, name, initial_peers=boot, extra_args=extra(name), **common))
        addrs = {p.name: p.addresses() for p in peers}
        # the exports start two rounds before round N's state is agreed and wait for it: an export needs
        # 10-30 s to start on a loaded 2-core machine, and its peers hold a state for about 5 rounds
        time.sleep(max(0.0, t0 + N * ROUND_S - time.time()))
        procs = [_export(run_id, addrs["p0"], f"{w}/export-a", "--ledger", f"{w}/p0.ledger"),
                 _export(run_id, addrs["p1"], f"{w}/export-b")]
        outs = [p.communicate(timeout=150) for p in procs]
        for p, name in zip(procs, ("export-a", "export-b")):
            assert p.returncode == 0, open(f"{w}/{name}.log").read()[-6000:]
        wait_all(peers, timeout_s=UNTIL * ROUND_S + 150)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        cleanup(peers)
    summaries = [json.loads(out) for out, _ in outs]
    hist = {p.name: by_round(p.history()) for p in peers}
    rounds_trained = {p.name: p.history()["status"]["rounds_trained"] for p in peers}
    assert all(n >= 6 for n in rounds_trained.values()), rounds_trained

    # two exports through two peers, and every peer's own checkpoint of round N: byte-identical weights
    model_a = open(f"{w}/export-a/model.safetensors", "rb").read()
    assert model_a == open(f"{w}/export-b/model.safetensors", "rb").read()
    ckpts = [f"{w}/{p.name}-ckpt/round-{N:06d}/model.safetensors" for p in peers]
    assert all(os.path.exists(c) for c in ckpts), os.listdir(f"{w}/p0-ckpt")
    assert all(open(c, "rb").read() == model_a for c in ckpts)
    assert len(os.listdir(f"{w}/p0-ckpt")) <= 3  # the newest three are kept

    # the weights load with safetensors + build_model, and reach the val loss the swarm reported
    exported = load_export(f"{w}/export-a", run_id=run_id)
    assert exported.provenance.state_hash == hist["p0"][N]["state_hash"] == summaries[1]["state_hash"]
    torch.set_num_threads(1)
    task = dai_swarm.load_task("tinylm-small")
    model = task.build_model(0)
    model.load_state_dict(load_file(f"{w}/export-a/model.safetensors"))
    val = float(task.evaluate(model)["loss"])
    reported = hist["p0"][N]["val_loss"]
    print(f"REPORT export round {N}: val loss {val:.6f}, swarm reported {reported:.6f}, diff {abs(val - reported):.2e}; "
          f"initial {hist['p0'][min(hist['p0'])]['val_loss']:.4f}; rounds trained {rounds_trained}")
    assert abs(val - reported) < 1e-5
    prov = exported.provenance
    assert prov.chain and prov.chain[-1]["state_hash"] == prov.state_hash and prov.reward_units > 0
    assert prov.parent_hash == prov.chain[-1]["parent_hash"]

    # ledger verify --model: honest passes on every peer's log; altered weights re-signed by another key fail
    for name in ("p0", "p1", "p2"):
        ok = _cli("ledger", "verify", f"{w}/{name}.ledger", "--model", f"{w}/export-a")
        assert ok.returncode == 0 and "OK" in ok.stdout, ok.stdout + ok.stderr
    # the three peers wrote the same round records (ledger diff; its CLI is unit-tested on written logs)
    from dai_swarm.rewards import diff_logs
    for name in ("p1", "p2"):
        assert diff_logs(f"{w}/p0.ledger", f"{w}/{name}.ledger") is None, name
    heads = {name: len(_records(f"{w}/{name}.ledger", "round")) for name in ("p0", "p1", "p2")}
    assert min(heads.values()) >= N, heads
    state = exported.state
    params = {k: v.clone() for k, v in state.params.items()}
    next(iter(params.values()))[0].add_(1e-3)
    forged = type(state).make(state.round, params, state.momentum, state.extra, state.anchor)
    from dai_swarm.dht.records import RunManifest
    write_export(f"{w}/forged", forged, task=task, manifest=RunManifest(**prov.manifest),
                 manifest_hash=prov.manifest_hash, round=N, identity=dai_swarm.Identity.generate())
    forged_out = _cli("ledger", "verify", f"{w}/p0.ledger", "--model", f"{w}/forged")
    assert forged_out.returncode == 1 and f"round {N}: the log records state" in forged_out.stdout, forged_out.stdout
    shutil.copytree(f"{w}/export-a", f"{w}/tampered")
    with open(f"{w}/tampered/state.safetensors", "r+b") as f:
        f.seek(-3, 2)
        f.write(b"\x00\x01\x02")
    bad = _cli("ledger", "verify", f"{w}/p0.ledger", "--model", f"{w}/tampered")
    assert bad.returncode == 1 and "altered" in bad.stdout, bad.stdout
    print(f"REPORT ledger verify --model: honest rc 0 on 3 logs; re-signed altered weights rc {forged_out.returncode}: "
          f"{forged_out.stdout.strip()[-90:]}; altered byte rc {bad.returncode}: {bad.stdout.strip()[-70:]}")

    # an export of another run is refused before anything starts
    wrong = _cli("peer", "--run-id", "another-run", "--resume", f"{w}/export-a", "--quiet")
    assert wrong.returncode == 1 and "ExportMismatch" not in wrong.stderr and "not 'another-run'" in wrong.stderr
    assert "Traceback" not in wrong.stderr

    # every peer has stopped: a new peer resumes the run from the export in a fresh DHT; two more join it
    # while it is live, one of them given p1's checkpoint of round N (it joins: no second generation)
    origin = N + 2
    until = origin + 8
    resumed = dict(run_id=run_id, task=None, t0=None, round_s=ROUND_S, until_round=until, region="r0")
    late = []
    try:
        r0 = spawn_peer(w, "r0", extra_args=["--resume", f"{w}/export-a", "--start-in", "12",
                                            "--ledger", f"{w}/r0.ledger"], **resumed)
        late.append(r0)
        boot = r0.addresses()
        late.append(spawn_peer(w, "r1", initial_peers=boot, extra_args=["--ledger", f"{w}/r1.ledger"], **resumed))
        # r2 is given a checkpoint (the same format as an export) once r0 is live: it must join the live run,
        # not start another generation
        testing.wait_until(lambda: "starts at round" in r0.log(), 90, what="the resumed peer started")
        late.append(spawn_peer(w, "r2", initial_peers=boot, extra_args=["--ledger", f"{w}/r2.ledger", "--resume",
                                                                        f"{w}/p1-ckpt/round-{N:06d}"], **resumed))
        wait_all(late, timeout_s=12 + 10 * ROUND_S + 150)
    finally:
        cleanup(late)
    assert "has live peers: joining it" in late[2].log(), late[2].log()[-3000:]
    after = {p.name: by_round(p.history()) for p in late}
    first = min(r for r in after["r0"] if after["r0"][r].get("val_loss") is not None)
    vals = [after["r0"][r]["val_loss"] for r in sorted(after["r0"]) if after["r0"][r].get("val_loss") is not None]
    initial = hist["p0"][min(hist["p0"])]["val_loss"]
    print(f"REPORT resumed at round {origin}: val losses {[round(v, 4) for v in vals]} (exported {reported:.4f}, "
          f"initial {initial:.4f}); joiners' rounds trained "
          f"{[p.history()['status']['rounds_trained'] for p in late]}")
    # it goes on from the export, not from scratch: its first round trains from the exported state (exactly), and
    # the resumed swarm gets below the exported loss. The first resumed round's loss alone says little: it holds
    # one peer's update (the joiners are still syncing) from a fresh inner optimizer, 15 steps on a loaded machine
    # moved it 0.19 above the export once (2.878 vs 2.691, initial 3.047) before three peers took it to 2.535
    assert first == origin and after["r0"][first]["trained_from"] == exported.provenance.state_hash, after["r0"][first]
    assert min(vals) < reported, (vals, reported, initial)  # training goes on from there
    assert all(p.history()["status"]["rounds_trained"] >= 3 for p in late)
    joined = _records(f"{w}/r0.ledger", "join")
    assert joined[0]["resume"]["state_hash"] == prov.state_hash and joined[0]["resume"]["round"] == origin
    first_record = min(_records(f"{w}/r0.ledger", "round"), key=lambda b: b["round"])
    assert first_record["round"] == origin and first_record["parent_hash"] == prov.state_hash
    for name in ("r1", "r2"):  # the joiners agree with the resumed chain
        shared = {b["round"]: b for b in _records(f"{w}/{name}.ledger", "round")}
        mine = {b["round"]: b for b in _records(f"{w}/r0.ledger", "round")}
        common_rounds = sorted(set(shared) & set(mine))
        assert common_rounds and all(shared[r] == mine[r] for r in common_rounds), name
    print(f"REPORT resumed ledger: first round record {origin} has parent {first_record['parent_hash'][:12]} "
          f"= exported state {prov.state_hash[:12]}")
