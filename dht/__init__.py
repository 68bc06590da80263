"""dai_swarm.dht: discovery over hivemind's DHT with signed, expiring, typed records.

``SwarmDHT`` is the node; records are the typed models of :mod:`.records` inside signed envelopes
(:mod:`.envelope`) that every honest node validates (:mod:`.validator`); regions by RTT live in
:mod:`.regions`; :class:`PeerAnnouncer` keeps a peer listed.
"""

from .announce import PeerAnnouncer
from .envelope import MAX_RECORD_BYTES, SignedRecord, open_envelope, seal
from .node import SwarmDHT
from .startup import parse_initial_peers
from .records import PeerRecord, RegionMembership, RoundRecord, RunManifest
from .regions import RegionChoice, choose_region
from .validator import SwarmRecordValidator

__all__ = [
    "MAX_RECORD_BYTES",
    "PeerAnnouncer",
    "PeerRecord",
    "RegionChoice",
    "RegionMembership",
    "RoundRecord",
    "RunManifest",
    "SignedRecord",
    "SwarmDHT",
    "SwarmRecordValidator",
    "choose_region",
    "open_envelope",
    "parse_initial_peers",
    "seal",
]
