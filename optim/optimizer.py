"""``SwarmOptimizer``: a thin ``torch.optim.Optimizer`` over the swarm's round protocol.

It honours the torch contract (``step(closure=None)``, ``zero_grad(set_to_none=True)``, live
``param_groups`` / ``state`` / ``defaults``, ``state_dict`` / ``load_state_dict`` including the
round number) by delegating to the task's inner optimizer, and tells the round runtime after each
inner step. The protocol itself lives in :mod:`dai_swarm.runtime`; nothing here makes a
network round trip. Like torchft's wrapper, a network problem never raises out of ``step``: it is
latched in the runtime and the swarm carries on (the peer re-syncs in a later round).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Optional

import torch

__all__ = ["SwarmOptimizer"]


class SwarmOptimizer(torch.optim.Optimizer):
    """Wraps an inner optimizer; every ``step`` is one inner step of the current round.

    When the round's training deadline passes, the step hands the round's pseudo-gradient to the
    runtime (which compresses, announces and serves it in the background), loads the next
    canonical base state into the model, and resets the inner optimizer (fresh each round, so any
    peer can reproduce the work).
    """

    def __init__(self, inner: torch.optim.Optimizer, runtime: Any):
        # torch.optim.Optimizer.__init__ would build its own param_groups; we delegate instead,
        # and only set up the hook registries that the base class's helpers expect.
        self.inner = inner
        self.runtime = runtime
        self._optimizer_step_pre_hooks: "OrderedDict[int, Callable]" = OrderedDict()
        self._optimizer_step_post_hooks: "OrderedDict[int, Callable]" = OrderedDict()
        self._optimizer_state_dict_pre_hooks: "OrderedDict[int, Callable]" = OrderedDict()
        self._optimizer_state_dict_post_hooks: "OrderedDict[int, Callable]" = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: "OrderedDict[int, Callable]" = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: "OrderedDict[int, Callable]" = OrderedDict()

    # --- live views of the inner optimizer -------------------------------------------------------
    @property
    def param_groups(self) -> list:  # type: ignore[override]
        """The inner optimizer's parameter groups (live: edits change the inner optimizer)."""
        return self.inner.param_groups

    @param_groups.setter
    def param_groups(self, value: list) -> None:
        self.inner.param_groups = value

    @property
    def state(self) -> dict:  # type: ignore[override]
        """The inner optimizer's per-parameter state (live)."""
        return self.inner.state

    @state.setter
    def state(self, value: dict) -> None:
        self.inner.state = value

    @property
    def defaults(self) -> dict:  # type: ignore[override]
        """The inner optimizer's defaults (live)."""
        return self.inner.defaults

    @defaults.setter
    def defaults(self, value: dict) -> None:
        self.inner.defaults = value

    # --- the torch contract ----------------------------------------------------------------------
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:  # type: ignore[override]
        """One inner step; closes the round locally when its training deadline has passed."""
        for hook in list(self._optimizer_step_pre_hooks.values()):
            hook(self, (), {})
        loss = self.inner.step(closure)
        self.runtime.after_inner_step(self)
        for hook in list(self._optimizer_step_post_hooks.values()):
            hook(self, (), {})
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear gradients of all parameters (no network)."""
        self.inner.zero_grad(set_to_none=set_to_none)

    def reset_inner_state(self) -> None:
        """Forget the inner optimizer's moments (called at each round boundary)."""
        self.inner.state.clear()

    def state_dict(self) -> dict:
        """Inner optimizer state plus the swarm position (round, steps, base hash). No network."""
        return {"inner": self.inner.state_dict(), "swarm": self.runtime.position()}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what :meth:`state_dict` returned. No network; the runtime re-syncs lazily."""
        if "inner" not in state_dict or "swarm" not in state_dict:
            raise ValueError("not a SwarmOptimizer state_dict (expected keys 'inner' and 'swarm')")
        self.inner.load_state_dict(state_dict["inner"])
        self.runtime.restore_position(state_dict["swarm"])

    def add_param_group(self, param_group: dict) -> None:
        """Parameters are fixed by the task's model; adding groups would break verification."""
        raise RuntimeError("SwarmOptimizer's parameters are the task model's; add_param_group is not supported")

    def __repr__(self) -> str:
        return f"SwarmOptimizer(inner={type(self.inner).__name__}, round={self.runtime.position().get('round')})"

    def __getstate__(self) -> dict:
        raise TypeError("SwarmOptimizer holds live network state and cannot be pickled; use state_dict()")
