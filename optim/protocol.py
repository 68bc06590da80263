"""The round planner: which protocol action is due now, as a typed value.

A driver (the network loop, or a simulator) is a loop over :meth:`RoundPlanner.next_action`::

    while not isinstance(action := planner.next_action(now()), Done):
        handle(action)          # TrainUntil -> run inner steps until action.deadline, etc.

Every discrete action is returned exactly once, in order of its due time, and its due time
depends on the clock only, never on another peer (I2: no peer waits on another beyond a round
deadline). A driver that fell behind gets the overdue actions one after another and can look at
``action.due`` to see how late it is. For round ``r`` the actions are:

* ``TrainUntil(r, deadline)``: while ``now`` is in ``[start(r), train_deadline(r))``; the deadline
  is cut short at the next discrete action so the driver can handle it between inner steps;
* ``Announce(r)`` at ``train_deadline(r)``: encode and announce the update (skip if none);
* ``CloseRound(r)`` at ``close_time(r)``: close the book, publish the vote;
* ``Tally(r)`` at ``tally_time(r)``: tally the votes, adopt the majority inclusion if needed;
* ``ApplyBase(r + 2)`` right after: compute ``θ_{r+2} = outer_step(θ_{r+1}, aggregate(r))``.

``WaitUntil(t)`` means nothing is due before ``t``; ``Done`` that the planned rounds are over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from dai_swarm.errors import ConfigError

from .clock import RoundClock

__all__ = [
    "Action",
    "Announce",
    "ApplyBase",
    "CloseRound",
    "Done",
    "RoundPlanner",
    "Tally",
    "TrainUntil",
    "WaitUntil",
]


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
    """Tally round ``round``'s votes; adopt the winning inclusion if this peer is in the minority."""

    round: int
    due: float


@dataclass(frozen=True)
class ApplyBase:
    """Compute the base of ``round`` (= outer step of round ``round - 2``'s aggregate)."""

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

# discrete kinds, in the order they are emitted when due at the same instant
_KINDS = ("announce", "close", "tally", "apply")


class RoundPlanner:
    """Emits the due protocol actions of a peer that trains rounds ``first_round .. last_round``.

    The peer also closes and tallies round ``first_round - 1`` (whose outcome gives the base of
    ``first_round + 1``). ``last_round=None`` plans forever. Pure: time is always an argument.
    """

    def __init__(self, clock: RoundClock, first_round: int, last_round: int | None = None) -> None:
        if not isinstance(clock, RoundClock):
            raise ConfigError("clock must be a RoundClock")
        if isinstance(first_round, bool) or not isinstance(first_round, int) or first_round < 0:
            raise ConfigError(f"first_round must be an int >= 0, got {first_round!r}")
        if last_round is not None and (isinstance(last_round, bool) or not isinstance(last_round, int)
                                       or last_round < first_round):
            raise ConfigError(f"last_round must be an int >= first_round, got {last_round!r}")
        self.clock, self.first_round, self.last_round = clock, first_round, last_round
        observe = max(0, first_round - 1)
        self._next = {"announce": first_round, "close": observe, "tally": observe, "apply": observe}
        self.emitted: list[Action] = []

    @classmethod
    def for_joiner(cls, clock: RoundClock, now: float, rounds: int | None = None) -> "RoundPlanner":
        """Planner for a peer joining at ``now``: it syncs state, then trains from the next round."""
        first = max(0, clock.round_at(now) + 1)
        return cls(clock, first, None if rounds is None else first + rounds - 1)

    def _due(self, kind: str, r: int) -> float:
        c = self.clock
        if kind == "announce":
            return c.train_deadline(r)
        if kind == "close":
            return c.close_time(r)
        return c.tally_time(r)

    def _pending(self) -> tuple[float, int, str, int] | None:
        best = None
        for rank, kind in enumerate(_KINDS):
            r = self._next[kind]
            if self.last_round is not None and r > self.last_round:
                continue
            cand = (self._due(kind, r), rank, kind, r)
            if best is None or cand < best:
                best = cand
        return best

    def _emit(self, action: Action) -> Action:
        self.emitted.append(action)
        return action

    def next_action(self, now: float) -> Action:
        """The action due at ``now`` (discrete actions are returned once, oldest first)."""
        c = self.clock
        pending = self._pending()
        if pending is None:
            return Done()
        due, _, kind, r = pending
        if due <= now:
            self._next[kind] = r + 1
            if kind == "announce":
                return self._emit(Announce(r, due))
            if kind == "close":
                return self._emit(CloseRound(r, due))
            if kind == "tally":
                return self._emit(Tally(r, due))
            return self._emit(ApplyBase(r + 2, due))
        cur = c.round_at(now)
        if cur >= self.first_round and (self.last_round is None or cur <= self.last_round):
            deadline = c.train_deadline(cur)
            if now < deadline:
                return TrainUntil(cur, min(deadline, due))
        wake = due
        nxt = max(cur + 1, self.first_round)
        if self.last_round is None or nxt <= self.last_round:
            wake = min(wake, c.start(nxt))
        return WaitUntil(wake)
