"""The discrete-event simulator: a swarm of simulated peers running the real round protocol core.

Time is simulated. Protocol instants come from a real :class:`~dai_swarm.optim.clock.RoundClock`
and a :class:`~dai_swarm.optim.machine.RoundMachine` (Announce, CloseRound, Tally, ApplyBase);
churn (join, leave, crash) is a second stream of timed events merged with them in time order.
What each peer does at each instant is in :mod:`dai_swarm.sim.rounds`. Training is real: every
update is computed by :func:`~dai_swarm.verification.recompute.recompute_update` on the task with
the batches :func:`~dai_swarm.verification.assignment.assign` gives that peer.

The simulator is deterministic: one :class:`~dai_swarm.sim.config.SimConfig` (seed included) gives
one trace; :meth:`Simulator.trace_digest` names it.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import Counter, defaultdict
from statistics import median
from typing import Any

import torch

from dai_swarm.canonical import canonical_json, sha256_hex
from dai_swarm.optim.clock import RoundClock
from dai_swarm.optim.limits import derive_limits
from dai_swarm.optim.machine import Announce, ApplyBase, CloseRound, Done, RoundMachine, Tally, TrainUntil, WaitUntil
from dai_swarm.optim.states import BaseState
from dai_swarm.optim.votes import HeadCount, tally
from dai_swarm.rewards.rules import Contributor, compute_round_record
from dai_swarm.tasks import load_task

from .config import SimConfig
from .host import contention
from .network import ByteLedger, NetModel
from .population import SimPeer, draw_peer
from .rounds import RoundSteps
from .verify import SimVerifier

__all__ = ["Simulator", "simulate"]


class Simulator(RoundSteps):
    """Build with a :class:`SimConfig`, call :meth:`run`; per-round rows land in :attr:`rows`."""

    def __init__(self, cfg: SimConfig):
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.task = load_task(cfg.task, **dict(cfg.task_overrides))
        self.model = self.task.build_model(cfg.seed)
        self._eval_model = self.task.build_model(cfg.seed)
        like = BaseState.initial(self.model)
        self.expect = {n: (tuple(t.shape), torch.float32) for n, t in like.params.items()}
        limits = derive_limits(like, cfg.codec, dict(cfg.codec_params))  # the caps a real peer derives
        self.max_decoded = limits.max_decoded_bytes
        self.max_payload = limits.max_payload_bytes
        self.clock = RoundClock(0.0, cfg.round_s, close_frac=cfg.close_frac, tally_frac=cfg.tally_frac,
                                margin_s=cfg.margin)
        self.net = NetModel(cfg, cfg.peers)
        self.ledger = ByteLedger()
        self.verifier = SimVerifier()
        self.states: dict[str, BaseState] = {like.hash: like}
        self.peers: list[SimPeer] = []
        regions = cfg.region_names()
        n_byz = int(round(cfg.byzantine * cfg.peers))
        byz = set(self.rng.sample(range(cfg.peers), n_byz))
        for i in range(cfg.peers):
            p = draw_peer(cfg, self.rng, i, regions[i % cfg.regions], -math.inf, byzantine=i in byz)
            p.bases.update({0: like.hash, 1: like.hash})
            p.ready.update({0: -math.inf, 1: -math.inf})
            self.peers.append(p)
        self.protos = sorted({p.proto for p in self.peers})
        # the swarm's instants; merges only between protocol regions (clustered, several regions)
        merge_k = self.cfg.cross_region_period if cfg.exchange == "clustered" and len(self.protos) > 1 else 0
        self.planner = RoundMachine(self.clock, 0, self.cfg.rounds - 1, merge_period=merge_k)
        for p in self.peers:
            p.machine = self._machine(0)
        self.region_base = {(g, r): like.hash for g in self.protos for r in (0, 1)}
        self.anns: dict[tuple, list] = defaultdict(list)
        self.votes: dict[tuple, dict] = defaultdict(dict)
        self.decoded: dict[str, Any] = {}
        self.sizes: dict[str, int] = {}
        self.pending_verdicts: dict[tuple, tuple] = {}
        self.rechecks: dict[tuple, list] = defaultdict(list)  # (region, round) -> re-check verdict ids it carries
        self.verifications: dict[int, Counter] = defaultdict(Counter)
        self.finals: dict[int, dict] = {}
        self.modes: dict[int, Counter] = {}
        self.trained: Counter = Counter()
        self.books_run: dict[int, int] = {}
        self.merge_done: dict[str, float] = {}
        self.merges = 0
        self.counters: Counter = Counter()
        self.rows: list[dict] = []
        self.slashed: set[str] = set()
        self.rewards = {"honest": 0, "byzantine": 0}
        self._events: list = []
        self._seq = 0
        self._schedule_churn()
        self.wall_s = 0.0

    # --- churn -----------------------------------------------------------------------------------
    def _push(self, t: float, kind: str, data: Any) -> None:
        heapq.heappush(self._events, (t, self._seq, kind, data))
        self._seq += 1

    def _schedule_churn(self) -> None:
        cfg, c = self.cfg, self.clock
        departures = int(round(cfg.churn * cfg.peers))
        lo, hi = c.start(1), c.end(max(1, cfg.rounds - 2))
        for t in sorted(self.rng.uniform(lo, hi) for _ in range(departures)):
            self._push(t, "depart", None)

    def _on_event(self, t: float, kind: str, data: Any) -> None:
        if kind == "depart":
            alive = [p for p in self.peers if p.alive(t) and p.left_at == math.inf]
            if not alive:
                return
            victim = alive[self.rng.randrange(len(alive))]
            victim.left_at, victim.crashed = t, self.rng.random() < self.cfg.crash_share
            self.counters["crashes" if victim.crashed else "leaves"] += 1
            t_join = t + self.rng.expovariate(1.0 / self.cfg.rejoin_delay_s) if self.cfg.rejoin_delay_s > 0 else t
            p = draw_peer(self.cfg, self.rng, len(self.peers), victim.region, t_join)
            self.peers.append(p)
            self._push(t_join, "join", p.idx)
        elif kind == "join":
            self._join(self.peers[data], t)

    def _join(self, p: SimPeer, t: float) -> None:
        """A joiner downloads the region's newest agreed base it can find (I6), then trains."""
        cur = self.clock.round_at(t)
        for r in (cur + 1, cur):
            h = self.region_base.get((p.proto, r))
            if h is not None:
                p.bases[r], p.ready[r] = h, self._download_state(p, h, t + self.net.dht_s(p.lat), max(0, r - 2))
                p.machine = self._machine(r)
                self.counters["joins"] += 1
                return

    def _machine(self, first_round: int) -> RoundMachine:
        """The round machine of a peer that holds base ``first_round`` (the real peer's class)."""
        return RoundMachine(self.clock, first_round, observe_from=first_round, kinds=("close", "tally"),
                            merge_period=self.planner.merge_period)

    # --- main loop -------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        """Simulate every round; returns :attr:`rows` (one dict per closed round)."""
        t_wall = time.perf_counter()
        planner = self.planner
        now = self.clock.start(0)
        while True:
            a = planner.next_action(now)
            if isinstance(a, Done):
                break
            if isinstance(a, (TrainUntil, WaitUntil)):
                now = a.deadline if isinstance(a, TrainUntil) else a.time
                continue
            while self._events and self._events[0][0] <= a.due:
                t, _, kind, data = heapq.heappop(self._events)
                self._on_event(t, kind, data)
            now = a.due
            if isinstance(a, Announce):
                self.announce(a.round)
            elif isinstance(a, CloseRound):
                self.close(a.round)
            elif isinstance(a, Tally):
                self.tally(a.round)
            elif isinstance(a, ApplyBase):
                modes_before = self.finals.get(a.round - 2, {})
                self.apply(a.round)
                self._row(a.round - 2, modes_before)
        self.wall_s = time.perf_counter() - t_wall
        return self.rows

    def load(self, t: float) -> float:
        """How much slower host CPU work runs at ``t`` (:func:`~dai_swarm.sim.host.contention`)."""
        if not self.cfg.host_cores:
            return 1.0
        return contention(sum(p.alive(t) for p in self.peers), self.cfg.host_cores)

    # --- metrics ---------------------------------------------------------------------------------
    def _val_loss(self, h: str) -> float:
        st = self.states[h]
        with torch.no_grad():
            for n, p in self._eval_model.named_parameters():
                p.copy_(st.params[n])
        return float(self.task.evaluate(self._eval_model)["loss"])

    def _row(self, q: int, finals: dict) -> None:
        r, c = q + 2, self.clock
        t = c.tally_time(q)
        voters = [self.peers[i] for i in finals]
        held = defaultdict(set)
        late = 0
        completion = []
        for p in voters:
            if r in p.bases:
                held[p.proto].add(p.bases[r])
                completion.append(p.ready[r] - c.end(q))
                late += p.ready[r] > c.start(r)
        included, samples, slashed_now = 0, 0, set()
        for g in self.protos:
            votes = [rec.vote for rec in self.votes[(g, q)].values() if rec.voted]
            res = tally(votes, HeadCount(), run_id=self.cfg.run_id, round=q)
            included += len(res.inclusion)
            claimed = {ann.digest: ann.samples for ann, _, _ in self.anns[(g, q)]}
            samples += sum(claimed.get(d, 0) for d in res.inclusion)
            h = self.region_base.get((g, r))
            if h is None:
                continue
            extra = self.states[h].extra
            slashed_now |= set(extra.get("slashed_now", ()))
            self._pay(q, g, res, h)
        new_slashes = slashed_now - self.slashed
        self.slashed |= slashed_now
        bases = sorted({self.region_base[(g, r)] for g in self.protos if (g, r) in self.region_base})
        losses = [self._val_loss(h) for h in bases] if self.cfg.evaluate else []
        modes = self.modes.get(q, Counter())
        byz_keys = {p.key for p in self.peers if p.attack is not None}
        row = {
            "round": q, "time_s": round(t, 6), "alive": sum(p.alive(t) for p in self.peers),
            "trained": self.trained[q], "included": included, "samples": samples, "voters": len(finals),
            "agreed": modes.get("agreed", 0), "adopted": modes.get("adopted", 0),
            "resynced": modes.get("resynced", 0), "no_state": modes.get("no_state", 0),
            "undecided": modes.get("undecided", 0), "books": self.books_run.get(q, 0),
            "regions_in_agreement": sum(1 for g in held if len(held[g]) == 1), "regions": len(held),
            "completion_median_s": round(median(completion), 6) if completion else None,
            "completion_max_s": round(max(completion), 6) if completion else None,
            "late_bases": late, "stalled": (not completion) or included == 0,
            "bytes": dict(self.ledger.by_round.get(q, {"intra": 0, "cross": 0})),
            "val_loss": round(sum(losses) / len(losses), 8) if losses else None,
            "new_slashes": len(new_slashes), "slashed_byzantine": len(new_slashes & byz_keys),
            "base_hashes": bases,
        }
        self.rows.append(row)

    def _pay(self, q: int, g: str, res: Any, h: str) -> None:
        """Reward rules over the winning inclusion (what each honest peer's reward log records)."""
        if not res.decided:
            return
        anns = {ann.digest: ann for ann, _, _ in self.anns[(g, q)]}
        extra = self.states[h].extra
        rep = self.verifier.reputation(extra)
        contributors = [Contributor(anns[d].peer, anns[d].samples, min(1.0, max(0.0, rep.get(anns[d].peer))),
                                    anns[d].region) for d in res.inclusion if d in anns]
        record = compute_round_record(q, contributors, dict(self.verifications[q]), extra.get("slashed_now", ()), h)
        byz = {p.key for p in self.peers if p.attack is not None}
        for row in record["contributors"]:
            self.rewards["byzantine" if row["peer"] in byz else "honest"] += row["reward"]

    def summary(self) -> dict:
        """Totals over the run (bytes per class and kind, counters, rewards, trace digest)."""
        rows = self.rows
        losses = [r["val_loss"] for r in rows if r["val_loss"] is not None]
        return {
            "config": {k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))
                       for k, v in vars(self.cfg).items()},
            "rounds": len(rows), "peers_total": len(self.peers), "bytes": self.ledger.totals(),
            "bytes_by_kind": {k: dict(v) for k, v in sorted(self.ledger.by_kind.items())},
            "stalled_rounds": sum(1 for r in rows if r["stalled"]),
            "late_bases": sum(r["late_bases"] for r in rows),
            "val_loss_first": losses[0] if losses else None, "val_loss_last": losses[-1] if losses else None,
            "slashes": sum(r["new_slashes"] for r in rows),
            "slashed_byzantine": sum(r["slashed_byzantine"] for r in rows),
            "byzantine_peers": sum(1 for p in self.peers if p.attack is not None),
            "merges": self.merges, "counters": dict(sorted(self.counters.items())), "rewards": dict(self.rewards),
            "trace_digest": self.trace_digest(), "wall_s": round(self.wall_s, 3),
        }

    def trace_digest(self) -> str:
        """SHA-256 of the canonical JSON of every per-round row (same seed and config: same digest)."""
        return sha256_hex(canonical_json(self.rows))


def simulate(cfg: SimConfig) -> tuple[list[dict], dict]:
    """Run one simulation; returns (per-round rows, summary)."""
    sim = Simulator(cfg)
    rows = sim.run()
    return rows, sim.summary()
