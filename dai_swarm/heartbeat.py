"""A peer's presence in the DHT: the heartbeat that re-publishes its signed peer record (with live
metrics) and the refresh of who else is live, which decides whose announcements count (only keys
with a live, signed peer record in the region may announce) and where payloads are fetched from.
"""

from __future__ import annotations

import time
from typing import Any

from ._version import __version__
from .dht.records import PeerRecord
from .logging import get_logger

__all__ = ["heartbeat_loop", "heartbeat_period", "refresh_peers"]

logger = get_logger("dai_swarm.runtime")


#: what a peer record carries of the peer's live figures: what joiners (the round schedule) and
#: ``dai-swarm status`` read. Every peer reads every record each heartbeat from several DHT nodes,
#: so its size is paid about n² times per period; the full figures stay on the peer's own status
#: endpoint (--metrics-port). Measured (benchmarks/bytes.py): the full metrics made 1.2 KB records.
RECORD_METRICS = ("round", "round_closed", "samples", "val_loss", "state_hash", "schedule", "round_s", "resyncs")


def refresh_peers(rt: Any) -> None:
    """Re-read the run's verified peer records into ``rt.region_of`` and ``rt.peer_keys`` (a key
    stays known for two rounds after its record was last seen)."""
    try:
        peers = rt.dht.list_peers(rt.run_id)  # verified: signed by the key they carry, unexpired
        rt.region_of = {p.peer_id: p.region for p in peers}
        now, grace = time.time(), 2 * rt.clock.round_s
        keys = {k: v for k, v in rt.peer_keys.items() if v[2] >= now - grace}
        keys.update({p.public_key: (p.peer_id, p.region, now) for p in peers})
        rt.peer_keys = keys
        rule = getattr(rt, "schedule_rule", None)
        if rule is not None:  # rounds change only at cross-region merges once another region may exist
            rule.multi_region = rule.multi_region or any(p.region != rt.region for p in peers)
            rule.founders_placed = rule.founders_placed or all(  # (once every founder has been seen)
                k in keys for k in getattr(rt.manifest, "founders", ()) or ())
        rt.peer_schedules = {p.public_key: (p.metrics or {}).get("schedule") for p in peers
                             if isinstance(p.metrics, dict) and p.metrics.get("schedule") is not None}
    except Exception as e:
        logger.debug("peer list refresh failed: %s", e)


def heartbeat_period(round_s: float) -> float:
    """Seconds between two publications of a peer's record for the manifest's round length."""
    return max(1.0, min(5.0, round_s / 2))


def heartbeat_loop(rt: Any) -> None:
    """Until ``rt._stop`` is set: publish this peer's record every :func:`heartbeat_period` (TTL
    three periods), then refresh the peer list."""
    period = heartbeat_period(rt.manifest.round_s)
    while not rt._stop.is_set():
        try:
            m = rt.metrics()
            record = PeerRecord(run_id=rt.run_id, peer_id=rt.p2p_id, maddrs=tuple(rt.dht.visible_maddrs),
                                region=rt.region, version=__version__, role="trainer",
                                public_key=rt.identity.public_key_hex,
                                metrics={k: m[k] for k in RECORD_METRICS if m.get(k) is not None})
            rt.dht.publish_peer(record, ttl_s=3 * period)
        except Exception as e:
            logger.debug("heartbeat failed: %s", e)
        refresh_peers(rt)
        rt._stop.wait(period)
