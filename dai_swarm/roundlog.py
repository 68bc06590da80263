"""A peer's reward log as rounds close: the canonical round record of each agreed state, and the
vesting of reward units in the replicated state.

:class:`RoundRewards` is the reward hook of :func:`~dai_swarm.optim.rules.compute_next_base`: when
round ``q`` closes it splits the round's emission (:func:`~dai_swarm.rewards.compute_round_record`)
and settles the vesting (:func:`~dai_swarm.rewards.vesting.settle`) into the base of ``q+2``'s
``extra["vesting"]``. Every honest peer, joiner and resumed peer therefore holds the same pending
units (they are part of the state hash, SPEC I1).

:func:`write_round_record` is called by :class:`~.runtime.RoundRuntime` once round ``q``'s tally
settled the base of ``q+2``; the record is a deterministic function of that agreed state and its
parent (the base of ``q+1``), so honest peers append identical records (compare with
``dai-swarm ledger diff``).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from .logging import get_logger
from .optim.exchange import round_record_ttl
from .optim.votes import standing_keys
from .rewards import Contributor, compute_round_record
from .rewards.rules import DEFAULT_EMISSION
from .rewards.vesting import DEFAULT_MAX_HOLD_ROUNDS, SECTION, awards_of, record_fields, settle
from .verification.reputation import is_slashed

__all__ = ["RoundRewards", "slashed_keys", "write_round_record"]

logger = get_logger(__name__)
_NO_HASH = "0" * 64  # the split does not depend on the state hash; the record names the real one


def slashed_keys(extra: Mapping) -> set[str]:
    """Public keys slashed in a replicated state (empty without verification)."""
    trust = extra.get("trust", {}) if isinstance(extra, Mapping) else {}
    return {key for key in trust if is_slashed(extra, key)}


def _contributors(verifier: Any, extra: Mapping, samples: Mapping[str, int],
                  regions: Mapping[str, str | None]) -> list[Contributor]:
    rep = verifier.reputation(extra)
    return [Contributor(peer, int(n), float(min(1.0, max(0.0, rep.get(peer, 1.0)))), regions.get(peer) or None)
            for peer, n in sorted(samples.items())]


class RoundRewards:
    """The reward hook of :func:`~dai_swarm.optim.rules.compute_next_base` (pure given its verifier).

    ``verifier`` supplies ``reputation``, ``vote_weights`` (standing) and ``verifier_counts``;
    ``window`` is how many rounds a unit stays pending: ``lag + 1`` for a verifier with a verdict
    lag (the verdicts about round ``t`` are voted on in round ``t + lag`` and applied to the base
    of ``t + lag + 3``, the settlement of round ``t + lag + 1``), 0 without verification.
    """

    def __init__(self, verifier: Any, *, window: int | None = None, emission: int = DEFAULT_EMISSION,
                 max_hold_rounds: int = DEFAULT_MAX_HOLD_ROUNDS):
        self.verifier, self.emission, self.max_hold_rounds = verifier, int(emission), int(max_hold_rounds)
        lag = getattr(verifier, "lag", None)
        self.window = int(window) if window is not None else (int(lag) + 1 if lag is not None else 0)

    def settle(self, prev_extra: Mapping, extra: dict, round: int, included: Iterable[tuple[Any, float]],
               verdicts: tuple[str, ...]) -> dict:
        """``extra`` (the new base's metadata) with round ``round``'s vesting settled into it.

        ``prev_extra`` is the metadata of the base the round is applied to, ``included`` the book's
        ``(announcement, discount)`` pairs, ``verdicts`` the verdict ids agreed in round
        ``round - 1``'s votes (their signed bodies are public inputs, resolved as the reputation
        update resolves them).
        """
        anns = list(included)
        samples = {a.peer: int(a.samples) for a, _ in anns}
        regions = {a.peer: a.region for a, _ in anns}
        newly = sorted(slashed_keys(extra) - slashed_keys(prev_extra))
        body = compute_round_record(round, _contributors(self.verifier, extra, samples, regions),
                                    self.verifier.verifier_counts(round - 1, tuple(verdicts)), newly, _NO_HASH,
                                    emission=self.emission)
        result = settle(prev_extra.get(SECTION), round, awards_of(body), slashed_keys(extra),
                        standing_keys(self.verifier.vote_weights(extra)), window=self.window,
                        max_hold_rounds=self.max_hold_rounds)
        out = dict(extra)
        out[SECTION] = result.section
        return out


def write_round_record(rt: Any, outcome: Any, state: Any) -> dict | None:
    """Append round ``outcome.round``'s canonical reward record to ``rt.ledger`` (the record names
    ``state``'s hash and its parent's, and carries the round's vesting from ``state``) and publish
    the round-chain head so peers can compare their logs. Returns the head, or None when the
    append failed (counted, never raised)."""
    try:
        prev = rt.bases.get(outcome.round + 1)
        contributors = _contributors(rt.verifier, state.extra, outcome.contributors, outcome.regions)
        ids = rt.coordinator.machine.verdicts_for(outcome.round)
        before = slashed_keys(prev.extra) if prev is not None else set()
        section = state.extra.get(SECTION)
        body = compute_round_record(outcome.round, contributors, rt.verifier.verifier_counts(outcome.round - 1, ids),
                                    sorted(slashed_keys(state.extra) - before), state.hash,
                                    parent_hash=prev.hash if prev is not None else None,
                                    vesting=record_fields(section, outcome.round) if section else None)
        rt.ledger.append_round(body).wait(10.0)
        head = {"round_chain_head": rt.ledger.round_chain_head, "rounds": rt.ledger.rounds}
        rt.dht.publish_round_record(rt.run_id, f"loghead.{rt.region}", outcome.round, head,
                                    ttl_s=round_record_ttl(rt.manifest.round_s))
        return head
    except Exception as e:  # the log must never stop training; the error is counted and logged
        rt.ledger_errors += 1
        logger.warning("round %d: reward log append failed: %r", outcome.round, e)
        return None
