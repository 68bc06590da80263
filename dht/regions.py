"""Regions: ``--region NAME`` or ``auto`` (join the closest region by measured RTT, else found one).

``auto`` lists the run's live peers, pings a deterministic sample of each region's members over
hivemind P2P (the ``dai_swarm.ping`` echo), and joins the region with the lowest median RTT if that
median is below ``threshold_s``; otherwise it founds a new region whose name is derived from the
run id and the peer's public key (so a restart founds the same one). The decision rule itself,
:func:`pick_region`, is pure and tested without a network.
"""

from __future__ import annotations

import hashlib
import statistics
from dataclasses import dataclass, field
from typing import Callable, Mapping

from ..logging import get_logger
from .records import validate_name

__all__ = ["AUTO", "RegionChoice", "choose_region", "founded_region_name", "pick_region"]

logger = get_logger(__name__)
AUTO = "auto"


@dataclass(frozen=True)
class RegionChoice:
    """The outcome of region selection: name, whether we founded it, and the RTTs that decided it."""

    region: str
    founded: bool
    median_rtt_s: float | None = None
    rtts_s: dict[str, dict[str, float | None]] = field(default_factory=dict)


def founded_region_name(run_id: str, public_key_hex: str) -> str:
    """Deterministic name of the region a peer founds: ``r-`` + 8 hex of sha256(run id, key)."""
    return "r-" + hashlib.sha256(f"{run_id}\x00{public_key_hex}".encode()).hexdigest()[:8]


def pick_region(
    rtts_by_region: Mapping[str, Mapping[str, float | None]], threshold_s: float
) -> tuple[str | None, float | None]:
    """Closest region whose median RTT (over peers that answered) is below ``threshold_s``.

    Returns ``(region, median)`` or ``(None, None)``; ties go to the smaller region name.
    """
    best: tuple[float, str] | None = None
    for region, rtts in rtts_by_region.items():
        answered = [r for r in rtts.values() if r is not None]
        if not answered:
            continue
        median = statistics.median(answered)
        if median < threshold_s and (best is None or (median, region) < best):
            best = (median, region)
    return (best[1], best[0]) if best else (None, None)


def _sample(peer_ids: list[str], salt: str, k: int) -> list[str]:
    return sorted(peer_ids, key=lambda p: hashlib.sha256(f"{salt}\x00{p}".encode()).digest())[:k]


def choose_region(
    dht,
    run_id: str,
    requested: str = AUTO,
    *,
    threshold_s: float = 0.05,
    sample: int = 3,
    ping_timeout_s: float = 2.0,
    ping: Callable[[str], float | None] | None = None,
) -> RegionChoice:
    """Resolve ``--region``: a name is used as is; ``auto`` measures RTTs (see module docstring).

    ``dht`` is a :class:`~dai_swarm.dht.node.SwarmDHT`; ``ping`` overrides RTT measurement (tests).
    """
    if requested != AUTO:
        return RegionChoice(validate_name(requested, "region"), founded=False)
    me = dht.identity.public_key_hex
    ping = ping or (lambda peer_id: dht.ping(peer_id, timeout_s=ping_timeout_s))
    members: dict[str, list[str]] = {}
    for peer in dht.list_peers(run_id):
        if peer.public_key != me and peer.peer_id != dht.peer_id:
            members.setdefault(peer.region, []).append(peer.peer_id)
    rtts = {
        region: {p: ping(p) for p in _sample(peers, me, sample)} for region, peers in sorted(members.items())
    }
    region, median = pick_region(rtts, threshold_s)
    if region is not None:
        logger.info("joining region %s (median RTT %.2f ms)", region, median * 1e3)
        return RegionChoice(region, founded=False, median_rtt_s=median, rtts_s=rtts)
    name = founded_region_name(run_id, me)
    logger.info("no region within %.0f ms among %d; founding %s", threshold_s * 1e3, len(rtts), name)
    return RegionChoice(name, founded=True, rtts_s=rtts)
