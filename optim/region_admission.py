"""Which other regions' deltas count in a cross-region merge: pure admission of ``xdelta`` records.

A record counts only if its signer has a live, signed peer record in the region the record names
and holds standing in this region's replicated state (a founder, or a key with verified work; SPEC
I7); a region counts only if a strict majority of its members that published agree on the same
record (digest, size, samples, anchor and the region's round schedule), so one key cannot speak
for a region of many. A region's weight is its claimed samples bounded by :func:`weight_cap`. The
merger (:mod:`.crossregion`) reads the records and calls :func:`admit_region_deltas`; why a region
of fresh keys changes nothing: docs/design.md, "Cross-region trust".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Collection, Iterable, Mapping

from dai_swarm.dht.wire import parse_wire
from dai_swarm.errors import MalformedRecord

__all__ = ["Admission", "RegionDelta", "XKey", "admit_region_deltas", "anchor_merges", "weight_cap"]

#: What a region's members must agree on: (digest, size, samples, anchor, schedule); ``schedule`` is
#: ``(since, start, round_s, want)`` of the region's round schedule, or None (fixed rounds).
XKey = tuple


def weight_cap(members: int, max_inner_steps: int, batch_size: int, cross_region_period: int) -> int:
    """Most samples ``members`` live peers can have trained since the anchor (all from the manifest
    and the task): each includes at most one update of ≤ ``max_inner_steps × batch_size`` samples
    per round, over the ``K`` rounds of a merge period plus one late update carried over (stale
    rule). A plausibility cap on a claim, not a verification of it."""
    return max(0, int(members)) * int(max_inner_steps) * int(batch_size) * (int(cross_region_period) + 1)


@dataclass(frozen=True)
class RegionDelta:
    """Another region's delta as admitted for a merge: what its majority published, and its weight."""

    region: str
    digest: str
    size: int
    claimed: int
    weight: float
    anchor: str
    members: int
    votes: int
    providers: tuple[str, ...]
    schedule: tuple[int, float, float, float] | None = None  # (since, start, round_s, want); None: fixed


@dataclass
class Admission:
    """The outcome of :func:`admit_region_deltas`.

    ``regions``: admitted other regions; ``mates``: libp2p ids of this region's members that
    published (gateway candidates); ``refused``: counts by reason; ``short``: regions whose members
    published but with no majority yet (worth reading again); ``backers``: per (region, record
    key), the signers with a live peer record in that region that published it (standing or not).
    """

    regions: dict[str, RegionDelta] = field(default_factory=dict)
    mates: list[str] = field(default_factory=list)
    refused: Counter = field(default_factory=Counter)
    short: set[str] = field(default_factory=set)
    backers: dict[tuple[str, tuple], set[str]] = field(default_factory=dict)


def anchor_merges(anchor: str) -> int:
    """The merge count in an anchor tag ``"%08d:<state hash>"``; ValueError if malformed."""
    count, sep, digest = anchor.partition(":")
    if not sep or len(count) != 8 or not count.isdigit() or len(digest) != 64:
        raise ValueError(f"malformed anchor tag {anchor[:80]!r}")
    return int(count)


def _parse_xdelta(body: Mapping, max_payload_bytes: int) -> tuple[str, XKey] | None:
    """(region, :data:`XKey`) of an xdelta body (schema: :class:`~dai_swarm.dht.wire.XDeltaBody`),
    or None if malformed or over the run's payload cap."""
    try:
        w = parse_wire("xdelta", body)
    except MalformedRecord:
        return None
    if w.size > max_payload_bytes:
        return None
    x = w.schedule
    sched = (x.since, x.start, x.round_s, x.want) if x is not None else None
    return w.region, (w.digest, w.size, w.samples, w.anchor, sched)


def admit_region_deltas(records: Iterable[tuple[str, Mapping]], members: Mapping[str, tuple[str, str]],
                        my_region: str, *, max_payload_bytes: int, per_member_cap: int,
                        max_merges: int | None = None, final: bool = True,
                        standing: Collection[str] | None = None) -> Admission:
    """Which other regions' deltas count in a merge (pure; see the module docstring).

    ``records``: ``(signer public key, xdelta body)``; ``members``: public key → (region, libp2p
    id) from the run's live, signed peer records; ``per_member_cap``: :func:`weight_cap` of one
    backer (the cap of a region is its backers times it). Refusal reasons: ``xdelta_malformed``,
    ``xdelta_not_member`` (no live peer record), ``xdelta_wrong_region`` (its peer record names another region), ``xdelta_no_majority`` (per
    region), ``xdelta_capped`` (per region whose claim exceeds its cap), ``xdelta_future_anchor``
    (its anchor claims more merges than ``max_merges``, the merge points so far),
    ``xdelta_no_standing`` (its signer holds no standing).

    ``standing``: the keys this peer's replicated state grants standing (founders and keys with
    verified work, :func:`~dai_swarm.verification.reputation.standing_of`); None in a swarm that
    trusts its members (no verification). With it, only records of standing signers count: a
    region none of whose members holds standing (a region of fresh keys, whatever their number
    and their claimed samples) is never admitted, and its fresh keys cannot outvote the standing
    members of a real region.

    A region counts when a strict majority of *its members that published* this merge agree. With
    ``final=False`` a region some (or all) of whose live members have not published yet is withheld
    (listed in ``short``) so the caller reads again; the final read decides with whoever published.
    (A strict majority of all live members refused an honest region whenever a member had just died:
    its peer record stays live until its TTL, 30 s, and it never publishes again.)
    """
    out = Admission()
    size = Counter(region for key, (region, _) in members.items() if standing is None or key in standing)
    votes: dict[str, Counter] = {}
    publishers: dict[tuple[str, tuple], list[str]] = {}
    seen: set[str] = set()
    for signer, body in records:
        if signer in seen:
            continue  # one record per signer (the DHT keeps one per subkey anyway)
        seen.add(signer)
        parsed = _parse_xdelta(body, max_payload_bytes)
        if parsed is None:
            out.refused["xdelta_malformed"] += 1
            continue
        region, key = parsed
        if max_merges is not None and anchor_merges(key[3]) > max_merges:
            out.refused["xdelta_future_anchor"] += 1
            continue
        if signer not in members:
            out.refused["xdelta_not_member"] += 1
            continue
        member_region, p2p_id = members[signer]
        if member_region != region:
            out.refused["xdelta_wrong_region"] += 1
            continue
        out.backers.setdefault((region, key), set()).add(signer)
        if standing is not None and signer not in standing:
            if region != my_region:  # a mate without standing is no refusal (it is never counted)
                out.refused["xdelta_no_standing"] += 1
            continue
        if region == my_region:
            out.mates.append(p2p_id)  # our own delta is ours; mates only serve as gateway candidates
            continue
        votes.setdefault(region, Counter())[key] += 1
        publishers.setdefault((region, key), []).append(p2p_id)
    if not final:  # no member of a region published yet (a late tally under load): read again too
        out.short.update(g for g in size if g != my_region and g not in votes)
    for region, counter in sorted(votes.items()):
        key, n = max(counter.items(), key=lambda kv: (kv[1], [-ord(ch) for ch in kv[0][0]], repr(kv[0])))
        published = sum(counter.values())
        if published < size[region] and not final:
            out.short.add(region)  # live members still to publish: read again before deciding
            continue
        if 2 * n <= published:
            out.refused["xdelta_no_majority"] += 1
            continue
        digest, nbytes, claimed, anchor, sched = key
        cap = len(out.backers[(region, key)]) * int(per_member_cap)
        if claimed > cap:
            out.refused["xdelta_capped"] += 1
        out.regions[region] = RegionDelta(region, digest, nbytes, claimed, float(min(claimed, cap)), anchor,
                                          size[region], n, tuple(sorted(publishers[(region, key)])), sched)
    out.mates.sort()
    return out


