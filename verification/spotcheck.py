"""The spot-checker: the verification hooks the round coordinator calls (see ``optim.coordinator``).

* ``on_close(q, book, payloads, base)``: with private randomness (``random.SystemRandom``, seeded
  by the OS, not derivable by others) pick each included update of another peer with probability
  ``min(1, c / (n - 1))`` (:func:`check_probability`: ``c`` expected checks per update whatever
  the number ``n`` of the round's authors, so a peer's checking cost stays flat as the swarm grows;
  :func:`.check_rate.draw_checks`: ``n`` counts the authors with standing in the base for their
  updates, so fresh keys cannot dilute those checks, and all authors for newcomers' updates)
  and recompute it on a worker thread (:func:`.recompute.recompute_update`); publish a
  signed verdict as this peer's ``verdict.<region>`` record of round ``q``. The worker also scans
  the verdicts of the last ``lag`` rounds and **re-checks every fail verdict** it can (it holds
  the base and the payload), which is what confirms a failure or exposes a false accuser.
* ``vote_verdicts(q)``: ids of the well-formed verdicts about round ``q - lag`` (the updates the
  voter knows were announced, or any if it did not see that round).
* ``next_extra(extra, q, ids)``: the verdict ids the swarm agreed on in round ``q-1``'s votes are
  about round ``q - 1 - lag``; they are resolved (cache, else DHT) and fed to the pure
  :func:`.reputation.update_reputation` for the base of round ``q + 2``.
* ``reputation(extra)`` and ``rule`` (:class:`.robust.CenteredClip`).
"""

from __future__ import annotations

import random
import threading
import time
import queue
from typing import Any, Mapping

from hivemind.p2p import PeerID

from dai_swarm.canonical import sha256_hex, state_hash
from dai_swarm.errors import SwarmError, Unprovable
from dai_swarm.optim.exchange import fetch_payload, round_record_ttl
from dai_swarm.verification.check_rate import (DEFAULT_CHECKS_PER_UPDATE, check_probability, detection_per_round,
                                               draw_checks, fill_budget)
from dai_swarm.logging import get_logger
from dai_swarm.optim import codecs

from .recompute import DEFAULT_TAU, recompute_update, relative_distance
from .reputation import (ReputationPolicy, initial_extra, is_slashed, reputation_of, standing_of, update_reputation,
                         vote_weights)
from .robust import CenteredClip
from .sparse_verify import check_sparse_update
from .verdicts import Verdict, record_body, verdicts_from_record

__all__ = ["DEFAULT_CHECKS_PER_UPDATE", "DEFAULT_TAU", "SpotChecker", "check_probability", "detection_per_round"]

logger = get_logger(__name__)
events = get_logger("dai_swarm.events")
#: this peer's verdicts of a round are published when the worker has no job left, or at the latest this
#: long after the first unpublished one: a DHT write per check held up every check queued behind it
#: (Sybil flood: 7-12 s from a round's close to its verdicts, against a 2-round verdict lag of 12 s)
PUBLISH_WITHIN_S = 1.0

#: at most this many own checks and this many re-checks of others' fails per round and peer: a
#: flood of announced updates (fresh keys) cannot make a verifier spend its round recomputing
MAX_CHECKS_PER_ROUND = MAX_RECHECKS_PER_ROUND = 8


class SpotChecker:
    """Spot checks, verdicts and reputation for one peer (see the module docstring).

    ``task`` is the run's task; ``checks_per_update`` the expected checks of each update per round
    (manifest's ``checks_per_update``; :func:`check_probability`); ``tau`` the pass threshold on :func:`.recompute.relative_distance`;
    ``lag`` how many rounds a verdict has to arrive before it is voted on; ``max_checks`` and
    ``max_rechecks`` bound the recomputations of one round (a random subset when more are drawn).
    Call :meth:`bind` with the round runtime before the first round.
    """

    def __init__(self, task: Any, checks_per_update: float = DEFAULT_CHECKS_PER_UPDATE, *, tau: float = DEFAULT_TAU, lag: int = 2,
                 policy: ReputationPolicy = ReputationPolicy(), rule: Any = None, rng: random.Random | None = None,
                 max_checks: int = MAX_CHECKS_PER_ROUND, max_rechecks: int = MAX_RECHECKS_PER_ROUND):
        self.task, self.tau, self.lag, self.policy = task, float(tau), int(lag), policy
        self.checks_per_update = float(checks_per_update)
        self.max_checks, self.max_rechecks = int(max_checks), int(max_rechecks)
        self.rule = rule if rule is not None else CenteredClip()
        self._rng = rng if rng is not None else random.SystemRandom()
        self._lock = threading.Lock()
        self._held: dict[int, dict] = {}  # round -> {"base", "anns", "payloads", "t", "standing"}
        self._verdicts: dict[str, Verdict] = {}  # id -> verdict
        self._checked: set[tuple[int, str]] = set()  # (round, digest) checked here
        self._unpublished: dict[int, float] = {}  # round -> when its first verdict not yet in the DHT was made
        self._jobs: queue.Queue = queue.Queue()
        self._closed = threading.Event()
        self._worker = threading.Thread(target=self._work, name="dai-swarm-verify", daemon=True)
        self._worker.start()
        self._model = None
        self.rt: Any = None
        self.stats = {"checks": 0, "rechecks": 0, "fails": 0, "verify_cpu_s": 0.0, "latency_s_sum": 0.0,
                      "latency_s_max": 0.0, "invalid_verdicts": 0, "max_pass_distance": 0.0}

    def bind(self, runtime: Any) -> None:
        """Attach to a round runtime (run id, region, DHT, identity, manifest, codec, clock)."""
        self.rt = runtime

    # --- the hooks ----------------------------------------------------------------------------
    def on_close(self, round: int, book: Any, payloads: Mapping[str, Mapping], base: Any,
                 weights: Mapping[str, float] | None = None) -> None:
        """Keep what re-checks need, pick this round's spot checks, scan recent verdicts. ``weights``
        (each included digest's weight in this peer's aggregate): updates that weighed nothing are
        checked after the others (:func:`~.check_rate.draw_checks`)."""
        if self.rt is None:
            return
        me = self.rt.identity.public_key_hex
        anns = {a.digest: a for a, disc in book.included() if disc == 1.0}
        now = time.time()
        # updates by keys with standing first: a flood of fresh keys does not dilute their checks
        standing = standing_of(getattr(base, "extra", None) or {}, self.policy)
        with self._lock:
            self._held[round] = {"base": base.params, "anns": anns, "payloads": dict(payloads), "t": now,
                                 "standing": frozenset(standing)}
            for r in [r for r in self._held if r < round - self.lag - 1]:
                del self._held[r]
        drawn = draw_checks({d: a.peer for d, a in anns.items() if d in payloads}, me, standing,
                            self.checks_per_update, self.max_checks, self._rng,
                            weightless={d for d, w in (weights or {}).items() if not w > 0})
        for digest in drawn:
            self._jobs.put((self._safe_check, (round, anns[digest], False, now)))
        self._jobs.put((self._scan, (round,)))

    def verifier_counts(self, round: int, verdict_ids: tuple[str, ...]) -> dict[str, int]:
        """Verifications per verifier (public key) among ``verdict_ids``, the verdicts the swarm agreed
        on in ``round``'s votes; ids this peer never received, and verdicts about another round than
        ``round - lag``, are not counted: the same verdicts the reputation update applies (for the
        reward split, which is replicated state through vesting)."""
        out: dict[str, int] = {}
        with self._lock:
            for i in verdict_ids:
                v = self._verdicts.get(i)
                if v is not None and v.round == round - self.lag:
                    out[v.verifier] = out.get(v.verifier, 0) + 1
        return out

    def vote_verdicts(self, round: int) -> list[str]:
        """Ids of the valid verdicts about round ``round - lag`` seen so far."""
        t = round - self.lag
        if t < 0 or self.rt is None:
            return []
        self._read(t)
        with self._lock:
            held = self._held.get(t)
            out = []
            for vid, v in self._verdicts.items():
                if v.round != t:
                    continue
                if held is not None:
                    a = held["anns"].get(v.digest)
                    if a is None or a.peer != v.target or a.steps != v.steps:
                        continue  # about an update that round t did not include (replayed, made up)
                out.append(vid)
        return sorted(out)

    def next_extra(self, extra: Mapping, round: int, verdicts: tuple[str, ...]) -> dict:
        """Deterministic reputation update for base ``round + 2`` (see :mod:`.reputation`)."""
        t = round - 1 - self.lag
        found = self._resolve(t, verdicts) if verdicts else []
        out = update_reputation(extra, round + 2, found, self.policy)
        if out.get("slashed_now"):
            events.info("base %d: slashed %s", round + 2, [k[:12] for k in out["slashed_now"]],
                        extra={"event": "slash", "round": round + 2, "keys": out["slashed_now"]})
        return out

    def reputation(self, extra: Mapping) -> Mapping[str, float]:
        """Aggregation weight per public key (unknown keys: the newcomer weight, so newcomers earn)."""
        return reputation_of(extra, self.policy)

    def vote_weights(self, extra: Mapping) -> Mapping[str, float]:
        """Weight in every decision (votes, verdict sets, state records): standing only, unknown
        keys 0 (:func:`.reputation.vote_weights`); in a resumed generation its manifest's founders too."""
        manifest = getattr(self.rt, "manifest", None)
        anchors = manifest.founders if manifest is not None and manifest.resume is not None else ()
        return vote_weights(extra, self.policy, anchors)

    def initial_extra(self, founders) -> dict:
        """Replicated metadata of the run's first base: the manifest's founders hold standing."""
        return initial_extra(founders, self.policy)

    def metrics(self, extra: Mapping | None = None) -> dict:
        """This peer's reputation and slash status (from ``extra``) and its verification counters."""
        out = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.stats.items()}
        n = self.stats["checks"] + self.stats["rechecks"]
        out["latency_s_mean"] = round(self.stats["latency_s_sum"] / n, 4) if n else None
        if extra is not None and self.rt is not None:
            me = self.rt.identity.public_key_hex
            out["reputation"] = reputation_of(extra, self.policy).get(me)
            out["slashed"] = is_slashed(extra, me)
        return out

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the worker: pending checks are dropped, a running one may finish (``timeout_s``)."""
        self._closed.set()
        self._jobs.put(None)
        self._worker.join(timeout=timeout_s)

    # --- verdict records ------------------------------------------------------------------------
    def _kind(self) -> str:
        return f"verdict.{self.rt.region}"

    def _read(self, t: int) -> list[Verdict]:
        try:
            records = self.rt.dht.get_round_records(self.rt.run_id, self._kind(), t)
        except Exception as e:  # DHT trouble: vote with what is cached
            logger.debug("verdict read of round %d failed: %s", t, e)
            return []
        out = []
        for rec in records:
            try:
                found, bad = verdicts_from_record(rec)
            except SwarmError as e:
                found, bad = [], 1
                logger.debug("round %d: malformed verdict record from %s: %s", t, rec.signer[:12], e)
            with self._lock:
                self.stats["invalid_verdicts"] += bad
                for v in found:
                    self._verdicts.setdefault(v.id, v)
            out.extend(found)
        with self._lock:
            for old in [k for k, x in self._verdicts.items() if x.round < t - 4 * self.lag - 4]:
                del self._verdicts[old]
        return out

    def _cached(self, t: int) -> list[Verdict]:
        with self._lock:
            return [v for v in self._verdicts.values() if v.round == t]

    def _resolve(self, t: int, ids: tuple[str, ...]) -> list[Verdict]:
        with self._lock:
            missing = [i for i in ids if i not in self._verdicts]
        if missing:
            self._read(t)
        with self._lock:
            found = [self._verdicts[i] for i in ids if i in self._verdicts]
        if len(found) != len(ids):
            logger.info("round %d: %d agreed verdict(s) unknown here; state may differ and re-sync",
                        t, len(ids) - len(found))
        return [v for v in found if v.round == t]

    # --- sparse updates (error feedback) -------------------------------------------------------
    def _previous_post(self, t: int, peer: str) -> str | None:
        """The post-round buffer root of ``peer``'s update included in round ``t - 1``, if held here."""
        with self._lock:
            held = self._held.get(t - 1)
            anns = list(held["anns"].values()) if held else []
        return next((a.ef.post for a in anns if a.peer == peer and a.ef is not None), None)

    def _range_fetch(self, ann: Any):
        """fetch(digest, offset, length) of a buffer blob from ``ann``'s author over the payload protocol."""
        rt = self.rt
        pid = rt.announcer(ann.peer) or next(iter(rt.coordinator.providers.get(ann.digest, [])), None)
        if pid is None:
            raise Unprovable(f"no live peer record of {ann.peer[:12]}")
        peer = PeerID.from_base58(pid)
        cap = sum(32 + 4 * 4096 + 4 * t.numel() for t in rt.like.params.values())  # >= any buffer blob of this model

        def fetch(digest: str, offset: int, length: int) -> bytes:
            return rt.netloop.run(fetch_payload(rt.p2p, peer, rt.run_id, digest, max_bytes=cap, timeout_s=5.0,
                                                offset=offset, length=length, traffic=rt.traffic, verify=False),
                                  timeout_s=10.0)
        return fetch

    # --- the worker ---------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._closed.is_set():
            job = self._jobs.get()
            if job is None or self._closed.is_set():
                return
            fn, args = job
            try:
                fn(*args)
            except Exception as e:  # never kill the worker
                logger.warning("verification job failed: %r", e)
            with self._lock:
                due = bool(self._unpublished) and (self._jobs.empty()
                                                   or time.time() - min(self._unpublished.values()) >= PUBLISH_WITHIN_S)
            if due:
                self._publish_verdicts()

    def _publish_verdicts(self) -> None:
        """One DHT write per round with new verdicts: this peer's whole verdict record of that round."""
        with self._lock:
            me, rounds, self._unpublished = self.rt.identity.public_key_hex, sorted(self._unpublished), {}
            records = {t: sorted((x for x in self._verdicts.values() if x.round == t and x.verifier == me),
                                 key=lambda x: (x.digest, x.id)) for t in rounds}
        for t, mine in records.items():
            if self._closed.is_set():  # shutting down: the DHT may be gone already
                return
            try:
                self.rt.dht.publish_round_record(self.rt.run_id, self._kind(), t, record_body(mine),
                                                 ttl_s=round_record_ttl(self.rt.clock.round_s))
            except Exception as e:  # DHT trouble: the next verdict of that round publishes the record again
                logger.warning("round %d: publishing this peer's verdicts failed: %r", t, e)

    def _scan(self, round: int) -> None:
        """Re-check the fail verdicts of recent rounds that this peer has not checked itself. Round
        ``round - lag``'s verdicts were read a moment ago for this close's vote (:meth:`vote_verdicts`):
        taken from the cache, not read from the DHT again."""
        me = self.rt.identity.public_key_hex
        todo: dict[tuple[int, str], tuple[Any, bool]] = {}  # (round, digest) -> (announcement, accused by standing)
        for t in range(max(0, round - self.lag), round):
            for v in self._cached(t) if t == round - self.lag else self._read(t):
                if v.passed or v.target == me:
                    continue
                with self._lock:
                    held = self._held.get(t)
                    a = held["anns"].get(v.digest) if held else None
                    done = (t, v.digest) in self._checked
                    ranked = held is not None and v.verifier in held.get("standing", ())
                if a is not None and not done and a.peer == v.target and a.steps == v.steps:
                    accused_by_standing = ranked or ((t, a.digest) in todo and todo[(t, a.digest)][1])
                    todo[(t, a.digest)] = (a, accused_by_standing)
        # fails by verifiers with standing first (only theirs can slash, and a second check decides them),
        # then a random few of the others: each still gets re-checked in time
        first = [(t, a) for (t, _), (a, ranked) in sorted(todo.items()) if ranked]
        second = [(t, a) for (t, _), (a, ranked) in sorted(todo.items()) if not ranked]
        for t, a in fill_budget(first, second, self.max_rechecks, self._rng):
            if self._closed.is_set():
                return
            self._safe_check(t, a, True, time.time())

    def _safe_check(self, t: int, ann: Any, recheck: bool, queued_at: float) -> None:
        try:
            self._check(t, ann, recheck, queued_at)
        except Exception as e:  # never kill the worker; the check is simply lost
            logger.warning("round %d: spot check of %s failed to run: %r", t, ann.digest[:12], e)

    def _check(self, t: int, ann: Any, recheck: bool, queued_at: float) -> Verdict | None:
        with self._lock:
            held = self._held.get(t)
            if held is None or (t, ann.digest) in self._checked or ann.digest not in held["payloads"]:
                return None
            self._checked.add((t, ann.digest))
            base, payload = held["base"], held["payloads"][ann.digest]
        rt = self.rt
        cpu0 = time.thread_time()
        if self._model is None:
            self._model = self.task.build_model(rt.manifest.seed)
        delta = recompute_update(self.task, base, rt.run_id, rt.manifest.seed, ann.peer, t, ann.steps,
                                 model=self._model, raw=True)
        if rt.codec == "sparse":  # error feedback: checked on sampled buffer chunks (.sparse_verify)
            try:
                distance, reason = check_sparse_update(delta, payload, ann.ef, self._range_fetch(ann), rt.codec_params,
                                                       previous_post=self._previous_post(t, ann.peer),
                                                       rng=self._rng, tau=self.tau)
            except Unprovable as e:
                with self._lock:
                    self.stats["unprovable"] = self.stats.get("unprovable", 0) + 1
                logger.info("round %d: no verdict on %s: its author is unreachable (%s)", t, ann.peer[:12], e)
                return None
            passed, recomputed = not reason, state_hash(delta)
            if reason:
                logger.info("round %d: sparse check of %s failed: %s", t, ann.peer[:12], reason)
        else:
            blob = codecs.encode(delta, rt.codec, **rt.codec_params)
            mine = codecs.decode(blob, max_bytes=codecs.decode_cap_for(delta, rt.codec, **rt.codec_params))
            distance, recomputed = relative_distance(payload, mine), sha256_hex(blob)
            passed = distance <= self.tau
        cpu = time.thread_time() - cpu0
        latency = time.time() - queued_at
        v = Verdict(round=t, verifier=rt.identity.public_key_hex, target=ann.peer, digest=ann.digest, passed=passed,
                    distance=distance if distance != float("inf") else -1.0, recomputed=recomputed,
                    steps=ann.steps, latency_s=latency, recheck=recheck)
        if self._closed.is_set():  # shutting down: the DHT may be gone already
            return None
        with self._lock:
            self._verdicts[v.id] = v
            self._unpublished.setdefault(t, time.time())  # published by the worker (_publish_verdicts)
            self.stats["rechecks" if recheck else "checks"] += 1
            self.stats["fails"] += 0 if passed else 1
            self.stats["verify_cpu_s"] += cpu
            self.stats["latency_s_sum"] += latency
            self.stats["latency_s_max"] = max(self.stats["latency_s_max"], latency)
            if passed:
                self.stats["max_pass_distance"] = max(self.stats["max_pass_distance"], distance)
        events.info("round %d: %s %s of %s (distance %.3g, %.2fs)", t, "re-check" if recheck else "check",
                    "PASS" if passed else "FAIL", ann.peer[:12], distance, latency,
                    extra={"event": "verdict", "round": t, "target": ann.peer, "pass": passed, "distance": distance})
        return v
