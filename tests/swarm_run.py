"""Helpers for tests that run real `dai-swarm peer` processes on loopback."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from dai_swarm.dht import _proc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Peer:
    """One `dai-swarm peer` process and its files."""

    name: str
    proc: subprocess.Popen
    workdir: str
    history_file: str
    address_file: str
    log_file: str
    extra: dict = field(default_factory=dict)

    def addresses(self, timeout_s: float = 90.0) -> list[str]:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if os.path.exists(self.address_file):
                with open(self.address_file) as f:
                    lines = [x.strip() for x in f if x.strip()]
                if lines:
                    return lines
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log()}")
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} wrote no address file:\n{self.log()}")

    def log(self) -> str:
        try:
            with open(self.log_file) as f:
                return f.read()[-6000:]
        except OSError:
            return ""

    def history(self) -> dict:
        with open(self.history_file) as f:
            return json.load(f)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def spawn_peer(workdir: str, name: str, *, run_id: str, task: str | None, t0: float | None, round_s: float, until_round: int,
               region: str, initial_peers: list[str] | None = None, cross_region_period: int = 3,
               max_inner_steps: int = 40, env: dict | None = None, extra_args: list[str] | None = None,
               founding: list[str] | None = None) -> Peer:
    """Start one peer process that leaves by itself at ``until_round`` (``task``/``t0`` None: not
    passed); ``founding``: its arguments from :func:`dai_swarm.testing.founding_peers` when it is one
    of the run's founders."""
    hist, addr, log = (os.path.join(workdir, f"{name}.{ext}") for ext in ("json", "addr", "log"))
    argv = [sys.executable, "-m", "dai_swarm", "peer", "--run-id", run_id, "--round-s", str(round_s),
            "--until-round", str(until_round), "--region", region, "--threads", "1", "--quiet",
            "--host-maddrs", "/ip4/127.0.0.1/tcp/0", "--cross-region-period", str(cross_region_period),
            "--max-inner-steps", str(max_inner_steps), "--address-file", addr, "--history-file", hist]
    argv += ["--task", task] if task is not None else []
    argv += ["--t0", str(t0)] if t0 is not None else []
    if initial_peers:
        argv += ["--initial-peers", *initial_peers]
    argv += [*(founding or []), *(extra_args or [])]
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    full_env.update(env or {})
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=full_env)
    return Peer(name, proc, workdir, hist, addr, log)


def wait_all(peers: list[Peer], timeout_s: float) -> None:
    """Wait for every peer to exit; kill stragglers and fail with their logs."""
    deadline = time.time() + timeout_s
    for p in peers:
        try:
            p.proc.wait(max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for q in peers:
                q.kill()
            raise AssertionError(f"{p.name} did not finish in time:\n{p.log()}")


def cleanup(peers: list[Peer]) -> None:
    """Kill what is left and remove hivemind sockets left behind by SIGKILLed peers: only those
    nobody listens on (a connect attempt, which also sees the live sockets of peers in other
    network namespaces; /proc/net/unix lists only this namespace's, and reading it made one
    test delete the live sockets of another's namespaced peers)."""
    for p in peers:
        p.kill()
    _proc.remove_stale_sockets(glob.glob("/tmp/hivemind-*.sock"))


def by_round(history: dict) -> dict[int, dict]:
    """A peer's history entries keyed by round."""
    return {h["round"]: h for h in history["history"]}
