"""What a peer hands to the protocol: the update strategy, honest unless a test or benchmark says so.

The round driver never asks whether a peer attacks: it always calls one strategy object, whose
methods are the identity here. Byzantine behaviours (SPEC §7) subclass it in
:mod:`dai_swarm.verification.attacks` and reach a peer only through ``Swarm(attack=...)`` or
``dai-swarm peer --attack KIND``; a production peer runs :data:`HONEST`.
"""

from __future__ import annotations

from typing import Any

from .states import BaseState

__all__ = ["HONEST", "UpdateStrategy"]


class UpdateStrategy:
    """The honest behaviour at every point where a peer could deviate (see the module docstring)."""

    kind = "honest"

    def bind(self, runtime: Any) -> None:
        """Called once with the peer's round runtime (for strategies that use the network)."""

    def tamper(self, delta: dict, round: int) -> dict:
        """The pseudo-gradient to encode for ``round``."""
        return delta

    def tamper_blob(self, blob: bytes, round: int) -> bytes:
        """The encoded payload to store and announce."""
        return blob

    def tamper_feedback(self, post: dict, round: int) -> dict:
        """The error-feedback buffer to commit to and carry after ``round`` (``sparse`` runs)."""
        return post

    def claimed_steps(self, steps: int) -> int:
        """The inner-step count to announce."""
        return steps

    def tamper_batch(self, batch: Any) -> Any:
        """A training batch, as this peer trains on it."""
        return batch

    def tamper_base(self, round: int, state: BaseState) -> BaseState:
        """The base of ``round + 1`` this peer computes round ``round``'s candidate from."""
        return state


#: the strategy of every peer not built for a test or a benchmark
HONEST = UpdateStrategy()
