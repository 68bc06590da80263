"""Small attack swarms of real ``dai-swarm peer`` processes on the regression task.

:func:`run_swarm` starts a bootstrap node and one peer process per entry of ``attacks`` (None =
honest, else an ``--attack`` kind), lets them run to a round and returns each peer's history,
status, log and the slashes its log reports. The attack tests (``tests/test_attacks_processes.py``,
``tests/test_sybil_processes.py``) and the Sybil-flood benchmark (:mod:`benchmarks.sybil_flood`)
use it. Runs use ``--checks-per-update 8`` (a small swarm in which every peer checks every
update), so whether an attacker is detected never depends on a random draw.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from benchmarks.churn import SLASH_RE
from dai_swarm.testing import SocketGuard, founding_peers, spawn_bootstrap

__all__ = ["CHECKS_PER_UPDATE", "ROUND_S", "START_IN_S", "WAIT_FOR_RUN_S", "first_slash", "run_swarm"]

# 6 s, not 4 s: at spot-check rate 1 each peer recomputes 7 updates a round, and beside a training
# demo on the same 2 cores 4 s rounds left honest peers unable to download a re-sync in time
ROUND_S = 6.0
CHECKS_PER_UPDATE = 8.0  # every peer checks every update: detection without a random draw
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
                niceness = (nice or {}).get(i, 0)
                with open(os.path.join(workdir, f"p{i}.log"), "wb") as log:  # the child keeps its own descriptor
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
        data = {"history": [], "status": {}}
        if os.path.exists(path):
            with open(path) as f:
                data = json.load(f)
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


def first_slash(peers: list[dict], key: str) -> int | None:
    """The first base round in which any honest peer's log reports ``key`` (prefix) slashed."""
    rounds = [r for p in peers if p["attack"] is None for r, keys in p["slashes"]
              if any(key.startswith(k) for k in keys)]
    return min(rounds) if rounds else None
