"""A replica that diverges once (``dai-swarm peer --attack diverge@R``; tests only).

An honest peer whose state got corrupted: when it computes round ``R``'s candidate, every
parameter of its base of round ``R + 1`` is nudged by 1e-3, so its vote names another state hash
than its region's. The protocol must bring it back (the weighted vote, then a verified re-sync)
without anyone else following it.
"""

from __future__ import annotations

from dai_swarm.logging import get_logger
from dai_swarm.optim.states import BaseState

from .attacks import Attack

__all__ = ["Diverge"]

logger = get_logger(__name__)


class Diverge(Attack):
    """Perturb this peer's base at round ``at``'s close only (see the module docstring)."""

    kind = "diverge"

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def tamper_base(self, round: int, state: BaseState) -> BaseState:
        """The base nudged by 1e-3 at round ``at``; unchanged at every other round."""
        if round != self.at:
            return state
        logger.warning("round %d: perturbing the local base (attack diverge@%d)", round, self.at)
        self.rounds_attacked.append(round)
        return BaseState.make(state.round, {n: t + 1e-3 for n, t in state.params.items()}, state.momentum,
                              state.extra, state.anchor)
