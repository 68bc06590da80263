"""Attacks on error feedback (``sparse`` runs; ``dai-swarm peer --attack KIND``; tests only).

``forged_feedback``: the peer sends the honest top-k of Δ + e but commits to (and carries) a
post-round buffer of zeros, i.e. claims it kept nothing back. Its committed accumulator
``sent + e_post`` is then far from the recomputed ``Δ' + e_pre`` on every chunk, so any sampled
check fails. ``shifted_feedback``: it adds 1e-2 to every value of its committed buffer, a small
lie that each sampled chunk still exposes (it is no longer ``a − sent``).
"""

from __future__ import annotations

import torch

from .attacks import Attack

__all__ = ["ForgedFeedback"]


class ForgedFeedback(Attack):
    """Commit to a falsified post-round buffer every round (see the module docstring)."""

    def __init__(self, kind: str = "forged_feedback") -> None:
        super().__init__()
        self.kind = kind

    def tamper_feedback(self, post: dict, round: int) -> dict:
        """Zeros (``forged_feedback``) or the buffer shifted by 1e-2 (``shifted_feedback``)."""
        self.rounds_attacked.append(round)
        if self.kind == "forged_feedback":
            return {n: torch.zeros_like(t) for n, t in post.items()}
        return {n: t + 1e-2 for n, t in post.items()}
