"""A Sybil flood (tests and benchmarks only): one attacker peer speaking for many fresh keys.

``dai-swarm peer --attack sybil`` trains like anyone else under its own key and, every round,
publishes signed records as freshly generated ed25519 keys (one attacker process, so that a
2-core machine can stage what would otherwise take a thousand processes):

* :data:`FLIPPERS` keys, each with a live, signed peer record in the attacker's region, announce
  a sign-flipped copy of the attacker's own update (its negation, scaled slightly per key so the
  digests differ) and serve it over P2P: a flood of bad updates before any check comes due;
* one more member announces an update larger than the run's payload cap (never served; the
  attacker counts every request for it in ``sybil_oversized_requests``, which must stay 0);
* :data:`VOTERS` keys (the members among them) vote, two rounds ahead of the clock, for an empty
  inclusion and a poisoned state of round ``q+2`` (random parameters, a reputation table naming
  the Sybil keys founders and nobody else), with an empty verdict set (to suppress slashes), and
  :data:`STATE_SIGNERS` of them publish state records for that poisoned state, which the attacker
  serves, chunk list included, to any joiner or re-sync.

The records go out in batched DHT stores of :data:`BATCH` records. What each must change: nothing (docs/design.md,
"Trust model"; tests/test_sybil_processes.py).
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any

import torch

from dai_swarm.errors import DHTClosed
from dai_swarm.logging import get_logger
from dai_swarm.optim import codecs
from dai_swarm.optim.exchange import round_record_ttl

from .attacks import Attack

__all__ = ["FLIPPERS", "STATE_SIGNERS", "SybilFlood", "VOTERS"]

logger = get_logger(__name__)

VOTERS, FLIPPERS, STATE_SIGNERS = 1000, 40, 50
BATCH = 200  # records per request to the DHT process: ~20 KB pickled, well under its pipe's 64 KB


async def _seal_and_store(dht: Any, node: Any, seeds: list, records: list, ttls: list, run_id: str) -> int:
    """Runs inside the DHT process: sign each record with the key of its 32-byte seed and store them
    all in one traversal. (Requests travel through hivemind's pipe, which breaks on large messages:
    a request over the 64 KB pipe buffer, or arriving in pieces, kills hivemind's DHT process with
    BlockingIOError: seeds and records keep a request of 200 records near 20 KB.)"""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from dai_swarm.dht.envelope import open_envelope, seal
    from dai_swarm.identity import Identity

    keys, subkeys, values, expirations = [], [], [], []
    for seed, record, ttl_s in zip(seeds, records, ttls):
        identity = Identity(Ed25519PrivateKey.from_private_bytes(seed))
        data = seal(identity, record, run_id=run_id, ttl_s=ttl_s)
        signed = open_envelope(data)
        keys.append(signed.key)
        subkeys.append(identity.public_key_hex)
        values.append(data)
        expirations.append(signed.expiration)
    done = await node.store_many(keys, values, expirations, subkeys=subkeys)
    return sum(1 for ok in done.values() if ok)


class SybilFlood(Attack):
    """The flood described in the module docstring; :meth:`tamper` starts each round's work."""

    kind = "sybil"

    def __init__(self) -> None:
        super().__init__()
        from dai_swarm.identity import Identity

        from cryptography.hazmat.primitives import serialization

        self.keys = [Identity.generate() for _ in range(VOTERS)]
        raw = serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        self._seed = {k.public_key_hex: k.private_key.private_bytes(*raw) for k in self.keys}
        self.members = self.keys[:FLIPPERS + STATE_SIGNERS + 1]  # flippers, state signers, the oversized one
        self.oversized_digest = "ee" * 32
        self._ahead: threading.Thread | None = None
        self._closed = False
        self._members_until = 0.0  # when the fresh members' peer records must be published again

    def bind(self, runtime: Any) -> None:
        """Serve the runtime's store, counting requests for the oversized digest (never served)."""
        super().bind(runtime)
        store, get = runtime.store, runtime.store.get

        def counting_get(digest: str):
            if digest == self.oversized_digest:
                runtime.count("sybil_oversized_requests")
            return get(digest)

        store.get = counting_get

    def tamper(self, delta: dict, round: int) -> dict:
        """Honest for this key; the fresh keys' flipped updates for ``round`` go out on a side thread
        (and the first call starts the thread that votes and offers states ahead of the rounds)."""
        if self._ahead is None:
            self._ahead = threading.Thread(target=self._vote_ahead, args=(round,), name="sybil-votes", daemon=True)
            self._ahead.start()
        threading.Thread(target=self._guarded, args=(self._announce, {n: t.detach().clone() for n, t in delta.items()},
                                                     round), name=f"sybil-{round}", daemon=True).start()
        return delta

    def _guarded(self, step, *args) -> None:
        try:
            step(*args)
        except DHTClosed:  # the peer is shutting down
            self._closed = True
        except Exception as e:  # an attack that fails must not stop the peer; the test sees the counts
            logger.warning("sybil %s failed: %r", step.__name__, e)

    def _vote_ahead(self, first: int) -> None:
        """Votes and state offers are prepared in advance (they need nothing from the round), two
        rounds ahead of the clock, so a loaded machine still has them out before each tally."""
        rt, q = self.rt, first
        while not rt._stop.is_set() and not self._closed:
            while rt.clock.round_at(time.time()) < q - 2 and not rt._stop.wait(0.05 * rt.clock.round_s):
                pass
            self._guarded(self._vote_and_offer, q)
            q += 1

    def _publish(self, batch: list) -> None:
        """Sign and store ``(identity, record, ttl_s)`` items, :data:`BATCH` per request (the DHT
        process signs: see :func:`_seal_and_store`)."""
        rt = self.rt
        for i in range(0, len(batch), BATCH):  # requests of the two threads interleave (the pipe has a lock)
            part = batch[i:i + BATCH]
            seeds = [self._seed[k.public_key_hex] for k, _, _ in part]
            rt.dht._call(functools.partial(
                _seal_and_store, seeds=seeds, records=[r for _, r, _ in part], ttls=[t for _, _, t in part],
                run_id=rt.run_id), timeout_s=30.0)
            rt.count("sybil_records", len(part))

    def _announce(self, delta: dict, q: int) -> None:
        from dai_swarm.dht.records import PeerRecord, RoundRecord

        rt = self.rt
        base = rt.bases.get(q)
        if base is None:
            return
        ttl = round_record_ttl(rt.clock.round_s)
        batch: list = []
        if time.time() >= self._members_until:  # live, signed peer records for the fresh members
            batch = [(k, PeerRecord(run_id=rt.run_id, peer_id=rt.p2p_id, maddrs=tuple(rt.dht.visible_maddrs),
                                    region=rt.region, version="sybil", public_key=k.public_key_hex), 3 * ttl)
                     for k in self.members]
            self._members_until = time.time() + ttl
        kind = f"update.{rt.region}"
        for i, k in enumerate(self.keys[:FLIPPERS]):
            blob = codecs.encode({n: t * -(1.0 + 1e-3 * i) for n, t in delta.items()}, rt.codec, **rt.codec_params)
            digest = rt.store.put(blob, q)
            batch.append((k, RoundRecord(kind=kind, round=q, body=self._update_body(k, q, base.hash, digest,
                                                                                  len(blob))), ttl))
        big = self.members[-1]
        batch.append((big, RoundRecord(kind=kind, round=q, body=self._update_body(
            big, q, base.hash, self.oversized_digest, 64 * rt.max_payload_bytes)), ttl))
        self._publish(batch)
        self.rounds_attacked.append(q)

    def _update_body(self, key: Any, q: int, base_hash: str, digest: str, size: int) -> dict:
        rt = self.rt
        steps = int(rt.max_inner_steps)
        return {"run_id": rt.run_id, "round": q, "base_hash": base_hash, "peer": key.public_key_hex,
                "steps": steps, "samples": steps * rt.batch_size, "codec": rt.codec, "digest": digest,
                "size_bytes": size, "region": rt.region, "p2p_id": rt.p2p_id}

    def _vote_and_offer(self, q: int) -> None:
        """1,000 votes of round ``q`` for a poisoned base of round ``q+2``, and 50 offers of it."""
        from dai_swarm.dht.records import RoundRecord
        from dai_swarm.optim.download import state_record
        from dai_swarm.optim.states import BaseState
        from dai_swarm.verification.reputation import initial_extra

        rt = self.rt
        kind = f"vote.{rt.region}"
        like = rt.like
        poisoned = BaseState.make(q + 2, {n: torch.randn(t.shape, generator=self.gen) * 10 for n, t in like.params.items()},
                                  {n: torch.zeros_like(t) for n, t in like.momentum.items()},
                                  initial_extra(k.public_key_hex for k in self.keys), like.anchor)
        blob = poisoned.blob()
        body, hashes = state_record(poisoned.hash, blob, rt.p2p_id)
        rt.store.put(blob, q + 2, body["digest"])
        rt.store.put(hashes, q + 2, body["chunks_digest"])
        ttl = max(60.0, 24 * rt.clock.round_s)
        vote = {"inclusion": [], "state_hash": poisoned.hash, "verdicts": []}  # no update, no verdict
        batch = [(k, RoundRecord(kind=kind, round=q, body=vote), ttl) for k in self.keys]
        batch += [(k, RoundRecord(kind=f"state.{rt.region}", round=q + 2, body=body), ttl)
                  for k in self.keys[FLIPPERS:FLIPPERS + STATE_SIGNERS]]
        self._publish(batch)
        logger.warning("sybil round %d: %d votes and %d offers for poisoned state %s", q, len(self.keys),
                       STATE_SIGNERS, poisoned.hash)
