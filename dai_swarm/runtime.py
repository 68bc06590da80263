"""The per-peer round runtime: the training side of the protocol and the wiring of its parts.

:class:`RoundRuntime` owns the model's canonical bases, the round counters the training loop
advances, the payload store and server, the coordinator thread and a heartbeat thread that keeps
this peer's signed peer record (with live metrics) in the DHT. ``SwarmOptimizer.step`` calls
:meth:`RoundRuntime.after_inner_step`; everything slow happens on background threads.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Mapping

import torch

from .dht.records import RunManifest
from .errors import ConfigError, SwarmError
from .logging import get_logger
from .optim import codecs
from .optim.clock import RoundClock
from .optim.config import RunConfig
from .optim.coordinator import Coordinator, NullVerifier, RoundOutcome
from .optim.exchange import PayloadServer, PayloadStore, Traffic
from .optim.limits import derive_limits
from .optim.netloop import NetLoop
from .optim.schedule import ScheduleRule
from .optim.states import BaseState, BaseStore
from .optim.strategy import HONEST
from .rewards import RewardLog
from .heartbeat import heartbeat_loop, heartbeat_period, refresh_peers
from .lateness import Lateness
from .pace import Pace
from .roundlog import RoundRewards
from .round_history import peer_metrics, record_round
from .verification.assignment import assign

__all__ = ["RoundRuntime"]

logger = get_logger(__name__)


_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(RunConfig))


class RoundRuntime:
    """Runs the round protocol for one peer; see the module docstring.

    ``model`` is the user-visible model (its parameters are overwritten with each new canonical
    base); ``attack`` is an optional :class:`~dai_swarm.optim.strategy.UpdateStrategy` from
    :mod:`dai_swarm.testing` that replaces the honest one (benchmarks and tests only); ``rule`` an optional robust aggregation rule.
    ``resume_state`` is a verified export's state (:func:`dai_swarm.export.load_export`): the
    first base of a resumed generation (``manifest.resume``), else only a faster start when the
    majority's state has its hash.
    """

    def __getattr__(self, name: str) -> Any:  # the run's fixed settings live in self.config (one source)
        if name in _CONFIG_FIELDS and "config" in self.__dict__:
            return getattr(self.config, name)
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    def __init__(self, task: Any, dht: Any, identity: Any, manifest: RunManifest, region: str, *,
                 model: torch.nn.Module | None = None, attack: Any = None, verifier: Any = None,
                 evaluate: bool = True, max_payload_bytes: int | None = None, ledger: str | None = None,
                 trusted: tuple[str, ...] = (), resume_state: BaseState | None = None):
        self.task, self.dht, self.identity, self.manifest, self.region = task, dht, identity, manifest, region
        self.model = model if model is not None else task.build_model(manifest.seed)
        self.like = BaseState.initial(self.model)
        limits = derive_limits(self.like, manifest.codec, dict(manifest.codec_params))  # from the model, never fixed
        self.config = RunConfig.from_manifest(manifest, region, task.batch_size, limits, max_payload_bytes)
        clock = RoundClock(manifest.t0, manifest.round_s, margin_s=min(0.1 * manifest.round_s, 2.0))
        lo, hi = manifest.round_bounds  # rounds adapt to what the swarm measures (optim/schedule.py)
        self.schedule_rule = ScheduleRule(clock, lo, hi, manifest.first_round) if hi > lo else None
        if self.schedule_rule is not None:  # a founder not seen yet may be in another region
            self.schedule_rule.founders_placed = not manifest.founders
        self.pace, self.clock, self.lateness = Pace(clock, self.schedule_rule), clock, Lateness(clock)
        self.finish_times: dict[int, float] = {}
        self.trained_from: dict[int, str] = {}  # round -> hash of the base its announced update started from
        self.strategy, self.evaluate = attack if attack is not None else HONEST, evaluate
        self.verifier = verifier if verifier is not None else NullVerifier()
        self.rewards = RoundRewards(self.verifier)  # reward units and their vesting, in the replicated state
        # trust anchors of a peer that holds no state yet: the manifest's founders and --trust keys
        self.anchor_keys = frozenset(manifest.founders) | frozenset(trusted)
        initial = getattr(self.verifier, "initial_extra", None)
        extra0 = initial(manifest.founders) if initial is not None else {}
        # θ0 with the founders' standing (every peer reads the same manifest: the same hash)
        self.genesis = BaseState.make(0, self.like.params, self.like.momentum, extra0, self.like.anchor) \
            if extra0 else self.like
        self.origin, self.preloaded = manifest.first_round, resume_state
        if manifest.resume is not None:  # a resumed generation starts from the exported state
            held = resume_state is not None and resume_state.hash == manifest.resume.state_hash
            self.genesis = resume_state.at_round(self.origin) if held else None
        self.counters: dict[str, int] = {}
        self.history: list[dict] = []
        self.region_of: dict[str, str] = {}  # libp2p id -> region, of the live signed peer records
        self.peer_keys: dict[str, tuple[str, str, float]] = {}  # public key -> (libp2p id, region, last seen)
        self.peer_schedules: dict[str, Any] = {}  # public key -> the round schedule its peer record reports
        self.bases = BaseStore()
        self.store = PayloadStore()
        self.traffic = Traffic()
        self.netloop = NetLoop()
        self.p2p = self.netloop.run(dht.replicate_p2p(), timeout_s=30)
        self.p2p_id = dht.peer_id
        self.server = PayloadServer(self.p2p, self.run_id, self.store, self.traffic,
                                    link_of=lambda pid: self.link_of_p2p(str(pid)))
        self.netloop.run(self.server.start(), timeout_s=30)
        codecs.decode(codecs.encode({"warmup": torch.ones(4096)}, self.codec, **self.codec_params))  # lazy inits
        self.coordinator = Coordinator(self, self.bases)
        self.coordinator.on_round_tallied.append(self._on_round)
        self.round = 0
        self.steps = 0
        self.samples_total = 0
        self.rounds_trained = 0
        self.train_cpu_s = 0.0  # CPU time of the training thread since its first inner step
        self._cpu_mark: float | None = None
        self._stop = threading.Event()
        self._eval_model: torch.nn.Module | None = None
        self._loaded: BaseState | None = None
        self.ledger = RewardLog(ledger, identity) if ledger else None
        self.ledger_errors = 0
        self._heartbeat = threading.Thread(target=heartbeat_loop, args=(self,), name="dai-swarm-heartbeat", daemon=True)

    # --- context used by the coordinator ----------------------------------------------------------
    def reputation(self) -> Mapping[str, float]:
        """Vote weights by public key, from the newest agreed replicated state (empty: equal votes)."""
        latest = self.bases.latest()
        return self.verifier.reputation(latest.extra) if latest is not None else {}

    def vote_weights(self, extra: Mapping | None = None) -> Mapping[str, float]:
        """Weights in every decision (votes, verdict sets, state majorities): standing in the newest
        agreed replicated state (or in ``extra``). A peer that holds no state yet (a joiner) weighs
        its trust anchors: the manifest's founders and the keys it was told to trust (``--trust``)."""
        if extra is None:
            latest = self.bases.latest()
            if latest is None:
                return {k: 1.0 for k in sorted(self.anchor_keys)}
            extra = latest.extra
        fn = getattr(self.verifier, "vote_weights", None)
        return fn(extra) if fn is not None else self.verifier.reputation(extra)

    def region_mates(self) -> list[str]:
        """libp2p ids of the other live peers of this region (from the last peer-list refresh)."""
        return sorted(pid for pid, region in self.region_of.items() if region == self.region and pid != self.p2p_id)

    def announcer(self, public_key: str) -> str | None:
        """libp2p id of the peer of this region whose signed peer record carries ``public_key``
        and was live within the last two rounds, or None: only such keys may announce updates.
        (The grace keeps a peer whose heartbeat ran late on a busy host, or that died after
        announcing, from being counted by some mates and not by others.)"""
        entry = self.peer_keys.get(public_key)
        if entry is None or entry[1] != self.region or entry[2] < time.time() - 2 * self.clock.round_s:
            return None
        return entry[0]

    def follow_schedule(self, state: BaseState | None) -> None:
        """Take the round schedule recorded in ``state`` (a base this peer holds) if it is the newest."""
        self._use_clock(self.pace.follow(state.extra, state.round) if state is not None else None)

    def follow_peer_schedule(self) -> None:
        """Holding no state yet: take the round schedule the trust anchors' peer records report
        (rounds may have changed length since the manifest); the first state loaded then rules."""
        self._use_clock(self.pace.from_peers(self.peer_schedules.items(), self.anchor_keys))

    def _use_clock(self, clock: RoundClock | None) -> None:
        if clock is not None:  # one swap, read by the coordinator on its next tick
            self.clock = clock
            self.lateness.set_clock(clock)

    def refresh_peers(self) -> None:
        """Re-read the live peer records now (the heartbeat also does it every few seconds)."""
        refresh_peers(self)

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the status counter ``name`` (shown in :meth:`metrics`)."""
        self.counters[name] = self.counters.get(name, 0) + n

    def link_of_p2p(self, p2p_id: str) -> str:
        """"intra" if the peer with this libp2p id is in our region (or unknown), else "cross"."""
        region = self.region_of.get(p2p_id)
        return "intra" if region is None or region == self.region else "cross"

    # --- start-up and joins -------------------------------------------------------------------
    def start(self, join_timeout_s: float | None = None) -> None:
        """Pick the first round: θ0 for a fresh run, else download the majority's state (I6)."""
        refresh_peers(self)
        self.follow_peer_schedule()
        now = time.time()
        current = max(self.origin, self.clock.round_at(now))
        mates = self.region_mates()
        if current <= self.origin + 1 and self.genesis is not None:
            for r in (self.origin, self.origin + 1):
                self.bases.put(self.genesis.at_round(r))
                if self.origin:  # a resumed run: peers without the export download it from here
                    self.coordinator._publish_state(self.genesis.at_round(r))
            first = current
        elif not mates:
            first = self._found(current, "no other peer of this region is online")
        else:
            first = self._join(current, join_timeout_s or 3 * self.clock.round_s)
        self._load_base(self.bases.get(first))
        self.round, self.steps = first, 0
        self.coordinator.start(first_round=self.origin if first <= self.origin + 1 else first)
        if self.ledger is not None:
            joined = {"peer": self.identity.public_key_hex, "round": first, "region": self.region}
            if self.manifest.resume is not None:  # links this log to the exported state
                joined["resume"] = self.manifest.resume.model_dump()
            self.ledger.append("join", joined)
        self._heartbeat.start()
        logger.info("peer %s (key %s) in region %s starts at round %d", self.p2p_id, self.identity.public_key_hex[:16],
                    self.region, first)

    def _join(self, current: int, timeout_s: float) -> int:
        deadline = time.time() + timeout_s
        while time.time() < deadline and not self._stop.is_set():
            for r in (current + 1, current, current - 1):
                try:
                    state = self.coordinator.resync(r)
                except SwarmError as e:
                    logger.info("state download for round %d failed: %s", r, e)
                    state = None
                if state is not None:
                    logger.info("joined at round %d with verified state %s", r, state.hash[:12])
                    return r
            time.sleep(0.25)
        return self._found(current, f"no verified state could be downloaded within {timeout_s:.0f}s")

    def _found(self, current: int, why: str) -> int:
        """Start this region's chain from θ0 at round ``current``; the next cross-region merge
        brings it onto the run's global chain (see optim/crossregion.py)."""
        if self.preloaded is not None and self.manifest.resume is None:
            logger.warning("%s: starting region %s from the export given with --resume (state %s) at round %d",
                           why, self.region, self.preloaded.hash[:12], current)
            self.bases.put(self.preloaded.at_round(current))
            self.bases.put(self.preloaded.at_round(current + 1))
            return current
        if self.genesis is None:
            raise ConfigError(f"run {self.run_id} resumes from state {self.manifest.resume.state_hash[:12]} and {why}: "
                              "start with --resume DIR (an export of that state) or join while its peers are live")
        logger.warning("%s: starting region %s from the initial state at round %d", why, self.region, current)
        self.bases.put(self.genesis.at_round(current))
        self.bases.put(self.genesis.at_round(current + 1))
        return current

    # --- training side ------------------------------------------------------------------------
    def batch_indices(self) -> list[int]:
        """Dataset indices of the current (round, step): hash-derived, not chosen by this peer."""
        return assign(self.run_id, self.manifest.seed, self.identity.public_key_hex, self.round, self.steps,
                      self.batch_size, len(self.task.dataset))

    def after_inner_step(self, opt: Any) -> None:
        """Count one inner step; at the round's training deadline, hand the update over and move on."""
        try:
            self._step_done(opt)
        finally:  # everything the training thread does: steps, making and announcing the update, loading bases
            cpu = time.thread_time()
            if self._cpu_mark is None:
                self._cpu_mark = cpu
            self.train_cpu_s = cpu - self._cpu_mark

    def _step_done(self, opt: Any) -> None:
        self.steps += 1
        self.samples_total += self.batch_size
        if self._stop.is_set():  # leaving: an update announced now could not be served anyway
            return
        now = time.time()
        deadline = self.clock.train_deadline(self.round)
        if self.steps >= self.max_inner_steps and now < deadline:
            self._stop.wait(deadline - now)  # the cap is reached: wait for the clock, never for peers
            now = time.time()
        if now >= deadline and not self._stop.is_set():
            self._finish_round(opt, now)

    def _finish_round(self, opt: Any, now: float) -> None:
        self.finish_times[self.round] = now
        # the base this round's steps started from; bases[round] may have been replaced meanwhile
        # (re-sync, merge adoption), and a delta against another base would be garbage
        base = self._loaded if self._loaded is not None and self._loaded.round == self.round else None
        if base is not None and self.steps > 0:
            with torch.no_grad():
                delta = {n: base.params[n] - p.detach().to("cpu", torch.float32) for n, p in self.model.named_parameters()}
            r, steps, h = self.round, self.steps, base.hash
            try:
                self.coordinator.announce(r, h, steps, steps * self.batch_size, delta)
                self.lateness.announced(r, time.time())
                self.rounds_trained += 1
                self.trained_from[r] = h
                for old in [k for k in self.trained_from if k < r - 8]:  # rounds never recorded
                    del self.trained_from[old]
            except Exception as e:  # latched: this round's work is lost, the run goes on
                logger.warning("round %d: could not announce: %s", r, e)
        nxt = max(self.round + 1, self.clock.round_at(now))
        state = self.bases.get(nxt)
        if state is None and nxt - 2 >= self.coordinator.first_round:  # our own tally will produce it
            state = self.bases.wait(nxt, timeout_s=max(0.0, self.clock.tally_time(nxt - 2) + 0.4 * self.clock.round_s
                                                         - time.time()))
        if state is None:
            state = self._catch_up(nxt)
        self._load_base(state)
        opt.reset_inner_state()
        self.round, self.steps = state.round, 0

    def _catch_up(self, wanted: int) -> BaseState:
        """Our base for ``wanted`` is missing (we were behind or in the minority): re-sync.

        If no donor offers any state for two rounds (everyone else left), carry on alone from the
        newest base held; the majority-hash check re-syncs this peer if others turn up later.
        """
        patience = max(2 * self.clock.round_s, 2 * heartbeat_period(self.manifest.round_s))  # peer records lag
        give_up, rescheduled = time.time() + patience, 0
        while not self._stop.is_set():
            if time.time() > give_up and rescheduled < 3:  # the others may be on a newer schedule
                refresh_peers(self)
                clock = self.pace.newer_from_peers(self.peer_schedules.items(), self.anchor_keys)
                if clock is not None:
                    self._use_clock(clock)
                    give_up, rescheduled = time.time() + max(patience, 2 * self.clock.round_s), rescheduled + 1
                    wanted = max(self.round + 1, self.clock.round_at(time.time()))  # on the new clock
                    continue
            if time.time() > give_up:
                latest = self.bases.latest() or self.genesis or self.like
                current = max(wanted, self.clock.round_at(time.time()))
                logger.warning("no donor offers the base of round %d; continuing alone from round %d's base",
                               current, latest.round)
                state = latest.at_round(current)
                self.bases.put(state)
                self.bases.put(state.at_round(current + 1))
                return state
            current = max(wanted, self.clock.round_at(time.time()))
            for r in dict.fromkeys((wanted, current + 1, current)):
                try:
                    state = self.bases.get(r) or self.coordinator.resync(r)
                except Exception as e:
                    logger.info("re-sync of round %d failed: %s", r, e)
                    state = None
                if state is not None:
                    return state
            self._stop.wait(0.25)
        return self.bases.latest() or self.like

    def _load_base(self, state: BaseState) -> None:
        self._loaded = state
        self.follow_schedule(state)
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                p.copy_(state.params[n].to(p.device, p.dtype))

    def position(self) -> dict:
        """Where this peer is: round, inner steps done in it, samples so far, current base hash."""
        base = self.bases.get(self.round)
        return {"round": self.round, "steps": self.steps, "samples": self.samples_total,
                "base_hash": base.hash if base else None}

    def restore_position(self, pos: Mapping) -> None:
        """Restore counters from :meth:`position` (the base itself is re-synced from the swarm)."""
        self.samples_total = int(pos.get("samples", self.samples_total))
        r = int(pos.get("round", self.round))
        if self.bases.get(r) is not None:
            self.round, self.steps = r, int(pos.get("steps", 0))

    # --- metrics, heartbeat, shutdown -------------------------------------------------------------
    def _on_round(self, outcome: RoundOutcome) -> None:
        self.history.append(record_round(self, outcome))

    def metrics(self) -> dict:
        """Live figures for status records, the CLI and benchmarks (:func:`peer_metrics`)."""
        return peer_metrics(self)

    def stop_threads(self, grace_s: float = 2.0) -> None:
        """Ask the training, coordinator and heartbeat threads to stop; wait up to ``grace_s`` for them."""
        self._stop.set()
        self.coordinator._stop.set()
        deadline = time.monotonic() + grace_s
        for t in (self.coordinator._thread, self._heartbeat):
            if t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))

    def shutdown(self, timeout_s: float = 2.0) -> None:
        """Stop threads and the payload server, waiting at most ``timeout_s`` for each part, then write
        the reward log's "leave" record and close it; the DHT belongs to the caller. Idempotent."""
        if getattr(self, "_shut", False):
            return
        self._shut = True
        self.stop_threads(timeout_s)
        self.coordinator.stop(timeout_s)
        try:
            self.netloop.run(self.server.stop(), timeout_s=timeout_s)
        except Exception:
            pass
        self.netloop.stop(timeout_s)
        if self.ledger is not None:
            try:
                self.ledger.append("leave", {"peer": self.identity.public_key_hex, "round": self.round,
                                             "region": self.region}).wait(timeout_s)
                self.ledger.close()
            except Exception as e:
                logger.warning("closing the reward log failed: %r", e)
