"""The task contract, checked when a task loads: each piece a swarm relies on, with a fix to suggest.

:func:`contract_checks` yields one :class:`Check` per piece, in order, and raises
:class:`~dai_swarm.errors.TaskError` naming the task, the piece and the fix at the first failure;
:func:`validate_task` runs them all (``load_task`` and ``Swarm`` call it, ``dai-swarm task check``
prints them). The checks build the model twice and run one loss and one evaluation, on a copy of
the global torch RNG state, so loading a task changes nothing a training script can observe.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from ..errors import TaskError
from .base import Task

__all__ = ["Check", "contract_checks", "validate_task"]

#: seed of the determinism check (any fixed value works)
CHECK_SEED = 1234


@dataclass(frozen=True)
class Check:
    """One piece of the contract that holds: ``name`` (e.g. ``"dataset"``) and what was found."""

    name: str
    detail: str


def validate_task(task: Any, label: str | None = None) -> Task:
    """Return ``task`` if it keeps the whole contract; raise :class:`TaskError` at the first failure."""
    for _ in contract_checks(task, label):
        pass
    return task


def contract_checks(task: Any, label: str | None = None) -> Iterator[Check]:
    """Check ``task`` piece by piece, yielding a :class:`Check` for each piece that holds.

    ``label`` names the task in messages (default: its class name). Raises :class:`TaskError` at
    the first piece that does not hold, saying which piece and how to fix it.
    """
    who = label or type(task).__name__

    def fail(piece: str, problem: str, fix: str) -> TaskError:
        return TaskError(f"task {who!r}: {piece}: {problem}; fix: {fix}")

    if not isinstance(task, Task):
        raise fail("type", f"got a {type(task).__name__}, not a dai_swarm.Task",
                   "subclass dai_swarm.Task and return an instance of it")
    yield Check("type", f"{type(task).__name__} subclasses dai_swarm.Task")

    n_items = yield from _check_dataset(task, fail)
    bs = getattr(task, "batch_size", None)
    if bs is None:
        raise fail("batch_size", "not set", "set batch_size (items per inner step) as a class attribute or "
                   "self.batch_size = ... in __init__")
    if isinstance(bs, bool) or not isinstance(bs, numbers.Integral) or int(bs) < 1:
        raise fail("batch_size", f"must be a positive int, got {bs!r}", "set batch_size to the number of dataset "
                   "items per inner step, e.g. batch_size = 32")
    yield Check("batch_size", f"{int(bs)} items per inner step")

    yield _check_config(task, fail)
    with torch.random.fork_rng(devices=[]):  # a task that seeds the global RNG must not change the caller's
        model = yield from _check_model(task, fail)
        yield _check_loss(task, model, min(int(bs), n_items), fail)
        yield _check_optimizer(task, model, fail)
        yield _check_evaluate(task, model, fail)


def _check_dataset(task: Task, fail) -> Iterator[Check]:
    declared = hasattr(type(task), "dataset") or "dataset" in vars(task)
    if not declared:
        raise fail("dataset", "not set", "set self.dataset = ... in __init__ (anything with len() and [i]), "
                   "or define a dataset property")
    try:
        data = task.dataset
    except Exception as e:
        raise fail("dataset", f"reading it raised {type(e).__name__}: {e}", "make the dataset property "
                   "return the training items") from e
    try:
        n = len(data)
    except TypeError:
        raise fail("dataset", f"a {type(data).__name__} has no len()", "use a list, a torch Dataset with "
                   "__len__, or any sequence") from None
    if n < 1:
        raise fail("dataset", "it is empty", "give the task at least one training item")
    if type(task).get_batch is Task.get_batch:  # the default get_batch indexes dataset items
        try:
            data[0], data[n - 1]
        except Exception as e:
            raise fail("dataset", f"dataset[0] raised {type(e).__name__}: {e}", "make dataset[i] return item i "
                       "for 0 <= i < len(dataset), or override get_batch") from e
    yield Check("dataset", f"{n} items ({type(data).__name__})")
    return n


def _check_config(task: Task, fail) -> Check:
    try:
        cfg = task.config()
        json.dumps(cfg, sort_keys=True, allow_nan=False)
        digest = task.config_hash()
    except Exception as e:
        raise fail("config()", f"{type(e).__name__}: {e}", "return a dict of JSON values (numbers, strings, "
                   "lists) naming every hyper-parameter that changes results") from e
    if not isinstance(cfg, Mapping):
        raise fail("config()", f"returned a {type(cfg).__name__}", "return a dict of hyper-parameters")
    return Check("config()", f"{len(cfg)} keys, hash {digest[:12]}")


def _state_of(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(k, v.detach().clone()) for k, v in model.state_dict().items()]


def _check_model(task: Task, fail) -> Iterator[Check]:
    try:
        first = task.build_model(CHECK_SEED)
        again = task.build_model(CHECK_SEED)
    except Exception as e:
        raise fail("build_model(seed)", f"raised {type(e).__name__}: {e}", "return a torch.nn.Module") from e
    if not isinstance(first, torch.nn.Module):
        raise fail("build_model(seed)", f"returned a {type(first).__name__}", "return a torch.nn.Module")
    a, b = _state_of(first), _state_of(again)
    same = len(a) == len(b) and all(ka == kb and va.dtype == vb.dtype and va.shape == vb.shape
                                    and torch.equal(va, vb) for (ka, va), (kb, vb) in zip(a, b))
    if not same:
        raise fail("build_model(seed)", f"two builds with seed {CHECK_SEED} differ (initial weights are not a "
                   "function of the seed)", "draw every initial value from the seed: torch.manual_seed(seed) "
                   "first, or a torch.Generator().manual_seed(seed) passed to each init")
    n_params = sum(p.numel() for p in first.parameters())
    if n_params == 0:
        raise fail("build_model(seed)", "the model has no parameters", "return a model with trainable parameters")
    yield Check("build_model(seed)", f"{n_params:,} parameters, identical across two builds with one seed")
    return first


def _check_loss(task: Task, model: torch.nn.Module, k: int, fail) -> Check:
    try:
        batch = task.get_batch(list(range(k)))
        with torch.enable_grad():
            loss = task.loss(model, batch)
    except Exception as e:
        raise fail("loss(model, batch)", f"on a batch of items 0..{k - 1} raised {type(e).__name__}: {e}",
                   "make get_batch(indices) build a batch that loss(model, batch) accepts") from e
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.is_floating_point():
        raise fail("loss(model, batch)", f"returned {type(loss).__name__} {getattr(loss, 'shape', '')}",
                   "return a scalar floating-point tensor (e.g. F.mse_loss(...))")
    if not loss.requires_grad:
        raise fail("loss(model, batch)", "the loss does not require grad", "compute it from the model's "
                   "output without torch.no_grad() or .detach()")
    value = loss.detach().item()
    if not math.isfinite(value):
        raise fail("loss(model, batch)", f"is {value} on the first batch", "check the data and the model")
    return Check("loss(model, batch)", f"{value:.4g} on a batch of {k}")


def _check_optimizer(task: Task, model: torch.nn.Module, fail) -> Check:
    try:
        opt = task.inner_optimizer(model.parameters())
    except Exception as e:
        raise fail("inner_optimizer(params)", f"raised {type(e).__name__}: {e}",
                   "return e.g. torch.optim.AdamW(params, lr=1e-3)") from e
    if not isinstance(opt, torch.optim.Optimizer):
        raise fail("inner_optimizer(params)", f"returned a {type(opt).__name__}",
                   "return a torch.optim.Optimizer over params")
    return Check("inner_optimizer(params)", type(opt).__name__)


def _check_evaluate(task: Task, model: torch.nn.Module, fail) -> Check:
    fix = 'return a dict with a "loss" number, e.g. {"loss": loss.item()}'
    try:
        metrics = task.evaluate(model)
    except Exception as e:
        raise fail("evaluate(model)", f"raised {type(e).__name__}: {e}", fix) from e
    if not isinstance(metrics, Mapping) or "loss" not in metrics:
        found = sorted(metrics) if isinstance(metrics, Mapping) else type(metrics).__name__
        raise fail("evaluate(model)", f'no "loss" in what it returned ({found})', fix)
    value = metrics["loss"]
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise fail("evaluate(model)", f'"loss" is {value!r}, not a finite Python number', fix)
    others = sorted(str(k) for k in metrics if k != "loss")
    return Check("evaluate(model)", f"loss {float(value):.4g}" + (f", also {', '.join(others)}" if others else ""))
