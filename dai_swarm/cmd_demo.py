"""``dai-swarm demo``: a local swarm that finds itself, trains, loses a peer and gains one.

Starts ``--peers`` real peer processes (``dai-swarm peer``) on loopback in two regions, shows
them discovering each other and training in a live table (read from each peer's
``/status.json``), SIGKILLs one peer midway and starts a new one that joins the running swarm,
then prints a summary table, runs the centralized reference trainer and writes, under the output
folder it prints: ``loss_vs_samples.png`` (swarm vs centralized), ``summary.json``, a dashboard
screenshot (``dashboard.png``, when Chromium is installed) and every peer's log. Ctrl+C stops
every process it started and removes their sockets.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any

from .errors import BootstrapError, ConfigError
from .logging import get_logger

logger = get_logger(__name__)

__all__ = ["add_parser", "run"]

EPILOG = """examples:
  dai-swarm demo                       # 4 peers, 2 regions, about 2 minutes of training
  dai-swarm demo --peers 6 --minutes 4 --out out/demo6
  dai-swarm demo --task regression --minutes 0.5 --no-reference

While it runs, open the dashboard URL it prints (any peer's --metrics-port page).
"""
REGIONS = ("eu", "us", "asia", "sa", "af", "oc")
URL_RE = re.compile(r"dashboard and metrics: (http://[0-9.:]+/)")


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``demo`` and its options."""
    p = sub.add_parser("demo", help="run a local swarm with churn and compare it to centralized training",
                       description=__doc__.split("\n\n")[0], epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", type=int, default=4, help="peer processes at the start (default 4)")
    p.add_argument("--regions", type=int, default=2, help="regions, peers assigned round-robin (default 2)")
    p.add_argument("--minutes", type=float, default=2.0, help="training time after start-up (default 2)")
    p.add_argument("--task", default="tinylm-small", help="task to train (default tinylm-small)")
    p.add_argument("--round-s", type=float, default=8.0, help="round length in seconds (default 8)")
    p.add_argument("--cross-region-period", type=int, default=3, help="rounds between cross-region merges (default 3)")
    p.add_argument("--max-inner-steps", type=int, default=40, help="inner steps per peer and round (default 40)")
    p.add_argument("--no-churn", action="store_true", help="do not kill a peer and add a new one midway")
    p.add_argument("--no-reference", action="store_true", help="skip the centralized reference run")
    p.add_argument("--reference-samples", type=int, default=40_000,
                   help="cap on the centralized run's samples (default 40000)")
    p.add_argument("--startup-s", type=float, default=30.0,
                   help="seconds from launch to round 0, for the processes to start (default 30)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default out/demo-<time>)")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON on stdout (tables go to stderr)")
    return p


# --- peer processes --------------------------------------------------------------------------------
class DemoPeer:
    """One ``dai-swarm peer`` process of the demo, with its latest ``/status.json``."""

    def __init__(self, name: str, region: str, proc: Any, joined_at: float):
        self.name, self.region, self.proc, self.joined_at = name, region, proc, joined_at
        self.url: str | None = None
        self.status: dict = {}
        self.fate = "running"

    def poll(self) -> None:
        """Find the dashboard URL in the log, then refresh the status document (never raises)."""
        if self.url is None:
            try:
                with open(self.proc.log_path, errors="replace") as f:
                    m = URL_RE.search(f.read())
                self.url = m.group(1) if m else None
            except OSError:
                return
        if self.url is None or not self.proc.alive():
            return
        try:
            with urllib.request.urlopen(self.url + "status.json", timeout=1.0) as r:
                self.status = json.loads(r.read())
        except Exception:
            pass


def _spawn(workdir: str, name: str, region: str, common: list[str], initial_peers: list[str],
           founding: list[str] | None = None):
    from .testing import PeerProcess

    address_file = os.path.join(workdir, f"{name}.addr")
    log_path = os.path.join(workdir, f"{name}.log")
    argv = ["-m", "dai_swarm", "peer", *common, "--region", region, "--address-file", address_file,
            "--history-file", os.path.join(workdir, f"{name}.json"), "--metrics-port", "0", *(founding or [])]
    if initial_peers:
        argv += ["--initial-peers", *initial_peers]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, *argv], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True,
                                preexec_fn=_die_with_parent)
    return PeerProcess(proc, address_file, log_path, argv)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the peer gets SIGTERM if the demo dies without cleaning up (even on SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _stop_all(procs: list[Any], grace_s: float = 20.0) -> list[int | None]:
    """SIGTERM every process still running, wait up to ``grace_s`` together, SIGKILL the rest; exit codes."""
    for p in procs:
        if p.alive():
            p.proc.send_signal(signal.SIGTERM)
    deadline = time.time() + grace_s
    for p in procs:
        try:
            p.proc.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
    return [p.proc.returncode for p in procs]


# --- the run ---------------------------------------------------------------------------------------
def _visible(peers: list[DemoPeer]) -> tuple[int, dict]:
    """The most peers (and their regions) any running peer's status document lists."""
    docs = [p.status for p in peers if p.fate == "running" and p.status]
    best = max(docs, key=lambda d: len(d.get("peers", [])), default={})
    return len(best.get("peers", [])), dict(best.get("regions", {}))


def run(args: argparse.Namespace) -> int:
    """Run the demo; Ctrl+C (or SIGTERM) stops everything it started and still prints a summary."""
    from . import demo_report
    from .logging import quiet_known_noise
    from .testing import SocketGuard, founding_peers, spawn_bootstrap

    quiet_known_noise()

    if args.peers < 2 or args.regions < 1 or args.minutes <= 0 or args.round_s <= 0:
        raise ConfigError("the demo needs --peers >= 2, --regions >= 1 and positive --minutes and --round-s")
    out = os.path.abspath(args.out or os.path.join("out", time.strftime("demo-%Y%m%d-%H%M%S")))
    workdir = os.path.join(out, "peers")
    os.makedirs(workdir, exist_ok=True)
    regions = [REGIONS[i % len(REGIONS)] + ("" if i < len(REGIONS) else str(i)) for i in range(args.regions)]
    until_round = max(4, round(args.minutes * 60 / args.round_s))
    t0 = math.ceil(time.time() + args.startup_s)
    run_id = f"demo-{int(t0) % 100000}"
    common = ["--run-id", run_id, "--task", args.task, "--round-s", str(args.round_s), "--t0", str(t0),
              "--until-round", str(until_round), "--cross-region-period", str(args.cross_region_period),
              "--max-inner-steps", str(args.max_inner_steps), "--threads", "1", "--quiet",
              "--host-maddrs", "/ip4/127.0.0.1/tcp/0"]
    con = demo_report.console(stderr=args.json)
    con.print(f"[bold]dai-swarm demo[/]: {args.peers} peers in regions {', '.join(regions)}, task {args.task}, "
              f"{until_round} rounds of {args.round_s:g} s; round 0 starts in {t0 - time.time():.0f} s\n"
              f"output folder: {out}")
    peers: list[DemoPeer] = []
    procs: list[Any] = []
    events: list[dict] = []
    summary: dict[str, Any] = {"peers": args.peers, "interrupted": False, "run_id": run_id, "out": out}
    started = time.monotonic()
    stop = {"flag": False}

    def on_signal(signum, frame):
        if stop["flag"]:  # second Ctrl+C: stop waiting, clean up now
            raise KeyboardInterrupt
        stop["flag"] = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    guard = SocketGuard().__enter__()
    try:
        boot = spawn_bootstrap(workdir)
        procs.append(boot)
        try:
            seeds = boot.wait_ready(max(60.0, 2 * args.startup_s))
        except BootstrapError as e:
            raise BootstrapError(f"the bootstrap node did not start: {e}; see {boot.log_path}") from e
        con.print(f"bootstrap up: --initial-peers {' '.join(seeds)}")
        # the initial peers found the run (every region holds standing from round 0); churn's
        # replacements are newcomers that earn theirs by verified work
        founding = founding_peers(workdir, [f"peer{i}" for i in range(args.peers)])
        for i in range(args.peers):
            name, region = f"peer{i}", regions[i % len(regions)]
            peers.append(DemoPeer(name, region, _spawn(workdir, name, region, common, seeds, founding[name]),
                                  time.time()))
        procs.extend(p.proc for p in peers)
        kill_round = None if args.no_churn else max(2, int(until_round * 0.3))
        shot_round: int | None = max(3, int(until_round * 0.7))
        all_seen_s = None
        with demo_report.live_view(con) as live:
            while not stop["flag"]:
                for p in peers:
                    p.poll()
                    if p.fate == "running" and not p.proc.alive():
                        p.fate = "finished" if p.proc.proc.returncode == 0 else f"exited {p.proc.proc.returncode}"
                visible, _ = _visible(peers)
                if all_seen_s is None and visible >= args.peers:
                    all_seen_s = round(time.monotonic() - started, 1)
                    con.print(f"all {args.peers} peers visible after {all_seen_s:.1f} s")
                current = max((p.status.get("round") or 0 for p in peers if p.fate == "running" and p.status), default=0)
                # the churn kill waits until every peer has been seen (up to 2 rounds): a peer killed before
                # the others listed it shows nothing of a swarm losing a member
                if kill_round is not None and current >= kill_round and (all_seen_s is not None
                                                                         or current >= kill_round + 2):
                    kill_round = None
                    victim = peers[1]
                    victim.proc.kill()
                    victim.fate = f"SIGKILL at round {current}"
                    name = f"peer{len(peers)}"
                    joiner = DemoPeer(name, victim.region, _spawn(workdir, name, victim.region, common, seeds), time.time())
                    peers.append(joiner)
                    procs.append(joiner.proc)
                    events += [{"event": "kill", "peer": victim.name, "round": current, "time": time.time()},
                               {"event": "join", "peer": name, "round": current, "time": time.time()}]
                    con.print(f"{victim.name} killed with SIGKILL at round {current}; {name} starts and joins")
                if shot_round is not None and current >= shot_round and peers[0].url:
                    shot_round = None
                    shot = os.path.join(out, "dashboard.png")
                    if demo_report.screenshot(peers[0].url, shot):
                        events.append({"event": "screenshot", "path": shot, "round": current})
                live.update(demo_report.live_table(peers, run_id, until_round, events, t0))
                if not any(p.proc.alive() for p in peers):
                    break
                time.sleep(1.0)
        summary["interrupted"] = stop["flag"]
        summary["visible_at_end"], summary["regions"] = _visible(peers)
        summary["all_visible_after_s"] = all_seen_s
        if peers and peers[0].url:
            con.print(f"dashboard of peer0 was at {peers[0].url}")
    except KeyboardInterrupt:
        summary["interrupted"] = True
    finally:
        summary["exit_codes"] = _stop_all(procs)
        guard.__exit__(None, None, None)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        summary["ran_s"] = round(time.monotonic() - started, 1)
    if summary["interrupted"]:
        con.print(f"interrupted: stopped {len(procs)} processes (exit codes {summary['exit_codes']}); "
                  f"logs in {workdir}")
    else:
        summary.update(demo_report.finish(peers, events, args, out, workdir, until_round, con))
        summary["peers"] = args.peers
    if args.json:
        print(json.dumps(summary, sort_keys=True, default=str))
    return 0 if summary["interrupted"] or summary.get("ok") else 1
