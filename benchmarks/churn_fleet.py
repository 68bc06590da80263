"""A fleet of real peer processes driven by a churn schedule, with byte and liveness sampling.

:class:`Fleet` starts one process per :class:`~dai_swarm.testing.PeerLife` when its start time
comes, SIGKILLs it (with its p2pd daemon) when its stop time comes, and samples once a second:
peers alive, and bytes on the wire. It is used for both systems of the churn benchmark (dai_swarm
peers and hivemind.Optimizer workers), so their bytes are counted the same way:

* WAN mode (:class:`benchmarks.wan.WanNet`): each slot's host-side veth counters, exact.
* loopback: every peer's network I/O goes through its p2pd daemon (libp2p), which relays each
  byte once between the TCP socket and the Python process over a unix socket; the fleet reads
  ``rchar + wchar`` of every p2pd process from ``/proc/<pid>/io`` and counts half of it as the
  bytes that peer sent plus received. That includes libp2p's framing and encryption overhead
  and excludes TCP/IP headers; it is the same measure for both systems.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from dai_swarm.dht import _proc
from dai_swarm.dht.address_file import read_address_file
from dai_swarm.testing import PeerLife, PeerProcess

__all__ = ["Fleet", "LifeRecord", "host_maddr", "log_tail", "p2pd_io_bytes", "read_jsonl", "run_fleet"]


def p2pd_io_bytes(pid: int) -> int | None:
    """``rchar + wchar`` summed over the p2pd daemons below ``pid`` (None if none is found yet)."""
    total, found = 0, False
    for child in _proc.descendants(pid):
        try:
            with open(f"/proc/{child}/comm") as f:
                if f.read().strip() != "p2pd":
                    continue
            with open(f"/proc/{child}/io") as f:
                fields = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        except OSError:
            continue
        total += int(fields.get("rchar", 0)) + int(fields.get("wchar", 0))
        found = True
    return total if found else None


@dataclass
class LifeRecord:
    """One scheduled peer process and what the fleet saw of it."""

    life: PeerLife
    name: str
    workdir: str
    proc: PeerProcess | None = None
    launched_at: float | None = None
    ended_at: float | None = None
    killed: bool = False
    io_bytes: int = 0  # loopback: last p2pd (rchar + wchar) / 2 seen
    retries: int = 0

    @property
    def history_file(self) -> str:
        """Where the process writes its JSON history (dai_swarm peers) or progress log."""
        return os.path.join(self.workdir, f"{self.name}.json")

    @property
    def address_file(self) -> str:
        """Where the process writes its multiaddrs."""
        return os.path.join(self.workdir, f"{self.name}.addr")

    @property
    def log_path(self) -> str:
        """stdout/stderr of the process."""
        return os.path.join(self.workdir, f"{self.name}.log")


@dataclass
class Fleet:
    """Runs ``schedule`` (times relative to ``t0``, Unix seconds) with argv from ``build_argv``.

    ``build_argv(record, initial_peers)`` returns the command (without ``python``); ``wrap`` (WAN
    mode) turns (argv, slot) into the namespaced command; ``counters(slot)`` returns exact
    ``{"sent", "received"}`` for a slot (WAN mode) or is None (loopback: p2pd I/O).
    """

    workdir: str
    schedule: Sequence[PeerLife]
    t0: float
    build_argv: Callable[[LifeRecord, list[str]], list[str]]
    python: str = "python"
    wrap: Callable[[list[str], int], list[str]] | None = None
    counters: Callable[[int], dict] | None = None
    max_retries: int = 2
    retry_window_s: float = 60.0
    samples: list[dict] = field(default_factory=list)
    records: list[LifeRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        self.records = [LifeRecord(life, f"s{life.slot}-{i}", self.workdir) for i, life in enumerate(self.schedule)]
        self._base_counters = {slot: self.counters(slot) for slot in {r.life.slot for r in self.records}} \
            if self.counters else {}

    # --- processes ------------------------------------------------------------------------------
    def initial_peers(self) -> list[str]:
        """Multiaddrs of the live peers that wrote address files (slot order), at most 3 peers' worth."""
        out: list[str] = []
        for r in sorted(self.records, key=lambda r: r.life.slot):
            if r.proc is not None and r.proc.alive() and len(out) < 3:
                out += read_address_file(r.address_file)[:2]
        return out

    def launch(self, record: LifeRecord, initial_peers: list[str]) -> None:
        """Start ``record``'s process now."""
        argv = [self.python, *self.build_argv(record, initial_peers)]
        if self.wrap is not None:
            argv = self.wrap(argv, record.life.slot)
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        with open(record.log_path, "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        record.proc = PeerProcess(proc, record.address_file, record.log_path, argv)
        record.launched_at = time.time()

    def launch_initial(self, ready_timeout_s: float = 120.0) -> None:
        """Start the lives due at t <= 0: slot 0 first (it creates the run), then the others."""
        first = [r for r in self.records if r.life.start_s <= 0]
        if not first:
            return
        first.sort(key=lambda r: r.life.slot)
        self.launch(first[0], [])
        first[0].proc.wait_ready(ready_timeout_s)
        peers = read_address_file(first[0].address_file)
        for r in first[1:]:
            self.launch(r, peers)

    def tick(self) -> None:
        """Launch and kill what is due, then take one sample."""
        now = time.time() - self.t0
        for r in self.records:
            if r.proc is None and r.life.start_s > 0 and now >= r.life.start_s:
                self.launch(r, self.initial_peers())
            elif r.proc is not None and r.ended_at is None:
                if r.life.stop_s is not None and now >= r.life.stop_s and r.proc.alive():
                    self._sample_io(r)
                    r.proc.kill()
                    r.killed = True
                    r.ended_at = time.time()
                elif not r.proc.alive():
                    if r.proc.proc.returncode != 0 and r.retries < self.max_retries and \
                            time.time() - r.launched_at < self.retry_window_s:
                        r.retries += 1  # failed start-up (e.g. bootstrap peer not reachable yet): try again
                        self.launch(r, self.initial_peers())
                    else:
                        r.ended_at = time.time()
        self.sample()

    def _sample_io(self, r: LifeRecord) -> None:
        value = p2pd_io_bytes(r.proc.pid)
        if value is not None:
            r.io_bytes = max(r.io_bytes, value // 2)

    def sample(self) -> dict:
        """Record (time since t0, peers alive, bytes so far) and return it."""
        alive = 0
        for r in self.records:
            if r.proc is not None and r.ended_at is None and r.proc.alive():
                alive += 1
                if self.counters is None:
                    self._sample_io(r)
        point = {"t": time.time() - self.t0, "alive": alive}
        if self.counters is not None:
            sent = received = 0
            for slot, base in self._base_counters.items():
                c = self.counters(slot)
                sent += max(0, c["sent"] - base["sent"])
                received += max(0, c["received"] - base["received"])
            point.update(sent=sent, received=received, traffic=sent + received)
        else:
            point["traffic"] = sum(r.io_bytes for r in self.records)
        self.samples.append(point)
        return point

    def run(self, until: Callable[[], bool], deadline_s: float, period_s: float = 1.0) -> bool:
        """Tick every ``period_s`` until ``until()`` or ``deadline_s`` after t0; True if ``until`` held."""
        while time.time() - self.t0 < deadline_s:
            self.tick()
            if until():
                return True
            time.sleep(period_s)
        return False

    def all_done(self) -> bool:
        """True once every scheduled life was launched and has exited."""
        return all(r.proc is not None and not r.proc.alive() for r in self.records)

    def stop_all(self, timeout_s: float = 30.0) -> None:
        """SIGTERM every live process (SIGKILL after ``timeout_s``), then take a last sample."""
        live = [r for r in self.records if r.proc is not None and r.proc.alive()]
        trees = {}
        for r in live:
            self._sample_io(r)
            trees[r.name] = _proc.descendants(r.proc.pid)
            r.proc.proc.send_signal(15)
        deadline = time.time() + timeout_s
        for r in live:
            try:
                r.proc.proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                r.proc.kill()
            r.ended_at = r.ended_at or time.time()
            sockets = [s for p in trees[r.name] for s in _proc.daemon_sockets(p)]
            _proc.terminate_pids(trees[r.name], grace_s=2.0)  # daemons a clean exit left behind
            _proc.remove_files(sockets)
        self.sample()

    def summary(self) -> list[dict]:
        """One dict per life: slot, name, Byzantine, scheduled and actual times, killed, bytes."""
        return [{"slot": r.life.slot, "name": r.name, "byzantine": r.life.byzantine, "start_s": r.life.start_s,
                 "stop_s": r.life.stop_s, "launched": None if r.launched_at is None else round(r.launched_at - self.t0, 2),
                 "ended": None if r.ended_at is None else round(r.ended_at - self.t0, 2), "killed": r.killed,
                 "exit_code": None if r.proc is None else r.proc.proc.returncode, "io_bytes": r.io_bytes,
                 "retries": r.retries}
                for r in self.records]


def host_maddr(net, slot: int) -> str:
    """``--host-maddrs`` of a slot: its namespace address in WAN mode (``net``), else loopback."""
    return f"/ip4/{net.ip(slot)}/tcp/0" if net is not None else "/ip4/127.0.0.1/tcp/0"


def log_tail(path: str, n: int = 1500) -> str:
    """The last ``n`` characters of a log file ('' if unreadable)."""
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


def read_jsonl(path: str) -> list[dict]:
    """The JSON objects of a worker's log, one a line ([] if unreadable; a torn last line is skipped)."""
    rows = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    except OSError:
        pass
    return rows


def observer_curve(rows: Sequence[dict], t0: float, initial_loss: float,
                   samples_of: Callable[[dict], int | None]) -> dict[str, list]:
    """A baseline observer's curve from its log rows: (samples, val_loss, t since ``t0``, epoch) of
    each evaluated ``epoch`` row whose ``samples_of(row)`` is an int, from (0, ``initial_loss``, 0, 0)."""
    curve: dict[str, list] = {"samples": [0], "val_loss": [initial_loss], "t": [0.0], "epoch": [0]}
    for row in rows:
        n = samples_of(row) if row.get("event") == "epoch" and row.get("val_loss") is not None else None
        if isinstance(n, int):
            curve["samples"].append(n)
            curve["val_loss"].append(row["val_loss"])
            curve["t"].append(round(row["t"] - t0, 3))
            curve["epoch"].append(row["epoch"])
    return curve


def run_fleet(workdir: str, schedule: Sequence[PeerLife], t0: float,
              build_argv: Callable[[LifeRecord, list[str]], list[str]], deadline_s: float,
              net=None) -> tuple[Fleet, LifeRecord, bool]:
    """Run ``schedule`` until the observer (slot 0) exits or ``deadline_s`` after ``t0``, then stop
    every process; returns the fleet, the observer's record and whether the observer finished."""
    fleet = Fleet(workdir, schedule, t0, build_argv, python=sys.executable, wrap=net.wrap if net else None,
                  counters=net.counters if net else None)
    fleet.launch_initial()
    observer = next(r for r in fleet.records if r.life.slot == 0)
    done = fleet.run(lambda: observer.proc is not None and not observer.proc.alive(), deadline_s=deadline_s)
    fleet.stop_all()
    return fleet, observer, done


def baseline_argv(module: str, args, run_id: str, t0: float, rec: LifeRecord, peers: list[str], net,
                  options: Sequence[str], attacks: Mapping[str, float]) -> list[str]:
    """Command line of one baseline worker (``module``: :mod:`benchmarks.hivemind_baseline` or
    :mod:`benchmarks.diloco_baseline`) for the life ``rec``: the shared worker flags, its own
    ``options``; slot 0 evaluates (the observer); a Byzantine slot runs ``args.attack`` when
    ``attacks`` has a gradient form of it."""
    a = ["-m", module, "--task", args.task, "--run-id", run_id, "--t0", str(t0), "--until-samples", str(args.samples),
         *options, "--data-seed", str(1000 + int(rec.name.split("-")[1])), "--log-file", rec.history_file,
         "--address-file", rec.address_file, "--threads", "1", "--host-maddrs", host_maddr(net, rec.life.slot)]
    if rec.life.slot == 0:
        a.append("--evaluate")
    if rec.life.byzantine and args.attack in attacks:
        a += ["--attack", args.attack]
    return a + (["--initial-peers", *peers] if peers else [])
