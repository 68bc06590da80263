"""``load_task(spec, **overrides)``: a built-in task by name, or a user task by ``module:attr``.

Built-in names: ``tinylm`` (default preset), ``tinylm-small`` (the small preset) and
``regression``. A user spec ``package.module:attr`` imports the module and resolves ``attr``
(dotted attributes allowed); it may name a :class:`Task` instance, a :class:`Task` subclass, or a
zero-argument factory returning a Task. Overrides are passed to the class or factory as keyword
arguments. The task's contract is then checked (:func:`~dai_swarm.tasks.contract.validate_task`:
dataset, batch size, config, deterministic model, loss, optimiser, evaluation), so a broken task is
refused before it joins a run. Every failure raises :class:`~dai_swarm.errors.TaskError` saying
what to fix; :func:`resolve_task` finds a task without checking it (``dai-swarm task check``).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from ..errors import TaskError
from .base import Task
from .contract import validate_task

__all__ = ["BUILTIN_TASKS", "load_task", "resolve_task"]


def _tinylm(**kw: Any) -> Task:
    from .tinylm import TinyLMTask

    return TinyLMTask(**kw)


def _tinylm_small(**kw: Any) -> Task:
    from .tinylm import TinyLMTask

    return TinyLMTask("small", **kw)


def _regression(**kw: Any) -> Task:
    from .regression import RegressionTask

    return RegressionTask(**kw)


BUILTIN_TASKS: dict[str, Callable[..., Task]] = {
    "regression": _regression,
    "tinylm": _tinylm,
    "tinylm-small": _tinylm_small,
}


def load_task(spec: str, **overrides: Any) -> Task:
    """Return the task named by ``spec`` (built-in name or ``module:attr``), with ``overrides``,
    after checking its contract; :class:`TaskError` names the first broken piece and its fix."""
    return validate_task(resolve_task(spec, **overrides), spec.strip())


def resolve_task(spec: str, **overrides: Any) -> Task:
    """Like :func:`load_task` but without the contract checks: import, resolve and build only."""
    if not isinstance(spec, str) or not spec.strip():
        raise TaskError(f"task spec must be a non-empty string, got {spec!r}; "
                        f"use one of {', '.join(sorted(BUILTIN_TASKS))} or 'module:attr'")
    spec = spec.strip()
    if spec in BUILTIN_TASKS:
        return _check(BUILTIN_TASKS[spec](**overrides), spec)
    if ":" not in spec:
        raise TaskError(f"unknown task {spec!r}: built-in tasks are {', '.join(sorted(BUILTIN_TASKS))}; "
                        "a user task is given as 'package.module:attr'")
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path or ":" in attr_path:
        raise TaskError(f"malformed task spec {spec!r}: expected exactly one ':' between a module and an "
                        "attribute, e.g. 'my_pkg.tasks:MyTask'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise TaskError(f"cannot import module {module_name!r} for task {spec!r}: {e}; "
                        "is it installed or on PYTHONPATH?") from e
    obj: Any = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TaskError(f"module {module_name!r} has no attribute {attr_path!r} (task {spec!r})") from None
    if isinstance(obj, Task):
        if overrides:
            raise TaskError(f"{spec!r} is a Task instance; options {sorted(overrides)} can only be passed to a "
                            "Task class or factory")
        return _check(obj, spec)
    if inspect.isclass(obj) and not issubclass(obj, Task):
        raise TaskError(f"{spec!r} is the class {obj.__name__}, which does not subclass dai_swarm.Task")
    if not callable(obj):
        raise TaskError(f"{spec!r} is a {type(obj).__name__}, not a Task, Task subclass or factory")
    try:
        task = obj(**overrides)
    except TaskError:
        raise
    except TypeError as e:
        if "abstract" in str(e) and inspect.isclass(obj):
            missing = sorted(getattr(obj, "__abstractmethods__", ()))
            raise TaskError(f"task {spec!r}: {obj.__name__} does not define {', '.join(missing)}; fix: implement "
                            "every method of dai_swarm.Task (build_model, loss, inner_optimizer, evaluate, "
                            "config)") from None
        raise TaskError(f"calling {spec!r} with options {sorted(overrides)} failed: {type(e).__name__}: {e}") from e
    except Exception as e:
        raise TaskError(f"calling {spec!r} with options {sorted(overrides)} failed: {type(e).__name__}: {e}") from e
    return _check(task, spec)


def _check(task: Any, spec: str) -> Task:
    if not isinstance(task, Task):
        raise TaskError(f"{spec!r} returned a {type(task).__name__}, not a dai_swarm.Task")
    return task
