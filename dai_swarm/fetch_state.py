"""Fetch a run's agreed state from its peers without training: what ``dai-swarm export`` does.

:func:`fetch_agreed_state` starts a DHT node, reads the run's signed manifest (pinned by
``manifest_hash`` if given), builds the round runtime a joiner builds (payload server, round
clock, trust anchors: the manifest's founders and ``trust`` keys) and downloads a base through
the coordinator's verified state download (:meth:`~dai_swarm.optim.coordinator.Coordinator.resync`):
chunked from every donor, adopted only if it hashes to the state the majority of the anchors
offers (I6). It never announces itself as a trainer, votes or publishes anything but its DHT
presence, and stops everything it started before returning.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

from .errors import ConfigError, ManifestMismatch, SwarmError
from .identity import Identity
from .logging import get_logger

__all__ = ["FetchedState", "fetch_agreed_state"]

logger = get_logger(__name__)


@dataclass(frozen=True)
class FetchedState:
    """A verified base state: the run's ``manifest`` and its hash, the ``task``, the ``round``
    whose close produced the state (the state is the base of ``round + 2``), the ``parent_hash``
    the majority offers for the base of ``round + 1`` (None if nobody still does), the ``region``."""

    manifest: Any
    manifest_hash: str
    task: Any
    round: int
    state: Any
    parent_hash: str | None
    region: str


def _wait_manifest(dht: Any, run_id: str, pin: str | None, deadline: float):
    while True:
        choice = dht.manifest_choice(run_id, manifest_hash=pin)
        if choice is not None:
            return choice
        if time.time() >= deadline:
            raise ConfigError(f"no manifest of run {run_id!r} found through the initial peers: check --run-id "
                              "and --initial-peers")
        time.sleep(0.25)


def _busiest_region(dht: Any, run_id: str, deadline: float) -> str:
    """The region with the most live signed peer records, read until one appears (a loaded peer's
    record can take a few seconds to reach a fresh node); ties go to the smallest name."""
    while True:
        regions = Counter(p.region for p in dht.list_peers(run_id))
        if regions:
            return min(regions, key=lambda r: (-regions[r], r))
        if time.time() >= deadline:
            try:
                drops = {k: v for k, v in dht.counters.items() if v}
            except Exception:  # diagnostics only
                drops = {}
            raise ConfigError(f"no live peer of run {run_id!r} found through the initial peers: give --region, "
                              f"or check that its peers are running (DHT records seen: {drops or 'none'})")
        time.sleep(0.5)


def _parent_hash(rt: Any, state: Any) -> str | None:
    """The hash the standing-weighted majority offers for the base before ``state``."""
    from .optim.votes import majority_state_hash
    offers = [(o.signer, o.state_hash) for o in rt.coordinator.state_offers(state.round - 1)]
    maj = majority_state_hash(offers, rt.vote_weights(state.extra)) if offers else None
    return maj.state_hash if maj is not None and maj.weight > 0 else None


def fetch_agreed_state(run_id: str, initial_peers: Sequence[str], *, round: int | None = None,
                       manifest_hash: str | None = None, trust: Sequence[str] = (), region: str | None = None,
                       identity: Identity | None = None, host_maddrs: Sequence[str] = ("/ip4/0.0.0.0/tcp/0",),
                       timeout_s: float = 60.0) -> FetchedState:
    """Download and verify the state that closes ``round`` (default: the newest offered); see the
    module docstring. Raises :class:`ConfigError` when the run or the round cannot be found within
    ``timeout_s`` and :class:`ManifestMismatch` when the run's task cannot be built here."""
    from .dht.manifest import check_pin
    from .dht.node import SwarmDHT
    from .runtime import RoundRuntime
    from .tasks import load_task
    from .verification.spotcheck import SpotChecker

    if not initial_peers:
        raise ConfigError("give --initial-peers of a peer of the run")
    if round is not None and round < 0:
        raise ConfigError(f"round must be >= 0, got {round}")
    deadline = time.time() + timeout_s
    identity = identity or Identity.generate()
    dht = SwarmDHT(identity, initial_peers=initial_peers, host_maddrs=host_maddrs,
                   start_timeout_s=max(5.0, min(30.0, timeout_s)))
    rt = verifier = None
    try:
        choice = _wait_manifest(dht, run_id, check_pin(manifest_hash), deadline)
        manifest = choice.manifest
        task = load_task(manifest.task)
        if task.config_hash() != manifest.task_config_hash:
            raise ManifestMismatch(f"run {run_id!r} trains {manifest.task!r} with config hash "
                                   f"{manifest.task_config_hash[:12]}; this build's is {task.config_hash()[:12]}")
        if region is None:
            region = _busiest_region(dht, run_id, deadline)
        verifier = SpotChecker(task, manifest.checks_per_update)
        rt = RoundRuntime(task, dht, identity, manifest, region, evaluate=False, verifier=verifier,
                          trusted=tuple(trust))
        rt.refresh_peers()
        rt.follow_peer_schedule()  # which round is now, if rounds changed length since the manifest
        failures = 0
        while True:
            current = rt.clock.round_at(time.time())
            bases = [round + 2] if round is not None else list(range(current + 1, max(current - 4, 1), -1))
            for b in bases:
                try:
                    state = rt.coordinator.resync(b, timeout_s=max(5.0, min(30.0, deadline - time.time())))
                except SwarmError as e:
                    logger.info("state download of base %d failed: %s", b, e)
                    failures += 1
                    state = None
                if state is not None:
                    logger.info("run %s: verified state %s closing round %d (region %s)", run_id, state.hash[:12],
                                b - 2, region)
                    return FetchedState(manifest, choice.hash, task, b - 2, state, _parent_hash(rt, state), region)
            if time.time() >= deadline:
                which = f"round {round}'s state" if round is not None else "any recent state"
                raise ConfigError(f"no peer of run {run_id!r} (region {region}) offers {which} that its trusted "
                                  f"majority backs, within {timeout_s:.0f}s; state records live a few minutes, "
                                  "older rounds come from a peer's --checkpoint-dir")
            # after failed downloads wait longer (up to 8 s): libp2p backs off a peer whose dial failed
            # for 5 s and more, and asking again at once only meets that back-off
            time.sleep(min(8.0, 0.5 * 2 ** min(failures, 4)))
            rt.refresh_peers()
    finally:
        if rt is not None:
            rt.shutdown()
        if verifier is not None:
            verifier.close()
        dht.shutdown()
