"""The network driver of the round protocol: announce, close, vote, tally, re-sync.

Runs on a background thread and drives the pure core (:mod:`.clock`, :mod:`.book`, :mod:`.votes`,
:mod:`.aggregate`, :mod:`.outer`) with real inputs: signed DHT records (hivemind) and payloads
fetched over hivemind P2P streams. Training never waits on it beyond one round deadline (I2):
every network step is bounded by the clock's close/tally instants.

Round ``q``'s life here (T = round length):

* ``announce``: as soon as the trainer hands over round ``q``'s pseudo-gradient: encode, store,
  publish a signed ``update.<region>`` record.
* ``close_time(q)``: read round ``q``'s announcements, offer them to a :class:`RoundBook`, fetch
  and check the payloads, compute the candidate base of ``q+2`` from base ``q+1``, publish a vote.
* ``tally_time(q)``: tally the votes (reputation-weighted); a minority peer adopts the winning
  inclusion and recomputes; if its state hash still differs from the majority it downloads the
  majority's state (re-sync). Publishes a ``state.<region>`` record so joiners can find donors.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from dai_swarm.errors import CodecError, DigestMismatch, MalformedRecord, PeerUnreachable, ProtocolError, SwarmError
from dai_swarm.logging import get_logger

from . import codecs
from .book import BookLimits, RoundBook, UpdateAnnouncement
from .crossregion import CrossRegionMerger
from .download import StateOffer, fetch_chunked, parse_state_offer, pick_download, state_record
from .exchange import fetch_from_any
from .states import BaseState, BaseStore
from .rules import NullVerifier, compute_next_base  # re-exported: the driver and the simulator share them
from .votes import HeadCount, Vote, confirm_state, majority_state_hash, tally

__all__ = ["Coordinator", "NullVerifier", "RoundOutcome", "compute_next_base"]

logger = get_logger(__name__)
events = get_logger("dai_swarm.events")


@dataclass
class RoundOutcome:
    """What happened to one round here: inclusion, state hash, re-sync, counters (for metrics)."""

    round: int
    inclusion: tuple = ()
    state_hash: str = ""
    agreed: bool | None = None
    resynced: bool = False
    rejections: dict = field(default_factory=dict)
    contributors: dict = field(default_factory=dict)  # peer -> samples
    regions: dict = field(default_factory=dict)  # peer -> region it announced
    close_s: float = 0.0


class Coordinator:
    """Background driver of the round protocol for one peer of one region.

    ``ctx`` bundles the collaborators (set up by :class:`dai_swarm.optim.runtime.RoundRuntime`):
    run_id, region, identity, dht, netloop, p2p, store, traffic, clock, manifest fields, the
    ``like`` base state (for shapes), ``reputation()`` (aggregation weights) and
    ``vote_weights()`` (standing: weights in votes, verdict sets and state majorities).
    """

    def __init__(self, ctx: Any, bases: BaseStore):
        self.ctx, self.bases = ctx, bases
        self.books: dict[int, RoundBook] = {}
        self.payloads: dict[str, Mapping[str, torch.Tensor]] = {}
        self.providers: dict[str, list[str]] = {}
        self.outcomes: dict[int, RoundOutcome] = {}
        self.closed: set[int] = set()
        self.tallied: set[int] = set()
        self.my_votes: dict[int, Vote] = {}
        self.verdict_winners: dict[int, tuple[str, ...]] = {}
        self._candidates: dict[int, BaseState] = {}
        self.merger = CrossRegionMerger(self)
        self.foreign_source: dict[int, str] = {}  # base round -> region whose state this region adopts
        self.first_round = 0
        self.error: SwarmError | None = None
        self.on_round_tallied: list[Callable[[RoundOutcome], None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="dai-swarm-coordinator", daemon=True)
        self._lock = threading.Lock()

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self, first_round: int) -> None:
        """Start closing rounds from ``first_round`` on."""
        self.first_round = first_round
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the thread (waits up to ``timeout_s`` for the current step)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)

    def _main(self) -> None:
        clock = self.ctx.clock
        while not self._stop.is_set():
            now = time.time()
            current = clock.round_at(now)
            for q in range(max(self.first_round, current - 3), current):
                try:
                    if q not in self.closed and now >= clock.close_time(q):
                        self.close_round(q)
                    if q in self.closed and q not in self.tallied and now >= clock.tally_time(q):
                        self.tally_round(q)
                except SwarmError as e:  # latched; the round is skipped, the peer re-syncs later
                    self.error = e
                    logger.warning("round %d: %s", q, e)
                    self.closed.add(q)
                    self.tallied.add(q)
                except Exception as e:  # a bug must not kill the thread silently
                    logger.exception("round %d failed: %r", q, e)
                    self.closed.add(q)
                    self.tallied.add(q)
            self._stop.wait(0.05)

    # --- records --------------------------------------------------------------------------------
    def _kind(self, what: str, region: str | None = None) -> str:
        return f"{what}.{region or self.ctx.region}"

    def _publish(self, what: str, round: int, body: dict) -> None:
        self.ctx.dht.publish_round_record(self.ctx.run_id, self._kind(what), round, body,
                                          ttl_s=max(60.0, 20 * self.ctx.clock.round_s))

    def _records(self, what: str, round: int, region: str | None = None) -> list:
        return self.ctx.dht.get_round_records(self.ctx.run_id, self._kind(what, region), round)

    # --- announce -------------------------------------------------------------------------------
    def announce(self, round: int, base_hash: str, steps: int, samples: int, delta: Mapping[str, torch.Tensor]) -> str:
        """Encode, store and announce this peer's round update; returns its digest."""
        ctx = self.ctx
        tensors = ctx.attack.tamper(dict(delta), round) if ctx.attack is not None else dict(delta)
        blob = ctx.attack.tamper_blob(codecs.encode(tensors, ctx.codec, **ctx.codec_params), round) \
            if ctx.attack is not None else codecs.encode(tensors, ctx.codec, **ctx.codec_params)
        digest = ctx.store.put(blob, round)
        claimed_steps = ctx.attack.claimed_steps(steps) if ctx.attack is not None else steps
        body = {"run_id": ctx.run_id, "round": round, "base_hash": base_hash, "peer": ctx.identity.public_key_hex,
                "steps": claimed_steps, "samples": claimed_steps * ctx.batch_size, "codec": ctx.codec,
                "digest": digest, "size_bytes": len(blob), "region": ctx.region, "p2p_id": ctx.p2p_id}
        self._publish("update", round, body)
        events.info("announced round %d update %s (%d steps, %d bytes)", round, digest[:12], steps, len(blob),
                    extra={"event": "announce", "round": round, "digest": digest, "bytes": len(blob)})
        return digest

    # --- fetching -------------------------------------------------------------------------------
    def _providers_for(self, digest: str) -> list:
        from hivemind.p2p import PeerID
        out = []
        for pid in self.providers.get(digest, []):
            try:
                out.append((PeerID.from_base58(pid), self.ctx.link_of_p2p(pid)))
            except Exception:
                continue
        return out

    def _check_payload(self, digest: str, blob: bytes) -> Mapping[str, torch.Tensor]:
        like = self.ctx.like
        expect = {n: (tuple(t.shape), torch.float32) for n, t in like.params.items()}
        return codecs.decode(blob, expect=expect, max_bytes=self.ctx.max_decoded_bytes)

    def _mates(self) -> list:
        """(PeerID, link) of the other live peers of this region: they serve every payload they hold."""
        from hivemind.p2p import PeerID
        return [(PeerID.from_base58(pid), "intra") for pid in self.ctx.region_mates()]

    async def _fetch_payload(self, digest: str, timeout_s: float) -> bytes:
        """Fetch a payload from its announcers; if that fails (a broken stream, a busy author) and
        time remains, retry with the announcers first and then region mates that fetched it already."""
        end = time.monotonic() + timeout_s
        providers = self._providers_for(digest)
        attempt, first = 0, None
        while True:
            try:
                return await fetch_from_any(self.ctx.p2p, providers, self.ctx.run_id, digest,
                                            max_bytes=self.ctx.max_payload_bytes,
                                            timeout_s=max(0.2, (end - time.monotonic()) * (0.6 if attempt < 2 else 1.0)),
                                            traffic=self.ctx.traffic)
            except (PeerUnreachable, ProtocolError) as e:
                if isinstance(e, DigestMismatch):  # the bytes are bad, not the connection: no retry
                    raise
                first = first or e
                attempt += 1
                if attempt >= 3 or end - time.monotonic() < 0.5:
                    raise first from None  # the announcers' failure is what the counters report
                await asyncio.sleep(0.2 * attempt)
                known = {str(p) for p, _ in providers}
                mates = [m for m in self._mates() if str(m[0]) not in known]
                random.Random(f"{digest}:{attempt}").shuffle(mates)
                providers = self._providers_for(digest) + mates[:3]

    async def _fetch_one(self, book: RoundBook, digest: str, timeout_s: float) -> None:
        local = self.ctx.store.get(digest)
        try:
            if local is None:
                local = await self._fetch_payload(digest, timeout_s)
                self.ctx.store.put(local, book.round, digest)
            self.payloads[digest] = self._check_payload(digest, local)
            book.mark_fetched(digest, True)
        except CodecError as e:
            book.mark_fetched(digest, False, type(e).__name__)
            logger.info("round %d: payload %s refused: %s", book.round, digest[:12], e)
        except SwarmError as e:
            book.mark_fetched(digest, False, type(e).__name__)
            logger.info("round %d: payload %s not fetched: %s", book.round, digest[:12], e)

    def _fetch_all(self, book: RoundBook, deadline: float) -> None:
        wanted = book.to_fetch()
        if not wanted:
            return
        timeout_s = max(0.5, deadline - time.time())

        async def go() -> None:
            await asyncio.gather(*(self._fetch_one(book, d, timeout_s) for d in wanted))

        self.ctx.netloop.run(go(), timeout_s=timeout_s + 5)

    def _announcements(self, round: int) -> list[UpdateAnnouncement]:
        """Round ``round``'s update announcements from live peers of this region (one per signer).

        Only a key with a live, signed peer record in this region may announce; if an announcer is
        unknown the peer records are re-read once (a mate's record may not have been read yet), and
        announcements still unknown are dropped and counted (``unknown_announcer``). The provider
        to fetch from is the libp2p id of the signer's own peer record, not one the body names.
        """
        out, records = [], self._records("update", round)
        if any(self.ctx.announcer(rec.signer) is None for rec in records):
            self.ctx.refresh_peers()
        for rec in records:
            provider = self.ctx.announcer(rec.signer)
            if provider is None:
                self.ctx.count("unknown_announcer")
                logger.info("round %d: announcement from %s dropped: no live peer record in region %s",
                            round, rec.signer[:12], self.ctx.region)
                continue
            body = dict(rec.body)
            body.pop("p2p_id", None)
            try:
                if body.get("peer") != rec.signer:
                    raise MalformedRecord("announcement names another peer than its signer")
                ann = UpdateAnnouncement(**body)
            except (TypeError, MalformedRecord) as e:
                self.ctx.count("malformed_announcement")
                logger.info("round %d: malformed announcement from %s: %s", round, rec.signer[:12], e)
                continue
            self.providers.setdefault(ann.digest, [])
            if provider not in self.providers[ann.digest]:
                self.providers[ann.digest].append(provider)
            out.append(ann)
        return out

    # --- close ----------------------------------------------------------------------------------
    def _compute(self, book: RoundBook, base_next: BaseState) -> BaseState:
        return compute_next_base(book, self.payloads, base_next, self.bases.get(book.round), self.ctx.verifier,
                                 self.verdict_winners.get(book.round - 1, ()), outer_lr=self.ctx.outer_lr,
                                 outer_momentum=self.ctx.outer_momentum,
                                 delay_compensation=self.ctx.delay_compensation)

    def close_round(self, q: int) -> None:
        """Close round ``q`` locally: gather, fetch, check, compute, vote."""
        t = time.time()
        self.closed.add(q)
        base_q, base_next = self.bases.get(q), self.bases.get(q + 1)
        if base_q is not None and base_next is None:  # a joiner holds θ_q but not yet θ_{q+1}
            try:
                base_next = self.resync(q + 1, timeout_s=0.2 * self.ctx.clock.round_s)
            except SwarmError as e:
                logger.info("round %d: could not fetch the base of round %d: %s", q, q + 1, e)
        if base_q is None or base_next is None:
            logger.info("round %d: no base held (joining); skipping its close", q)
            return
        if self.ctx.perturb_round == q:  # test hook: make this peer diverge from its region
            logger.warning("round %d: perturbing the local base on request (DAI_SWARM_TEST_PERTURB_ROUND)", q)
            base_next = BaseState.make(base_next.round, {n: t + 1e-3 for n, t in base_next.params.items()},
                                       base_next.momentum, base_next.extra, base_next.anchor)
        limits = BookLimits(max_inner_steps=self.ctx.max_inner_steps, batch_size=self.ctx.batch_size,
                            max_payload_bytes=self.ctx.max_payload_bytes, codecs=frozenset([self.ctx.codec]))
        book = RoundBook(self.ctx.run_id, q, base_q.hash, limits=limits)
        self.books[q] = book
        book.offer_many(self._announcements(q))
        self._fetch_all(book, deadline=self.ctx.clock.tally_time(q) - 0.1 * self.ctx.clock.round_s)
        inclusion = book.close()
        state = self._compute(book, base_next)
        vote = Vote(self.ctx.run_id, q, self.ctx.identity.public_key_hex, inclusion, state.hash)
        self.my_votes[q] = vote
        verdicts = sorted(set(self.ctx.verifier.vote_verdicts(q)))
        if q == 0 or (q - 1) in self.verdict_winners:
            self._publish("vote", q, {"inclusion": list(inclusion), "state_hash": state.hash, "verdicts": verdicts})
        else:  # a joiner did not see round q-1's verdict tally, so its replicated metadata may differ:
            # it computes a candidate but lets the informed peers decide, and adopts their state
            logger.info("round %d: not voting (joined after round %d's tally)", q, q - 1)
        try:
            self.ctx.verifier.on_close(q, book, {d: self.payloads[d] for d in inclusion if d in self.payloads}, base_q)
        except Exception as e:  # verification trouble never blocks the round
            logger.warning("round %d: spot-check scheduling failed: %r", q, e)
        self.outcomes[q] = RoundOutcome(q, inclusion, state.hash, rejections=book.rejections, close_s=time.time() - t)
        self._candidates[q] = state

    # --- tally ----------------------------------------------------------------------------------
    def _votes(self, q: int) -> list[Vote]:
        out = []
        for rec in self._records("vote", q):
            try:
                out.append(Vote(self.ctx.run_id, q, rec.signer, tuple(rec.body.get("inclusion", ())),
                                rec.body.get("state_hash", "")))
            except (MalformedRecord, TypeError):
                continue
        return out

    def _tally_verdicts(self, q: int) -> tuple[str, ...]:
        """The verdict-id set of round ``q``'s votes that the reputation-weighted majority named."""
        sets = []
        for rec in self._records("vote", q):
            ids = rec.body.get("verdicts", [])
            try:
                sets.append(Vote(self.ctx.run_id, q, rec.signer, tuple(ids), "0" * 64))
            except (MalformedRecord, TypeError):
                continue
        result = tally(sets, self.ctx.vote_weights(), run_id=self.ctx.run_id, round=q,
                       electorate=self._electorate(sets))
        return result.inclusion if result.decided else ()

    def tally_round(self, q: int) -> None:
        """Tally round ``q``'s votes, adopt the majority, re-sync if still in the minority."""
        self.tallied.add(q)
        book = self.books.get(q)
        state = self._candidates.pop(q, None)
        outcome = self.outcomes.setdefault(q, RoundOutcome(q))
        votes = self._read_votes(q, book)
        result = tally(votes, self.ctx.vote_weights(), run_id=self.ctx.run_id, round=q,
                       electorate=self._electorate(votes))
        self.verdict_winners[q] = self._tally_verdicts(q)
        self.verdict_winners.pop(q - 3, None)
        if book is not None and state is not None and result.decided and result.inclusion != book.inclusion():
            missing = book.adopt(result.inclusion)
            if missing:
                book.offer_many([a for a in self._announcements(q) if a.digest in missing])
            self._fetch_all(book, deadline=time.time() + 0.2 * self.ctx.clock.round_s)
            if book.ready:
                state = self._compute(book, self.bases.get(q + 1))
                logger.info("round %d: adopted the majority inclusion (%d updates)", q, len(result.inclusion))
            else:
                state = None
        if state is not None and (not result.decided or state.hash == result.state_hash):
            outcome.agreed = result.decided
            kept = True  # our own state (decided for it, or nobody with weight decided otherwise)
            if self.merger.is_sync_round(q + 2):
                state = self.merger.merge(q, state)
            if state is not None:
                self.bases.put(state)
            else:  # our region is off the global chain: adopt another region's merged state
                state, kept = self.resync(q + 2), False
                outcome.resynced = state is not None
        else:
            kept = False
            target = result.state_hash if result.decided else None
            winners = {v.voter for v in votes if v.state_hash == target}
            outcome.agreed = False
            if not target:
                state = None
            elif self.merger.is_sync_round(q + 2):  # the winners publish their *merged* state
                state = self._retry_resync(q, lambda: self._resync_to_voters(q, winners))
            else:  # the majority publishes its state at about this time
                state = self._retry_resync(q, lambda: self.resync(q + 2, target))
            outcome.resynced = state is not None
        if state is not None:
            outcome.state_hash = state.hash
            self._publish_state(state)
            if kept and (self.merger.is_sync_round(q + 2) or not self._all_voted_for(votes, state)):
                confirmed = self._confirm_state(q, state, votes)
                if confirmed is not state:
                    state, outcome.resynced = confirmed, True
                    outcome.state_hash = state.hash
            if book is not None:
                outcome.inclusion = book.inclusion() if book.ready else outcome.inclusion
                outcome.contributors = {a.peer: a.samples for a, _ in book.included()} if book.ready else {}
                outcome.regions = {a.peer: a.region for a, _ in book.included()} if book.ready else {}
        for d in list(self.payloads):
            if book is not None and d in book.digests():
                self.payloads.pop(d, None)
        self.books.pop(q - 2, None)
        self.ctx.store.prune(q - 3)
        events.info("round %d closed: %d updates, state %s%s", q, len(outcome.inclusion), outcome.state_hash[:12],
                    " (re-synced)" if outcome.resynced else "",
                    extra={"event": "round_closed", "round": q, "state_hash": outcome.state_hash})
        for cb in self.on_round_tallied:
            cb(outcome)

    # --- state records, joins and re-syncs -----------------------------------------------------
    def _publish_state(self, state: BaseState) -> None:
        """Store the snapshot and its chunk list (both served to joiners) and publish the record."""
        blob = state.blob()
        body, hashes = state_record(state.hash, blob, self.ctx.p2p_id)
        self.ctx.store.put(blob, state.round, body["digest"])
        self.ctx.store.put(hashes, state.round, body["chunks_digest"])
        self._publish("state", state.round, body)

    def state_offers(self, round: int) -> list[StateOffer]:
        """The well-formed state records of ``round`` (see :class:`~.download.StateOffer`)."""
        offers = (parse_state_offer(rec.signer, rec.body)
                  for rec in self._records("state", round, self.foreign_source.get(round)))
        return [o for o in offers if o is not None]

    def _resync_deadline(self, q: int) -> float:
        """How long a minority peer keeps trying to re-sync the base of ``q+2`` at round ``q``'s
        tally: until 0.15 T before round ``q+2`` starts (the base is not needed earlier), at least 1 s.
        A peer that still has no base then catches up when its trainer needs it (0.05 T before)."""
        clock = self.ctx.clock
        return max(time.time() + 1.0, clock.start(q + 2) - 0.15 * clock.round_s)

    def _resync_to_voters(self, q: int, winners: set[str]) -> BaseState | None:
        """Merge rounds: the vote named the winners' pre-merge hash, but they publish the merged
        base of ``q+2``; adopt the state most of the winning voters published (None: not yet)."""
        offers = [(o.signer, o.state_hash) for o in self.state_offers(q + 2) if o.signer in winners]
        if not offers:
            return None
        maj = majority_state_hash(offers, self.ctx.vote_weights(), electorate=self._electorate([]))
        return self.resync(q + 2, maj.state_hash) if maj is not None and maj.weight > 0 else None

    def _retry_resync(self, q: int, attempt: Callable[[], BaseState | None]) -> BaseState | None:
        """Call ``attempt`` until it returns a state or :meth:`_resync_deadline` passes (then None)."""
        give_up = self._resync_deadline(q)
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

    def _electorate(self, votes: list[Vote]) -> set[str]:
        """Public keys expected to publish this region's next state: live peers of the region
        (signed peer records) and everyone who voted this round."""
        keys = {v.voter for v in votes}
        for key in list(getattr(self.ctx, "peer_keys", {}) or {}):
            if self.ctx.announcer(key) is not None:
                keys.add(key)
        return keys

    def _all_voted_for(self, votes: list[Vote], state: BaseState) -> bool:
        """True iff every member of the electorate voted, all for ``state``: nothing to confirm."""
        by_voter = {v.voter: v.state_hash for v in votes}
        me = self.ctx.identity.public_key_hex
        return all(by_voter.get(k) == state.hash for k in self._electorate(votes) if k != me)

    def _read_votes(self, q: int, book: RoundBook | None) -> list[Vote]:
        """Round ``q``'s votes; if a live peer that announced an update this round has no vote yet
        (a DHT read can miss a record under load), read again for up to 0.1 T."""
        votes = self._votes(q)
        if book is None:
            return votes
        expected = {a.peer for a, _ in book.included()} | {self.ctx.identity.public_key_hex}
        end = time.time() + 0.1 * self.ctx.clock.round_s
        while not self._stop.is_set() and time.time() < end and not expected <= {v.voter for v in votes}:
            self._stop.wait(0.1)
            votes = self._votes(q)
        return votes

    def _confirm_state(self, q: int, state: BaseState, votes: list[Vote]) -> BaseState:
        """Compare this peer's new base of ``q+2`` with its region's state records (pure rule:
        :func:`~.votes.confirm_state`): a peer whose tally missed a mate's vote, or that merged a
        different set of region deltas, re-syncs to the settled majority before round ``q+2``
        starts instead of one round later. Weights come from base ``q+1``, which both sides held."""
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

        return self._retry_resync(q, check) or state

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
        weights = self.ctx.vote_weights()
        maj = majority_state_hash([(o.signer, o.state_hash) for o in offers], weights,
                                  electorate=self._electorate([]))
        if maj is not None and maj.weight <= 0 and target_hash is None and self.bases.latest() is None:
            # a joiner none of whose trust anchors (founders, --trust keys) offers this region's
            # state: the documented gap of a region without a founder; fall back to a head count
            logger.warning("round %d: no founder or trusted key offers the state of region %s; choosing it by a "
                           "head count of %d signer(s) (pass --trust KEY of a peer you trust to avoid this)",
                           round, self.ctx.region, len({o.signer for o in offers}))
            self.ctx.count("untrusted_join")
            maj = majority_state_hash([(o.signer, o.state_hash) for o in offers], HeadCount())
        if maj is None or maj.weight <= 0:
            return None
        target = target_hash or maj.state_hash
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
            fetch_chunked(self.ctx.p2p, donor_ids, self.ctx.run_id, offer, max_bytes=self.ctx.max_state_bytes,
                          traffic=self.ctx.traffic, timeout_s=timeout_s, on_liar=self._lying_donor),
            timeout_s=timeout_s * 3)
        state = BaseState.from_blob(round, blob, target, self.ctx.like)
        self.bases.put(state)
        self.ctx.store.put(blob, round, offer.digest)
        events.info("re-synced base of round %d (%s) from %d donor(s)", round, target[:12], len(donor_ids),
                    extra={"event": "resync", "round": round, "state_hash": target})
        return state
