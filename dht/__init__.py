"""dai_swarm.dht: discovery over hivemind's DHT with signed, expiring, typed records.

``SwarmDHT`` is the node; records are the typed models of :mod:`.records` inside signed envelopes
(:mod:`.envelope`) that every honest node validates (:mod:`.validator`); regions by RTT live in
:mod:`.regions`; :class:`PeerAnnouncer` keeps a peer listed.
"""

from ..lazy_names import lazy_names as _lazy_names

#: where each public name lives; imported on first use (PEP 562), so that a light module of this
#: package (address files, records) does not pull hivemind in with it
_HOME = {"PeerAnnouncer": ".announce", "MAX_RECORD_BYTES": ".envelope", "SignedRecord": ".envelope",
         "open_envelope": ".envelope", "seal": ".envelope", "SwarmDHT": ".node", "parse_initial_peers": ".startup",
         "PeerRecord": ".records", "RegionMembership": ".records", "RoundRecord": ".records", "RunManifest": ".records",
         "RegionChoice": ".regions", "choose_region": ".regions", "SwarmRecordValidator": ".validator"}


__getattr__, __dir__ = _lazy_names(__name__, _HOME, globals())

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
