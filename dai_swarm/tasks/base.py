"""The Task API: what a swarm needs to know about a model, its data and its loss.

A task bundles a model factory, a deterministic dataset, a loss and an inner optimiser. The round
protocol drives it like this (and nothing more)::

    model = task.build_model(seed)                 # same seed -> bitwise-identical weights
    opt = task.inner_optimizer(model.parameters())  # fresh every round
    for step in range(inner_steps):
        batch = task.get_batch(indices)             # indices come from a hash-derived sampler
        loss = task.loss(model, batch)
        loss.backward(); opt.step(); opt.zero_grad()
    metrics = task.evaluate(model)                  # {"loss": float, ...} on a fixed held-out slice

``samples`` counts dataset items consumed: ``len(indices)`` per step.

A task sets ``batch_size`` (class attribute or in ``__init__``) and ``dataset`` (a plain attribute
set in ``__init__``, the way most torch code does it, or a property). ``load_task`` and ``Swarm``
check the whole contract when a task loads (:mod:`dai_swarm.tasks.contract`) and raise
:class:`~dai_swarm.errors.TaskError` naming the missing or broken piece and its fix.

Contract, so that any peer can recompute any other peer's work (SPEC I4):

- ``build_model(seed)`` draws every initial value from ``seed`` alone (no global RNG state);
- ``dataset[i]`` and ``get_batch(indices)`` are pure functions of the task config and the indices;
- ``loss(model, batch)`` uses no randomness (no dropout, no random augmentation);
- ``config()`` lists every hyper-parameter that changes results; its hash goes in the run manifest.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Iterable, Mapping, Sequence, TypeVar

import torch

from ..canonical import canonical_json, sha256_hex
from ..errors import TaskError

__all__ = ["Task", "apply_overrides", "check_indices", "collate"]

C = TypeVar("C")


class Task(abc.ABC):
    """A training task: model factory, deterministic dataset, loss, inner optimiser, evaluation.

    Subclasses set ``name``, ``batch_size`` and ``dataset`` and implement the abstract methods::

        class MyTask(dai_swarm.Task):
            name, batch_size = "mine", 32

            def __init__(self):
                self.dataset = MyDataset()      # indexable, len(); item i never changes
            ...

    ``get_batch`` stacks ``dataset`` items by default; override it when a batch is cheaper to build
    directly.
    """

    name: str = "task"
    #: items per inner step; no default: a task that forgets it is refused when it loads
    batch_size: int
    #: the training items: indexable by ``int``, with ``len()``; item ``i`` never changes (an
    #: attribute set in ``__init__`` or a property)
    dataset: Sequence[Any]

    @abc.abstractmethod
    def build_model(self, seed: int) -> torch.nn.Module:
        """Return a freshly initialised model whose weights depend only on ``seed`` and ``config()``."""

    @abc.abstractmethod
    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        """Scalar training loss of ``model`` on ``batch`` (deterministic: no dropout, no sampling)."""

    @abc.abstractmethod
    def inner_optimizer(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """A new inner optimiser over ``params`` (the protocol builds a fresh one every round)."""

    @abc.abstractmethod
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Metrics on a fixed held-out slice; must contain ``"loss"``; cheap enough for every round."""

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-able description of everything that changes results (hashed into the manifest)."""

    def get_batch(self, indices: Sequence[int]) -> Any:
        """Build one batch from ``dataset[i]`` for ``i`` in ``indices`` (default: :func:`collate`)."""
        data = self.dataset
        check_indices(indices, len(data))
        return collate([data[int(i)] for i in indices])

    def config_hash(self) -> str:
        """Hex SHA-256 of the canonical JSON of :meth:`config`."""
        return sha256_hex(canonical_json(self.config()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, batch_size={getattr(self, 'batch_size', None)})"


def check_indices(indices: Sequence[int], n: int) -> None:
    """Raise :class:`TaskError` unless ``indices`` is a non-empty sequence of ints in ``[0, n)``."""
    if isinstance(indices, torch.Tensor):
        if indices.dtype.is_floating_point or indices.dim() != 1:
            raise TaskError(f"batch indices must be a 1-D integer tensor, got {indices.dtype} {tuple(indices.shape)}")
        indices = indices.tolist()
    if len(indices) == 0:
        raise TaskError("a batch needs at least one index")
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int) and not hasattr(i, "__index__"):
            raise TaskError(f"batch index {i!r} is not an integer")
        if not 0 <= int(i) < n:
            raise TaskError(f"batch index {int(i)} is out of range for a dataset of {n} items")


def collate(items: Sequence[Any]) -> Any:
    """Stack a list of items: tensors are stacked, tuples/dicts are collated field by field."""
    first = items[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(list(items))
    if isinstance(first, tuple):
        return tuple(collate([it[k] for it in items]) for k in range(len(first)))
    if isinstance(first, Mapping):
        return {k: collate([it[k] for it in items]) for k in first}
    raise TaskError(f"cannot collate dataset items of type {type(first).__name__}; override get_batch")


def apply_overrides(cfg: C, overrides: Mapping[str, Any]) -> C:
    """Return a copy of the dataclass ``cfg`` with ``overrides`` applied.

    Unknown keys raise :class:`TaskError` listing the valid ones. String values (from a command
    line or environment variable) are converted to the field's type; other mismatched types raise.
    """
    fields = {f.name: f for f in dataclasses.fields(cfg)}  # type: ignore[arg-type]
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in fields:
            raise TaskError(f"unknown option {key!r} for {type(cfg).__name__}; valid options: {', '.join(sorted(fields))}")
        current = getattr(cfg, key)
        changes[key] = _coerce(key, value, type(current))
    return dataclasses.replace(cfg, **changes)  # type: ignore[type-var]


def _coerce(key: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
            return value.lower() in ("1", "true", "yes")
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(value)
        if isinstance(value, str):
            return tuple(v for v in value.split(",") if v)
    elif isinstance(value, kind):
        return value
    raise TaskError(f"option {key!r} expects {kind.__name__}, got {value!r}")
