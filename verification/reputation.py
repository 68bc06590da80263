"""Reputation: a deterministic function of public verdicts (replicated state, SPEC I1).

The table lives in the base state's replicated metadata (``BaseState.extra``) and is hashed with
the tensors, so every honest peer must compute it bit for bit: :func:`update_reputation` uses only
its arguments, visits digests and keys in sorted order and rounds every value to 6 decimals.

``extra`` keys written here (others are preserved untouched):

* ``"reputation"``: ``{public key: weight}``; absent keys weigh ``newcomer``; a slashed key weighs 0;
* ``"trust"``: ``{public key: [passes, slashed_until_round]}`` for keys with history;
* ``"trust_round"``: the round of the base the table belongs to.

Rules, per checked update (one digest, its author = *target*), over the verdicts of one round:

* Only verifiers with *standing* (:func:`standing_of`: a founder, or a key with a verified pass,
  not slashed) count; for an update that no verifier with standing checked, every verifier that
  weighs > 0 counts (the bootstrap window of a region no founder reached). *F*/*P* = the counted
  verifiers that failed/passed it, weighed by reputation. A verifier that both passed and failed one digest is slashed.
* **Confirmed failure** iff ``|F| >= min_fail_verifiers`` (default 2, two independent
  recomputations) and ``w(F) > w(P)``: the target is slashed (weight 0 for ``slash_rounds``) and
  so is everyone who passed it (recomputation is exact, so vouching for a bad update is a lie).
* **False accusation** iff ``P`` is non-empty and ``w(P) > w(F)``: every fail verifier is slashed.
  Honest peers re-check every fail verdict they see, so a lone accuser is contradicted.
* **Pass** (no fail): the target gains ``pass_gain`` once; anything else leaves it unchanged.
* **Sybil warm-up**: unknown keys weigh ``newcomer``; until a key has ``warmup_passes`` passed
  checks its weight is capped at ``newcomer_cap``. After a slash expires the key starts over.

A single honest verifier can therefore never slash anyone alone; detection needs a second check,
which the verifier triggers itself (every honest peer re-checks the fails it sees).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from dai_swarm.errors import ConfigError

from dai_swarm.optim.votes import FallbackWeights

from .verdicts import Verdict

__all__ = ["ReputationPolicy", "Weights", "initial_extra", "is_slashed", "reputation_of", "standing_of",
           "update_reputation", "vote_weights"]

_DIGITS = 6


@dataclass(frozen=True)
class ReputationPolicy:
    """The constants of the reputation rules (part of a run's behaviour: keep them identical)."""

    newcomer: float = 0.1
    newcomer_cap: float = 0.3
    warmup_passes: int = 3
    pass_gain: float = 0.15
    max_reputation: float = 1.0
    slash_rounds: int = 200
    min_fail_verifiers: int = 2

    def __post_init__(self) -> None:
        if not 0 < self.newcomer <= self.newcomer_cap <= self.max_reputation:
            raise ConfigError("need 0 < newcomer <= newcomer_cap <= max_reputation")
        if self.warmup_passes < 0 or self.slash_rounds < 1 or self.min_fail_verifiers < 1 or self.pass_gain < 0:
            raise ConfigError("warmup_passes >= 0, slash_rounds >= 1, min_fail_verifiers >= 1, pass_gain >= 0")


class Weights(dict):
    """``{public key: weight}`` whose ``get`` answers ``newcomer`` for unknown keys (Sybil warm-up).

    ``get(key, default)`` ignores ``default`` for unknown keys on purpose: callers written for a
    plain dict (``rep.get(peer, 1.0)``) must not hand a fresh key full weight.
    """

    def __init__(self, table: Mapping[str, float], newcomer: float):
        super().__init__(table)
        self.newcomer = newcomer

    def get(self, key, default=None):  # type: ignore[override]
        """Weight of ``key``; ``newcomer`` if unknown."""
        return super().get(key, self.newcomer)

    def __missing__(self, key):
        return self.newcomer


def reputation_of(extra: Mapping, policy: ReputationPolicy = ReputationPolicy()) -> Weights:
    """Weights per public key read from replicated metadata (unknown keys: ``newcomer``)."""
    table = extra.get("reputation", {}) if isinstance(extra, Mapping) else {}
    clean = {k: float(v) for k, v in table.items() if isinstance(k, str) and isinstance(v, (int, float))
             and not isinstance(v, bool)}
    return Weights(clean, policy.newcomer)


def initial_extra(founders: Iterable[str], policy: ReputationPolicy = ReputationPolicy()) -> dict:
    """Replicated metadata of the run's first base: the founders named in the signed manifest hold
    full standing (the round-0 trust anchor, SPEC I7); everyone else starts unknown."""
    keys = sorted(set(founders))
    if not keys:
        return {}
    return {"reputation": {k: _r(policy.max_reputation) for k in keys},
            "trust": {k: [int(policy.warmup_passes), 0] for k in keys}, "trust_round": 0}


def standing_of(extra: Mapping, policy: ReputationPolicy = ReputationPolicy()) -> dict[str, float]:
    """Keys with *standing*: a founder, or a key with at least one verified pass, not slashed,
    with reputation > 0; ``{key: reputation}``. Unknown and fresh keys are absent (weight 0)."""
    if not isinstance(extra, Mapping):
        return {}
    rep = reputation_of(extra, policy)
    trust = extra.get("trust", {})
    out = {}
    for key, entry in (trust.items() if isinstance(trust, Mapping) else ()):
        if isinstance(entry, (list, tuple)) and len(entry) == 2 and int(entry[0]) >= 1 \
                and not is_slashed(extra, key) and dict.get(rep, key, 0.0) > 0:
            out[key] = float(dict.get(rep, key))
    return out


def vote_weights(extra: Mapping, policy: ReputationPolicy = ReputationPolicy(),
                 anchors: Iterable[str] = ()) -> Mapping[str, float]:
    """Weights of signers in every decision (inclusion and verdict votes, state records): their
    standing, unknown keys 0. A decision in which no signer holds standing (a region no founder
    and no verified key has reached yet) is taken by reputation with the newcomer weight instead:
    the bootstrap window, docs/design.md "Trust model". ``anchors`` are the founders of a resumed
    generation (its signed manifest names them; the exported state's standing belongs to the
    previous generation's keys): they hold full standing unless the state slashed them."""
    table = standing_of(extra, policy)
    for key in anchors:
        if key not in table and not is_slashed(extra, key):
            table[key] = float(policy.max_reputation)
    return FallbackWeights(table, reputation_of(extra, policy))


def _r(x: float) -> float:
    return round(float(x), _DIGITS)


def update_reputation(extra: Mapping, round: int, verdicts: Iterable[Verdict],
                      policy: ReputationPolicy = ReputationPolicy()) -> dict:
    """Replicated metadata of base ``round`` from the previous metadata and the agreed verdicts.

    Pure and deterministic (see the module docstring for the rules). Returns a new dict; the
    keys of ``extra`` that are not reputation's are copied unchanged. Returns the slashed keys
    of this update under ``extra["slashed_now"]`` only if any (for logs and the reward log).
    """
    out = {k: v for k, v in dict(extra).items() if k not in ("reputation", "trust", "trust_round", "slashed_now")}
    rep = dict(reputation_of(extra, policy))
    trust = {k: [int(v[0]), int(v[1])] for k, v in dict(extra.get("trust", {})).items()
             if isinstance(v, (list, tuple)) and len(v) == 2}
    # slashes that ran out: the key starts over as a newcomer
    for key in sorted(trust):
        if trust[key][1] and trust[key][1] <= round:
            trust.pop(key)
            rep.pop(key, None)

    def weight(key: str) -> float:
        return rep.get(key, policy.newcomer)

    def slashed(key: str) -> bool:
        return key in trust and trust[key][1] > round

    # per checked update, verdicts count from verifiers with standing only; an update no standing
    # verifier checked counts every verifier with a reputation > 0 (the bootstrap window of a
    # region no founder reached; a false accusation there is answered by honest re-checks)
    standing = standing_of(extra, policy)

    by_digest: dict[tuple[str, str], list[Verdict]] = {}
    for v in verdicts:
        by_digest.setdefault((v.digest, v.target), []).append(v)
    gains: dict[str, int] = {}
    slash: set[str] = set()
    for (digest, target) in sorted(by_digest):
        vs = by_digest[(digest, target)]
        fails = {v.verifier for v in vs if not v.passed}
        passes = {v.verifier for v in vs if v.passed}
        both = fails & passes
        slash |= both
        judges = {k for k in (fails | passes) - both if k in standing}
        if not judges:
            judges = {k for k in (fails | passes) - both if weight(k) > 0 and not slashed(k)}
        fails, passes = fails & judges, passes & judges
        if slashed(target):
            continue
        w_fail = sum(sorted(weight(k) for k in fails))
        w_pass = sum(sorted(weight(k) for k in passes))
        if len(fails) >= policy.min_fail_verifiers and w_fail > w_pass:
            slash.add(target)
            slash |= passes
        elif fails and passes and w_pass > w_fail:
            slash |= fails
            gains[target] = gains.get(target, 0) + 1
        elif passes and not fails:
            gains[target] = gains.get(target, 0) + 1
    for key in sorted(gains):
        if key in slash or slashed(key):
            continue
        n = trust.get(key, [0, 0])[0] + gains[key]
        cap = policy.max_reputation if n >= policy.warmup_passes else policy.newcomer_cap
        rep[key] = _r(min(cap, weight(key) + gains[key] * policy.pass_gain))
        trust[key] = [n, 0]
    for key in sorted(slash):
        rep[key] = 0.0
        trust[key] = [0, round + policy.slash_rounds]
    out["reputation"] = {k: _r(rep[k]) for k in sorted(rep)}
    out["trust"] = {k: trust[k] for k in sorted(trust)}
    out["trust_round"] = round
    if slash:
        out["slashed_now"] = sorted(slash)
    return out


def is_slashed(extra: Mapping, key: str) -> bool:
    """True iff ``key`` is slashed in this metadata (weight 0 until its slash runs out)."""
    t = extra.get("trust", {}).get(key) if isinstance(extra, Mapping) else None
    r = extra.get("trust_round", 0) if isinstance(extra, Mapping) else 0
    return bool(t) and int(t[1]) > int(r)
