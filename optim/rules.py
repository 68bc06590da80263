"""The verification hooks the round driver calls (:class:`NullVerifier`, the no-verification
default) and the pure rule that computes the next base from a closed round (:func:`compute_next_base`).

Pure (no I/O, no clock): the network driver (:mod:`.coordinator`) and the simulator
(:mod:`dai_swarm.sim`) both call them.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from .aggregate import cap_newcomer_norms, cap_newcomers, gate_newcomer_directions, update_weight, weighted_mean
from .book import RoundBook
from .outer import OuterState, outer_step
from .schedule import needs_of
from .states import BaseState
from .votes import HeadCount, standing_keys

__all__ = ["NullVerifier", "PROVEN_ROUND", "compute_next_base"]

#: replicated metadata: the last round whose inclusion held an update by a key with standing; once
#: set, a round without such an update gives newcomers no weight (:func:`~.aggregate.cap_newcomers`)
PROVEN_ROUND = "proven_round"


class NullVerifier:
    """The verification hooks the coordinator calls; :mod:`dai_swarm.verification` implements them.

    Everything that changes replicated state (``next_extra``, ``reputation``, ``rule``) must be a
    deterministic function of its arguments, so honest peers stay bitwise identical (I1).
    """

    rule = None  # robust aggregation rule for weighted_mean(rule=...), or None for the plain mean

    def on_close(self, round: int, book: RoundBook, payloads: Mapping[str, Mapping[str, torch.Tensor]],
                 base: BaseState, weights: Mapping[str, float] | None = None) -> None:
        """Round ``round`` closed here: schedule spot checks of some included updates (own thread);
        ``weights``: each included digest's weight in this peer's aggregate."""

    def vote_verdicts(self, round: int) -> list[str]:
        """Ids of the valid verdicts this peer has seen, to put in its vote of ``round``."""
        return []

    def next_extra(self, extra: Mapping, round: int, verdicts: tuple[str, ...]) -> dict:
        """Replicated metadata of base ``round+2`` from that of ``round+1`` and the verdict ids the
        swarm agreed on in round ``round-1``'s votes (reputation, slashes)."""
        return dict(extra)

    def reputation(self, extra: Mapping) -> Mapping[str, float]:
        """Aggregation weight per public key, read from replicated metadata."""
        return extra.get("reputation", {})

    def vote_weights(self, extra: Mapping) -> Mapping[str, float]:
        """Weight in votes and state majorities: without verification every signer counts once
        (a swarm that trusts its members; no Sybil resistance)."""
        return HeadCount()

    def initial_extra(self, founders: Any) -> dict:
        """Replicated metadata of the first base (none without verification)."""
        return {}

    def verifier_counts(self, round: int, verdict_ids: tuple[str, ...]) -> dict[str, int]:
        """Verifications per verifier among the agreed verdict ids (for the reward split)."""
        return {}


def compute_next_base(book: RoundBook, payloads: Mapping[str, Mapping[str, torch.Tensor]], base_next: BaseState,
                      base_q: BaseState | None, verifier: Any, verdicts: tuple[str, ...], *, outer_lr: float,
                      outer_momentum: float, delay_compensation: float = 1.0, rewards: Any = None,
                      schedule: Any = None, weights_out: dict | None = None) -> BaseState:
    """The base of round ``book.round + 2`` from base ``q+1``, the book's inclusion and its payloads.

    Pure (no I/O, no clock): the network driver and the simulator (:mod:`dai_swarm.sim`) both call
    it. ``verifier`` supplies ``next_extra``/``reputation``/``vote_weights``/``rule`` (see
    :class:`NullVerifier`); keys without standing together weigh at most
    :data:`~.aggregate.NEWCOMER_SHARE` of the aggregate (:func:`~.aggregate.cap_newcomers`), each
    counts no longer than the longest proven update (:func:`~.aggregate.cap_newcomer_norms`) and in
    proportion to its agreement with the proven ones (:func:`~.aggregate.gate_newcomer_directions`), and
    nothing in a round without a proven update once the chain has had one (:data:`PROVEN_ROUND`),
    ``verdicts`` the verdict ids agreed in round ``q-1``'s votes; ``base_q`` is needed only for
    delay compensation. ``rewards`` (optional) is the reward hook the composition layer supplies
    (:class:`dai_swarm.roundlog.RoundRewards`): ``rewards.settle(base_next.extra, extra, round,
    included, verdicts)`` returns the metadata with the round's reward units settled into it
    (vesting, docs/design.md), so pending units are replicated state like reputation.
    ``schedule`` (optional, :class:`~.schedule.ScheduleRule`) writes the round schedule the agreed
    updates' ``need_s`` call for into the metadata (adaptive round lengths).
    """
    extra = verifier.next_extra(base_next.extra, book.round, verdicts)
    included = book.included()
    extra["epoch_samples"] = int(base_next.extra.get("epoch_samples", 0)) + sum(a.samples for a, _ in included)
    if rewards is not None:
        extra = rewards.settle(base_next.extra, extra, book.round, included, verdicts)
    if schedule is not None:
        extra = schedule.settle(base_next.extra, extra, book.round,
                                needs_of([a for a, _ in included], verifier.vote_weights(base_next.extra)),
                                len(included))
    rep = verifier.reputation(extra)
    weights = [update_weight(a.samples, rep.get(a.peer, 1.0), disc) for a, disc in included]
    tensors = [payloads[a.digest] for a, _ in included]
    proven = standing_keys(verifier.vote_weights(extra))
    if proven is not None:  # newcomers together weigh at most NEWCOMER_SHARE of the round,
        flags = [a.peer in proven for a, _ in included]  # each no longer than the longest proven update,
        weights = gate_newcomer_directions(tensors, weights, flags)  # none pointing away from the proven ones
        weights = cap_newcomers(weights, flags, reached=PROVEN_ROUND in base_next.extra)
        tensors = cap_newcomer_norms(tensors, flags)
        if any(flags):  # replicated: this chain has included an update with standing (last round it did)
            extra[PROVEN_ROUND] = int(book.round)
    updates = [(a.digest, w, t) for (a, _), w, t in zip(included, weights, tensors)]
    if weights_out is not None:
        weights_out.update((d, float(w)) for d, w, _ in updates)
    if not updates or all(w == 0 for _, w, _ in updates):
        return BaseState.make(book.round + 2, base_next.params, base_next.momentum, extra, base_next.anchor)
    delta = weighted_mean(updates, rule=verifier.rule)
    # Delay compensation: the updates were computed from θ_q but are applied to θ_{q+1}; measure
    # the pseudo-gradient against the base it is applied to: θ_{q+1} − mean(θ_local) =
    # mean(Δ) + (θ_{q+1} − θ_q), or a fraction c of the second term (the run's ``delay_compensation``;
    # sparse runs: 0.25). Elementwise, hence deterministic (docs/design.md).
    if base_q is not None and delay_compensation:
        c = float(delay_compensation)
        moved = {n: torch.sub(base_next.params[n], base_q.params[n]) for n in delta}
        delta = {n: torch.add(d, moved[n] if c == 1.0 else torch.mul(moved[n], c)) for n, d in delta.items()}
    state = outer_step(OuterState(dict(base_next.params), dict(base_next.momentum)), delta,
                       lr=outer_lr, momentum=outer_momentum, nesterov=True)
    return BaseState.make(book.round + 2, state.params, state.momentum, extra, base_next.anchor)
