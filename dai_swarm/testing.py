"""Helpers to test code against real local swarms: in-process DHTs and real peer processes.

Use them in your own task's tests::

    from dai_swarm import testing

    with testing.SocketGuard():                       # removes the /tmp/hivemind-*.sock we leave
        nodes = testing.launch_dht_swarm(3)
        try:
            nodes[1].publish_round_record("run", "note", 0, {"ok": True}, ttl_s=10)
            assert nodes[2].get_round_records("run", "note", 0)
        finally:
            testing.shutdown_all(nodes)

    with testing.LocalSwarm(tmp_path, run_id="demo", peers=4, regions=("eu", "us")) as swarm:
        swarm.peers[0].kill()                         # SIGKILL the peer and its DHT/p2pd children

Everything here starts real components on loopback (hivemind DHT, p2pd, subprocesses). This module
is meant to grow (churn schedules, attackers): add helpers below, keep them plain functions.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Sequence

from .dht import _proc
from .dht.address_file import read_address_file, wait_for_address_file
from .dht.node import SwarmDHT
from .identity import Identity

__all__ = [
    "LocalSwarm",
    "PeerLife",
    "PeerProcess",
    "SocketGuard",
    "alive_count",
    "byzantine_slots",
    "exponential_churn_schedule",
    "founding_peers",
    "launch_dht_swarm",
    "scripted_churn_schedule",
    "shutdown_all",
    "spawn_bootstrap",
    "spawn_peer",
    "wait_until",
]

LOOPBACK = ("/ip4/127.0.0.1/tcp/0",)


def wait_until(predicate, timeout_s: float, period_s: float = 0.2, what: str = "condition"):
    """Poll ``predicate()`` until it returns a truthy value (returned) or raise TimeoutError."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout_s:.1f} s")
        time.sleep(period_s)


def launch_dht_swarm(
    n: int, *, validate: Sequence[bool] | bool = True, seed: int = 0, identities: Sequence[Identity] | None = None,
    initial_peers: Sequence[str] = (), options: Sequence[dict] = (),
) -> list[SwarmDHT]:
    """Start ``n`` in-process DHT nodes on loopback, each bootstrapped from up to 3 earlier nodes.

    ``validate`` (one bool or one per node) chooses which nodes run dai_swarm's record validator;
    ``options`` (one dict per node, may be shorter) are hivemind DHT options for those nodes.
    """
    rng = random.Random(seed)
    flags = [validate] * n if isinstance(validate, bool) else list(validate)
    nodes: list[SwarmDHT] = []
    try:
        for i in range(n):
            if nodes:
                sources = rng.sample(nodes, min(3, len(nodes)))
                peers = [m for node in sources for m in node.visible_maddrs[:1]]
            else:
                peers = list(initial_peers)
            identity = identities[i] if identities else Identity.generate()
            nodes.append(SwarmDHT(identity, initial_peers=peers, host_maddrs=LOOPBACK, validate=flags[i],
                                  **(options[i] if i < len(options) else {})))
    except BaseException:
        shutdown_all(nodes)
        raise
    return nodes


def shutdown_all(nodes: Sequence[SwarmDHT]) -> None:
    """Shut down every node (ignoring errors)."""
    for node in nodes:
        try:
            node.shutdown()
        except Exception:
            pass


@dataclass
class PeerProcess:
    """A peer (or bootstrap) subprocess with an address file; killed as a whole process tree."""

    proc: subprocess.Popen
    address_file: str
    log_path: str
    args: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        """Process id of the peer's main process."""
        return self.proc.pid

    @property
    def maddrs(self) -> list[str]:
        """The multiaddrs the peer wrote (empty until it is up)."""
        return read_address_file(self.address_file)

    def wait_ready(self, timeout_s: float = 60.0) -> list[str]:
        """Wait for the address file; raises BootstrapError if the process exits first."""
        return wait_for_address_file(self.address_file, timeout_s, alive=lambda: self.proc.poll() is None)

    def alive(self) -> bool:
        """True while the main process runs."""
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the peer and all its descendants at once (a machine dying), then clean its sockets."""
        pids = [self.proc.pid] + _proc.descendants(self.proc.pid)
        sockets = [s for p in pids for s in _proc.daemon_sockets(p)]
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)
        _proc.terminate_pids(pids, grace_s=1.0)
        _proc.remove_files(sockets)

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM and wait for a clean exit (SIGKILL if it does not exit in time); returns the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def log(self) -> str:
        """Everything the process wrote to stdout/stderr so far."""
        with open(self.log_path, errors="replace") as f:
            return f.read()


def _spawn(argv: list[str], workdir: str, name: str) -> PeerProcess:
    address_file = os.path.join(workdir, f"{name}.addr")
    log_path = os.path.join(workdir, f"{name}.log")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, *argv, "--address-file", address_file], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )
    return PeerProcess(proc, address_file, log_path, argv)


def spawn_bootstrap(workdir: str, name: str = "bootstrap", identity: str | None = None) -> PeerProcess:
    """Start ``dai-swarm bootstrap`` on loopback as a subprocess (call ``wait_ready()`` next)."""
    argv = ["-m", "dai_swarm", "bootstrap", "--host-maddrs", LOOPBACK[0]]
    if identity:
        argv += ["--identity", identity]
    return _spawn(argv, workdir, name)


def spawn_peer(
    workdir: str, run_id: str, initial_peers: Sequence[str], *, name: str, region: str = "auto",
    ttl_s: float = 30.0, identity: str | None = None, extra_args: Sequence[str] = (),
) -> PeerProcess:
    """Start a discovery-only peer process (``python -m dai_swarm.dht.announce``) on loopback."""
    argv = ["-m", "dai_swarm.dht.announce", "--run-id", run_id, "--region", region, "--ttl-s", str(ttl_s),
            "--host-maddrs", LOOPBACK[0], "--initial-peers", *initial_peers, *extra_args]
    if identity:
        argv += ["--identity", identity]
    return _spawn(argv, workdir, name)


def founding_peers(workdir: str, names: Sequence[str]) -> dict[str, list[str]]:
    """Identities for the peers that found a local run, and the ``dai-swarm peer`` arguments that
    name them all founders: ``{name: ["--identity", PATH, "--founder", KEY, ...]}``.

    Whichever of them creates the run writes every key into the manifest (the others ignore
    ``--founder``), so each region that has one of them is established from round 0: its votes,
    state records and region deltas count (docs/design.md, "Trust model"). Keys live in
    ``workdir/NAME.key`` (created on first use)."""
    os.makedirs(workdir, exist_ok=True)
    keys = {n: Identity.load_or_create(os.path.join(workdir, f"{n}.key")) for n in names}
    founders = [k.public_key_hex for k in keys.values()]
    return {n: ["--identity", k.path or "", "--founder", *founders] for n, k in keys.items()}


class SocketGuard:
    """Context manager: on exit, remove new ``/tmp/hivemind-*.sock`` files that nobody listens on."""

    def __enter__(self) -> "SocketGuard":
        self.before = _proc.hivemind_sockets()
        return self

    def __exit__(self, *exc) -> None:
        self.removed = _proc.remove_stale_sockets(_proc.hivemind_sockets() - self.before)


class LocalSwarm:
    """A bootstrap process plus ``peers`` discovery peer processes on loopback, regions round-robin.

    ``regions=None`` lets every peer pick ``auto``. On exit every process is stopped (SIGTERM, then
    SIGKILL) and stale sockets are removed.
    """

    def __init__(self, workdir, run_id: str, peers: int = 4, regions: Sequence[str] | None = ("eu", "us"),
                 ttl_s: float = 30.0, ready_timeout_s: float = 90.0):
        self.workdir, self.run_id, self.n, self.regions = str(workdir), run_id, peers, regions
        self.ttl_s, self.ready_timeout_s = ttl_s, ready_timeout_s
        self.bootstrap: PeerProcess | None = None
        self.peers: list[PeerProcess] = []

    def __enter__(self) -> "LocalSwarm":
        self._guard = SocketGuard().__enter__()
        try:
            self.bootstrap = spawn_bootstrap(self.workdir)
            self.initial_peers = self.bootstrap.wait_ready(self.ready_timeout_s)
            for i in range(self.n):
                region = self.regions[i % len(self.regions)] if self.regions else "auto"
                self.peers.append(spawn_peer(self.workdir, self.run_id, self.initial_peers, name=f"peer{i}",
                                             region=region, ttl_s=self.ttl_s))
            for p in self.peers:
                p.wait_ready(self.ready_timeout_s)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for p in [*self.peers, *([self.bootstrap] if self.bootstrap else [])]:
            p.stop()
        self._guard.__exit__(*exc)


# --- churn schedules (used by benchmarks.churn) -----------------------------------------------------------


@dataclass(frozen=True)
class PeerLife:
    """One peer process of a churn schedule.

    ``slot``: the seat it fills (a replacement takes the seat of the peer it replaces); ``start_s``
    and ``stop_s``: seconds from the start of the run (``stop_s=None``: it lives to the end);
    ``byzantine``: whether it runs an attack (the attack follows the slot, so the Byzantine
    fraction of live peers stays what was asked).
    """

    slot: int
    start_s: float
    stop_s: float | None = None
    byzantine: bool = False

    def alive_at(self, t: float) -> bool:
        """True if the peer process is scheduled to run at ``t`` seconds."""
        return self.start_s <= t and (self.stop_s is None or t < self.stop_s)


def byzantine_slots(n_peers: int, fraction: float, seed: int = 0) -> set[int]:
    """``round(n_peers * fraction)`` slots, chosen by a seeded generator, never slot 0 (it creates the run)."""
    from .errors import ConfigError

    if n_peers < 1 or not 0.0 <= fraction < 1.0:
        raise ConfigError(f"need n_peers >= 1 and 0 <= fraction < 1, got {n_peers}, {fraction}")
    k = min(n_peers - 1, round(n_peers * fraction))
    return set(random.Random(f"byzantine:{seed}").sample(range(1, n_peers), k)) if k else set()


def exponential_churn_schedule(n_peers: int, duration_s: float, churn: float, *, seed: int = 0,
                               byzantine: float = 0.0, join_delay_s: float = 0.0,
                               protect_slots: Sequence[int] = (0,)) -> list[PeerLife]:
    """Exponential lifetimes with replacement: ``churn`` departures per peer slot over the run.

    Every slot starts a peer at time 0; each peer's lifetime is drawn from an exponential
    distribution whose mean makes ``churn x n_peers`` departures expected during the run (so
    ``churn=0.3`` with 8 peers: 2.4 departures); ``join_delay_s`` after a departure a replacement
    joins the same slot. Slots in ``protect_slots`` never leave (slot 0 creates the run and serves
    as the benchmark's observer); the others churn a little faster to keep the expected count.
    ``churn=0`` gives one life per slot. Deterministic for a ``seed``.
    """
    from .errors import ConfigError

    if n_peers < 1 or duration_s <= 0 or churn < 0 or join_delay_s < 0:
        raise ConfigError(f"bad churn schedule arguments: n_peers={n_peers}, duration_s={duration_s}, "
                          f"churn={churn}, join_delay_s={join_delay_s}")
    rng = random.Random(f"churn:{seed}")
    bad = byzantine_slots(n_peers, byzantine, seed)
    churning = max(1, n_peers - len(set(protect_slots) & set(range(n_peers))))
    rate = churn * n_peers / (duration_s * churning)
    lives: list[PeerLife] = []
    for slot in range(n_peers):
        t = 0.0
        while t < duration_s:
            life = rng.expovariate(rate) if churn > 0 and slot not in protect_slots else float("inf")
            stop = t + life
            lives.append(PeerLife(slot, round(t, 3), round(stop, 3) if stop < duration_s else None, slot in bad))
            t = stop + join_delay_s
    return sorted(lives, key=lambda p: (p.start_s, p.slot))


def scripted_churn_schedule(spec: Sequence[dict]) -> list[PeerLife]:
    """A schedule from a list like ``[{"slot": 1, "start_s": 0, "stop_s": 40, "byzantine": false}, ...]``.

    Raises ``ConfigError`` for missing or negative times, a stop before its start, or two lives of
    one slot that overlap.
    """
    from .errors import ConfigError

    lives = []
    for i, item in enumerate(spec):
        if not isinstance(item, dict) or "slot" not in item:
            raise ConfigError(f"schedule entry {i} must be an object with a 'slot'")
        try:
            life = PeerLife(int(item["slot"]), float(item.get("start_s", 0.0)),
                            None if item.get("stop_s") is None else float(item["stop_s"]), bool(item.get("byzantine")))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"schedule entry {i}: {e}") from None
        if life.slot < 0 or life.start_s < 0 or (life.stop_s is not None and life.stop_s <= life.start_s):
            raise ConfigError(f"schedule entry {i}: need slot >= 0, start_s >= 0 and stop_s > start_s")
        lives.append(life)
    lives.sort(key=lambda p: (p.slot, p.start_s))
    for a, b in zip(lives, lives[1:]):
        if a.slot == b.slot and (a.stop_s is None or a.stop_s > b.start_s):
            raise ConfigError(f"slot {a.slot}: lives starting at {a.start_s} s and {b.start_s} s overlap")
    return sorted(lives, key=lambda p: (p.start_s, p.slot))


def alive_count(schedule: Sequence[PeerLife], t: float) -> int:
    """Number of peers the schedule has running at ``t`` seconds."""
    return sum(1 for p in schedule if p.alive_at(t))


# --- attack catalogue (SPEC §7): Byzantine behaviours live in dai_swarm.verification.attacks ---
from .verification.attacks import ATTACK_KINDS, Attack, make_attack  # noqa: E402

__all__ += ["ATTACK_KINDS", "Attack", "make_attack"]
