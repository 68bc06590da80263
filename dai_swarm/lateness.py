"""Is this peer too slow for the run's rounds? Missed rounds and the round length it would need.

A peer trains until the training deadline, then encodes and announces its update; the round's
update set closes ``close_frac`` of a round after the round ends (:mod:`dai_swarm.optim.clock`).
An update announced after the close, or one the swarm's agreed set does not contain, is work
thrown away. :class:`Lateness` keeps the last ``window`` rounds this peer announced an update in;
when ``threshold`` of them missed the agreed set it logs a warning once per streak, and
:meth:`Lateness.status` (shown in the peer's status and metrics) says how late its announcements
were and the round length at which they would have fitted: the post-deadline work ``d`` (from the
training deadline to the announcement) must fit in the slack ``margin + close_frac * T``, so
``T >= (d - margin) / close_frac`` (a 20% headroom is added). A peer that misses the set although
it announced in time is out of step with its region (re-syncing on a loaded machine): it is told
that instead, with no round length.

:meth:`Lateness.need_s` is what this peer reports in each update announcement for the adaptive
round length (:mod:`dai_swarm.optim.schedule`): with 20% headroom, the largest of the medians over
the last rounds of (a) the announce work ``(d - margin) / close_frac``, (b) its close (fetch, check,
aggregate, vote), which must end by the tally: ``close_s / (tally_frac - close_frac)``, and (c) its
tally, whose base must be ready when the round after next starts: ``lag / (1 - tally_frac)``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from .logging import get_logger

__all__ = ["Lateness", "RoundTiming"]

logger = get_logger(__name__)
HEADROOM = 1.2


@dataclass(frozen=True)
class RoundTiming:
    """One announced round of this peer: when its training stopped, when the announcement was
    done, the round's close instant, and whether the agreed update set included it."""

    round: int
    deadline: float
    announced_at: float
    close_time: float
    included: bool


class Lateness:
    """The last ``window`` announced rounds of this peer (see the module docstring)."""

    def __init__(self, clock: Any, *, window: int = 5, threshold: int = 3):
        self.set_clock(clock)
        self.work: deque[tuple[float, float]] = deque(maxlen=int(window))  # (close_s, tally lag) per round
        self.threshold = int(threshold)
        self.recent: deque[RoundTiming] = deque(maxlen=int(window))
        self._warned = False
        self._announced: dict[int, tuple[float, float, float]] = {}  # round -> (deadline, announced at, close)

    def set_clock(self, clock: Any) -> None:
        """Measure against ``clock`` (a RoundClock; the schedule changed)."""
        self.clock = clock  # its round length, margin and close fraction
        self.round_s, self.margin_s, self.close_frac = float(clock.round_s), float(clock.margin_s), float(clock.close_frac)

    def tallied(self, close_s: float, tally_lag_s: float) -> None:
        """One round's close took ``close_s`` and its base was ready ``tally_lag_s`` after the tally instant."""
        self.work.append((max(0.0, float(close_s)), max(0.0, float(tally_lag_s))))

    def need_s(self) -> float | None:
        """The round length this machine's recent rounds call for (see the module docstring), or None."""
        c = self.clock
        terms = []
        if self.recent:
            lags = sorted(t.announced_at - t.deadline for t in self.recent)
            terms.append((lags[len(lags) // 2] - c.margin_s) / c.close_frac)
        if self.work:
            closes = sorted(w[0] for w in self.work)
            tallies = sorted(w[1] for w in self.work)
            terms.append(closes[len(closes) // 2] / (c.tally_frac - c.close_frac))
            terms.append(tallies[len(tallies) // 2] / (1.0 - c.tally_frac))
        return round(HEADROOM * max(0.0, *terms), 3) if terms else None

    def announced(self, round: int, at: float) -> None:
        """This peer finished announcing its update of ``round`` at ``at`` (Unix seconds)."""
        self._announced[round] = (self.clock.train_deadline(round), at, self.clock.close_time(round))
        for old in [r for r in self._announced if r < round - 8]:  # rounds that never closed here
            del self._announced[old]

    def closed(self, round: int, included: bool) -> bool | None:
        """Round ``round`` was tallied: record it if this peer announced in it (see :meth:`record`)."""
        got = self._announced.pop(round, None)
        if got is None:
            return None
        return self.record(RoundTiming(round, got[0], got[1], got[2], bool(included)))

    def record(self, timing: RoundTiming) -> bool:
        """Add one announced round; True when this peer is persistently late (warned once per streak)."""
        self.recent.append(timing)
        late = self.persistently_late()
        if late and not self._warned:
            st = self.status()
            if st["needed_round_s"] is not None:
                logger.warning("this peer's update missed the agreed set in %d of its last %d rounds (announced %.1f s "
                               "after the training deadline; the set closes %.1f s after it): the run needs rounds of "
                               "about %.0f s for this machine (now %.0f s); use a faster machine, fewer inner steps "
                               "or ask the run's founder for longer rounds", st["missed"], len(self.recent),
                               st["announce_lag_s"], st["slack_s"], st["needed_round_s"], self.round_s)
            else:
                logger.warning("this peer's update missed the agreed set in %d of its last %d rounds although it was "
                               "announced in time (%.1f s after the training deadline, the set closes %.1f s after "
                               "it): this peer keeps falling out of step with its region (re-syncs; a loaded "
                               "machine or a slow link)", st["missed"], len(self.recent), st["announce_lag_s"],
                               st["slack_s"])
        self._warned = late
        return late

    def persistently_late(self) -> bool:
        """At least ``threshold`` of the recent announced rounds missed the agreed set."""
        return sum(not t.included for t in self.recent) >= self.threshold

    def status(self) -> dict:
        """Missed rounds, the median post-deadline lag and the round length it needs (None: fits)."""
        if not self.recent:
            return {"missed": 0, "rounds": 0, "need_s": self.need_s(), "announce_lag_s": None, "slack_s": None, "needed_round_s": None,
                    "late": False}
        lags = sorted(t.announced_at - t.deadline for t in self.recent)
        lag = lags[len(lags) // 2]
        slack = self.margin_s + self.close_frac * self.round_s
        needed = max(self.round_s, HEADROOM * (lag - self.margin_s) / self.close_frac) \
            if self.persistently_late() and lag > slack else None  # else late for another reason than speed
        return {"missed": sum(not t.included for t in self.recent), "rounds": len(self.recent), "need_s": self.need_s(),
                "announce_lag_s": round(lag, 3), "slack_s": round(slack, 3),
                "needed_round_s": round(needed, 1) if needed is not None else None, "late": self.persistently_late()}
