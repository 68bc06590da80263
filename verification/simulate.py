"""In-process simulations of the trust layer, driving the same pure core as the real peers.

* :func:`detection_trial`: rounds of spot checks on verdict level only (no tensors): honest
  verifiers check each other update with probability ``p`` (private randomness), every fail is
  re-checked by all other honest verifiers, colluding attackers vouch for each other, and the real
  :func:`.reputation.update_reputation` runs with the protocol's lag. Returns the round an
  attacker was slashed (or None). Cheap enough for thousands of trials.
* :func:`training_run`: a whole swarm trained for real on a task: every peer's update is
  :func:`.recompute.recompute_update` (the exact honest loop) through the run's codec, Byzantine
  peers tamper with theirs, verifiers really recompute (optionally with another torch thread count
  than the author), verdicts drive the reputation table, and the aggregate is
  :func:`optim.aggregate.weighted_mean` (plain or with :class:`.robust.CenteredClip`) followed by
  the Nesterov outer step. Synchronous rounds (no one-round delay), which is what matters here.
"""

from __future__ import annotations

import random
import time
from typing import Any

import torch

from dai_swarm.optim import codecs
from dai_swarm.optim.aggregate import update_weight, weighted_mean
from dai_swarm.optim.machine import VERDICT_LAG
from dai_swarm.optim.outer import OuterState, outer_step

from .recompute import recompute_update, relative_distance
from .reputation import ReputationPolicy, initial_extra, is_slashed, reputation_of, update_reputation
from .robust import CenteredClip
from .verdicts import Verdict

__all__ = ["PROTOCOL_LAG", "detection_trial", "tamper_update", "training_run"]

#: verdicts about round t weigh the aggregation of round t + 3 (the round machine's offset)
PROTOCOL_LAG = VERDICT_LAG
_DUMMY = "ab" * 32


def _key(i: int) -> str:
    return f"{i + 1:064x}"


def _digest(i: int, r: int) -> str:
    return f"{(r << 16) + i + 1:064x}"


def detection_trial(rng: random.Random, *, n_honest: int, n_attackers: int, p: float, cheat: float, rounds: int,
                    lag: int = PROTOCOL_LAG, policy: ReputationPolicy = ReputationPolicy(),
                    recheck: bool = True) -> list[int | None]:
    """One simulated run; returns, per attacker, the first round whose aggregation it no longer
    weighs in (slashed), or None if it was never slashed within ``rounds``.

    Honest updates are spot-checked (and pass) like any other, so honest verifiers build
    reputation; colluding attackers vouch (pass) for a partner that an honest peer failed. The
    honest verifiers hold standing from the start (they are the run's founders); the attackers'
    verdicts never count (no standing), which is what SPEC I7 demands."""
    honest = [_key(i) for i in range(n_honest)]
    bad = [_key(n_honest + j) for j in range(n_attackers)]
    extra: dict = initial_extra(honest, policy)
    pending: dict[int, list[Verdict]] = {}
    caught: dict[str, int] = {}
    for r in range(rounds):
        if r - lag in pending:
            extra = update_reputation(extra, r, pending.pop(r - lag), policy)
        for a in bad:
            if a not in caught and is_slashed(extra, a):
                caught[a] = r
        verdicts = []
        for i, h in enumerate(honest):  # honest updates are checked too (that is how verifiers earn weight)
            verdicts += [Verdict(r, o, h, _digest(i, r), True, 0.0, _DUMMY, 1) for o in honest
                         if o != h and rng.random() < p]
        for j, a in enumerate(bad):
            d = _digest(n_honest + j, r)
            cheated = rng.random() < cheat
            checkers = [h for h in honest if rng.random() < p]
            failed = bool(checkers) and cheated
            if failed and recheck:
                checkers = honest  # every honest peer re-checks a fail it sees
            for h in checkers:
                verdicts.append(Verdict(r, h, a, d, not cheated, 0.0 if not cheated else 1.0, _DUMMY, 1))
            if failed:  # colluders vouch for their partner
                verdicts += [Verdict(r, o, a, d, True, 0.0, _DUMMY, 1) for o in bad if o != a]
        pending[r] = verdicts
    return [caught.get(a) for a in bad]


def tamper_update(kind: str, delta: dict, honest: list[dict], *, task: Any = None, base: dict | None = None,
                  run_id: str = "", seed: int = 0, peer: str = "", round: int = 0, steps: int = 0) -> dict:
    """A Byzantine peer's update of ``kind`` (omniscient variants: they see the honest updates)."""
    if kind == "sign_flip":
        return {n: -t for n, t in delta.items()}
    if kind.startswith("scale"):
        return {n: t * float(kind[5:]) for n, t in delta.items()}
    if kind in ("alie", "ipm"):
        stack = {n: torch.stack([h[n] for h in honest]) for n in delta}
        if kind == "alie":
            return {n: s.mean(0) - 1.0 * s.std(0) for n, s in stack.items()}
        return {n: -0.5 * s.mean(0) for n, s in stack.items()}
    if kind == "gaussian":
        return {n: t + 3.0 * t.abs().mean() * torch.randn(t.shape) for n, t in delta.items()}
    if kind == "lazy":
        return recompute_update(task, base, run_id, seed, peer, round, max(1, steps // 2), raw=True)
    raise ValueError(f"no simulation of attack {kind!r}")


def training_run(task: Any, *, n_peers: int, attackers: dict[int, str], rounds: int, steps: int, p: float,
                 verify: bool = True, robust: bool = True, codec: str = "int8", seed: int = 0,
                 outer_lr: float = 0.6, outer_momentum: float = 0.9, author_threads: int = 1,
                 verifier_threads: int = 1, rng: random.Random | None = None, run_id: str = "sim",
                 policy: ReputationPolicy = ReputationPolicy(), tau: float = 1e-2, rule: Any = None) -> dict:
    """Train a simulated swarm; returns val losses, slash rounds, honest distances and CPU times."""
    rng = rng or random.Random(seed)
    model = task.build_model(seed)
    params = {n: p_.detach().clone() for n, p_ in model.named_parameters()}
    momentum = {n: torch.zeros_like(t) for n, t in params.items()}
    keys = [_key(i) for i in range(n_peers)]
    # the honest peers are the run's founders (standing from round 0); attackers start unknown
    extra: dict = initial_extra([k for i, k in enumerate(keys) if i not in attackers], policy)
    pending: dict[int, list[Verdict]] = {}
    out = {"val_loss": [], "slashed_round": {}, "honest_distances": [], "false_slashes": 0, "train_cpu_s": 0.0,
           "verify_cpu_s": 0.0, "checks": 0, "honest_checks": 0}
    rule = (rule or CenteredClip()) if robust else None
    eval_model = task.build_model(seed)
    for r in range(rounds):
        if verify and r - PROTOCOL_LAG in pending:
            extra = update_reputation(extra, r, pending.pop(r - PROTOCOL_LAG), policy)
        for i, k in enumerate(keys):
            if is_slashed(extra, k):
                if i in attackers:
                    out["slashed_round"].setdefault(attackers[i] + f"#{i}", r)
                else:
                    out["false_slashes"] += 1
        torch.set_num_threads(author_threads)
        raw = []
        for i, k in enumerate(keys):
            c0 = time.thread_time()
            raw.append(recompute_update(task, params, run_id, seed, k, r, steps, model=model, raw=True))
            out["train_cpu_s"] += time.thread_time() - c0
        honest_raw = [raw[i] for i in range(n_peers) if i not in attackers]
        sent = []
        for i, k in enumerate(keys):
            d = raw[i]
            if i in attackers:
                d = tamper_update(attackers[i], d, honest_raw, task=task, base=params, run_id=run_id, seed=seed,
                                  peer=k, round=r, steps=steps)
            sent.append(codecs.roundtrip(d, codec))
        verdicts = []
        if verify:
            torch.set_num_threads(verifier_threads)
            for i in range(n_peers):
                checkers = [j for j in range(n_peers) if j != i and j not in attackers and rng.random() < p]
                done: set[int] = set()
                while checkers:
                    j = checkers.pop(0)
                    done.add(j)
                    c0 = time.thread_time()
                    mine = codecs.roundtrip(recompute_update(task, params, run_id, seed, keys[i], r, steps,
                                                             model=eval_model, raw=True), codec)
                    dist = relative_distance(sent[i], mine)
                    out["verify_cpu_s"] += time.thread_time() - c0
                    out["checks"] += 1
                    ok = dist <= tau
                    if i not in attackers:
                        out["honest_distances"].append(dist)
                        out["honest_checks"] += 1
                    verdicts.append(Verdict(r, keys[j], keys[i], _digest(i, r), ok, dist if dist != float("inf") else -1.0,
                                            _DUMMY, steps))
                    if not ok:  # re-checks by every other honest peer
                        checkers += [h for h in range(n_peers) if h not in done and h not in checkers
                                     and h != i and h not in attackers]
            pending[r] = verdicts
        rep = reputation_of(extra, policy) if verify else {}
        items = [(_digest(i, r), update_weight(steps * task.batch_size, rep.get(keys[i]) if verify else 1.0), sent[i])
                 for i in range(n_peers)]
        if any(w > 0 for _, w, _ in items):
            agg = weighted_mean(items, rule=rule)
            st = outer_step(OuterState(dict(params), dict(momentum)), agg, lr=outer_lr, momentum=outer_momentum,
                            nesterov=True)
            params, momentum = dict(st.params), dict(st.momentum)
        with torch.no_grad():
            for n, p_ in eval_model.named_parameters():
                p_.copy_(params[n])
        out["val_loss"].append(float(task.evaluate(eval_model)["loss"]))
    torch.set_num_threads(author_threads)
    return out
