"""How often updates are checked: the expected number of independent recomputations of each update
per round (``checks_per_update``, c), the probability one peer checks a given update, and the chance a
cheating update is caught in a round. Pure arithmetic, free of torch and hivemind, so that the command
line can show the defaults without loading them.
"""

from __future__ import annotations

__all__ = ["DEFAULT_CHECKS_PER_UPDATE", "check_probability", "detection_per_round"]

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
