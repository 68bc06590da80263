"""Resuming a run from an export (``dai-swarm peer --resume DIR``, ``Swarm(..., resume=DIR)``).

When peers of the run are live, the export is only a faster start: the peer joins normally and
takes a base from the export only when its hash is the one the majority offers
(:meth:`~dai_swarm.optim.coordinator.Coordinator.resync`). When none is live, the peer creates a
new generation of the run: the export's manifest with a new ``t0`` (so that the export's round
starts ``start_in_s`` from now and round numbers continue), this peer (and ``founders``) as
founders, and ``resume`` naming the parent manifest, the round and the export's state hash,
signed like any manifest (:func:`resume_manifest`). Peers that join it without the export
download that state from the resuming peer, verified against its hash (I6).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from .dht.records import ResumePoint, RunManifest
from .export import Export

__all__ = ["live_peers", "resume_manifest"]


def live_peers(dht: Any, run_id: str, me: str, wait_s: float) -> list:
    """Signed, unexpired peer records of ``run_id`` other than ``me`` (public key), read for up to ``wait_s``."""
    deadline = time.time() + wait_s
    while True:
        peers = [p for p in dht.list_peers(run_id) if p.public_key != me]
        if peers or time.time() >= deadline:
            return peers
        time.sleep(0.25)


def resume_manifest(exported: Export, start: float, founders: Sequence[str], versions: dict) -> RunManifest:
    """The next generation of the export's run: round ``exported.provenance.base_round`` starts at
    ``start`` (Unix seconds); ``founders`` (this peer's key first) hold standing in it."""
    prov = exported.provenance
    parent = RunManifest(**prov.manifest)
    body = parent.to_body()
    body.update(t0=float(start) - prov.base_round * parent.round_s, founders=tuple(dict.fromkeys(founders)),
                versions=dict(versions),
                resume=ResumePoint(parent=prov.manifest_hash, round=prov.base_round, state_hash=exported.state.hash))
    return RunManifest(**body)
