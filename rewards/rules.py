"""Reward rules: a pure, deterministic function from a round's replicated inputs to its record body.

Every honest peer calls :func:`compute_round_record` with the same replicated inputs (the
contributors the round included, their samples and reputation, how many verifications each peer
did, who was slashed, the resulting state hash) and gets byte-identical canonical JSON back, so
the chain of round records is identical across honest peers (compare with
:attr:`RewardLog.round_chain_head` or :func:`dai_swarm.rewards.diff.diff_logs`).

The rule:

- a fixed emission of ``emission`` reward units (integers, 1 unit = 1e-6 of a reward) per round;
- ``verifier_share_ppm`` parts per million of it (default 10%) go to verification work, split
  pro rata to verifications done; the rest goes to contributors, split pro rata to
  ``samples x reputation``;
- reputation is quantized to integer parts per million (``round(reputation * 1e6)`` on the IEEE
  double, identical on every peer) so no float ever enters the split;
- slashed peers forfeit the whole round (no contributor reward, no verifier credit); what they
  would have had goes to the others;
- if nobody verified, the verifier pool goes to contributors; if no contributor is eligible,
  nothing of the contributor pool is paid out (``unallocated``);
- the units a round awards stay *pending* until the verdicts about that round have all taken
  effect (:mod:`.vesting`); the record carries the round's pending, vested and forfeited units
  under ``"vesting"`` when the replicated state has them;
- each pool is split by the largest-remainder method: everyone gets ``floor(pool * w / W)``, then
  the leftover units go one each to the largest remainders, ties broken by peer id ascending; the
  payouts of a pool always sum to it exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from dai_swarm.errors import LedgerError

__all__ = ["DEFAULT_EMISSION", "DEFAULT_VERIFIER_SHARE_PPM", "Contributor", "compute_round_record", "split_pro_rata"]

DEFAULT_EMISSION = 1_000_000_000  # 1,000 rewards per round, in micro-units
DEFAULT_VERIFIER_SHARE_PPM = 100_000  # 10 %
PPM = 1_000_000
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Contributor:
    """One included contributor of a round: peer id, samples trained on, reputation in [0, 1], region."""

    peer: str
    samples: int
    reputation: float | int
    region: str | None = None

    @property
    def reputation_ppm(self) -> int:
        """Reputation quantized to integer parts per million (deterministic on every peer)."""
        return int(round(self.reputation * PPM))


def split_pro_rata(pool: int, weights: Mapping[str, int]) -> dict[str, int]:
    """Split ``pool`` integer units among ``weights`` (peer -> non-negative int) by largest remainder.

    Returns peer -> units; sums to ``pool`` exactly when the total weight is positive, else all 0.
    """
    total = sum(weights.values())
    if total <= 0 or pool <= 0:
        return {p: 0 for p in weights}
    shares = {}
    remainders = []
    for peer, w in weights.items():
        q, r = divmod(pool * w, total)
        shares[peer] = q
        remainders.append((-r, peer))
    leftover = pool - sum(shares.values())
    for _, peer in sorted(remainders)[:leftover]:
        shares[peer] += 1
    return shares


def _check_peer(peer: object, what: str) -> str:
    if not isinstance(peer, str) or not peer or len(peer) > 256:
        raise LedgerError(f"{what} peer id must be a non-empty string of at most 256 characters, got {peer!r}")
    return peer


def compute_round_record(
    round_no: int,
    contributors: Iterable[Contributor],
    verifications: Mapping[str, int],
    slashed: Iterable[str],
    state_hash: str,
    *,
    parent_hash: str | None = None,
    emission: int = DEFAULT_EMISSION,
    verifier_share_ppm: int = DEFAULT_VERIFIER_SHARE_PPM,
    vesting: Mapping | None = None,
) -> dict:
    """Return the canonical body of the round record for ``round_no``.

    ``contributors`` are the updates the round included, ``verifications`` maps a peer to the
    number of verifications it did this round, ``slashed`` the peers slashed this round,
    ``state_hash`` the hex state hash the round produced, ``parent_hash`` (optional) the hash of
    the base it was applied to: it links each round record to the previous state; ``vesting``
    (optional) the round's vesting figures from the replicated state
    (:func:`.vesting.record_fields`: ``pending``, ``vested``, ``forfeited``, ``unvested``,
    ``window``), carried under ``"vesting"``. Pure and deterministic: the order of the inputs
    does not matter. Raises :class:`LedgerError` on invalid input.
    """
    if not isinstance(round_no, int) or isinstance(round_no, bool) or round_no < 0:
        raise LedgerError(f"round must be a non-negative int, got {round_no!r}")
    if not isinstance(state_hash, str) or not _HEX64.match(state_hash):
        raise LedgerError("state_hash must be 64 lowercase hex characters")
    if parent_hash is not None and (not isinstance(parent_hash, str) or not _HEX64.match(parent_hash)):
        raise LedgerError("parent_hash must be 64 lowercase hex characters")
    if not isinstance(emission, int) or emission < 0:
        raise LedgerError(f"emission must be a non-negative int, got {emission!r}")
    if not isinstance(verifier_share_ppm, int) or not 0 <= verifier_share_ppm <= PPM:
        raise LedgerError(f"verifier_share_ppm must be an int in [0, {PPM}], got {verifier_share_ppm!r}")
    slashed_set = {_check_peer(p, "slashed") for p in slashed}
    by_peer: dict[str, Contributor] = {}
    for c in contributors:
        _check_peer(c.peer, "contributor")
        if c.peer in by_peer:
            raise LedgerError(f"contributor {c.peer!r} listed twice in round {round_no}")
        if not isinstance(c.samples, int) or isinstance(c.samples, bool) or c.samples < 0:
            raise LedgerError(f"contributor {c.peer!r}: samples must be a non-negative int")
        if not isinstance(c.reputation, (int, float)) or not 0 <= c.reputation <= 1:
            raise LedgerError(f"contributor {c.peer!r}: reputation must be a number in [0, 1]")
        by_peer[c.peer] = c
    for peer, count in verifications.items():
        _check_peer(peer, "verifier")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise LedgerError(f"verifier {peer!r}: verification count must be a non-negative int")

    eligible = {p: c for p, c in by_peer.items() if p not in slashed_set}
    weights = {p: c.samples * c.reputation_ppm for p, c in eligible.items()}
    ver_counts = {p: n for p, n in verifications.items() if p not in slashed_set and n > 0}
    verifier_pool = emission * verifier_share_ppm // PPM if ver_counts else 0
    contributor_pool = emission - verifier_pool
    rewards = split_pro_rata(contributor_pool, weights)
    credits = split_pro_rata(verifier_pool, ver_counts)
    paid = sum(rewards.values()) + sum(credits.values())

    rows = []
    for peer in sorted(eligible):
        c = eligible[peer]
        row = {"peer": peer, "samples": c.samples, "reputation_ppm": c.reputation_ppm, "reward": rewards[peer]}
        if c.region is not None:
            row["region"] = str(c.region)
        rows.append(row)
    out = {
        "round": round_no,
        "state_hash": state_hash,
        "emission": emission,
        "contributors": rows,
        "verifiers": [{"peer": p, "verifications": ver_counts[p], "credit": credits[p]} for p in sorted(ver_counts)],
        "slashed": sorted(slashed_set),
        "unallocated": emission - paid,
    }
    if parent_hash is not None:
        out["parent_hash"] = parent_hash
    if vesting is not None:
        out["vesting"] = _check_vesting(vesting)
    return out


def _check_vesting(vesting: Mapping) -> dict:
    """A copy of the vesting fields with sorted peer tables; LedgerError if malformed."""
    if not isinstance(vesting, Mapping):
        raise LedgerError("vesting must be a mapping")
    out: dict = {}
    for key in ("pending", "vested", "forfeited", "unvested"):
        table = vesting.get(key, {})
        if not isinstance(table, Mapping):
            raise LedgerError(f"vesting[{key!r}] must map peer -> units")
        for peer, units in table.items():
            _check_peer(peer, f"vesting {key}")
            if not isinstance(units, int) or isinstance(units, bool) or units < 0:
                raise LedgerError(f"vesting {key} of {peer!r}: units must be a non-negative int")
        out[key] = dict(sorted(table.items()))
    window = vesting.get("window", 0)
    if not isinstance(window, int) or isinstance(window, bool) or window < 0:
        raise LedgerError(f"vesting window must be a non-negative int, got {window!r}")
    out["window"] = window
    return out
