"""DHT key layout: every dai_swarm key is derived from the run id and the record it holds.

A record's key is a function of its content (:func:`key_for`), and envelopes whose key does not
match their record are refused, so a signed record cannot be moved to another run, kind or round.
"""

from __future__ import annotations

from .records import PeerRecord, RegionMembership, RoundRecord, RunManifest, _Record
from .wire import wire_kind

__all__ = ["NAMESPACE", "SIGNER_KEYED", "key_for", "manifest_key", "peers_key", "regions_key", "round_key"]

NAMESPACE = "dai_swarm/v1"
#: round-record kinds stored under one key per signer: a reader looks up only the signers whose
#: records can weigh anything (votes: keys with standing), so records of a thousand fresh keys are
#: never transferred to it. Under one shared key they were: hivemind returns (and a store first
#: traverses to) the whole dictionary of a key, and publishing a vote under the Sybil flood took
#: 0.12-2.32 s against 0.07-0.19 s clean (docs/design.md "Trust model").
SIGNER_KEYED = frozenset({"vote"})


def manifest_key(run_id: str) -> str:
    """Key of a run's manifest (one subkey per signer)."""
    return f"{NAMESPACE}/{run_id}/manifest"


def peers_key(run_id: str) -> str:
    """Key of a run's live peer records (one subkey per peer)."""
    return f"{NAMESPACE}/{run_id}/peers"


def regions_key(run_id: str) -> str:
    """Key of a run's region memberships (one subkey per peer)."""
    return f"{NAMESPACE}/{run_id}/regions"


def round_key(run_id: str, kind: str, round_: int, signer: str | None = None) -> str:
    """Key of the round records of ``kind`` for round ``round_`` (one subkey per signer); for a
    :data:`SIGNER_KEYED` kind the key of ``signer``'s record alone (ValueError without a signer)."""
    key = f"{NAMESPACE}/{run_id}/round/{kind}/{int(round_)}"
    if wire_kind(kind) not in SIGNER_KEYED:
        return key
    if not signer:
        raise ValueError(f"{kind!r} records live under one key per signer: name the signer")
    return f"{key}/{signer}"


def key_for(record: _Record, run_id: str, signer: str | None = None) -> str:
    """The only key under which ``record`` of run ``run_id`` signed by ``signer`` may be stored."""
    if isinstance(record, RunManifest):
        return manifest_key(run_id)
    if isinstance(record, PeerRecord):
        return peers_key(run_id)
    if isinstance(record, RegionMembership):
        return regions_key(run_id)
    if isinstance(record, RoundRecord):
        return round_key(run_id, record.kind, record.round, signer)
    raise TypeError(f"no key layout for {type(record).__name__}")
