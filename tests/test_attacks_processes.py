"""The attacks that need a live peer, against REAL ``dai-swarm peer`` processes on the regression task.

Two swarms (bootstrap node + honest peers + several attackers each) run in turn; each peer writes
its per-round history and final status (with its own reputation and slash flag). The attacks that
act only on the attacker's own tensors, batches or bytes (sign_flip, scale10, scale1000, gaussian,
label_flip) run through the same round machine and verifier code in the simulator
(``test_sim_attacks.py``); here are those that read the other peers' updates or the swarm's
records (lazy, replay, copy, alie, ipm, freeride, forged and replayed verdicts) and those whose
bytes must be refused on the wire (nan, wrong_shape, oversized).
For each attack the test says whether the attacker was *detected* (slashed by the swarm's
replicated reputation, with the round) or *bounded* (its payload never entered an aggregate), and
that honest peers were never slashed and kept identical state hashes.

Detection model (why these assertions cannot fail by luck). The runs are created with
``--checks-per-update 8`` (a legal run setting: a small swarm in which every peer checks every update), so no
random draw is involved: every peer recomputes every included update of every other peer at the
close of the round it was trained in. An update of round t that is included is therefore failed
by each of the 3 honest peers (and by the other attackers, whose checks are honest) at close(t);
``min_fail_verifiers = 2`` is met without any re-check, the verdicts are voted on at round
t + lag (lag = 2) and applied to base t + lag + 3 = t + 5. Attackers' updates are first included
in round 0 or 1, so the slash lands in base 5 or 6; the bound ``<= SLASH_BOUND`` (base 12, i.e.
an update first included by round 7) leaves 6 rounds (36 s) for loaded-machine delays in
fetching and recomputing. With p = 0.2 instead, a miss over those rounds had a probability of
about 0.51^7 = 1% per attacker when only the honest peers' draws are counted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from benchmarks.churn import SLASH_RE
from dai_swarm.testing import SocketGuard, founding_peers, spawn_bootstrap

# the two 8- or 9-peer swarms run one after another on one test worker (pytest -n 2 --dist loadgroup)
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("swarm8")]

# 6 s, not 4 s: at spot-check rate 1 each peer recomputes 7 updates a round, and beside a training
# demo on the same 2 cores 4 s rounds left honest peers unable to download a re-sync in time
ROUND_S = 6.0
CHECKS_PER_UPDATE = 8.0  # deterministic detection: see the module docstring
SLASH_BOUND = 12  # base round by which every detectable attacker is slashed (module docstring)
# Every peer starts at once (the joiners wait for p0's run with --wait-for-run), so they are importing
# and starting their DHTs while p0 creates the run; round 0 starts this long after that. Seven peers
# started after the run existed took up to 33 s to read the manifest on a 2-core machine whose other
# core ran another test (about 19 s when quiet); started beside p0, they had done most of that by then.
START_IN_S = 25.0
#: how long a joiner looks for p0's run before giving up (p0 alone was up in 8 s when quiet)
WAIT_FOR_RUN_S = 150.0


def run_swarm(workdir: str, attacks: list[str | None], until_round: int, run_id: str, max_steps: int = 15,
              round_s: float = ROUND_S, start_in_s: float = START_IN_S, late: dict[int, float] | None = None,
              keys_dir: str | None = None, extra_args: tuple[str, ...] = (), founders: int = 1,
              nice: dict[int, int] | None = None) -> list[dict]:
    """Run one swarm of ``dai-swarm peer`` processes (None = honest) until ``until_round``.

    p0 (honest) starts first and creates the run (it is the run's founder) with round 0 starting
    ``start_in_s`` after that; the others start at the same time without a task (they wait for
    p0's run, ``--wait-for-run``) and must be up by round 0, except the peers in ``late`` (index ->
    round), which start at that round (joiners). ``keys_dir``: peer
    i uses the identity ``keys_dir/p{i}.key`` (the same keys, hence the same data, across runs);
    ``extra_args`` go to every peer (e.g. ``("--codec", "sparse")``). ``founders``: peers
    ``0 .. founders-1`` are the run's founders (standing from round 0; they must be honest), the
    others start as newcomers. ``nice``: peer index -> CPU niceness of its process (e.g. an attacker
    that, on its own machine, would not take CPU from the honest peers sharing this one).

    Returns, per peer: attack, history, status, log text and the slashes its log reports.
    """
    os.makedirs(workdir, exist_ok=True)
    founding = founding_peers(workdir, [f"p{i}" for i in range(founders)]) if founders > 1 else {}
    with SocketGuard():
        boot = spawn_bootstrap(workdir)
        procs = []
        try:
            initial = boot.wait_ready(60)
            t0 = time.time() + start_in_s + 60  # replaced by an upper bound once p0 created the run
            late = late or {}
            for i, kind in sorted(enumerate(attacks), key=lambda ik: late.get(ik[0], -1.0)):
                # p0 (honest) first: it creates the run and is its founder; joiners at their round
                while i in late and time.time() < t0 + late[i] * round_s:
                    time.sleep(0.1)
                argv = [sys.executable, "-m", "dai_swarm", "peer", "--run-id", run_id,
                        "--round-s", str(round_s), "--until-round", str(until_round),
                        "--initial-peers", *initial, "--host-maddrs", "/ip4/127.0.0.1/tcp/0", "--region", "a",
                        "--threads", "1", "--quiet", "--max-inner-steps", str(max_steps),
                        "--checks-per-update", str(CHECKS_PER_UPDATE), "--address-file", os.path.join(workdir, f"p{i}.addr"),
                        "--history-file", os.path.join(workdir, f"p{i}.json"),
                        "--ledger", os.path.join(workdir, f"p{i}.ledger")]
                argv += list(extra_args)
                if kind:
                    argv += ["--attack", kind]
                if f"p{i}" in founding:
                    argv += founding[f"p{i}"]
                elif keys_dir:
                    argv += ["--identity", os.path.join(keys_dir, f"p{i}.key")]
                if i == 0:  # the founder creates the run; everyone else only joins it
                    argv += ["--task", "regression", "--start-in", str(start_in_s)]
                else:
                    argv += ["--wait-for-run", str(WAIT_FOR_RUN_S)]
                log = open(os.path.join(workdir, f"p{i}.log"), "wb")
                niceness = (nice or {}).get(i, 0)
                procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                                              preexec_fn=(lambda: os.nice(niceness)) if niceness else None))
                if i not in late and any(j not in late for j in range(i + 1, len(attacks))):
                    continue  # the founders' round-0 crowd starts together
                if not os.path.exists(os.path.join(workdir, "p0.addr")):
                    _wait_for_file(os.path.join(workdir, "p0.addr"), procs[0], timeout_s=WAIT_FOR_RUN_S)
                    t0 = time.time() + start_in_s  # p0 set t0 = (creation time) + start_in_s, before this
            deadline = t0 + (until_round + 4) * round_s + 60
            for p in procs:
                p.wait(timeout=max(1.0, deadline - time.time()))
        finally:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(10)
            boot.stop()
    out = []
    for i, kind in enumerate(attacks):
        with open(os.path.join(workdir, f"p{i}.log"), errors="replace") as f:
            log = f.read()
        path = os.path.join(workdir, f"p{i}.json")
        data = json.load(open(path)) if os.path.exists(path) else {"history": [], "status": {}}
        slashes = [(int(m.group(1)), [k.strip(" '") for k in m.group(2).split(",") if k.strip()])
                   for m in SLASH_RE.finditer(log)]
        out.append({"attack": kind, "history": data["history"], "status": data["status"], "log": log,
                    "slashes": slashes, "ledger": os.path.join(workdir, f"p{i}.ledger")})
    return out


def _wait_for_file(path: str, proc: subprocess.Popen, timeout_s: float) -> None:
    """Wait until ``proc`` wrote ``path`` (its addresses: the run exists), or fail with why."""
    deadline = time.time() + timeout_s
    while not os.path.exists(path):
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"the first peer did not come up ({path})")
        time.sleep(0.1)


def rejection_counts(peers: list[dict]) -> dict:
    """Sum of the round books' rejection counters over the peers' histories."""
    out: dict = {}
    for p in peers:
        for h in p["history"]:
            for k, v in (h.get("rejections") or {}).items():
                out[k] = out.get(k, 0) + v
    return out


def first_slash(peers: list[dict], key: str) -> int | None:
    """The first base round in which any honest peer's log reports ``key`` (prefix) slashed."""
    rounds = [r for p in peers if p["attack"] is None for r, keys in p["slashes"]
              if any(key.startswith(k) for k in keys)]
    return min(rounds) if rounds else None


def check_honest(peers: list[dict]) -> None:
    """Honest peers: never slashed, identical agreed state hashes in every round they all closed."""
    honest = [p for p in peers if p["attack"] is None]
    assert all(p["status"] for p in honest), [p["log"][-2000:] for p in honest if not p["status"]]
    for p in honest:
        assert p["status"]["trust"]["slashed"] is False
    by_round: dict[int, set] = {}
    for p in honest:
        for h in p["history"]:
            by_round.setdefault(h["round"], set()).add(h["state_hash"])
    rounds = sorted(by_round)
    assert len(rounds) >= 5
    # agreement is the round protocol's job (minorities re-sync); on this loaded 2-core machine a
    # peer may miss a round's announcements, so require agreement in most rounds, not all
    agreed = [r for r in rounds if len(by_round[r]) == 1]
    assert len(agreed) >= len(rounds) // 2, by_round


def report(peers: list[dict], name: str) -> dict:
    """Per attack: detected (slash round) or bounded; printed for the test log."""
    out = {}
    for p in peers:
        if p["attack"] is None:
            continue
        key = p["status"].get("public_key", "")
        out[p["attack"]] = {"slashed_in_base": first_slash(peers, key[:12]) if key else None,
                            "self_reported_slashed": p["status"].get("trust", {}).get("slashed"),
                            "reputation": p["status"].get("trust", {}).get("reputation")}
    print(name, json.dumps(out, indent=1))
    return out


def check_vesting(peers: list[dict], cheaters: list[str]) -> dict:
    """Over the honest peers' reward logs (merged by round): every ``cheaters`` kind ends with 0
    vested units (it never earned standing, so nothing it was awarded ever vested; a slash
    forfeited it), and each honest peer has vested exactly the units of the rounds whose verdict
    window closed (pending == vested once windows close). Returns the per-peer figures."""
    from dai_swarm.rewards.diff import iter_records
    from dai_swarm.rewards.records import ROUND
    from dai_swarm.rewards.report import ledger_report

    honest = [p for p in peers if p["attack"] is None]
    rep = ledger_report([p["ledger"] for p in honest if os.path.exists(p["ledger"])])
    rounds: dict[int, dict] = {}
    for p in honest:
        for rec in (iter_records(p["ledger"]) if os.path.exists(p["ledger"]) else ()):
            if rec.type == ROUND:
                rounds.setdefault(int(rec.body["round"]), rec.body)
    assert rounds and sorted(rounds) == list(range(min(rounds), max(rounds) + 1)), sorted(rounds)
    assert min(rounds) == 0 and all("vesting" in b for b in rounds.values())
    window, last = rounds[max(rounds)]["vesting"]["window"], max(rounds)
    keys = {p["attack"] or f"honest{i}": p["status"].get("public_key", "") for i, p in enumerate(peers)}
    out = {}
    for name, key in keys.items():
        c = rep["contributors"].get(key, {})
        closed = sum(b["vesting"]["pending"].get(key, 0) for r, b in rounds.items() if r <= last - window)
        out[name] = {"awarded": c.get("total", 0), "vested": c.get("vested", 0), "pending": c.get("pending", 0),
                     "forfeited": c.get("forfeited", 0), "pending_of_closed_windows": closed}
    print("vesting", json.dumps(out, indent=1))
    for kind in cheaters:
        assert keys[kind] and out[kind]["vested"] == 0, (kind, out[kind])
    for name in keys:
        if name.startswith("honest"):
            assert out[name]["vested"] == out[name]["pending_of_closed_windows"] > 0, (name, out[name])
            assert out[name]["forfeited"] == 0, (name, out[name])
    return out


#: read the others' updates (alie, ipm, copy), the peer's own bases (lazy) or its own old payloads (replay)
DETECTED_A = ["lazy", "replay", "alie", "ipm"]


def test_detected_and_copy_attacks_swarm_a(tmp_path):
    peers = run_swarm(str(tmp_path), [None, None, None, *DETECTED_A, "copy"], until_round=11, run_id="atk-a")
    check_honest(peers)
    res = report(peers, "swarm A")
    for kind in DETECTED_A:
        assert res[kind]["slashed_in_base"] is not None, kind
        assert res[kind]["slashed_in_base"] <= SLASH_BOUND, (kind, res[kind])
    # copy: the copied digest is announced by two peers, so the book drops both: never aggregated
    honest = [p for p in peers if p["attack"] is None]
    n = len(peers)
    assert any(h["updates"] <= n - 2 for p in honest for h in p["history"][2:])
    reasons = rejection_counts(honest)
    print("swarm A rejections seen by honest peers:", reasons)
    if reasons:  # (the round history records the book's rejection counters)
        assert reasons.get("copy", 0) > 0
    # replay trains honestly in its first rounds (and may vest them); a copier earns nothing
    check_vesting(peers, ["lazy", "alie", "ipm", "copy"])


#: 9 peers, two of them forging or replaying verdicts that every honest peer re-checks: 8 s rounds,
#: since at 6 s two of three honest peers fell a round behind for good on a slower 2-core machine
ROUND_S_C = 8.0


def test_bounded_and_verdict_attacks_swarm_c(tmp_path):
    kinds = ["nan", "wrong_shape", "oversized", "forged_verdict", "replayed_verdict", "freeride"]
    peers = run_swarm(str(tmp_path), [None, None, None, *kinds], until_round=11, run_id="atk-c",
                      round_s=ROUND_S_C)
    check_honest(peers)
    res = report(peers, "swarm C")
    honest = [p for p in peers if p["attack"] is None]
    # nan / wrong_shape payloads are refused at decode, the oversized one by its declared size (over
    # the cap derived from the model: never downloaded) or at decode: at most n - 3 updates per round
    for p in honest:
        for h in p["history"]:
            assert h["updates"] <= len(peers) - 3, h
    reasons = rejection_counts(honest)
    print("swarm C rejections seen by honest peers:", reasons)
    if reasons:
        for reason in ("NonFiniteValues", "ShapeMismatch"):
            assert reasons.get(reason, 0) > 0, (reason, reasons)
        assert reasons.get("too_large", 0) + reasons.get("PayloadTooLarge", 0) > 0, reasons
    # forged verdicts: false accusations against honest updates are contradicted by re-checks
    assert res["forged_verdict"]["slashed_in_base"] is not None
    invalid = sum(p["status"]["trust"]["invalid_verdicts"] for p in honest)
    assert invalid > 0
    assert res["replayed_verdict"]["slashed_in_base"] is None  # its training is honest; replays ignored
    # the free-rider (a rescaled copy of the previous aggregate) is slashed and ends with 0 vested units
    assert res["freeride"]["slashed_in_base"] is not None and res["freeride"]["slashed_in_base"] <= SLASH_BOUND
    check_vesting(peers, ["freeride", "nan", "wrong_shape", "oversized"])
