"""Simulated links and DHT look-ups, and the byte ledger per link class.

A transfer between two peers uses the *intra* link spec of their region when they share one and
otherwise the slower of their two regions' *cross* specs. Each peer has a fixed latency factor
(log-normal, drawn from the seed) for heterogeneity. Bytes are counted the way
:class:`~dai_swarm.optim.exchange.Traffic` counts them on real peers: payload plus the 17-byte
response header, per link class, on the receiving side (what the sender sends is the same).

A DHT store or look-up costs ``hops`` round trips (``ceil(log2(N) / 2)``, a Kademlia-style beam
search) at the population's mean link latency, unless ``dht_hop_s`` fixes the per-hop time.
"""

from __future__ import annotations

import math
from collections import defaultdict

from dai_swarm.optim.exchange import RESPONSE_HEADER_LEN

from .config import LinkSpec, SimConfig

__all__ = ["ByteLedger", "NetModel"]


class ByteLedger:
    """Bytes received per (round, link class, kind) and per peer; deterministic dict order."""

    def __init__(self) -> None:
        self.by_round: dict[int, dict[str, int]] = defaultdict(lambda: {"intra": 0, "cross": 0})
        self.by_kind: dict[str, dict[str, int]] = defaultdict(lambda: {"intra": 0, "cross": 0})
        self.by_peer: dict[int, int] = defaultdict(int)

    def add(self, round: int, link: str, payload_bytes: int, kind: str, receiver: int) -> int:
        """Count one payload transfer (plus header); returns the bytes counted."""
        n = int(payload_bytes) + RESPONSE_HEADER_LEN
        self.by_round[round][link] += n
        self.by_kind[kind][link] += n
        self.by_peer[receiver] += n
        return n

    def totals(self) -> dict[str, int]:
        """Total bytes per link class over the whole run."""
        out = {"intra": 0, "cross": 0}
        for v in self.by_round.values():
            out["intra"] += v["intra"]
            out["cross"] += v["cross"]
        return out


class NetModel:
    """Latency and bandwidth between simulated peers (see the module docstring)."""

    def __init__(self, cfg: SimConfig, population: int):
        self.cfg = cfg
        self._links = {r: cfg.links_of(r) for r in cfg.region_names()}
        n = max(2, population)
        self.hops = max(1, math.ceil(math.log2(n) / 2))
        if cfg.dht_hop_s is not None:
            self.hop_s = float(cfg.dht_hop_s)
        else:
            f_cross = 1.0 - 1.0 / cfg.regions
            intra = sum(self._links[r][0].latency_s for r in self._links) / len(self._links)
            cross = sum(self._links[r][1].latency_s for r in self._links) / len(self._links)
            self.hop_s = 2.0 * ((1.0 - f_cross) * intra + f_cross * cross)

    def link_class(self, region_a: str, region_b: str) -> str:
        """``"intra"`` for the same region, else ``"cross"``."""
        return "intra" if region_a == region_b else "cross"

    def spec(self, region_a: str, region_b: str) -> LinkSpec:
        """The link spec used between two regions (the slower cross spec of the two)."""
        if region_a == region_b:
            return self._links[region_a][0]
        a, b = self._links[region_a][1], self._links[region_b][1]
        return LinkSpec(max(a.latency_s, b.latency_s), min(a.bandwidth_Bps, b.bandwidth_Bps))

    def latency(self, region_a: str, region_b: str, factor: float = 1.0) -> float:
        """One-way latency between two regions for a peer with latency ``factor``."""
        return self.spec(region_a, region_b).latency_s * factor

    def dht_s(self, factor: float = 1.0) -> float:
        """Time of one DHT store or look-up."""
        return self.hops * self.hop_s * factor
