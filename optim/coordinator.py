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

Its I/O halves are mixins in their own modules: :mod:`.fetching` (announcements and payload
fetches), :mod:`.ballots` (vote records and electorates) and :mod:`.statesync` (state records,
re-syncs, post-tally confirmation, joins).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from dai_swarm.errors import SwarmError
from dai_swarm.logging import get_logger

from . import codecs
from .ballots import Ballots
from .book import MAX_NEED_S, BookLimits, RoundBook
from .config import RoundContext, RunConfig
from .crossregion import CrossRegionMerger
from .exchange import ROUNDS_HELD, round_record_ttl
from .feedback_chain import FeedbackAuthor
from .fetching import PayloadFetch
from .machine import AdoptInclusion, CloseRound, KeepState, NoState, RoundMachine, TallyCommand
from .states import BaseState, BaseStore
from .statesync import StateSync
from .rules import NullVerifier, compute_next_base  # re-exported: the driver and the simulator share them
from .votes import Vote, tally

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


class Coordinator(Ballots, PayloadFetch, StateSync):
    """Background driver of the round protocol for one peer of one region.

    ``ctx`` bundles the collaborators (set up by :class:`dai_swarm.runtime.RoundRuntime`): its
    ``config`` (:class:`~.config.RunConfig`, the run's fixed settings), identity, the record board
    ``dht`` (:class:`~.config.RecordBoard`), netloop, p2p, store, traffic, the current clock, the
    ``like`` base state (for shapes), the ``verifier`` (:class:`~.config.Verifier`) and
    ``vote_weights()`` (standing: weights in votes, verdict sets and state majorities).
    """

    def __init__(self, ctx: RoundContext, bases: BaseStore):
        self.ctx, self.bases = ctx, bases
        self.cfg: RunConfig = ctx.config  # the run's fixed settings (optim/config.py)
        self.books: dict[int, RoundBook] = {}
        self.payloads: dict[str, Mapping[str, torch.Tensor]] = {}
        self.providers: dict[str, list[str]] = {}
        self.outcomes: dict[int, RoundOutcome] = {}
        self._prefetch_at = float("-inf")  # when _prefetch_next last tried (throttle)
        self.my_votes: dict[int, Vote] = {}
        self._candidates: dict[int, BaseState] = {}
        self._feedback: FeedbackAuthor | None = None  # sparse runs: this peer's error-feedback buffer
        self.merger = CrossRegionMerger(self)
        self.foreign_source: dict[int, str] = {}  # base round -> region whose state this region adopts
        self.first_round = 0
        self.machine = self._machine(0)  # every round decision (optim/machine.py); replaced by start()
        self.error: Exception | None = None  # the newest network-side error or bug (see errored())
        self.error_round: int | None = None
        self.errors = 0
        self.on_round_tallied: list[Callable[[RoundOutcome], None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="dai-swarm-coordinator", daemon=True)
        self._lock = threading.Lock()

    # --- lifecycle ------------------------------------------------------------------------------
    def _machine(self, first_round: int) -> RoundMachine:
        return RoundMachine(self.ctx.clock, first_round, observe_from=first_round, kinds=("close", "tally"),
                            lookback=3, merge_period=self.cfg.cross_region_period)

    def start(self, first_round: int) -> None:
        """Start closing rounds from ``first_round`` on."""
        self.first_round = first_round
        self.machine = self._machine(first_round)
        self._thread.start()

    def errored(self) -> dict | None:
        """The newest error the network side latched (a skipped round), for the trainer's status:
        ``{"round", "type", "message", "count"}``, or None if no round failed."""
        if self.error is None:
            return None
        return {"round": self.error_round, "type": type(self.error).__name__, "message": str(self.error)[:300],
                "count": self.errors}

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the thread (waits up to ``timeout_s`` for the current step)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)

    def _main(self) -> None:
        while not self._stop.is_set():
            self.machine.clock = self.ctx.clock  # replaced when the round schedule changes (optim/schedule.py)
            now = time.time()
            for action in self.machine.due(now):
                q = action.round
                if self.machine.cancelled(q):  # its close failed earlier in this same batch
                    continue
                try:
                    if isinstance(action, CloseRound):
                        self.close_round(q)
                    else:
                        self.tally_round(q)
                except Exception as e:  # latched (errored()); the round is skipped, the peer re-syncs later
                    if isinstance(e, SwarmError):
                        logger.warning("round %d: %s", q, e)
                    else:  # a bug: never kills the thread, never passes silently (traceback + status)
                        logger.exception("round %d failed: %r", q, e)
                    self.error, self.error_round = e, q
                    self.errors += 1
                    self.machine.failed(q)
            self._prefetch_next(self.machine.clock.round_at(now), now)
            self._stop.wait(0.05)

    def _prefetch_next(self, r: int, now: float) -> None:
        """Fetch base ``r + 1`` early when the machine says so (:meth:`RoundMachine.should_prefetch`):
        a peer that re-synced the base of the round it trains but missed the tally that made the next
        one would otherwise skip close(r) and stay one round behind for good on a loaded machine."""
        if not self.machine.should_prefetch(r, now, lambda k: self.bases.get(k) is not None, self._prefetch_at):
            return
        self._prefetch_at = now
        clock = self.machine.clock
        try:
            if self.resync(r + 1, timeout_s=min(0.25 * clock.round_s, clock.close_time(r) - now)) is not None:
                logger.info("round %d: caught up: base of round %d fetched before the close", r, r + 1)
        except SwarmError as e:
            logger.info("round %d: base of round %d not fetched yet: %s", r, r + 1, e)

    # --- records --------------------------------------------------------------------------------
    def _kind(self, what: str, region: str | None = None) -> str:
        return f"{what}.{region or self.cfg.region}"

    def _publish(self, what: str, round: int, body: dict, ttl_s: float | None = None) -> None:
        self.ctx.dht.publish_round_record(self.cfg.run_id, self._kind(what), round, body,
                                          ttl_s=ttl_s if ttl_s is not None else round_record_ttl(self.ctx.clock.round_s))

    def _records(self, what: str, round: int, region: str | None = None, signers=None) -> list:
        return self.ctx.dht.get_round_records(self.cfg.run_id, self._kind(what, region), round, signers=signers)

    # --- announce -------------------------------------------------------------------------------
    def announce(self, round: int, base_hash: str, steps: int, samples: int, delta: Mapping[str, torch.Tensor]) -> str:
        """Encode, store and announce this peer's round update; returns its digest."""
        ctx = self.ctx
        strategy = ctx.strategy  # honest unless a test or benchmark built this peer (optim/strategy.py)
        tensors = strategy.tamper(dict(delta), round)
        ef = None
        if self.cfg.codec == "sparse":  # error feedback, committed and stored for verifiers (optim/feedback_chain.py)
            if self._feedback is None:
                self._feedback = FeedbackAuthor(ctx.like.params, self.cfg.codec_params)
            encoded, ef, buffers = self._feedback.step(round, tensors, strategy.tamper_feedback)
            for buffer_digest, buffer in buffers:
                ctx.store.put(buffer, round, buffer_digest)
        else:
            encoded = codecs.encode(tensors, self.cfg.codec, **self.cfg.codec_params)
        blob = strategy.tamper_blob(encoded, round)
        digest = ctx.store.put(blob, round)
        claimed_steps = strategy.claimed_steps(steps)
        body = {"run_id": self.cfg.run_id, "round": round, "base_hash": base_hash, "peer": ctx.identity.public_key_hex,
                "steps": claimed_steps, "samples": claimed_steps * self.cfg.batch_size, "codec": self.cfg.codec,
                "digest": digest, "size_bytes": len(blob), "region": self.cfg.region, "p2p_id": ctx.p2p_id}
        # adaptive rounds only (a fixed-round run's records stay as before): the length this machine needs
        need = ctx.lateness.need_s() if getattr(ctx, "schedule_rule", None) is not None else None
        if need is not None:  # (optim/schedule.py)
            body["need_s"] = min(float(need), MAX_NEED_S)
        if ef is not None:
            body["ef"] = ef.body()
        self._publish("update", round, body)
        events.info("announced round %d update %s (%d steps, %d bytes)", round, digest[:12], steps, len(blob),
                    extra={"event": "announce", "round": round, "digest": digest, "bytes": len(blob)})
        return digest

    # --- close ----------------------------------------------------------------------------------
    def _compute(self, book: RoundBook, base_next: BaseState, weights: dict | None = None) -> BaseState:
        return compute_next_base(book, self.payloads, base_next, self.bases.get(book.round), self.ctx.verifier,
                                 self.machine.verdicts_for(book.round), outer_lr=self.cfg.outer_lr,
                                 outer_momentum=self.cfg.outer_momentum,
                                 delay_compensation=self.cfg.delay_compensation,
                                 rewards=getattr(self.ctx, "rewards", None),
                                 schedule=getattr(self.ctx, "schedule_rule", None), weights_out=weights)

    def close_round(self, q: int) -> None:
        """Close round ``q`` locally: gather, fetch, check, compute, vote."""
        t = time.time()
        base_q, base_next = self.bases.get(q), self.bases.get(q + 1)
        if base_q is not None and base_next is None:  # a joiner holds θ_q but not yet θ_{q+1}
            try:
                base_next = self.resync(q + 1, timeout_s=0.2 * self.ctx.clock.round_s)
            except SwarmError as e:
                logger.info("round %d: could not fetch the base of round %d: %s", q, q + 1, e)
        if base_q is None or base_next is None:
            logger.info("round %d: no base held (joining); skipping its close", q)
            return
        base_next = self.ctx.strategy.tamper_base(q, base_next)
        limits = BookLimits(max_inner_steps=self.cfg.max_inner_steps, batch_size=self.cfg.batch_size,
                            max_payload_bytes=self.cfg.max_payload_bytes, codecs=frozenset([self.cfg.codec]))
        book = RoundBook(self.cfg.run_id, q, base_q.hash, limits=limits)
        self.books[q] = book
        book.offer_many(self._announcements(q))
        self._fetch_all(book, deadline=self.machine.fetch_deadline(q))
        inclusion = book.close()
        weights: dict[str, float] = {}
        state = self._compute(book, base_next, weights)
        vote = Vote(self.cfg.run_id, q, self.ctx.identity.public_key_hex, inclusion, state.hash)
        self.my_votes[q] = vote
        verdicts = sorted(set(self.ctx.verifier.vote_verdicts(q)))
        if self.machine.may_vote(q):
            self._publish("vote", q, {"inclusion": list(inclusion), "state_hash": state.hash, "verdicts": verdicts})
        else:  # a joiner did not see round q-1's verdict tally, so its replicated metadata may differ:
            # it computes a candidate but lets the informed peers decide, and adopts their state
            logger.info("round %d: not voting (joined after round %d's tally)", q, q - 1)
        try:
            self.ctx.verifier.on_close(q, book, {d: self.payloads[d] for d in inclusion if d in self.payloads}, base_q,
                                       weights=weights)
        except Exception as e:  # verification trouble never blocks the round
            logger.warning("round %d: spot-check scheduling failed: %r", q, e)
        self.outcomes[q] = RoundOutcome(q, inclusion, state.hash, rejections=book.rejections, close_s=time.time() - t)
        self._candidates[q] = state

    # --- tally ----------------------------------------------------------------------------------
    def tally_round(self, q: int) -> None:
        """Tally round ``q``'s votes and execute what the machine decides (adopt, keep, merge,
        re-sync, confirm); see :mod:`.machine`."""
        book = self.books.get(q)
        state = self._candidates.pop(q, None)
        outcome = self.outcomes.setdefault(q, RoundOutcome(q))
        bodies = self._read_votes(q, book)  # one read serves the inclusions and the verdict sets
        votes, sets = self._votes(q, bodies), self._votes(q, bodies, verdicts=True)
        result = tally(votes, self.ctx.vote_weights(), run_id=self.cfg.run_id, round=q,
                       electorate=self._electorate(votes))
        self.machine.tallied_verdicts(q, tally(sets, self.ctx.vote_weights(), run_id=self.cfg.run_id, round=q,
                                               electorate=self._electorate(sets)))
        winners = {v.voter for v in votes if result.decided and v.state_hash == result.state_hash}
        cmd = self.machine.decide(q, result, candidate=state.hash if state is not None else None,
                                  inclusion=book.inclusion() if book is not None and state is not None else None,
                                  winners=winners, now=time.time())
        if isinstance(cmd, AdoptInclusion):
            state = self._adopt(q, book, cmd)
            cmd = self.machine.adopted(q, result, candidate=state.hash if state is not None else None,
                                       winners=winners, now=time.time())
        state, cmd = self._settle(q, cmd, state, outcome)
        if state is not None:
            self._publish_state(state)
            agreed = None  # the winning inclusion, when this peer's own tally did not settle on it
            if self.machine.must_confirm(q, cmd, self._electorate(votes), {v.voter: v.state_hash for v in votes},
                                         self.ctx.identity.public_key_hex):
                confirmed = self._confirm_state(q, state, votes)
                if confirmed is None:
                    state = None
                elif confirmed is not state:
                    state, outcome.resynced = confirmed, True
                    agreed = self._voted_inclusion(q, state.hash)
            if book is not None:
                if agreed is None and result.decided and outcome.resynced:  # (an empty inclusion counts too)
                    agreed = result.inclusion
                self._credit(q, book, outcome, agreed)
        outcome.state_hash = state.hash if state is not None else ""  # the base of q + 2 held, never a dropped one
        for d in list(self.payloads):
            if book is not None and d in book.digests():
                self.payloads.pop(d, None)
        self.books.pop(q - 2, None)
        self.ctx.store.prune(q - ROUNDS_HELD)
        events.info("round %d closed: %d updates, state %s%s", q, len(outcome.inclusion), outcome.state_hash[:12],
                    " (re-synced)" if outcome.resynced else "",
                    extra={"event": "round_closed", "round": q, "state_hash": outcome.state_hash})
        for cb in self.on_round_tallied:
            cb(outcome)

    def _credit(self, q: int, book: RoundBook, outcome: RoundOutcome, agreed: tuple | None) -> None:
        """The round's inclusion and contributors (samples, regions) for its reward record: the book's
        inclusion, or after a download re-sync the ``agreed`` (winning) one, whose announcements are
        read again if the book never saw some; every peer of the state then writes the same record."""
        if agreed is not None and book.inclusion() != tuple(sorted(agreed)):
            missing = book.adopt(agreed)
            if missing:
                book.offer_many([a for a in self._announcements(q) if a.digest in missing])
        anns = book.announced() if agreed is not None or book.ready else None
        outcome.inclusion = book.inclusion() if anns is not None else outcome.inclusion
        outcome.contributors = {a.peer: a.samples for a in anns or ()}
        outcome.regions = {a.peer: a.region for a in anns or ()}

    def _adopt(self, q: int, book: RoundBook, cmd: AdoptInclusion) -> BaseState | None:
        """A minority peer recomputes on the majority's inclusion (None: a payload is still missing)."""
        missing = book.adopt(cmd.inclusion)
        if missing:
            book.offer_many([a for a in self._announcements(q) if a.digest in missing])
        self._fetch_all(book, deadline=cmd.deadline)
        if not book.ready:
            return None
        logger.info("round %d: adopted the majority inclusion (%d updates)", q, len(cmd.inclusion))
        return self._compute(book, self.bases.get(q + 1))

    def _settle(self, q: int, cmd: TallyCommand, state: BaseState | None,
                outcome: RoundOutcome) -> tuple[BaseState | None, TallyCommand]:
        """Execute a settled tally command: the base of ``q + 2`` held now (None: none yet) and the
        command it came from (a refused merge turns a kept state into a re-sync)."""
        if isinstance(cmd, KeepState):
            outcome.agreed = cmd.agreed
            if cmd.merge:
                state = self.merger.merge(q, state)
            if state is not None:
                self.bases.put(state)
                return state, cmd
            cmd = self.machine.merge_failed(q, time.time())  # off the global chain: adopt another
            state = self._retry_resync(q, cmd.give_up, lambda: self.resync(q + 2))  # region's merged state
        elif isinstance(cmd, NoState):
            outcome.agreed = False
            return None, cmd
        else:
            outcome.agreed = False
            if cmd.merged:  # the winners publish their *merged* state
                state = self._retry_resync(q, cmd.give_up, lambda: self._resync_to_voters(q, set(cmd.voters)))
            else:  # the majority publishes its state at about this time
                state = self._retry_resync(q, cmd.give_up, lambda: self.resync(q + 2, cmd.target))
        outcome.resynced = state is not None
        return state, cmd
