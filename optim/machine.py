"""The round machine: every round decision of one peer, pure (no I/O, no threads, no sleeping).

The real peer (:class:`~.coordinator.Coordinator`, over hivemind) and the simulator
(:mod:`dai_swarm.sim`) both run one :class:`RoundMachine` per peer and *execute* what it returns;
neither decides anything about a round by itself. Time is always an argument (``now``), so unit
tests drive it with a fake clock.

**When** (the one scheduler). :meth:`RoundMachine.next_action` returns the due actions of the
rounds the peer takes part in, each exactly once and in order of due time; the due time depends on
the clock only, never on another peer (I2). For round ``r``:

* ``TrainUntil(r, deadline)`` while ``now`` is in ``[start(r), train_deadline(r))``;
* ``Announce(r)`` at ``train_deadline(r)``: encode and announce the update;
* ``CloseRound(r)`` at ``close_time(r)``: close the book, vote (if :meth:`may_vote`);
* ``Tally(r)`` at ``tally_time(r)``: tally, then :meth:`decide` what to do about base ``r + 2``;
* ``ApplyBase(r + 2)`` right after: install base ``r + 2`` (the simulator's batched step).

A driver that runs its own trainer (the real peer) asks only for closes and tallies
(``kinds=("close", "tally")``) through :meth:`due`, which drops rounds older than ``lookback``
rounds behind the clock. ``WaitUntil(t)``: nothing is due before ``t``; ``Done``: the planned
rounds are over.

**What** (the tally). :meth:`decide` turns a :class:`~.votes.TallyResult` and this peer's own
candidate into one command:

* :class:`KeepState`: the candidate stands (decided for it, or nobody with weight decided
  otherwise); on a cross-region sync round the driver merges it first (:mod:`.crossregion`);
* :class:`AdoptInclusion`: the majority included other updates: fetch what is missing by
  ``deadline``, recompute on the majority's inclusion, then call :meth:`adopted`;
* :class:`ResyncState`: download the majority's base of ``r + 2`` until ``give_up`` (on a sync
  round the winners publish their *merged* state, so the driver follows the winning voters);
* :class:`NoState`: no candidate and no decided majority: the peer catches up later.

After a kept state, :meth:`must_confirm` says whether to compare it with the region's state
records (:func:`~.votes.confirm_state`), and :meth:`merge_failed` what to do when the region is off
the global chain. Every round offset (the ``q + 2`` base, the verdict lag) and every clock
fraction of the protocol lives here or in :class:`~.clock.RoundClock`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Union

from dai_swarm.errors import ConfigError

from .clock import RoundClock
from .votes import TallyResult

__all__ = [
    "ADOPT_FETCH_FRAC", "Action", "AdoptInclusion", "Announce", "ApplyBase", "CloseRound", "Done", "KeepState",
    "NoState", "ResyncState", "RoundMachine", "Tally", "is_sync_round", "TallyCommand", "TrainUntil", "VERDICT_LAG", "VOTE_PATIENCE_FRAC",
    "WaitUntil",
]

#: verdicts about round t weigh the aggregation of round t + 3: their ids ride on the votes of round
#: t + 2, and the set tally(t + 2) agrees on enters close(t + 3)'s computation (:meth:`RoundMachine.verdicts_for`)
VERDICT_LAG = 3
#: a minority peer fetches the majority inclusion's missing payloads for at most this share of T
ADOPT_FETCH_FRAC = 0.2
#: a tally re-reads the votes for up to this share of T while a peer that announced an included
#: update has not voted (a DHT read under load can miss a record)
VOTE_PATIENCE_FRAC = 0.1
#: fetches of a round's payloads stop this share of T before its tally (time to compute the vote)
FETCH_MARGIN_FRAC = 0.1
#: a re-sync of base ``q + 2`` is given up this share of T before round ``q + 2`` starts
RESYNC_MARGIN_FRAC = 0.15
#: a peer that holds base ``r`` but not ``r + 1`` asks for it at most this often (share of T)
PREFETCH_EVERY_FRAC = 0.25


# --- when: the scheduler's actions -----------------------------------------------------------------
@dataclass(frozen=True)
class TrainUntil:
    """Run inner steps of ``round`` (on base θ_round) until ``deadline``, then ask again."""

    round: int
    deadline: float


@dataclass(frozen=True)
class Announce:
    """Encode round ``round``'s pseudo-gradient and announce it (due at ``due``)."""

    round: int
    due: float


@dataclass(frozen=True)
class CloseRound:
    """Close round ``round``'s book and publish this peer's vote (due at ``due``)."""

    round: int
    due: float


@dataclass(frozen=True)
class Tally:
    """Tally round ``round``'s votes and :meth:`RoundMachine.decide` (due at ``due``)."""

    round: int
    due: float


@dataclass(frozen=True)
class ApplyBase:
    """Install the base of ``round`` (= outer step of round ``round - 2``'s aggregate)."""

    round: int
    due: float


@dataclass(frozen=True)
class WaitUntil:
    """Nothing is due before ``time``; sleep (or advance the fake clock) until then."""

    time: float


@dataclass(frozen=True)
class Done:
    """Every planned round has been trained, closed and tallied."""


Action = Union[TrainUntil, Announce, CloseRound, Tally, ApplyBase, WaitUntil, Done]


# --- what: the tally's commands --------------------------------------------------------------------
@dataclass(frozen=True)
class KeepState:
    """This peer's candidate ``state_hash`` becomes its base of ``round + 2`` (merged first when
    ``merge``). ``agreed``: a majority with weight decided for it (False: nobody with weight decided,
    so the peer keeps its own state undecided)."""

    round: int
    state_hash: str
    agreed: bool
    merge: bool


@dataclass(frozen=True)
class AdoptInclusion:
    """Recompute round ``round`` on the majority's ``inclusion`` (fetch the missing payloads by
    ``deadline``), then report the new candidate with :meth:`RoundMachine.adopted`."""

    round: int
    inclusion: tuple
    deadline: float


@dataclass(frozen=True)
class ResyncState:
    """Download the majority's base of ``round + 2`` (hash ``target``) until ``give_up``. On a
    sync round (``merged``) the winning ``voters`` publish their merged state: follow them."""

    round: int
    target: str
    merged: bool
    voters: frozenset
    give_up: float


@dataclass(frozen=True)
class NoState:
    """No candidate and no decided majority: hold no base of ``round + 2`` yet (catch up later)."""

    round: int


TallyCommand = Union[KeepState, AdoptInclusion, ResyncState, NoState]

# discrete kinds, in the order they are emitted when due at the same instant
KINDS = ("announce", "close", "tally", "apply")


def is_sync_round(base_round: int, merge_period: int) -> bool:
    """Whether the base of ``base_round`` is a cross-region sync point (every ``merge_period`` rounds
    from round 2 on; never when the period is 0)."""
    return merge_period > 0 and base_round >= 2 and base_round % merge_period == 0


def _round_arg(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be an int >= 0, got {value!r}")
    return value


class RoundMachine:
    """The round decisions of one peer that trains rounds ``first_round .. last_round``.

    It also closes and tallies the rounds from ``observe_from`` (default ``first_round - 1``, whose
    outcome gives the base of ``first_round + 1``). ``last_round=None``: forever. ``kinds``: the
    actions this driver wants (see the module docstring). ``merge_period``: every how many rounds a
    base is a cross-region sync point (0: never). ``clock`` may be replaced when the swarm's round
    schedule changes (:mod:`.schedule`); due times always follow the current clock.
    """

    def __init__(self, clock: RoundClock, first_round: int, last_round: int | None = None, *,
                 observe_from: int | None = None, kinds: Iterable[str] = KINDS, lookback: int | None = None,
                 merge_period: int = 0) -> None:
        if not isinstance(clock, RoundClock):
            raise ConfigError("clock must be a RoundClock")
        first_round = _round_arg("first_round", first_round)
        if last_round is not None and (_round_arg("last_round", last_round) < first_round):
            raise ConfigError(f"last_round must be an int >= first_round, got {last_round!r}")
        kinds = tuple(k for k in KINDS if k in set(kinds))
        if not kinds:
            raise ConfigError(f"kinds must name some of {KINDS}")
        self.clock, self.first_round, self.last_round = clock, first_round, last_round
        self.observe_from = _round_arg("observe_from", max(0, first_round - 1) if observe_from is None else observe_from)
        self.kinds, self.lookback, self.merge_period = kinds, lookback, int(merge_period)
        self._next = {k: (first_round if k == "announce" else self.observe_from) for k in kinds}
        self._skip: set[int] = set()  # rounds whose remaining actions a failure cancelled
        self.verdicts: dict[int, tuple[str, ...]] = {}  # round -> verdict ids its tally agreed on
        self.emitted: list[Action] = []
        self.dropped = 0  # actions skipped because the driver fell more than ``lookback`` rounds behind

    @classmethod
    def for_joiner(cls, clock: RoundClock, now: float, rounds: int | None = None, **kw) -> "RoundMachine":
        """Machine of a peer joining at ``now``: it syncs state, then trains from the next round."""
        first = max(0, clock.round_at(now) + 1)
        return cls(clock, first, None if rounds is None else first + rounds - 1, **kw)

    # --- when ---------------------------------------------------------------------------------
    def _due(self, kind: str, r: int) -> float:
        c = self.clock
        if kind == "announce":
            return c.train_deadline(r)
        return c.close_time(r) if kind == "close" else c.tally_time(r)

    def _pending(self) -> tuple[float, int, str, int] | None:
        best = None
        for rank, kind in enumerate(KINDS):
            if kind not in self._next:
                continue
            r = self._next[kind]
            if self.last_round is not None and r > self.last_round:
                continue
            cand = (self._due(kind, r), rank, kind, r)
            if best is None or cand < best:
                best = cand
        return best

    def _pop(self, now: float) -> Action | None:
        """The oldest discrete action due at ``now`` (marked emitted), or None."""
        pending = self._pending()
        if pending is None or pending[0] > now:
            return None
        due, _, kind, r = pending
        self._next[kind] = r + 1
        action = {"announce": Announce(r, due), "close": CloseRound(r, due), "tally": Tally(r, due),
                  "apply": ApplyBase(r + 2, due)}[kind]
        self.emitted.append(action)
        return action

    def next_action(self, now: float) -> Action:
        """The action due at ``now`` (discrete actions are returned once, oldest first)."""
        action = self._pop(now)
        if action is not None:
            return action
        pending = self._pending()
        if pending is None:
            return Done()
        c, due = self.clock, pending[0]
        cur = c.round_at(now)
        if "announce" in self._next and cur >= self.first_round and (self.last_round is None or cur <= self.last_round):
            deadline = c.train_deadline(cur)
            if now < deadline:
                return TrainUntil(cur, min(deadline, due))
        wake = due
        nxt = max(cur + 1, self.first_round)
        if self.last_round is None or nxt <= self.last_round:
            wake = min(wake, c.start(nxt))
        return WaitUntil(wake)

    def due(self, now: float) -> list[Action]:
        """Every discrete action due at ``now``, oldest first, without those of a round more than
        ``lookback`` rounds behind the clock or cancelled by :meth:`failed` (counted in ``dropped``)."""
        floor = None if self.lookback is None else self.clock.round_at(now) - self.lookback
        out = []
        while (action := self._pop(now)) is not None:
            r = action.round - 2 if isinstance(action, ApplyBase) else action.round
            if r in self._skip or (floor is not None and r < floor):
                self.dropped += 1
                continue
            out.append(action)
        return out

    def cancelled(self, round: int) -> bool:
        """Whether :meth:`failed` cancelled ``round`` (a driver holding already-due actions skips them)."""
        return round in self._skip

    def failed(self, round: int) -> None:
        """Round ``round`` failed on the network side: none of its remaining actions are emitted
        (the peer re-syncs a later base instead)."""
        self._skip.add(round)
        self._skip = {r for r in self._skip if r >= round - 8}

    # --- offsets and deadlines -------------------------------------------------------------------
    def is_sync_round(self, base_round: int) -> bool:
        """Whether the base of ``base_round`` is a cross-region sync point (:func:`is_sync_round`)."""
        return is_sync_round(base_round, self.merge_period)

    def fetch_deadline(self, q: int) -> float:
        """Until when round ``q``'s payloads are fetched at its close."""
        return self.clock.tally_time(q) - FETCH_MARGIN_FRAC * self.clock.round_s

    def vote_patience(self, now: float) -> float:
        """Until when a tally at ``now`` waits for the votes of peers that announced included updates."""
        return now + VOTE_PATIENCE_FRAC * self.clock.round_s

    def resync_give_up(self, q: int, now: float) -> float:
        """Until when a re-sync of base ``q + 2`` is tried: 0.15 T before round ``q + 2`` starts (it is not
        needed earlier), at least 1 s. A peer without a base then catches up when its trainer needs it."""
        return max(now + 1.0, self.clock.start(q + 2) - RESYNC_MARGIN_FRAC * self.clock.round_s)

    def should_prefetch(self, r: int, now: float, holds: Callable[[int], bool], last_try: float) -> bool:
        """A peer that holds the base of the round it trains (``r``) but not ``r + 1``'s (it re-synced
        after missing a tally) fetches ``r + 1``'s as soon as the swarm offers it (after tally(r - 1)),
        before close(r) and at most every quarter round; otherwise it would stay a round behind."""
        c = self.clock
        return (holds(r) and not holds(r + 1) and r - 1 >= self.observe_from and c.tally_time(r - 1) <= now
                < c.close_time(r) and now >= last_try + PREFETCH_EVERY_FRAC * c.round_s)

    # --- what ----------------------------------------------------------------------------------
    def may_vote(self, q: int) -> bool:
        """A peer votes on round ``q`` only if it tallied round ``q - 1``'s verdicts (which feed round
        ``q``'s replicated metadata); a joiner computes a candidate but lets informed peers decide."""
        return q == 0 or (q - 1) in self.verdicts

    def verdicts_for(self, q: int) -> tuple[str, ...]:
        """The verdict ids that round ``q``'s computation applies: those agreed at round ``q - 1``'s tally."""
        return self.verdicts.get(q - 1, ())

    def tallied_verdicts(self, q: int, result: TallyResult) -> tuple[str, ...]:
        """Record round ``q``'s verdict-set tally (the decided set, else none); returns it."""
        self.verdicts[q] = tuple(result.inclusion) if result.decided else ()
        self.verdicts.pop(q - 3, None)
        return self.verdicts[q]

    def decide(self, q: int, result: TallyResult, *, candidate: str | None, inclusion: tuple | None,
               winners: Iterable[str], now: float) -> TallyCommand:
        """What to do about base ``q + 2`` after round ``q``'s tally (see the module docstring).
        ``candidate``/``inclusion``: this peer's computed state hash and included digests (None: it did
        not close the round); ``winners``: the voters of the winning state hash."""
        if candidate is not None and inclusion is not None and result.decided \
                and tuple(result.inclusion) != tuple(inclusion):
            return AdoptInclusion(q, tuple(result.inclusion), now + ADOPT_FETCH_FRAC * self.clock.round_s)
        return self.adopted(q, result, candidate=candidate, winners=winners, now=now)

    def adopted(self, q: int, result: TallyResult, *, candidate: str | None, winners: Iterable[str],
                now: float) -> TallyCommand:
        """The settled command once this peer's candidate is final (None: the adopt fell short)."""
        if candidate is not None and (not result.decided or candidate == result.state_hash):
            return KeepState(q, candidate, bool(result.decided), self.is_sync_round(q + 2))
        if not result.decided:
            return NoState(q)
        return ResyncState(q, result.state_hash, self.is_sync_round(q + 2), frozenset(winners),
                           self.resync_give_up(q, now))

    def merge_failed(self, q: int, now: float) -> ResyncState:
        """The merge of base ``q + 2`` was refused (the region is off the global chain): adopt the
        state other regions' merges produced (any target the weighted majority offers), tried until
        the re-sync deadline: their merged states appear only once their merges finish."""
        return ResyncState(q, "", False, frozenset(), self.resync_give_up(q, now))

    @staticmethod
    def keeps_unconfirmed(me: str, electorate: Iterable[str], weights: Mapping[str, float]) -> bool:
        """Whether a kept state whose confirmation ran out of time (no settled majority among the
        region's state records) stays this peer's base: yes for a peer with standing (``weights``:
        those of the base both sides held), or when no other member of the ``electorate`` has any;
        a peer without standing in a region that has some holds no base then and catches up from the
        records of those with standing (a joiner that missed one vote keeps no state they never chose)."""
        return weights.get(me, 0.0) > 0 or not any(weights.get(k, 0.0) > 0 for k in electorate if k != me)

    def must_confirm(self, q: int, command: TallyCommand, electorate: Iterable[str],
                     votes: Mapping[str, str], me: str) -> bool:
        """Whether a kept state is compared with the region's state records before round ``q + 2``:
        always on a sync round (two gateways may merge different region sets), and whenever some
        member of the ``electorate`` did not vote for it (``votes``: voter -> state hash)."""
        if not isinstance(command, KeepState):
            return False
        return command.merge or any(votes.get(k) != command.state_hash for k in electorate if k != me)
