"""dai_swarm.dht: discovery over hivemind's DHT with signed, expiring, typed records.

``SwarmDHT`` is the node; records are the typed models of :mod:`.records` inside signed envelopes
(:mod:`.envelope`) that every honest node validates (:mod:`.validator`); regions by RTT live in
:mod:`.regions`; :class:`PeerAnnouncer` keeps a peer listed.
"""

#: where each public name lives; imported on first use (PEP 562), so that a light module of this
#: package (address files, records) does not pull hivemind in with it
_HOME = {"PeerAnnouncer": ".announce", "MAX_RECORD_BYTES": ".envelope", "SignedRecord": ".envelope",
         "open_envelope": ".envelope", "seal": ".envelope", "SwarmDHT": ".node", "parse_initial_peers": ".startup",
         "PeerRecord": ".records", "RegionMembership": ".records", "RoundRecord": ".records", "RunManifest": ".records",
         "RegionChoice": ".regions", "choose_region": ".regions", "SwarmRecordValidator": ".validator"}


def __getattr__(name: str):
    """Import a public name of this package when it is first used."""
    if name in _HOME:
        import importlib

        value = getattr(importlib.import_module(_HOME[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """Module attributes, the lazy public names included."""
    return sorted(set(globals()) | set(_HOME))

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
