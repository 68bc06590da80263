"""A peer's reward-log record of each closed round (SPEC §8): a deterministic function of the agreed state.

Every honest peer of a region writes the same record for a round (contributors with their samples
and standing, verifiers with their counts, peers slashed in the round), appends it to its own
:class:`~dai_swarm.rewards.RewardLog`, and publishes its round-chain head so peers can compare logs.
"""

from __future__ import annotations

from typing import Any, Mapping

from dai_swarm.logging import get_logger
from dai_swarm.rewards import Contributor, compute_round_record
from dai_swarm.verification.reputation import is_slashed

__all__ = ["slashed_keys", "write_round_record"]

logger = get_logger(__name__)


def slashed_keys(extra: Mapping) -> set[str]:
    """Public keys slashed in a replicated state (empty without verification)."""
    trust = extra.get("trust", {}) if isinstance(extra, Mapping) else {}
    return {key for key in trust if is_slashed(extra, key)}


def write_round_record(rt: Any, outcome: Any, state: Any) -> dict | None:
    """Append round ``outcome.round``'s record to ``rt.ledger`` (``state``: the agreed base it produced)
    and publish the round-chain head; the head, or None if it failed (counted in ``rt.ledger_errors``)."""
    try:
        prev = rt.bases.get(outcome.round + 1)
        rep = rt.verifier.reputation(state.extra)
        contributors = [Contributor(peer, int(samples), float(min(1.0, max(0.0, rep.get(peer, 1.0)))),
                                    outcome.regions.get(peer) or None)
                        for peer, samples in sorted(outcome.contributors.items())]
        ids = rt.coordinator.verdict_winners.get(outcome.round - 1, ())
        before = slashed_keys(prev.extra) if prev is not None else set()
        body = compute_round_record(outcome.round, contributors, rt.verifier.verifier_counts(outcome.round - 1, ids),
                                    sorted(slashed_keys(state.extra) - before), state.hash)
        rt.ledger.append_round(body).wait(10.0)
        head = {"round_chain_head": rt.ledger.round_chain_head, "rounds": rt.ledger.rounds}
        rt.dht.publish_round_record(rt.run_id, f"loghead.{rt.region}", outcome.round, head,
                                    ttl_s=max(60.0, 20 * rt.manifest.round_s))
        return head
    except Exception as e:  # the log must never stop training; the error is counted and logged
        rt.ledger_errors += 1
        logger.warning("round %d: reward log append failed: %r", outcome.round, e)
        return None
