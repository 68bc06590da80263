"""Votes on a round's inputs and their reputation-weighted tally.

The DHT is eventually consistent, so two honest peers may close a round having seen different
announcements. At close time each peer publishes a signed :class:`Vote`: the sorted digests it
included and the state hash it computed from them. :func:`tally` picks the reputation-weighted
majority inclusion; a peer in the minority adopts that set and recomputes (I1), and a peer whose
state still differs re-syncs through :func:`majority_state_hash` (I6).

Weights: a voter counts with the weight the caller passes, normally its *standing* from the
replicated state (``verifier.vote_weights``: founders and keys with verified work; SPEC I7). An
unknown key counts ``epsilon``, which is 0 by default: no number of fresh keys moves a decision,
and a tally in which nobody with weight voted is not decided. A swarm without verification passes
:class:`HeadCount` (every signer counts once). Weights are summed with :func:`math.fsum` (exact,
order-independent), and every tie is broken deterministically: larger total weight, then more
voters, then the lexicographically smaller inclusion digest (or state hash).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from dai_swarm.canonical import canonical_json, sha256_hex
from dai_swarm.errors import ConfigError, MalformedRecord

__all__ = ["Confirmation", "FallbackWeights", "HeadCount", "MajorityHash", "TallyResult", "Vote", "confirm_state", "inclusion_digest", "majority_state_hash",
           "tally", "vote_readers", "who_counts"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_EPSILON = 0.0


class HeadCount(dict):
    """Weights for a swarm that trusts its members: every signer counts 1.0 (no Sybil resistance)."""

    def get(self, key, default=None):  # type: ignore[override]
        """1.0 for every key."""
        return 1.0

    def __missing__(self, key):
        return 1.0


class FallbackWeights(dict):
    """Standing weights (unknown keys 0) with the weights to use instead when nobody in a decision
    holds standing: ``fallback`` (e.g. reputation with the newcomer weight), the bootstrap window
    of a region no founder and no verified key has reached yet. A decision in which any signer
    holds standing never looks at ``fallback``, so fresh keys cannot outvote a standing signer."""

    def __init__(self, table: Mapping[str, float], fallback: Mapping[str, float]):
        super().__init__(table)
        self.fallback = fallback


def standing_keys(weights: Mapping[str, float]) -> frozenset[str] | None:
    """The keys with standing in a state's vote weights (``verifier.vote_weights(extra)``), or None
    (everyone counts) for a swarm that trusts its members (:class:`HeadCount`)."""
    if isinstance(weights, HeadCount):
        return None
    return frozenset(k for k, w in weights.items() if w > 0)


def who_counts(keys: Iterable[str], weights: Mapping[str, float]) -> set[str]:
    """The members of ``keys`` whose votes and state records can weigh anything under ``weights``:
    those with standing. All of them while none holds standing (the bootstrap fallback decides by
    reputation then) or in a swarm that counts heads (:class:`HeadCount`).

    A peer waits for its electorate's votes and state records; waiting for keys that weigh nothing
    bought nothing and let a flood stall every close: 40 fresh keys that announced updates but never
    voted kept every honest peer re-reading a 1,000-record vote key for its whole vote patience,
    and 1,000 fresh voters of another state forced a post-tally confirmation each round."""
    keys = set(keys)
    standing = standing_keys(weights)
    if standing is None:
        return keys
    return (keys & standing) or keys


def vote_readers(weights: Mapping[str, float], here: Iterable[str], elsewhere: Iterable[str], me: str) -> set[str]:
    """Whose vote records a peer reads for a tally (votes live under one DHT key per signer,
    :data:`~dai_swarm.dht.keys.SIGNER_KEYED`): ``here`` are the keys known live in this region
    (signed peer records, this round's announcers), ``elsewhere`` those known live in another region.

    Where a key with standing is live here, the keys with standing not known elsewhere (and this
    peer): no other vote can weigh anything (:func:`who_counts`), so a thousand fresh voters cost
    no lookup. Otherwise (the bootstrap window of a region, or :class:`HeadCount`) every key live
    here, with the standing ones not known elsewhere."""
    here = set(here) | {me}
    standing = standing_keys(weights)
    if standing is None:
        return here
    near = set(standing) - set(elsewhere)
    return near | {me} if near & here else near | here


def state_weights(weights: Mapping[str, float]) -> Mapping[str, float]:
    """Weights for adopting a state someone else built (re-sync, join, post-tally confirmation):
    standing only, never the newcomer fallback, once anyone holds standing. A fallback there let 50
    fresh keys' offers outweigh a founder whose record a loaded peer had not read yet (Sybil-flood
    test); a peer that finds no standing offer waits and keeps its own state instead."""
    if getattr(weights, "fallback", None) is not None and len(weights) > 0:
        return dict(weights)
    return weights


def _effective(reputation: Mapping[str, float], signers: Iterable[str], epsilon: float) -> Mapping[str, float]:
    """``reputation`` itself, or its fallback when no signer weighs anything under it."""
    fallback = getattr(reputation, "fallback", None)
    if fallback is not None and not any(_weight(k, reputation, epsilon) > 0 for k in signers):
        return fallback
    return reputation


def inclusion_digest(digests: Iterable[str]) -> str:
    """SHA-256 (hex) naming a set of update digests: sorted, de-duplicated, canonical JSON."""
    items = sorted(set(digests))
    if any(not isinstance(d, str) or not _HEX64.match(d) for d in items):
        raise MalformedRecord("an inclusion holds 64-hex digests only")
    return sha256_hex(canonical_json(["dai_swarm.inclusion.v1", items]))


@dataclass(frozen=True)
class Vote:
    """One peer's signed view of a closed round (signature checked by the DHT layer).

    ``inclusion`` must be sorted and without duplicates; ``state_hash`` is the hash of the state the
    voter computed from it. Bad fields raise :class:`~dai_swarm.errors.MalformedRecord`.
    """

    run_id: str
    round: int
    voter: str
    inclusion: tuple[str, ...]
    state_hash: str

    def __post_init__(self) -> None:
        if not isinstance(self.run_id, str) or not self.run_id:
            raise MalformedRecord("run_id must be a non-empty string")
        if not isinstance(self.round, int) or isinstance(self.round, bool) or self.round < 0:
            raise MalformedRecord("round must be an int >= 0")
        if not isinstance(self.voter, str) or not self.voter:
            raise MalformedRecord("voter must be a non-empty string")
        if not isinstance(self.state_hash, str) or not _HEX64.match(self.state_hash):
            raise MalformedRecord("state_hash must be 64 lowercase hex characters")
        inc = tuple(self.inclusion) if isinstance(self.inclusion, (list, tuple)) else None
        if inc is None or list(inc) != sorted(set(inc)):
            raise MalformedRecord("inclusion must be a sorted sequence without duplicates")
        object.__setattr__(self, "inclusion", inc)
        inclusion_digest(inc)  # validates the digests

    @property
    def inclusion_digest(self) -> str:
        """:func:`inclusion_digest` of this vote's inclusion."""
        return inclusion_digest(self.inclusion)


@dataclass(frozen=True)
class TallyResult:
    """Outcome of :func:`tally`.

    ``decided`` is False when there were no valid votes, when no voter had weight (only unknown
    keys voted), or when the winner's weight was below ``min_weight``; then the peer keeps its
    local inclusion. ``weight_share`` is the winner's
    fraction of the total weight. ``ignored`` counts votes dropped (wrong run/round, or voters who
    cast two different votes: both dropped).
    """

    decided: bool
    inclusion: tuple[str, ...]
    inclusion_digest: str
    state_hash: str
    weight: float
    total_weight: float
    voters: int
    ignored: int

    @property
    def weight_share(self) -> float:
        """The winner's share of the total vote weight (0.0 when nothing was tallied)."""
        return self.weight / self.total_weight if self.total_weight > 0 else 0.0

    def agrees(self, vote: Vote) -> bool:
        """True iff ``vote`` has the winning inclusion and the winning state hash."""
        return self.decided and vote.inclusion == self.inclusion and vote.state_hash == self.state_hash

    def same_inclusion(self, vote: Vote) -> bool:
        """True iff ``vote`` included the winning set (its state hash may still differ)."""
        return self.decided and vote.inclusion == self.inclusion


def _weight(voter: str, reputation: Mapping[str, float], epsilon: float) -> float:
    w = reputation.get(voter, 0.0)
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
        raise ConfigError(f"reputation of {voter} is not a finite number: {w!r}")
    return float(w) if w > 0 else epsilon


def _best(groups: Mapping[str, list[float]]) -> tuple[str, float, int]:
    """Key with the largest (weight, count), ties to the smallest key; returns (key, weight, n)."""
    scored = [(-math.fsum(ws), -len(ws), k) for k, ws in groups.items()]
    w, n, k = min(scored)
    return k, -w, -n


def tally(votes: Iterable[Vote], reputation: Mapping[str, float], *, run_id: str | None = None,
          round: int | None = None, min_weight: float = 0.0,
          epsilon: float = DEFAULT_EPSILON, electorate: Iterable[str] = ()) -> TallyResult:
    """Reputation-weighted majority over votes; deterministic whatever the order of ``votes``.

    With :class:`FallbackWeights`, the fallback weights are used only if neither a voter nor a
    member of ``electorate`` (the live peers of the region) holds standing: a region with a live
    standing peer whose vote was not read stays undecided rather than let fresh keys decide.
    Votes for another ``run_id``/``round`` (when given) are ignored. A voter who cast two
    different votes is ignored; identical repeats count once. The winning inclusion is chosen
    first; the winning state hash is then the heaviest among the votes for that inclusion.
    """
    if not math.isfinite(epsilon) or epsilon < 0:
        raise ConfigError("epsilon must be a finite number >= 0")
    by_voter: dict[str, Vote | None] = {}
    ignored = 0
    for v in votes:
        if not isinstance(v, Vote) or (run_id is not None and v.run_id != run_id) or \
                (round is not None and v.round != round):
            ignored += 1
            continue
        prev = by_voter.get(v.voter, v)
        if prev is None or prev != v:
            ignored += 1 if prev is None else 2
            by_voter[v.voter] = None
        else:
            by_voter[v.voter] = v
    valid = [v for v in by_voter.values() if v is not None]
    if not valid:
        return TallyResult(False, (), inclusion_digest(()), "", 0.0, 0.0, 0, ignored)
    reputation = _effective(reputation, [v.voter for v in valid] + list(electorate), epsilon)
    weights = {v.voter: _weight(v.voter, reputation, epsilon) for v in valid}
    by_inc: dict[str, list[float]] = {}
    inc_of: dict[str, tuple[str, ...]] = {}
    for v in valid:
        d = v.inclusion_digest
        by_inc.setdefault(d, []).append(weights[v.voter])
        inc_of[d] = v.inclusion
    win, w, _ = _best(by_inc)
    by_hash: dict[str, list[float]] = {}
    for v in valid:
        if v.inclusion_digest == win:
            by_hash.setdefault(v.state_hash, []).append(weights[v.voter])
    state, _, _ = _best(by_hash)
    total = math.fsum(weights.values())
    return TallyResult(w > 0 and w >= min_weight, inc_of[win], win, state, w, total, len(valid), ignored)


@dataclass(frozen=True)
class MajorityHash:
    """Reputation-weighted majority state hash and who holds which (I1 re-sync, I6 join)."""

    state_hash: str
    weight: float
    total_weight: float
    holders: tuple[str, ...]
    dissenters: tuple[str, ...]

    @property
    def weight_share(self) -> float:
        """The majority hash's share of the total weight (0.0 when empty)."""
        return self.weight / self.total_weight if self.total_weight > 0 else 0.0


def majority_state_hash(announcements: Mapping[str, str] | Iterable[tuple[str, str]],
                        reputation: Mapping[str, float], *,
                        epsilon: float = DEFAULT_EPSILON, electorate: Iterable[str] = ()) -> MajorityHash | None:
    """The state hash announced by the reputation-weighted majority of peers, or None if none.

    ``announcements`` maps peer -> announced state hash (or is an iterable of such pairs; a peer
    listed twice with different hashes is dropped). ``dissenters`` must re-sync; a joiner adopts a
    downloaded state only if it hashes to ``state_hash``. ``electorate``: as in :func:`tally`.
    """
    if not math.isfinite(epsilon) or epsilon < 0:
        raise ConfigError("epsilon must be a finite number >= 0")
    pairs = announcements.items() if isinstance(announcements, Mapping) else announcements
    held: dict[str, str | None] = {}
    for peer, h in pairs:
        if not isinstance(h, str) or not _HEX64.match(h):
            raise MalformedRecord(f"state hash of {peer} is not 64 lowercase hex characters")
        held[peer] = h if held.get(peer, h) == h else None
    clean = {p: h for p, h in held.items() if h is not None}
    if not clean:
        return None
    reputation = _effective(reputation, list(clean) + list(electorate), epsilon)
    groups: dict[str, list[float]] = {}
    for p, h in clean.items():
        groups.setdefault(h, []).append(_weight(p, reputation, epsilon))
    best, w, _ = _best(groups)
    total = math.fsum(x for ws in groups.values() for x in ws)
    holders = tuple(sorted(p for p, h in clean.items() if h == best))
    dissenters = tuple(sorted(p for p, h in clean.items() if h != best))
    return MajorityHash(best, w, total, holders, dissenters)


@dataclass(frozen=True)
class Confirmation:
    """What :func:`confirm_state` decided: ``"keep"`` (this peer's state is the region's),
    ``"resync"`` (download ``target``), or ``"wait"`` (not enough state records yet)."""

    action: str
    target: str | None = None


def confirm_state(mine: str, me: str, offers: Iterable[tuple[str, str]], electorate: Iterable[str],
                  reputation: Mapping[str, float], *, epsilon: float = DEFAULT_EPSILON) -> Confirmation:
    """After a tally, check this peer's new state against the state records of its region.

    The tally only counts the votes a peer could *read*; under load a DHT read can miss a mate's
    vote, and in a region of two peers each side then sees a majority of one: itself. Every peer
    publishes the state it adopted, so the records settle it. ``offers`` are (signer, state hash)
    pairs, this peer's own included; ``electorate`` the public keys expected to publish (the live
    peers of the region and the round's voters); ``reputation`` the weights of the base both sides
    held before the round (so that two diverged peers weigh alike).

    Decision (pure and deterministic): the weighted majority hash of the records from the
    electorate (:func:`majority_state_hash`) is *settled* when every member of the electorate has
    published, or when its weight is more than half of the whole electorate's weight (records
    still missing cannot overturn it). A settled majority equal to ``mine``: keep; a settled
    majority held by others and not by this peer: re-sync to it; anything else: wait (the caller
    retries until its deadline and then keeps its state; the next round's vote heals the rest).
    A 1-vs-1 split of equal weight is settled once both records are in: ties go to the larger
    holder count, then the smaller hash, on both sides alike.
    """
    members = set(electorate) | {me}
    seen = [(s, h) for s, h in offers if s in members and s != me] + [(me, mine)]
    reputation = _effective(state_weights(reputation), sorted(members), epsilon)
    maj = majority_state_hash(seen, reputation, epsilon=epsilon)
    if maj is None or maj.weight <= 0:
        return Confirmation("wait")
    published = {s for s, _ in seen}
    total = math.fsum(_weight(k, reputation, epsilon) for k in sorted(members))
    settled = published >= members or maj.weight * 2 > total
    if not settled:
        return Confirmation("wait")
    if maj.state_hash == mine:
        return Confirmation("keep")
    return Confirmation("resync", maj.state_hash) if me in maj.dissenters else Confirmation("wait")
