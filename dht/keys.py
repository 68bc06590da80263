"""DHT key layout: every dai_swarm key is derived from the run id and the record it holds.

A record's key is a function of its content (:func:`key_for`), and envelopes whose key does not
match their record are refused, so a signed record cannot be moved to another run, kind or round.
"""

from __future__ import annotations

from .records import PeerRecord, RegionMembership, RoundRecord, RunManifest, _Record

__all__ = ["NAMESPACE", "key_for", "manifest_key", "peers_key", "regions_key", "round_key"]

NAMESPACE = "dai_swarm/v1"


def manifest_key(run_id: str) -> str:
    """Key of a run's manifest (one subkey per signer)."""
    return f"{NAMESPACE}/{run_id}/manifest"


def peers_key(run_id: str) -> str:
    """Key of a run's live peer records (one subkey per peer)."""
    return f"{NAMESPACE}/{run_id}/peers"


def regions_key(run_id: str) -> str:
    """Key of a run's region memberships (one subkey per peer)."""
    return f"{NAMESPACE}/{run_id}/regions"


def round_key(run_id: str, kind: str, round_: int) -> str:
    """Key of the round records of ``kind`` for round ``round_`` (one subkey per signer)."""
    return f"{NAMESPACE}/{run_id}/round/{kind}/{int(round_)}"


def key_for(record: _Record, run_id: str) -> str:
    """The only key under which ``record`` of run ``run_id`` may be stored."""
    if isinstance(record, RunManifest):
        return manifest_key(run_id)
    if isinstance(record, PeerRecord):
        return peers_key(run_id)
    if isinstance(record, RegionMembership):
        return regions_key(run_id)
    if isinstance(record, RoundRecord):
        return round_key(run_id, record.kind, record.round)
    raise TypeError(f"no key layout for {type(record).__name__}")
