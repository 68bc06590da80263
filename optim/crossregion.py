"""Cross-region merges: every K rounds, regions exchange one compressed region delta each.

Inside a region every peer holds the same canonical state (I1), so every peer of region g
computes the same region delta ``D_g = anchor − θ_g`` (``anchor``: the parameters of the last
merge, common to all regions) and, the codec being deterministic, the same bytes and digest. Each
peer announces it in a run-wide ``xdelta`` record with the samples its region trained on since
the anchor. Then one *gateway* per region (chosen by hash among the region's announcers, so no
election round trip is needed) fetches the other regions' deltas over cross-region links; the
rest of the region fetches them from the gateway over intra-region links. Cross-region bytes
therefore grow with the number of regions, not of peers.

The merged parameters are ``anchor − Σ_g w_g D_g / Σ_g w_g``, computed with the deterministic
:func:`~dai_swarm.optim.aggregate.weighted_mean` (sorted by digest). Each region keeps its own
outer momentum. A peer that misses a delta computes another state, which the next round's vote
exposes, and re-syncs (I1).

Which region deltas count is decided by :func:`~.region_admission.admit_region_deltas` (pure):
signers with a live peer record in the region and standing, a strict majority of the region's
publishers, read again until 0.18 T after the tally while live members have not published; this
peer's own region's delta is the one it computed, never a record. A region's weight is its claimed
samples bounded by :func:`~.region_admission.weight_cap`: a plausibility cap, not verification.
No second admitted region: no merge (logged). Refusals are counted (``xdelta_*`` counters).

In runs whose rounds adapt, the record also carries the region's round schedule and the length it
asked for since the last merge; every merged region then takes the same clock from round ``r + 1``
(:meth:`~.schedule.ScheduleRule.at_merge`), so the regions' merge windows keep meeting.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import Counter
from typing import Any, Iterable

import torch

from dai_swarm.errors import PayloadTooLarge, PeerUnreachable, ProtocolError, SwarmError
from dai_swarm.logging import get_logger

from . import codecs
from .aggregate import weighted_mean
from .exchange import fetch_from_any, fetch_when_ready, round_record_ttl
from .machine import is_sync_round
from .region_admission import Admission, RegionDelta, admit_region_deltas, anchor_merges, weight_cap
from .schedule import XREGIONS
from .states import BaseState
from .votes import standing_keys
from dai_swarm.canonical import state_hash

__all__ = ["Admission", "CrossRegionMerger", "RegionDelta", "admit_region_deltas", "anchor_merges", "gateway_of",
           "merge_region_deltas", "merged_base", "region_delta", "weight_cap"]

logger = get_logger(__name__)
events = get_logger("dai_swarm.events")

MERGE_AT = 0.10   # fraction of T after round q's tally when the xdelta records are read
MERGE_READ_END = 0.18  # ... re-read until then while a region's majority has not published yet
MERGE_END = 0.30  # fraction of T after the tally by which the merge must be done


def region_delta(state: BaseState) -> dict[str, torch.Tensor]:
    """``D_g = anchor − θ_g``: what region g moved since the last merge (pure; simulator too)."""
    return {n: torch.sub(state.anchor[n], state.params[n]) for n in state.params}


def merge_region_deltas(anchor, updates) -> dict[str, torch.Tensor] | None:
    """``anchor − Σ w_g D_g / Σ w_g`` over ``(digest, samples, D_g)`` items, or None if no weight.

    Pure and deterministic (:func:`weighted_mean` sorts by digest); the simulator calls it too.
    A negative or non-finite weight is a ValueError: weights come from :func:`admit_region_deltas`.
    """
    if any(not math.isfinite(w) or w < 0 for _, w, _ in updates or ()):
        raise ValueError("region weights must be finite and non-negative")
    if not updates or all(w == 0 for _, w, _ in updates):
        return None
    mean = weighted_mean(updates)
    return {n: torch.sub(anchor[n], mean[n]) for n in anchor}


def merged_base(state: BaseState, params, regions: int = 1) -> BaseState:
    """The merged base: ``params`` become the new anchor; momentum kept; sample count reset;
    ``regions`` (how many the merge combined) recorded, which pins adaptive rounds to merges."""
    extra = dict(state.extra)
    extra["epoch_samples"] = 0
    extra["merges"] = int(extra.get("merges", 0)) + 1
    extra[XREGIONS] = int(regions)
    return BaseState.make(state.round, params, state.momentum, extra, anchor=params)


def gateway_of(keys: Iterable[str], merge_round: int) -> str:
    """The region member (public key) that fetches the other regions' deltas at ``merge_round``:
    the smallest SHA-256 of ``key|round`` (no election round trip; it rotates with the round).
    The real merger and the simulator both call this."""
    return min(sorted(keys), key=lambda k: hashlib.sha256(f"{k}|{merge_round}".encode()).digest())


class CrossRegionMerger:
    """Performs the merge for a :class:`~dai_swarm.optim.coordinator.Coordinator`."""

    def __init__(self, coordinator: Any):
        self.c = coordinator
        self.merges = 0

    def merge(self, q: int, state: BaseState) -> BaseState | None:
        """Merge this region's agreed base of round ``q+2`` with the other regions' deltas.

        Returns None when this region's anchor is not the one most regions share (it missed an
        earlier merge): the coordinator then adopts another region's merged state instead.
        """
        ctx, cfg, r = self.c.ctx, self.c.cfg, q + 2
        delta = region_delta(state)
        blob = codecs.encode(delta, cfg.codec, **cfg.codec_params)
        digest = ctx.store.put(blob, r)
        samples = int(state.extra.get("epoch_samples", 0))
        anchor = f"{int(state.extra.get('merges', 0)):08d}:{state_hash(state.anchor)}"
        body = {"region": cfg.region, "digest": digest, "size": len(blob), "samples": samples, "p2p_id": ctx.p2p_id,
                "anchor": anchor}
        rule = getattr(ctx, "schedule_rule", None)  # adaptive rounds: the region's schedule travels along
        sched = rule.published(state.extra) if rule is not None else None
        if sched is not None:
            body["schedule"] = sched
        ctx.dht.publish_round_record(cfg.run_id, "xdelta", r, body, ttl_s=round_record_ttl(ctx.clock.round_s))
        wait = ctx.clock.tally_time(q) + MERGE_AT * ctx.clock.round_s - time.time()
        if wait > 0:
            time.sleep(wait)
        adm, members, standing = self._admit(q, r, state)
        anchors = {g: d.anchor for g, d in adm.regions.items()}
        anchors[cfg.region] = anchor
        majority = self._majority_anchor(anchors, anchor)
        if majority != anchor:
            # our region missed an earlier merge: deltas against different anchors cannot be mixed.
            # Adopt the merged state of the (alphabetically first) admitted region on the majority's anchor.
            source = min(reg for reg, a in anchors.items() if a == majority)
            self.c.foreign_source[r] = source
            logger.warning("merge %d: region %s is off the global chain; adopting region %s's state",
                           r, cfg.region, source)
            return None
        chosen = {g: d for g, d in adm.regions.items() if d.anchor == anchor}
        ranked = {g for k, (g, _) in members.items() if standing is None or k in standing}  # regions that count
        if not chosen:
            silent = sorted({g for g, _ in members.values() if g != cfg.region})
            if silent:
                logger.warning("merge %d: no delta admitted from region(s) %s: this region goes on alone", r,
                               ", ".join(silent))
            return self._reschedule(merged_base(state, state.params), r, [], not set(silent) & ranked)
        deadline = ctx.clock.tally_time(q) + MERGE_END * ctx.clock.round_s
        providers = {d.digest: [(pid, g) for pid in d.providers] for g, d in chosen.items()}
        published = set(adm.mates)
        by_key = {k: p2p for k, (g, p2p) in members.items() if g == cfg.region and p2p in published}
        by_key[ctx.identity.public_key_hex] = ctx.p2p_id
        gateway = by_key[gateway_of(by_key, r)]
        decoded = self._fetch(r, {g: (d.digest, d.size, d.weight) for g, d in chosen.items()}, providers,
                              gateway, deadline)
        expect = {n: tuple(t.shape) for n, t in state.params.items()}
        # our own region: the delta we computed, weighted like the other regions weigh it (its backers)
        own_key = (digest, len(blob), samples, anchor, tuple(sched.values()) if sched is not None else None)
        backers = adm.backers.get((cfg.region, own_key), set())
        mine = len(backers | {ctx.identity.public_key_hex})
        own_w = float(min(samples, weight_cap(mine, cfg.max_inner_steps, cfg.batch_size, cfg.cross_region_period)))
        weights: dict[str, list] = {digest: [own_w, codecs.decode(blob, max_bytes=cfg.max_decoded_bytes)]}
        used, scheds = 0, []
        for region, d in sorted(chosen.items()):
            tensors = decoded.get(d.digest) if d.digest != digest else weights[digest][1]
            if tensors is None or {n: tuple(t.shape) for n, t in tensors.items()} != expect:
                logger.info("merge %d: no usable delta from region %s", r, region)
                continue
            weights.setdefault(d.digest, [0.0, tensors])[0] += d.weight  # equal bytes: one delta, summed weight
            used += 1
            scheds.append(d.schedule)
        updates = [(d, w, t) for d, (w, t) in weights.items()]
        merged = merge_region_deltas(state.anchor, updates) if used else None  # (c) a second region or no merge
        if merged is None:
            return self._reschedule(merged_base(state, state.params), r, [], False)
        self.merges += 1
        events.info("cross-region merge at round %d: %d regions", r, used + 1,
                    extra={"event": "merge", "round": r, "regions": used + 1})
        return self._reschedule(merged_base(state, merged, used + 1), r, scheds, False, cfg.region not in ranked)

    def _reschedule(self, state: BaseState, r: int, others: list, alone: bool, follow: bool = False) -> BaseState:
        """``state`` with the round schedule the merged regions share from round ``r + 1`` (adaptive
        rounds only; :meth:`~.schedule.ScheduleRule.at_merge`)."""
        rule = getattr(self.c.ctx, "schedule_rule", None)
        if rule is None:
            return state
        extra = rule.at_merge(state.extra, r, others, alone=alone, follow=follow)
        return state if extra == state.extra else BaseState.make(state.round, state.params, state.momentum, extra,
                                                                 state.anchor)

    @staticmethod
    def _majority_anchor(anchors: dict, mine: str) -> str:
        """The anchor every region should share: most merges behind it, then held by most regions,
        then the smaller hash. The same answer in every region, so regions off the chain rejoin it."""
        counts = Counter(anchors.values())
        counts[mine] += 0
        return max(counts, key=lambda a: (int(a.split(":")[0]), counts[a], [-ord(ch) for ch in a]))

    def _members(self) -> dict[str, tuple[str, str]]:
        """Public key → (region, libp2p id) of the run's live, signed peer records (us included)."""
        ctx, cfg = self.c.ctx, self.c.cfg
        out: dict[str, tuple[str, str]] = {}
        try:
            for s in ctx.dht.peer_records(cfg.run_id):
                out[s.signer] = (s.record.region, s.record.peer_id)
        except Exception as e:  # no membership view: no other region is admitted, we merge alone
            logger.info("peer records unavailable for the merge: %s", e)
        out[ctx.identity.public_key_hex] = (cfg.region, ctx.p2p_id)
        return out

    def _admit(self, q: int, r: int, state: BaseState) -> tuple[Admission, dict, Any]:
        """Read round ``r``'s xdelta records and admit regions (:func:`admit_region_deltas`), reading
        again until ``MERGE_READ_END`` while some live member of a region has not published yet.
        Returns the admission, the live members and the standing keys it used."""
        ctx, cfg = self.c.ctx, self.c.cfg
        read_end = ctx.clock.tally_time(q) + MERGE_READ_END * ctx.clock.round_s
        per_member = weight_cap(1, cfg.max_inner_steps, cfg.batch_size, cfg.cross_region_period)
        # merges an anchor can be behind
        max_merges = sum(1 for b in range(2, r) if is_sync_round(b, int(cfg.cross_region_period)))
        standing = standing_keys(ctx.verifier.vote_weights(state.extra))
        while True:
            members = self._members()
            records = [(rec.signer, rec.body) for rec in ctx.dht.get_round_records(cfg.run_id, "xdelta", r)]
            final = time.time() >= read_end
            adm = admit_region_deltas(records, members, cfg.region, max_payload_bytes=cfg.max_payload_bytes,
                                      per_member_cap=per_member, max_merges=max_merges, final=final,
                                      standing=standing)
            if not adm.short or final:
                break
            time.sleep(min(0.5, 0.05 * ctx.clock.round_s))
        if adm.refused:
            for reason, n in adm.refused.items():
                ctx.counters[reason] = ctx.counters.get(reason, 0) + n
            logger.info("merge %d: region deltas refused or capped: %s (admitted: %s)", r, dict(adm.refused),
                        ", ".join(f"{g} {d.votes}/{d.members} w={d.weight:.0f}" for g, d in sorted(adm.regions.items()))
                        or "none")
        return adm, members, standing

    def _fetch(self, r: int, chosen: dict, providers: dict, gateway: str, deadline: float) -> dict:
        from hivemind.p2p import PeerID

        ctx, cfg = self.c.ctx, self.c.cfg
        out: dict[str, dict] = {}

        async def one(digest: str) -> None:
            local = held = ctx.store.get(digest)
            try:
                if local is None and gateway != ctx.p2p_id:  # the gateway may still be fetching it:
                    try:  # ask it again briefly (the asker polls; servers never hold a request)
                        local = await fetch_when_ready(
                            ctx.p2p, PeerID.from_base58(gateway), cfg.run_id, digest, max_bytes=cfg.max_payload_bytes,
                            wait_s=min(2.0, 0.15 * ctx.clock.round_s, max(0.0, deadline - time.time() - 0.5)),
                            timeout_s=max(0.3, deadline - time.time()), traffic=ctx.traffic)
                    except (PeerUnreachable, ProtocolError, PayloadTooLarge) as e:
                        logger.info("merge %d: gateway did not serve %s: %s", r, digest[:12], e)
                if local is None:
                    remote = [(PeerID.from_base58(pid), "cross" if reg != cfg.region else "intra")
                              for pid, reg in providers.get(digest, []) if pid not in (ctx.p2p_id, gateway)]
                    local = await fetch_from_any(ctx.p2p, remote, cfg.run_id, digest, max_bytes=cfg.max_payload_bytes,
                                                 timeout_s=max(0.3, deadline - time.time()), traffic=ctx.traffic)
                if held is None:
                    ctx.store.put(local, r, digest)
                out[digest] = codecs.decode(local, max_bytes=cfg.max_decoded_bytes)
            except (SwarmError, ValueError) as e:
                logger.info("merge %d: region delta %s unavailable: %s", r, digest[:12], e)

        wanted = [d for region, (d, _, _) in chosen.items() if region != cfg.region]

        async def go() -> None:
            await asyncio.gather(*(one(d) for d in wanted))

        try:
            ctx.netloop.run(go(), timeout_s=max(0.5, deadline - time.time()) + 2)
        except Exception as e:
            logger.info("merge %d: fetching region deltas timed out: %s", r, e)
        return out
