"""Verification inside the simulator: the coordinator's verifier hooks and spot checks.

:class:`SimVerifier` implements the hooks :class:`~dai_swarm.optim.coordinator.NullVerifier`
defines, with the real rules: replicated reputation is
:func:`~dai_swarm.verification.reputation.update_reputation` over the verdicts the swarm agreed on,
and weights come from :func:`~dai_swarm.verification.reputation.reputation_of`. Spot checks use
:func:`~dai_swarm.verification.recompute.recompute_update` and
:func:`~dai_swarm.verification.recompute.relative_distance`, the same code a real verifier runs.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from dai_swarm.canonical import sha256_hex
from dai_swarm.optim import codecs
from dai_swarm.verification.recompute import recompute_update, relative_distance
from dai_swarm.verification.reputation import ReputationPolicy, reputation_of, update_reputation, vote_weights
from dai_swarm.verification.verdicts import Verdict

__all__ = ["SimVerifier", "check_prob_hit", "recheck"]


class SimVerifier:
    """Verifier hooks for :func:`~dai_swarm.optim.coordinator.compute_next_base` (deterministic)."""

    rule = None

    def __init__(self, policy: ReputationPolicy = ReputationPolicy()):
        self.policy = policy
        self.verdicts: dict[str, Verdict] = {}

    def add(self, verdict: Verdict) -> str:
        """Make a published verdict known by id (every peer can fetch it from the DHT)."""
        self.verdicts[verdict.id] = verdict
        return verdict.id

    def next_extra(self, extra: Mapping, round: int, verdicts: tuple[str, ...]) -> dict:
        """Metadata of base ``round + 2``: reputation updated by the agreed verdicts."""
        known = [self.verdicts[i] for i in sorted(verdicts) if i in self.verdicts]
        return update_reputation(extra, round + 2, known, self.policy)

    def reputation(self, extra: Mapping) -> Mapping[str, float]:
        """Aggregation weights from replicated metadata (unknown keys: newcomer)."""
        return reputation_of(extra, self.policy)

    def vote_weights(self, extra: Mapping) -> Mapping[str, float]:
        """Decision weights: standing, as the real spot-checker's (:func:`vote_weights`)."""
        return vote_weights(extra, self.policy)


def check_prob_hit(seed: int, digest: str, prob: float) -> bool:
    """Deterministic coin: is update ``digest`` spot-checked (probability ``prob``)?"""
    return int(sha256_hex(f"dai_swarm.sim.check|{seed}|{digest}".encode())[:12], 16) < prob * 16 ** 12


def recheck(task: Any, model: torch.nn.Module, base_params: Mapping[str, torch.Tensor], ann: Any,
            published: Mapping[str, torch.Tensor] | None, *, run_id: str, seed: int, codec: str,
            tau: float, codec_params: Mapping[str, Any] | None = None) -> tuple[bool, float, str]:
    """Recompute ``ann``'s update like a verifier: (passed, distance or -1, recomputed digest).

    Honest verifiers of one update get the same answer (exact recomputation, I4), so the simulator
    runs it once per checked update and hands the outcome to each honest verifier.
    """
    raw = recompute_update(task, base_params, run_id, seed, ann.peer, ann.round, ann.steps, raw=True, model=model)
    blob = codecs.encode(raw, codec, **dict(codec_params or {}))
    ref = codecs.decode(blob, max_bytes=codecs.decode_cap_for(raw, codec, **dict(codec_params or {})))
    dist = relative_distance(published, ref) if published is not None else math.inf
    passed = math.isfinite(dist) and dist <= tau
    return passed, (dist if math.isfinite(dist) else -1.0), sha256_hex(blob)


def make_verdict(round: int, verifier: str, ann: Any, passed: bool, distance: float, recomputed: str,
                 latency_s: float, recheck: bool = False) -> Verdict:
    """The verdict ``verifier`` publishes on ``ann`` (a lying verifier passes ``passed=True``);
    ``recheck``: a re-check of another verifier's fail."""
    return Verdict(round=round, verifier=verifier, target=ann.peer, digest=ann.digest, passed=passed,
                   distance=float(distance), recomputed=recomputed, steps=ann.steps, latency_s=float(latency_s),
                   recheck=recheck)
