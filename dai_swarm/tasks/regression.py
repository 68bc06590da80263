"""``regression``: a tiny, fast task for unit tests.

A fixed synthetic dataset is drawn from ``data_seed``: inputs ``x ~ N(0, I)`` of dimension
``in_dim`` and targets ``y = tanh(x @ A) @ b + noise * eps`` from a random teacher. The student is
a small MLP (``in_dim -> hidden -> hidden -> 1``, a few hundred parameters) trained with MSE and
AdamW; its loss falls by an order of magnitude within tens of steps. Dataset item ``i`` is
``(x_i, y_i)``; a batch is ``(x, y)`` of shapes ``(B, in_dim)`` and ``(B, 1)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TaskError
from .base import Task, apply_overrides, check_indices

__all__ = ["RegressionConfig", "RegressionTask"]

TASK_VERSION = 1


@dataclass(frozen=True)
class RegressionConfig:
    """Every hyper-parameter of the regression task that changes results."""

    in_dim: int = 8
    hidden: int = 16
    n_train: int = 1024
    n_val: int = 256
    noise: float = 0.05
    data_seed: int = 1234
    batch_size: int = 32
    lr: float = 1e-2
    weight_decay: float = 0.0


class RegressionTask(Task):
    """MLP regression on a fixed synthetic dataset (see module docstring)."""

    name = "regression"

    def __init__(self, **overrides: Any):
        cfg = apply_overrides(RegressionConfig(), overrides)
        for key in ("in_dim", "hidden", "n_train", "n_val", "batch_size"):
            if getattr(cfg, key) <= 0:
                raise TaskError(f"regression option {key} must be positive, got {getattr(cfg, key)}")
        if cfg.noise < 0 or cfg.lr <= 0:
            raise TaskError(f"regression needs noise >= 0 and lr > 0, got {cfg.noise}, {cfg.lr}")
        self.cfg = cfg
        self.batch_size = cfg.batch_size
        gen = torch.Generator().manual_seed(cfg.data_seed)
        n = cfg.n_train + cfg.n_val
        x = torch.randn(n, cfg.in_dim, generator=gen)
        a = torch.randn(cfg.in_dim, cfg.in_dim, generator=gen) / cfg.in_dim ** 0.5
        b = torch.randn(cfg.in_dim, 1, generator=gen)
        y = torch.tanh(x @ a) @ b + cfg.noise * torch.randn(n, 1, generator=gen)
        self._x_train, self._y_train = x[: cfg.n_train].contiguous(), y[: cfg.n_train].contiguous()
        self._x_val, self._y_val = x[cfg.n_train:].contiguous(), y[cfg.n_train:].contiguous()
        self._dataset = _Pairs(self._x_train, self._y_train)

    @property
    def dataset(self) -> Sequence[tuple[torch.Tensor, torch.Tensor]]:
        """Training pairs ``(x_i, y_i)``."""
        return self._dataset

    def get_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` rows ``indices`` of the training set."""
        check_indices(indices, self.cfg.n_train)
        idx = torch.tensor([int(i) for i in indices], dtype=torch.long)
        return self._x_train[idx], self._y_train[idx]

    def build_model(self, seed: int) -> nn.Module:
        """An MLP whose weights are drawn from ``seed`` alone (the global RNG is not touched)."""
        c = self.cfg
        with torch.device("meta"):
            model = nn.Sequential(nn.Linear(c.in_dim, c.hidden), nn.Tanh(), nn.Linear(c.hidden, c.hidden),
                                  nn.Tanh(), nn.Linear(c.hidden, 1))
        model.to_empty(device="cpu")
        gen = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for name, p in model.named_parameters():
                fan_in = p.shape[-1] if p.dim() == 2 else 1
                if name.endswith("bias"):
                    p.zero_()
                else:
                    p.normal_(0.0, fan_in ** -0.5, generator=gen)
        return model

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Mean squared error."""
        x, y = batch
        return F.mse_loss(model(x), y)

    def inner_optimizer(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """AdamW with the config's lr and weight decay."""
        return torch.optim.AdamW(list(params), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay, foreach=False)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """``{"loss": MSE}`` on the fixed validation rows."""
        return {"loss": F.mse_loss(model(self._x_val), self._y_val).item()}

    def config(self) -> dict[str, Any]:
        """Hyper-parameters and task version (hashed into the manifest)."""
        return {"task": self.name, "task_version": TASK_VERSION, **dataclasses.asdict(self.cfg)}


class _Pairs(Sequence):
    """Index-aligned ``(x_i, y_i)`` pairs."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self._x, self._y = x, y

    def __len__(self) -> int:
        return self._x.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        if not 0 <= int(i) < len(self):
            raise IndexError(f"item {i} out of range [0, {len(self)})")
        return self._x[int(i)], self._y[int(i)]
