"""Deterministic aggregation of a round's updates (replicated state, I1).

Honest peers that include the same updates must compute bitwise-identical aggregates, whatever
their torch thread count. The rules that make this hold:

* updates are sorted by payload digest and accumulated one after another in that fixed order;
* only *elementwise* torch ops are used, each rounding once (``mul`` by a float32 scalar, then
  ``add`` without ``alpha``): an elementwise op gives the same bits whether a chunk of the tensor
  is handled by a vectorised kernel, a scalar tail or another thread. Fused forms such as
  ``add(x, alpha=w)`` are avoided as a precaution: a vectorised FMA and a scalar tail may round
  differently, and chunk boundaries move with the thread count;
* no torch reductions (``sum``, ``norm``, ``dot``): their blocking depends on the thread count.
  When a rule needs one (norms in a robust aggregator), use :func:`sq_norm`, which converts to
  numpy float64 and uses ``np.sum`` (single-threaded pairwise summation, deterministic);
* scalar weights are combined in Python float64 with :func:`math.fsum` (exact, order-free).

A robust rule (CenteredClip, trimmed mean...) plugs in through ``rule=``: it receives the updates
as dicts sorted by digest and their normalised weights and must follow the same rules.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from dai_swarm.errors import ConfigError, NonFiniteValues, ShapeMismatch

__all__ = ["AggregationRule", "NEWCOMER_SHARE", "cap_newcomer_norms", "cap_newcomers", "gate_newcomer_directions",
           "sq_norm", "update_weight", "weighted_mean"]

#: At most this fraction of a round's aggregate weight comes from keys without standing (newcomers).
NEWCOMER_SHARE = 0.1

#: ``rule(updates, weights) -> dict``: updates sorted by digest, weights normalised to sum 1.
AggregationRule = Callable[[Sequence[Mapping[str, torch.Tensor]], Sequence[float]], dict]


def update_weight(samples: int, reputation: float = 1.0, discount: float = 1.0) -> float:
    """Aggregation weight of one update: ``samples * reputation * discount`` (staleness discount).

    Raises :class:`~dai_swarm.errors.ConfigError` for negative or non-finite factors.
    """
    for name, v in (("samples", samples), ("reputation", reputation), ("discount", discount)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")
    return float(samples) * float(reputation) * float(discount)


def cap_newcomers(weights: Sequence[float], proven: Sequence[bool], share: float = NEWCOMER_SHARE, *,
                  reached: bool = False) -> list[float]:
    """Scale the newcomers' weights (``proven[i]`` False) so that together they hold at most
    ``share`` of the total, whatever their number (a flood of fresh keys announcing updates cannot
    dominate a round before their spot checks come due; honest newcomers still contribute).

    Unchanged when the newcomers are within the share. A round with no proven update: unchanged
    while the chain was never ``reached`` by an update with standing (a region nobody with standing
    has reached yet: the bootstrap rule), else every newcomer weighs 0 (the round makes no step: a
    flood that kept the proven peers' updates out of a round must not take all of its weight).
    Deterministic: one factor computed with :func:`math.fsum` in float64, applied to each newcomer weight.
    """
    if not 0.0 <= share < 1.0 or len(weights) != len(proven):
        raise ConfigError(f"newcomer share must be in [0, 1) with one flag per weight, got {share!r}")
    old = math.fsum(w for w, p in zip(weights, proven) if p)
    new = math.fsum(w for w, p in zip(weights, proven) if not p)
    if old <= 0.0:  # no proven update in the round: the bootstrap rule, or no weight at all
        return [0.0 if reached else float(w) for w in weights]
    limit = share / (1.0 - share) * old
    if new <= limit:
        return [float(w) for w in weights]
    factor = limit / new
    return [float(w) if p else float(w) * factor for w, p in zip(weights, proven)]


def cap_newcomer_norms(updates: Sequence[Mapping[str, torch.Tensor]],
                       proven: Sequence[bool]) -> list[Mapping[str, torch.Tensor]]:
    """Scale each newcomer's update (``proven[i]`` False) down to the largest L2 norm among the
    round's proven updates, if it is longer. :func:`cap_newcomers` bounds the newcomers' *weight*;
    this bounds their *influence*: a sign-flipped copy of a fully trained update must not outweigh
    proven peers that, on a loaded host, trained one or two steps. Honest newcomers that trained
    like the proven peers are barely touched. A round with no proven update: unchanged.

    Deterministic: norms by :func:`sq_norm`, one float64 factor per update, one elementwise ``mul``
    per tensor (new tensors; the inputs are not modified).
    """
    if len(updates) != len(proven):
        raise ConfigError(f"one flag per update: {len(updates)} updates, {len(proven)} flags")
    if all(proven) or not any(proven):  # no newcomer, or nobody to compare with: no norms to compute
        return list(updates)
    norms = [math.sqrt(sq_norm(u)) for u in updates]
    ref = max(n for n, p in zip(norms, proven) if p)
    out: list[Mapping[str, torch.Tensor]] = []
    for u, n, p in zip(updates, norms, proven):
        if p or n <= ref:
            out.append(u)
        else:
            factor = ref / n
            out.append({k: torch.mul(v, factor) for k, v in u.items()})
    return out


def gate_newcomer_directions(updates: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float],
                             proven: Sequence[bool]) -> list[float]:
    """Scale each newcomer's weight (``proven[i]`` False) by ``max(0, cos(update, reference))``, the
    reference being the weighted sum of the round's proven updates (the trust score of FLTrust,
    Cao et al., NDSS 2021, with the proven peers in place of the server's root data).

    :func:`cap_newcomers` bounds how much the newcomers weigh together and
    :func:`cap_newcomer_norms` how long each is; neither stops a flood of fresh keys from spending
    its whole share *against* the proven direction (40 sign-flipped updates at the 10% share took
    about a fifth off the honest step). An update that points away from what the proven peers
    computed from the same base now weighs 0; an honest newcomer, which trained on the same task
    from the same base, points the same way and keeps most of its weight. Unchanged when nobody is
    proven, nobody is new, or the proven updates sum to zero (no direction to compare with).

    Deterministic: float64 numpy sums in the given order (the caller's digest order), elementwise
    products and :func:`numpy.sum` (pairwise, single-threaded), :func:`math.fsum` across tensors.
    """
    if not len(updates) == len(weights) == len(proven):
        raise ConfigError(f"one weight and one flag per update: {len(updates)}, {len(weights)}, {len(proven)}")
    if all(proven) or not any(proven):
        return [float(w) for w in weights]
    names = sorted(updates[0])
    ref = {}
    for n in names:
        acc = np.zeros(tuple(updates[0][n].shape), dtype=np.float64)
        for u, w, p in zip(updates, weights, proven):
            if p and w > 0:
                acc += float(w) * u[n].detach().cpu().double().numpy()
        ref[n] = acc
    ref_sq = math.fsum(float(np.sum(np.square(ref[n]))) for n in names)
    if not ref_sq > 0.0 or not math.isfinite(ref_sq):
        return [float(w) for w in weights]
    out = []
    for u, w, p in zip(updates, weights, proven):
        if p or w <= 0:
            out.append(float(w))
            continue
        arrays = {n: u[n].detach().cpu().double().numpy() for n in names}
        dot = math.fsum(float(np.sum(np.multiply(arrays[n], ref[n]))) for n in names)
        sq = math.fsum(float(np.sum(np.square(arrays[n]))) for n in names)
        cos = dot / math.sqrt(sq * ref_sq) if sq > 0.0 and math.isfinite(sq) and math.isfinite(dot) else 0.0
        out.append(float(w) * min(1.0, max(0.0, cos)))
    return out


def sq_norm(tensors: Mapping[str, torch.Tensor]) -> float:
    """Squared L2 norm over all tensors, deterministic across thread counts (numpy float64)."""
    total = [float(np.sum(np.square(tensors[k].detach().cpu().double().numpy()))) for k in sorted(tensors)]
    return math.fsum(total)


def _nonfinite(digest: str, name: str) -> NonFiniteValues:
    return NonFiniteValues(f"update {digest}: tensor {name!r} holds NaN or Inf")


def _check_updates(updates: Sequence[tuple[str, float, Mapping[str, torch.Tensor]]], check_finite: bool):
    if not updates:
        raise ConfigError("weighted_mean needs at least one update")
    ordered = sorted(updates, key=lambda u: u[0])
    digests = [u[0] for u in ordered]
    if len(set(digests)) != len(digests):
        raise ConfigError("duplicate digests in the update list")
    ref = ordered[0][2]
    names = sorted(ref)
    for digest, w, tensors in ordered:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ConfigError(f"weight of {digest} must be a finite number >= 0, got {w!r}")
        if sorted(tensors) != names:
            raise ShapeMismatch(f"update {digest} has different tensor names")
        for n in names:
            t, r = tensors[n], ref[n]
            if not isinstance(t, torch.Tensor) or t.shape != r.shape or not t.is_floating_point():
                raise ShapeMismatch(f"update {digest}: tensor {n!r} has a different shape or dtype")
            if check_finite and not bool(torch.isfinite(t).all()):
                raise _nonfinite(digest, n)
    total = math.fsum(float(u[1]) for u in ordered)
    if total <= 0:
        raise ConfigError("the weights of the updates sum to zero")
    return ordered, names, [float(u[1]) / total for u in ordered]


def weighted_mean(updates: Sequence[tuple[str, float, Mapping[str, torch.Tensor]]], *,
                  rule: AggregationRule | None = None) -> dict[str, torch.Tensor]:
    """Weighted mean of ``(digest, weight, tensors)`` items, bitwise-deterministic (float32).

    Items are sorted by digest and weights normalised to sum 1 before anything is computed, so the
    input order never matters. With ``rule`` the work is delegated to that robust aggregator.
    Raises ShapeMismatch / NonFiniteValues for inconsistent or non-finite updates and ConfigError
    for empty input, duplicate digests or bad weights.
    """
    ordered, names, weights = _check_updates(updates, check_finite=rule is not None)
    if rule is not None:
        out = rule([u[2] for u in ordered], weights)
        if sorted(out) != names or any(out[n].shape != ordered[0][2][n].shape for n in names):
            raise ShapeMismatch("the aggregation rule returned different tensor names or shapes")
        return {n: out[n] for n in names}
    result: dict[str, torch.Tensor] = {}
    for n in names:
        acc = torch.zeros(ordered[0][2][n].shape, dtype=torch.float32)
        tmp = torch.empty_like(acc)
        for (_, _, tensors), w in zip(ordered, weights):
            t = tensors[n].detach().to(device="cpu", dtype=torch.float32)
            torch.mul(t, w, out=tmp)  # one rounding
            acc.add_(tmp)  # one rounding, no alpha: no fused multiply-add
        # NaN/Inf in any input (even at weight 0: inf * 0 = nan) leaves the sum non-finite, so one
        # check of the result replaces a check per input; the culprit is looked up only on error.
        if not bool(torch.isfinite(acc).all()):
            bad = next((d for d, _, t in ordered if not bool(torch.isfinite(t[n]).all())), None)
            if bad is None:  # finite inputs near the float32 limit overflowed
                raise NonFiniteValues(f"the aggregate of tensor {n!r} overflowed float32")
            raise _nonfinite(bad, n)
        result[n] = acc
    return result
