"""The state half of the round driver: publishing state records, re-syncing a minority peer to
its region's majority, confirming a kept state after the tally, and joining.

A mixin of :class:`~.coordinator.Coordinator` (it uses the coordinator's ``ctx``, ``bases``,
record helpers and electorate). Downloads are chunk-verified (:mod:`.download`); the target is
always a state backed by standing weight (:mod:`.votes`), or, for a joiner, by its trust anchors.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from dai_swarm.errors import SwarmError
from dai_swarm.logging import get_logger

from .exchange import ROUNDS_HELD
from .download import StateOffer, fetch_chunked, parse_state_offer, pick_download, state_record
from .states import BaseState
from .votes import Vote, confirm_state, majority_state_hash, state_weights

__all__ = ["StateSync"]

logger = get_logger("dai_swarm.optim.coordinator")  # one logger name for the whole driver
events = get_logger("dai_swarm.events")


class StateSync:
    """State records, re-syncs and post-tally confirmation (see the module docstring)."""

    _no_anchor_warned: int | None = None  # the round a joiner last said that no anchor offers state

    def _publish_state(self, state: BaseState) -> None:
        """Store the snapshot and its chunk list (both served to joiners) and publish the record."""
        blob = state.blob()
        body, hashes = state_record(state.hash, blob, self.ctx.p2p_id)
        self.ctx.store.put(blob, state.round, body["digest"])
        self.ctx.store.put(hashes, state.round, body["chunks_digest"])
        # the offer lives as long as the snapshot it offers: pruned at the close of round + ROUNDS_HELD + 1,
        # so a joiner or an export never asks donors for a state they no longer hold
        ttl_s = self.ctx.clock.close_time(state.round + ROUNDS_HELD + 1) - time.time()
        if ttl_s > 0:
            self._publish("state", state.round, body, ttl_s)

    def state_offers(self, round: int) -> list[StateOffer]:
        """The well-formed state records of ``round`` (see :class:`~.download.StateOffer`)."""
        offers = (parse_state_offer(rec.signer, rec.body)
                  for rec in self._records("state", round, self.foreign_source.get(round)))
        return [o for o in offers if o is not None]

    def _resync_to_voters(self, q: int, winners: set[str]) -> BaseState | None:
        """Merge rounds: the vote named the winners' pre-merge hash, but they publish the merged
        base of ``q+2``; adopt the state most of the winning voters published (None: not yet)."""
        offers = [(o.signer, o.state_hash) for o in self.state_offers(q + 2) if o.signer in winners]
        if not offers:
            return None
        maj = majority_state_hash(offers, state_weights(self.ctx.vote_weights()), electorate=self._electorate([]))
        return self.resync(q + 2, maj.state_hash) if maj is not None and maj.weight > 0 else None

    def _retry_resync(self, q: int, give_up: float, attempt: Callable[[], BaseState | None]) -> BaseState | None:
        """Call ``attempt`` until it returns a state or ``give_up`` passes (then None)."""
        while not self._stop.is_set():
            try:
                state = attempt()
            except SwarmError as e:
                logger.info("round %d: re-sync failed: %s", q, e)
                state = None
            if state is not None or time.time() >= give_up:
                return state
            self._stop.wait(0.25)
        return None

    def _confirm_state(self, q: int, state: BaseState, votes: list[Vote]) -> BaseState | None:
        """Compare this peer's new base of ``q+2`` with its region's state records (pure rule:
        :func:`~.votes.confirm_state`): a peer whose tally missed a mate's vote, or that merged a
        different set of region deltas, re-syncs to the settled majority before round ``q+2``
        starts instead of one round later. Weights come from base ``q+1``, which both sides held.
        Unsettled at the deadline: the state is kept, or, for a peer without standing, dropped (None;
        :meth:`~.machine.RoundMachine.keeps_unconfirmed`)."""
        me = self.ctx.identity.public_key_hex
        held = self.bases.get(q + 1)
        weights = self.ctx.vote_weights(held.extra if held is not None else None)

        def check() -> BaseState | None:  # ours when settled, the majority's when re-synced, None: wait
            offers = [(o.signer, o.state_hash) for o in self.state_offers(q + 2)]
            decision = confirm_state(state.hash, me, offers, self._electorate(votes), weights)
            if decision.action == "keep":
                return state
            if decision.action == "wait":
                return None
            adopted = self.resync(q + 2, decision.target)
            if adopted is not None:
                logger.warning("round %d: this peer's new state %s was in the region's minority; re-synced to %s",
                               q, state.hash[:12], adopted.hash[:12])
                self._publish_state(adopted)
            return adopted

        settled = self._retry_resync(q, self.machine.resync_give_up(q, time.time()), check)
        if settled is not None:
            return settled
        if self.machine.keeps_unconfirmed(me, self._electorate(votes), weights):
            return state
        logger.warning("round %d: no state record of the region's peers with standing confirmed this peer's new "
                       "state %s in time; holding no base of round %d (it re-syncs when it trains it)",
                       q, state.hash[:12], q + 2)
        self.bases.discard(q + 2)
        self.ctx.count("unconfirmed_state_dropped")
        return None

    def _lying_donor(self, peer_id: Any, why: str) -> None:
        """A donor sent state bytes that do not match the chunk list: count it (status counters)."""
        self.ctx.count("lying_donor")  # the download itself logs a warning naming the donor

    def resync(self, round: int, target_hash: str | None = None, timeout_s: float | None = None) -> BaseState | None:
        """Download the base of ``round`` whose hash the reputation-weighted majority announced (I6).

        Chunks come from every donor that announced the winning blob; the result is adopted only
        if its hash matches. Returns the state (also stored), or None if nobody offered it yet.
        """
        from hivemind.p2p import PeerID
        offers = self.state_offers(round)
        if not offers:
            return None
        weights = state_weights(self.ctx.vote_weights())
        maj = majority_state_hash([(o.signer, o.state_hash) for o in offers], weights,
                                  electorate=self._electorate([]))
        if maj is not None and maj.weight <= 0 and target_hash is None and self.bases.latest() is None:
            # a joiner none of whose trust anchors (founders, --trust keys) offers this region's
            # state: no download (a head count would hand the choice to whoever has most keys);
            # it asks again until its join deadline, then carries on alone and says so
            if self._no_anchor_warned != round:
                self._no_anchor_warned = round
                logger.warning("round %d: no founder or trusted key offers the state of region %s (%d other "
                               "signer(s) do): not downloading; pass --trust KEY of a peer you trust",
                               round, self.cfg.region, len({o.signer for o in offers}))
                self.ctx.count("no_trusted_offer")
            return None
        if maj is None or maj.weight <= 0:
            return None
        target = target_hash or maj.state_hash
        local = getattr(self.ctx, "preloaded", None)  # a verified export with the majority's hash
        if local is not None and local.hash == target:
            self.bases.put(local.at_round(round))
            logger.info("base of round %d (%s) taken from the export given with --resume", round, target[:12])
            return self.bases.get(round)
        picked = pick_download(offers, target, self.ctx.identity.public_key_hex,
                               set(getattr(self.ctx, "region_of", {}) or ()))
        if picked is None:
            return None
        offer, donors = picked
        donor_ids = []  # in any order: the fetch shuffles them
        for p in donors:
            try:
                donor_ids.append((PeerID.from_base58(p), self.ctx.link_of_p2p(p)))
            except Exception:  # a malformed libp2p id in a signed record: not a donor
                continue
        timeout_s = timeout_s or max(5.0, self.ctx.clock.round_s)
        blob = self.ctx.netloop.run(
            fetch_chunked(self.ctx.p2p, donor_ids, self.cfg.run_id, offer, max_bytes=self.cfg.max_state_bytes,
                          traffic=self.ctx.traffic, timeout_s=timeout_s, on_liar=self._lying_donor),
            timeout_s=timeout_s * 3)
        state = BaseState.from_blob(round, blob, target, self.ctx.like)
        self.bases.put(state)
        self.ctx.store.put(blob, round, offer.digest)
        events.info("re-synced base of round %d (%s) from %d donor(s)", round, target[:12], len(donor_ids),
                    extra={"event": "resync", "round": round, "state_hash": target})
        return state
