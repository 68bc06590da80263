"""A peer follows the run's round schedule: from the agreed bases it loads, and, as a joiner that
holds no state yet, from the peer records of the run's trust anchors.

The schedule itself is replicated state decided by one pure rule (:mod:`dai_swarm.optim.schedule`);
this module only turns the newest recorded schedule into the peer's :class:`RoundClock` and keeps
what status, metrics and the dashboard show (the round length over time).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from .errors import ProtocolError
from .logging import get_logger
from .optim.clock import RoundClock
from .optim.schedule import Schedule, ScheduleRule, schedule_of

__all__ = ["Pace"]

logger = get_logger("dai_swarm.runtime")


class Pace:
    """The schedule a peer follows. ``rule`` is None when the run keeps fixed rounds."""

    def __init__(self, clock: RoundClock, rule: ScheduleRule | None):
        self.clock, self.rule = clock, rule
        self.adopted: Schedule | None = None
        self.adopted_round = -1  # round of the base whose record was adopted (-1: from peer records)

    def follow(self, extra: Mapping | None, round: int) -> RoundClock | None:
        """Adopt the schedule recorded in the base of ``round`` unless a newer base's is held.
        Returns the new clock when it changed, else None."""
        if self.rule is None or round < self.adopted_round:
            return None
        try:
            got = self.rule.recorded(extra)
        except ProtocolError as e:  # inside a hash-verified state: a bug or another version
            logger.warning("base of round %d carries an unreadable schedule: %s", round, e)
            return None
        if got is None:
            return None
        self.adopted_round = round
        return self._adopt(got)

    def from_peers(self, records: Iterable[tuple[str, Any]], anchors: frozenset[str]) -> RoundClock | None:
        """A joiner's first guess: the schedule the anchors' peer records report (``(key, json)``
        pairs); without an anchor, the one most live peers report. It only decides which rounds
        the joiner asks for; the state it then downloads carries the schedule that holds."""
        if self.rule is None or self.adopted is not None:
            return None
        got = self._reported(records, anchors)
        return self._adopt(got) if got is not None else None

    def newer_from_peers(self, records: Iterable[tuple[str, Any]], anchors: frozenset[str]) -> RoundClock | None:
        """A peer that fell behind while the schedule changed finds no donor on its old clock: take
        the schedule the live peer records report (weighted as in :meth:`from_peers`) if it starts
        later than the one held. Like a joiner's guess it only decides which rounds to ask for."""
        if self.rule is None:
            return None
        got = self._reported(records, anchors)
        if got is None or (self.adopted is not None and got.since <= self.adopted.since):
            return None
        return self._adopt(got)

    def _reported(self, records: Iterable[tuple[str, Any]], anchors: frozenset[str]) -> Schedule | None:
        assert self.rule is not None
        seen: dict[str, tuple[int, Schedule]] = {}
        for key, raw in records:
            try:
                got = schedule_of({"schedule": raw}) if raw is not None else None
            except ProtocolError:
                continue
            if got is None or got.gen != self.rule.gen:
                continue
            tag = repr(got.to_json())
            n, _ = seen.get(tag, (0, got))
            seen[tag] = (n + (1_000_000 if key in anchors else 1), got)
        if not seen:
            return None
        return max(seen.values(), key=lambda v: (v[0], v[1].since))[1]

    def _adopt(self, got: Schedule) -> RoundClock | None:
        self.adopted = got
        clock = got.clock(self.clock)
        if clock is self.clock:
            return None
        self.clock = clock
        logger.info("round schedule: rounds from %d last %.2f s (round %d: %.2f s)", got.since, got.round_s,
                    got.since - 1, clock.length(max(0, got.since - 1)))
        return clock

    def status(self) -> dict | None:
        """The schedule in force (``since``, ``start``, ``round_s``), for status and peer records."""
        if self.adopted is None:
            return None
        out = self.adopted.to_json()
        out.pop("n", None)
        return out
