"""Cross-region merges: every K rounds, regions exchange one compressed region delta each.

Inside a region every peer holds the same canonical state (I1), so every peer of region g
computes the same region delta ``D_g = anchor − θ_g`` (``anchor``: the parameters of the last
merge, common to all regions) and, the codec being deterministic, the same bytes and digest. Each
peer announces it in a run-wide ``xdelta`` record with the samples its region trained on since
the anchor. Then one *gateway* per region (chosen by hash among the region's announcers, so no
election round trip is needed) fetches the other regions' deltas over cross-region links; the
rest of the region fetches them from the gateway over intra-region links. Cross-region bytes
therefore grow with the number of regions, not of peers.

The merged parameters are ``anchor − Σ_g w_g D_g / Σ_g w_g`` with ``w_g`` = samples, computed
with the deterministic :func:`~dai_swarm.optim.aggregate.weighted_mean` (sorted by digest). Each
region keeps its own outer momentum. A peer that misses a delta computes another state, which the
next round's vote exposes, and re-syncs (I1).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from typing import Any

import torch

from dai_swarm.errors import PayloadTooLarge, PeerUnreachable, ProtocolError, SwarmError
from dai_swarm.logging import get_logger

from . import codecs
from .aggregate import weighted_mean
from .exchange import fetch_from_any, fetch_when_ready
from .states import BaseState
from dai_swarm.canonical import state_hash

__all__ = ["CrossRegionMerger", "merge_region_deltas", "merged_base", "region_delta"]

logger = get_logger(__name__)
events = get_logger("dai_swarm.events")

MERGE_AT = 0.10   # fraction of T after round q's tally when the xdelta records are read
MERGE_END = 0.30  # fraction of T after the tally by which the merge must be done


def region_delta(state: BaseState) -> dict[str, torch.Tensor]:
    """``D_g = anchor − θ_g``: what region g moved since the last merge (pure; simulator too)."""
    return {n: torch.sub(state.anchor[n], state.params[n]) for n in state.params}


def merge_region_deltas(anchor, updates) -> dict[str, torch.Tensor] | None:
    """``anchor − Σ w_g D_g / Σ w_g`` over ``(digest, samples, D_g)`` items, or None if no weight.

    Pure and deterministic (:func:`weighted_mean` sorts by digest); the simulator calls it too.
    """
    if not updates or all(w == 0 for _, w, _ in updates):
        return None
    mean = weighted_mean(updates)
    return {n: torch.sub(anchor[n], mean[n]) for n in anchor}


def merged_base(state: BaseState, params) -> BaseState:
    """The merged base: ``params`` become the new anchor; momentum kept; sample count reset."""
    extra = dict(state.extra)
    extra["epoch_samples"] = 0
    extra["merges"] = int(extra.get("merges", 0)) + 1
    return BaseState.make(state.round, params, state.momentum, extra, anchor=params)


class CrossRegionMerger:
    """Performs the merge for a :class:`~dai_swarm.optim.coordinator.Coordinator`."""

    def __init__(self, coordinator: Any):
        self.c = coordinator
        self.merges = 0

    def is_sync_round(self, base_round: int) -> bool:
        """True if the base of ``base_round`` is a cross-region merge point."""
        k = int(self.c.ctx.cross_region_period)
        return k > 0 and base_round >= 2 and base_round % k == 0

    def merge(self, q: int, state: BaseState) -> BaseState | None:
        """Merge this region's agreed base of round ``q+2`` with the other regions' deltas.

        Returns None when this region's anchor is not the one most regions share (it missed an
        earlier merge): the coordinator then adopts another region's merged state instead.
        """
        ctx, r = self.c.ctx, q + 2
        delta = region_delta(state)
        blob = codecs.encode(delta, ctx.codec, **ctx.codec_params)
        digest = ctx.store.put(blob, r)
        samples = int(state.extra.get("epoch_samples", 0))
        anchor = f"{int(state.extra.get('merges', 0)):08d}:{state_hash(state.anchor)}"
        ctx.dht.publish_round_record(ctx.run_id, "xdelta", r, {
            "region": ctx.region, "digest": digest, "size": len(blob), "samples": samples, "p2p_id": ctx.p2p_id,
            "anchor": anchor}, ttl_s=max(60.0, 20 * ctx.clock.round_s))
        wait = ctx.clock.tally_time(q) + MERGE_AT * ctx.clock.round_s - time.time()
        if wait > 0:
            time.sleep(wait)
        chosen, providers, gateway, anchors = self._read(r, digest, samples, anchor)
        majority = self._majority_anchor(anchors, anchor)
        if majority != anchor:
            # our region missed an earlier merge: deltas against different anchors cannot be mixed.
            # Adopt the merged state of the (alphabetically first) region on the majority's anchor.
            source = min(reg for reg, a in anchors.items() if a == majority)
            self.c.foreign_source[r] = source
            logger.warning("merge %d: region %s is off the global chain; adopting region %s's state",
                           r, ctx.region, source)
            return None
        chosen = {reg: v for reg, v in chosen.items() if anchors.get(reg, anchor) == anchor}
        if len(chosen) <= 1:
            return self._finish(state, state.params)  # alone: the region's state is the merge
        deadline = ctx.clock.tally_time(q) + MERGE_END * ctx.clock.round_s
        decoded = self._fetch(r, chosen, providers, gateway, deadline)
        decoded[digest] = codecs.decode(blob, max_bytes=ctx.max_decoded_bytes)
        expect = {n: tuple(t.shape) for n, t in state.params.items()}
        updates = []
        for region, (d, _size, w) in sorted(chosen.items()):
            tensors = decoded.get(d)
            if tensors is None or {n: tuple(t.shape) for n, t in tensors.items()} != expect:
                logger.info("merge %d: no usable delta from region %s", r, region)
                continue
            updates.append((d, float(w), tensors))
        merged = merge_region_deltas(state.anchor, updates)
        if merged is None:
            return self._finish(state, state.params)
        self.merges += 1
        events.info("cross-region merge at round %d: %d regions", r, len(updates),
                    extra={"event": "merge", "round": r, "regions": len(updates)})
        return self._finish(state, merged)

    def _finish(self, state: BaseState, params: dict) -> BaseState:
        return merged_base(state, params)

    @staticmethod
    def _majority_anchor(anchors: dict, mine: str) -> str:
        """The anchor every region should share: most merges behind it, then held by most regions,
        then the smaller hash. The same answer in every region, so regions off the chain rejoin it."""
        counts = Counter(anchors.values())
        counts[mine] += 0
        return max(counts, key=lambda a: (int(a.split(":")[0]), counts[a], [-ord(ch) for ch in a]))

    def _read(self, r: int, my_digest: str, my_samples: int, my_anchor: str):
        """Per region: the (digest, size, samples) most of its members announced; providers."""
        ctx = self.c.ctx
        votes: dict[str, Counter] = {}
        anchor_votes: dict[str, Counter] = {}
        providers: dict[str, list[tuple[str, str]]] = {}
        my_region_ids: list[str] = []
        for rec in ctx.dht.get_round_records(ctx.run_id, "xdelta", r):
            b = rec.body
            try:
                key = (str(b["digest"]), int(b["size"]), int(b["samples"]))
                region, pid, anchor = str(b["region"]), str(b["p2p_id"]), str(b["anchor"])
            except (KeyError, TypeError, ValueError):
                continue
            if len(key[0]) != 64 or key[1] <= 0 or key[1] > ctx.max_payload_bytes or key[2] < 0:
                continue
            votes.setdefault(region, Counter())[key] += 1
            anchor_votes.setdefault(region, Counter())[anchor] += 1
            providers.setdefault(key[0], []).append((pid, region))
            if region == ctx.region:
                my_region_ids.append(pid)
        votes.setdefault(ctx.region, Counter())[(my_digest, 0, my_samples)] += 0
        chosen = {}
        for region, counter in votes.items():
            if region == ctx.region:
                # our own delta is ours: we use the bytes we computed (majority re-sync fixes divergence)
                sizes = [k for k in counter if k[0] == my_digest]
                chosen[region] = (my_digest, max(k[1] for k in sizes), my_samples)
                continue
            best = max(counter.items(), key=lambda kv: (kv[1], [-ord(ch) for ch in kv[0][0]]))[0]
            chosen[region] = best
        ids = sorted(set(my_region_ids) | {ctx.p2p_id})
        gateway = min(ids, key=lambda p: hashlib.sha256(f"{p}|{r}".encode()).digest())
        anchors = {reg: max(c, key=lambda a: (c[a], [-ord(ch) for ch in a])) for reg, c in anchor_votes.items()}
        anchors[ctx.region] = my_anchor
        return chosen, providers, gateway, anchors

    def _fetch(self, r: int, chosen: dict, providers: dict, gateway: str, deadline: float) -> dict:
        from hivemind.p2p import PeerID

        ctx = self.c.ctx
        out: dict[str, dict] = {}

        async def one(digest: str) -> None:
            local = held = ctx.store.get(digest)
            try:
                if local is None and gateway != ctx.p2p_id:  # the gateway may still be fetching it:
                    try:  # ask it again briefly (the asker polls; servers never hold a request)
                        local = await fetch_when_ready(
                            ctx.p2p, PeerID.from_base58(gateway), ctx.run_id, digest, max_bytes=ctx.max_payload_bytes,
                            wait_s=min(2.0, 0.15 * ctx.clock.round_s, max(0.0, deadline - time.time() - 0.5)),
                            timeout_s=max(0.3, deadline - time.time()), traffic=ctx.traffic)
                    except (PeerUnreachable, ProtocolError, PayloadTooLarge) as e:
                        logger.info("merge %d: gateway did not serve %s: %s", r, digest[:12], e)
                if local is None:
                    remote = [(PeerID.from_base58(pid), "cross" if reg != ctx.region else "intra")
                              for pid, reg in providers.get(digest, []) if pid not in (ctx.p2p_id, gateway)]
                    local = await fetch_from_any(ctx.p2p, remote, ctx.run_id, digest, max_bytes=ctx.max_payload_bytes,
                                                 timeout_s=max(0.3, deadline - time.time()), traffic=ctx.traffic)
                if held is None:
                    ctx.store.put(local, r, digest)
                out[digest] = codecs.decode(local, max_bytes=ctx.max_decoded_bytes)
            except (SwarmError, ValueError) as e:
                logger.info("merge %d: region delta %s unavailable: %s", r, digest[:12], e)

        wanted = [d for region, (d, _, _) in chosen.items() if region != ctx.region]

        async def go() -> None:
            await asyncio.gather(*(one(d) for d in wanted))

        try:
            ctx.netloop.run(go(), timeout_s=max(0.5, deadline - time.time()) + 2)
        except Exception as e:
            logger.info("merge %d: fetching region deltas timed out: %s", r, e)
        return out
