"""How often updates are checked: the expected number of independent recomputations of each update
per round (``checks_per_update``, c), the probability one peer checks a given update, and the chance a
cheating update is caught in a round. Pure arithmetic, free of torch and hivemind, so that the command
line can show the defaults without loading them.
"""

from __future__ import annotations

import random
from typing import Collection, Mapping

__all__ = ["DEFAULT_CHECKS_PER_UPDATE", "check_probability", "detection_per_round", "draw_checks", "fill_budget"]

#: expected independent recomputations of each update per round (c): a peer spends about c x one
#: update's training on checks, flat in the swarm size; a cheater whose every update a check fails is
#: caught in a round with probability >= 1 - e^-c (22.1% at 0.25) and within 20 rounds with
#: >= 1 - e^-20c = 99.3% (docs/design.md "Verification cost")
DEFAULT_CHECKS_PER_UPDATE = 0.25


def check_probability(checks_per_update: float, authors: int) -> float:
    """Probability with which one peer checks each update of a round with ``authors`` distinct
    authors: ``min(1, c / (authors - 1))``, so that the ``authors - 1`` other peers together check
    each update ``c`` times in expectation."""
    return min(1.0, float(checks_per_update) / max(1, int(authors) - 1))


def detection_per_round(checks_per_update: float, peers: int) -> float:
    """Chance that at least one of the ``peers - 1`` others checks a given update in a round (each
    with :func:`check_probability`): ``1 - (1 - p)^(peers - 1)``; a check of a cheating update fails."""
    p = check_probability(checks_per_update, peers)
    return 1.0 - (1.0 - p) ** max(1, int(peers) - 1)


def draw_checks(authors: Mapping[str, str], me: str, standing: Collection[str], checks_per_update: float,
                max_checks: int, rng: random.Random, weightless: Collection[str] = ()) -> list[str]:
    """The digests of one round's included updates (``authors``: digest -> author key) that peer ``me``
    recomputes, drawn with its private ``rng``; sorted.

    Three tiers, so that no number of fresh keys dilutes the checks of the updates that carry weight:

    * an update by a key with ``standing`` is drawn with :func:`check_probability` over the authors
      with standing alone (``c`` expected checks each, as if the newcomers were not there), and
      these are kept first when more than ``max_checks`` are drawn;
    * a newcomer's update that carried weight in this peer's aggregate is drawn with
      :func:`check_probability` over the authors of updates that did (newcomers earn standing
      through these checks, as fast as if a flood of weightless updates were not there) and fills
      what is left of ``max_checks``;
    * a newcomer's update in ``weightless`` (digests the aggregate gave weight 0: pointing away from
      the proven updates, or a round without any) is drawn with :func:`check_probability` over all
      authors and fills what is left after that: it moved nothing, and a check only slashes it.

    A peer then recomputes about ``c`` updates with standing plus at most ``c`` newcomers' updates of
    each of the other two tiers a round: at most ``3c`` updates' training, flat in the number of keys.
    """
    everyone = set(authors.values()) | {me}
    ranked = set(standing) & set(authors.values())
    weighed = {a for d, a in authors.items() if d not in weightless} | ranked | {me}
    p_standing = check_probability(checks_per_update, len(ranked | {me}))
    p_weighed = check_probability(checks_per_update, len(weighed))
    p_new = check_probability(checks_per_update, len(everyone))
    first, second, third = [], [], []
    for digest in sorted(authors):
        author = authors[digest]
        if author == me:
            continue
        if author in ranked:
            if rng.random() < p_standing:
                first.append(digest)
        elif digest not in weightless:
            if rng.random() < p_weighed:
                second.append(digest)
        elif rng.random() < p_new:
            third.append(digest)
    chosen = fill_budget(first, second, max_checks, rng)
    return sorted(chosen + fill_budget([], third, max_checks - len(chosen), rng))


def fill_budget(first: list, second: list, budget: int, rng: random.Random) -> list:
    """At most ``budget`` items: ``first`` ones before any of ``second``, a random subset of a tier
    that does not fit whole (``rng``, private)."""
    if len(first) >= budget:
        return rng.sample(first, budget)
    room = budget - len(first)
    return first + (rng.sample(second, room) if len(second) > room else second)
