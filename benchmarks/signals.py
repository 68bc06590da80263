"""Shutdown benchmark: signals at random moments to the peers of a busy swarm; every exit timed.

    python -m benchmarks.signals                   # 100 signals, 4 peers (about 20 minutes on 2 cores)
    python -m benchmarks.signals --quick           # 6 signals (each way once), 3 peers (the integration test)

An anchor peer creates the run and trains throughout. Each other peer slot loops: start a fresh
``dai-swarm peer`` process (its own session, so its PGID is its pid, as under a service manager),
wait a random time (0.3 s up to ``--max-delay-s``: during start-up, the join and its state download,
training, fetching and verifying, re-syncs), then signal it in one of these ways, in turn:

``int-main``/``term-main`` (SIGINT/SIGTERM to the main process, Ctrl+C and ``kill``),
``int-group``/``term-group`` (to its process group, ``kill -- -PGID``), ``term-all`` (to every
process of the peer at once, as systemd's default stop and ``docker stop`` do), ``twice`` (SIGTERM,
then SIGINT 0.3 s later: the second must force the exit at once).

For each signal: seconds until the main process exited, and until its whole tree was gone; whether
any process of its tree (sampled every 0.1 s while it lived) or any hivemind socket they owned is
left ``DRAIN_S`` later (torch's shared-memory manager exits by itself about 2 s after the peer); whether its reward
log verifies (``dai-swarm ledger verify``). At the end the anchor gets SIGTERM (timed the same way)
and the whole run is checked for processes and ``/tmp/hivemind-*`` files it created. Writes JSON and
a markdown table (``--out``). Exit status 0 when every exit took at most ``--limit-s`` and nothing
was left behind, 1 otherwise.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from dai_swarm.dht import _proc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: torch's shared-memory manager (a child of the peer) exits by itself once its last client is gone,
#: about 2 s after the peer; a process still alive this long after the peer's exit is a leftover
DRAIN_S = 3.0
#: ... except the shared-memory manager itself, which outlived that by over 3 s on a loaded CI machine
#: (load 6.7 on 2 cores): it is given this long to exit by itself (its exit time is reported) before
#: it counts as a leftover; SIGKILLing it instead could leave its /dev/shm files behind
SHM_MANAGER = "torch_shm_manager"
SHM_DRAIN_S = 15.0
MODES = ("int-main", "term-main", "int-group", "term-group", "term-all", "twice")


def _spawn(workdir: str, name: str, run_id: str, task: str, round_s: float, initial: list[str] | None) -> dict:
    log, addr, ledger = (os.path.join(workdir, f"{name}.{ext}") for ext in ("log", "addr", "ledger"))
    argv = [sys.executable, "-m", "dai_swarm", "peer", "--run-id", run_id, "--task", task, "--round-s", str(round_s),
            "--threads", "1", "--quiet", "--host-maddrs", "/ip4/127.0.0.1/tcp/0", "--max-inner-steps", "20",
            "--address-file", addr, "--ledger", ledger, "--region", "r0"]
    argv += ["--initial-peers", *initial] if initial else ["--start-in", "3"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
    return {"name": name, "proc": proc, "log": log, "addr": addr, "ledger": ledger, "started": time.monotonic()}


def _addresses(peer: dict, timeout_s: float) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and peer["proc"].poll() is None:
        if os.path.exists(peer["addr"]):
            with open(peer["addr"]) as f:
                lines = [x.strip() for x in f if x.strip()]
            if lines:
                return lines
        time.sleep(0.2)
    raise RuntimeError(f"{peer['name']} wrote no address file: {open(peer['log']).read()[-3000:]}")


def _phase(peer: dict) -> str:
    """What the peer was doing when signalled, from its log (rough)."""
    try:
        with open(peer["log"]) as f:
            text = f.read()
    except OSError:
        return "start-up"
    if "starts at round" not in text:
        return "join" if "--run-id" in text else "start-up"
    tail = text[-2000:]
    if "re-sync" in tail or "state download" in tail:
        return "re-sync"
    return "training"


def _send(peer: dict, mode: str) -> None:
    pid = peer["proc"].pid
    tree = [pid] + _proc.descendants(pid)
    sig = signal.SIGINT if mode.startswith("int") else signal.SIGTERM
    targets = {"main": [pid], "group": None, "all": tree}.get(mode.split("-")[-1], [pid])
    try:
        if targets is None:
            os.killpg(pid, sig)
        else:
            for p in targets:
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
        if mode == "twice":
            time.sleep(0.3)
            os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        pass


def _identity(pid: int) -> tuple[str, str] | None:
    """(start time, command) of a live process, None if it is gone (a pid may be reused: compare both)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return None
    return None if fields[0] == "Z" else (fields[19], cmd)


def _measure(peer: dict, mode: str, limit_s: float) -> dict:
    """Signal ``peer`` as ``mode``; time its exit and look for leftovers."""
    proc, pids, sockets = peer["proc"], {}, set()
    phase = _phase(peer)

    def sample() -> None:
        tree = [proc.pid] + _proc.descendants(proc.pid)
        for p in tree:
            if p not in pids:
                ident = _identity(p)
                if ident is not None:
                    pids[p] = ident
            sockets.update(_proc.daemon_sockets(p))
        sockets.update(_proc.owned_sockets(tree))

    sample()
    t0 = time.monotonic()
    threading.Thread(target=_send, args=(peer, mode), daemon=True).start()
    dumped = False
    while proc.poll() is None and time.monotonic() - t0 < 60:
        sample()
        time.sleep(0.1)
        if not dumped and time.monotonic() - t0 > 30:  # hung: every process writes its stacks to the log
            dumped = True
            for p in list(pids):
                try:
                    os.kill(p, signal.SIGUSR1)
                except ProcessLookupError:
                    pass
    exit_s = time.monotonic() - t0
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    def left() -> list[int]:
        return sorted(p for p, ident in pids.items() if p != proc.pid and _identity(p) == ident)

    def others() -> list[int]:
        return [p for p in left() if os.path.basename(pids[p][1].split(" ")[0]) != SHM_MANAGER]

    while left() and time.monotonic() - t0 < exit_s + DRAIN_S:
        time.sleep(0.05)
    while left() and not others() and time.monotonic() - t0 < exit_s + SHM_DRAIN_S:
        time.sleep(0.05)  # only torch's shared-memory manager is left: it exits by itself, let it
    tree_gone_s = time.monotonic() - t0
    left_pids = left()
    left_sockets = sorted(s for s in sockets if os.path.exists(s))
    for p in left_pids:  # leave nothing for the next trial, but count it
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _proc.remove_files(left_sockets)
    verify = None
    if os.path.exists(peer["ledger"]):
        r = subprocess.run([sys.executable, "-m", "dai_swarm", "ledger", "verify", peer["ledger"]], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
        verify = r.returncode == 0
    return {"peer": peer["name"], "mode": mode, "phase": phase, "after_start_s": round(t0 - peer["started"], 2),
            "exit_s": round(exit_s, 3), "tree_gone_s": round(tree_gone_s, 3), "exit_code": proc.returncode,
            "in_time": exit_s <= limit_s,
            "processes_seen": len(pids), "processes": sorted(os.path.basename(ident[1].split(" ")[0])
                                                             for ident in pids.values()),
            "stacks_dumped": dumped,  # SIGUSR1: faulthandler's stacks are in the peer's log
            "leftover_processes": len(left_pids), "leftover_sockets": len(left_sockets),
            "leftovers": [pids[p][1] for p in left_pids] + left_sockets,
            "ledger_verified": verify}


def run(args: argparse.Namespace) -> dict:
    """Run the benchmark; return the report."""
    rng = random.Random(args.seed)
    before_sockets = set(glob.glob("/tmp/hivemind-*"))
    workdir = tempfile.mkdtemp(prefix="dai-signals-")
    run_id = f"signals-{os.getpid()}"
    anchor = _spawn(workdir, "anchor", run_id, args.task, args.round_s, None)
    initial = _addresses(anchor, 120)
    results: list[dict] = []
    lock = threading.Lock()
    counter = {"next": 0}
    t_start = time.monotonic()

    def slot_main(slot: int) -> None:
        incarnation = 0
        while True:
            with lock:
                i = counter["next"]
                if i >= args.signals:
                    return
                counter["next"] += 1
            peer = _spawn(workdir, f"s{slot}-{incarnation}", run_id, args.task, args.round_s, initial)
            incarnation += 1
            time.sleep(rng.uniform(0.3, args.max_delay_s))
            result = _measure(peer, MODES[i % len(MODES)], args.limit_s)
            result["signal"] = i
            with lock:
                results.append(result)
                print(json.dumps(result), flush=True)

    threads = [threading.Thread(target=slot_main, args=(s,)) for s in range(1, args.peers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = _measure(anchor, "term-main", args.limit_s)
    final["signal"] = "anchor"
    time.sleep(1.0)
    new_sockets = sorted(set(glob.glob("/tmp/hivemind-*")) - before_sockets)
    exits = [r["exit_s"] for r in results] + [final["exit_s"]]
    everything = results + [final]
    report = {
        "benchmark": "signals", "signals": len(results), "peers": args.peers, "task": args.task,
        "round_s": args.round_s, "limit_s": args.limit_s, "seed": args.seed,
        "wall_s": round(time.monotonic() - t_start, 1), "load_avg_1min": os.getloadavg()[0],
        "slowest_exit_s": max(exits), "median_exit_s": round(statistics.median(exits), 3),
        "slowest_tree_gone_s": max(r["tree_gone_s"] for r in results + [final]),
        "in_time": sum(r["in_time"] for r in everything), "exits": len(everything),
        "leftover_processes": sum(r["leftover_processes"] for r in everything),
        "leftover_sockets": sum(r["leftover_sockets"] for r in everything),
        "run_leftover_socket_files": new_sockets,
        "ledgers_verified": sum(r["ledger_verified"] is True for r in everything),
        "ledgers_failed": sum(r["ledger_verified"] is False for r in everything),
        "ledgers_absent": sum(r["ledger_verified"] is None for r in everything),
        "by_mode": {m: _stats([r for r in results if r["mode"] == m]) for m in MODES},
        "by_phase": {p: _stats([r for r in results if r["phase"] == p])
                     for p in sorted({r["phase"] for r in results})},
        "anchor": final, "results": sorted(results, key=lambda r: r["signal"]), "workdir": workdir,
    }
    report["ok"] = (report["in_time"] == report["exits"] and not report["leftover_processes"]
                    and not report["leftover_sockets"] and not new_sockets and not report["ledgers_failed"])
    return report


def _stats(rows: list[dict]) -> dict:
    exits = [r["exit_s"] for r in rows]
    return {"n": len(rows), "max_exit_s": max(exits) if exits else None,
            "median_exit_s": round(statistics.median(exits), 3) if exits else None}


def markdown(report: dict) -> str:
    """The report as a markdown table."""
    lines = [f"# Shutdown under signals: {report['signals']} signals, {report['peers']} peers "
             f"({report['task']}, {report['round_s']:g} s rounds)", "",
             f"Slowest exit **{report['slowest_exit_s']:.2f} s** (limit {report['limit_s']:g} s), median "
             f"{report['median_exit_s']:.2f} s; whole process tree gone within {report['slowest_tree_gone_s']:.2f} s; "
             f"{report['in_time']}/{report['exits']} in time; leftover processes "
             f"{report['leftover_processes']}, sockets {report['leftover_sockets']} (run-wide "
             f"{len(report['run_leftover_socket_files'])}); ledgers verified {report['ledgers_verified']}, failed "
             f"{report['ledgers_failed']}, none yet {report['ledgers_absent']}. Wall {report['wall_s']:.0f} s, "
             f"load {report['load_avg_1min']:.1f}.", "",
             "| how | signals | slowest exit (s) | median (s) |", "|---|---|---|---|"]
    for mode, s in report["by_mode"].items():
        if s["n"]:
            lines.append(f"| {mode} | {s['n']} | {s['max_exit_s']:.2f} | {s['median_exit_s']:.2f} |")
    lines += ["", "| moment | signals | slowest exit (s) | median (s) |", "|---|---|---|---|"]
    for phase, s in report["by_phase"].items():
        lines.append(f"| {phase} | {s['n']} | {s['max_exit_s']:.2f} | {s['median_exit_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line; see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.signals", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--signals", type=int, default=100, help="signals to send (default 100)")
    p.add_argument("--peers", type=int, default=4, help="peers including the anchor (default 4)")
    p.add_argument("--task", default="tinylm", help="task the swarm trains (default tinylm)")
    p.add_argument("--round-s", type=float, default=6.0, help="round length (default 6)")
    p.add_argument("--max-delay-s", type=float, default=20.0, help="longest wait from start to signal (default 20)")
    p.add_argument("--limit-s", type=float, default=10.0, help="an exit must take at most this long (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed of delays (default 0)")
    p.add_argument("--quick", action="store_true", help="6 signals (each way once), 3 peers, regression task")
    p.add_argument("--out", default=os.path.join(REPO, "docs", "results", "signals"),
                   help="directory for signals.json and signals.md")
    args = p.parse_args(argv)
    if args.quick:
        args.signals, args.peers, args.task, args.max_delay_s = min(args.signals, len(MODES)), 3, "regression", 12.0
    report = run(args)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "signals.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "signals.md"), "w") as f:
        f.write(markdown(report))
    print(markdown(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
