"""Exact recomputation of a peer's round update (SPEC I4) and the distance used to judge it.

:func:`recompute_update` is the ONE implementation of "what an honest peer does in a round", shared
by the spot-checker, the tests and the tolerance calibration: load the base θ_q into the task's
model, build a FRESH inner optimizer, and for each of the announced ``steps`` take the batch that
:func:`~dai_swarm.verification.assignment.assign` gives the author, then ``loss.backward();
inner.step(); inner.zero_grad()`` exactly as ``SwarmOptimizer`` and the user loop do. The
pseudo-gradient Δ = θ_q − θ_local is then encoded and decoded with the run's codec, so that it can
be compared with what the author published after the same lossy round trip.

:func:`relative_distance` is ``‖a − b‖ / max(‖b‖, tiny)`` in numpy float64 (deterministic).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch

from dai_swarm.errors import ConfigError, ShapeMismatch
from dai_swarm.optim import codecs

from .assignment import samples_for

__all__ = ["DEFAULT_TAU", "apply_base", "inner_train", "recompute_update", "relative_distance"]

#: relative-L2 tolerance of a check: >= 10x the worst honest distance in
#: benchmarks/results/tau_calibration.json (4.1e-4); re-exported by :mod:`.spotcheck`
DEFAULT_TAU = 1e-2

#: norms below this are treated as zero (an all-zero update compared with another all-zero one)
_TINY = 1e-30


def apply_base(model: torch.nn.Module, base_params: Mapping[str, torch.Tensor]) -> None:
    """Copy ``base_params`` into ``model``'s parameters (names must match exactly)."""
    names = {n for n, _ in model.named_parameters()}
    if names != set(base_params):
        raise ShapeMismatch("base parameters do not match the task model's parameter names")
    with torch.no_grad():
        for n, p in model.named_parameters():
            src = base_params[n]
            if tuple(src.shape) != tuple(p.shape):
                raise ShapeMismatch(f"base tensor {n!r} has shape {tuple(src.shape)}, model has {tuple(p.shape)}")
            p.copy_(src.to(p.device, p.dtype))


def inner_train(task: Any, model: torch.nn.Module, batches: list[list[int]], *, tamper_batch: Any = None) -> None:
    """Run the honest inner loop on ``model`` in place: one fresh inner optimizer, one step per batch.

    ``tamper_batch(batch) -> batch`` exists only so that attack simulations share this code path.
    """
    inner = task.inner_optimizer(model.parameters())
    inner.zero_grad(set_to_none=True)
    for indices in batches:
        batch = task.get_batch(indices)
        if tamper_batch is not None:
            batch = tamper_batch(batch)
        loss = task.loss(model, batch)
        loss.backward()
        inner.step()
        inner.zero_grad(set_to_none=True)


def recompute_update(task: Any, base_params: Mapping[str, torch.Tensor], run_id: str, seed: int, peer: str,
                     round: int, steps: int, *, codec: str | None = "none", codec_params: Mapping | None = None,
                     model: torch.nn.Module | None = None, salt: str = "", tamper_batch: Any = None,
                     raw: bool = False) -> dict[str, torch.Tensor]:
    """Recompute peer ``peer``'s update of ``round`` from base ``base_params`` and ``steps`` inner steps.

    Returns Δ = θ_q − θ_local (float32, CPU) after an encode/decode round trip through ``codec``
    (``raw=True`` or ``codec=None`` skips the round trip). ``model`` may be passed to reuse a
    module of the task (its parameters are overwritten); otherwise one is built from ``seed``.
    Raises ConfigError for bad arguments and ShapeMismatch if the base does not fit the model.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be an int >= 1, got {steps!r}")
    if model is None:
        model = task.build_model(seed)
    apply_base(model, base_params)
    batches = samples_for(run_id, seed, peer, round, steps, int(task.batch_size), len(task.dataset), salt=salt)
    with torch.enable_grad():
        inner_train(task, model, batches, tamper_batch=tamper_batch)
    with torch.no_grad():
        delta = {n: base_params[n].to("cpu", torch.float32) - p.detach().to("cpu", torch.float32)
                 for n, p in model.named_parameters()}
    if raw or codec is None:
        return delta
    return codecs.roundtrip(delta, codec, **dict(codec_params or {}))


def _flat64(tensors: Mapping[str, torch.Tensor], names: list[str]) -> np.ndarray:
    return np.concatenate([tensors[n].detach().to("cpu", torch.float64).numpy().ravel() for n in names]) \
        if names else np.zeros(0)


def relative_distance(candidate: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> float:
    """``‖candidate − reference‖₂ / ‖reference‖₂`` over all tensors, in numpy float64.

    Returns ``inf`` when names or shapes differ or a value is not finite, 0.0 when both are zero.
    """
    names = sorted(reference)
    if sorted(candidate) != names or any(tuple(candidate[n].shape) != tuple(reference[n].shape) for n in names):
        return math.inf
    a, b = _flat64(candidate, names), _flat64(reference, names)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return math.inf
    diff = math.sqrt(float(np.sum(np.square(a - b))))
    ref = math.sqrt(float(np.sum(np.square(b))))
    if ref < _TINY:
        return 0.0 if diff < _TINY else math.inf
    return diff / ref
