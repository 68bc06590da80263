"""The outer optimiser: DiLoCo's Nesterov-momentum SGD on the pseudo-gradient, deterministic.

With ``g`` the aggregated pseudo-gradient (``θ_base − θ_local`` averaged), one step is exactly
what ``torch.optim.SGD(lr, momentum=mu, nesterov=True)`` does with ``p.grad = g``::

    buf  = mu * buf + g
    step = g + mu * buf          (nesterov)   or   step = buf   (plain momentum)
    p    = p - lr * step

but written as single-rounding elementwise ops (``mul`` then ``add``/``sub``, no ``alpha=``) so
the result is bitwise-identical across processes and thread counts (see ``optim/aggregate.py``).
It matches torch's SGD to within float32 rounding (torch fuses some of these into FMAs).

A round with no accepted update has no outer step at all: parameters *and* momentum stay as they
are (``θ_{r+2} = θ_{r+1}``), so an empty round neither moves the model nor decays momentum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch

from dai_swarm.canonical import state_hash as _tensor_hash
from dai_swarm.errors import ConfigError, NonFiniteValues, ShapeMismatch

__all__ = ["OuterState", "outer_step", "outer_state_hash"]


@dataclass(frozen=True, eq=False)
class OuterState:
    """Canonical outer state of a run: parameters and Nesterov momentum buffers (same names).

    Treat as immutable: :func:`outer_step` returns a new state and never writes into this one.
    """

    params: dict[str, torch.Tensor]
    momentum: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        if sorted(self.params) != sorted(self.momentum):
            raise ShapeMismatch("params and momentum must have the same names")
        for n, p in self.params.items():
            m = self.momentum[n]
            if not isinstance(p, torch.Tensor) or not isinstance(m, torch.Tensor):
                raise ShapeMismatch(f"{n!r}: params and momentum must be tensors")
            if p.shape != m.shape or not p.is_floating_point() or m.dtype != torch.float32:
                raise ShapeMismatch(f"{n!r}: momentum must be float32 with the parameter's shape")

    @classmethod
    def initial(cls, params: Mapping[str, torch.Tensor]) -> "OuterState":
        """θ_0 with zero momentum (copies ``params`` to CPU; the caller's tensors are untouched)."""
        p = {n: t.detach().to("cpu").clone() for n, t in params.items()}
        return cls(p, {n: torch.zeros(t.shape, dtype=torch.float32) for n, t in p.items()})

    def hash(self) -> str:
        """:func:`outer_state_hash` of this state."""
        return outer_state_hash(self)


def outer_state_hash(state: OuterState) -> str:
    """State hash over parameters and momentum (names prefixed ``param/`` and ``momentum/``)."""
    named = {f"param/{n}": t for n, t in state.params.items()}
    named.update({f"momentum/{n}": t for n, t in state.momentum.items()})
    return _tensor_hash(named)


def _check_scalar(name: str, v: object, lo: float, hi: float, hi_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{name} must be a finite number, got {v!r}")
    if v < lo or v > hi or (hi_open and v == hi):
        raise ConfigError(f"{name}={v} is out of range")
    return float(v)


def outer_step(state: OuterState, delta: Mapping[str, torch.Tensor], lr: float, momentum: float,
               nesterov: bool = True) -> OuterState:
    """Apply one Nesterov (or heavy-ball) SGD step with gradient ``delta``; returns a new state.

    ``delta`` must have exactly the parameters' names and shapes (ShapeMismatch) and be finite
    (NonFiniteValues). ``lr`` must be in ``(0, 1e3]`` and ``momentum`` in ``[0, 1)``.
    Arithmetic is float32; parameters keep their dtype.
    """
    lr = _check_scalar("lr", lr, 0.0, 1e3)
    if lr == 0.0:
        raise ConfigError("lr must be > 0")
    mu = _check_scalar("momentum", momentum, 0.0, 1.0, hi_open=True)
    if sorted(delta) != sorted(state.params):
        raise ShapeMismatch("delta names differ from the parameters'")
    params: dict[str, torch.Tensor] = {}
    bufs: dict[str, torch.Tensor] = {}
    for n in sorted(state.params):
        p = state.params[n]
        g = delta[n]
        if not isinstance(g, torch.Tensor) or g.shape != p.shape or not g.is_floating_point():
            raise ShapeMismatch(f"delta {n!r} has a different shape or dtype")
        g = g.detach().to(device="cpu", dtype=torch.float32)
        if not bool(torch.isfinite(g).all()):
            raise NonFiniteValues(f"delta {n!r} holds NaN or Inf")
        buf = torch.add(torch.mul(state.momentum[n], mu), g)
        step = torch.add(g, torch.mul(buf, mu)) if nesterov else buf
        new_p = torch.sub(p.to(torch.float32), torch.mul(step, lr))
        params[n] = new_p.to(p.dtype)
        bufs[n] = buf
    return OuterState(params, bufs)
