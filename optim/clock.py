"""The round clock: pure arithmetic that maps wall-clock seconds to rounds and their deadlines.

Round ``r`` spans ``[t0 + r*T, t0 + (r+1)*T)``. While the swarm trains round ``r+1`` it finishes
round ``r``'s bookkeeping inside round ``r+1``'s span:

====================  =============================  ==============================================
instant               formula                        what happens
====================  =============================  ==============================================
``start(r)``          ``t0 + r*T``                   inner training of round ``r`` starts
``train_deadline(r)`` ``end(r) - margin_s``          stop inner steps, encode and announce
``end(r)``            ``t0 + (r+1)*T``               round ``r`` ends, ``r+1`` starts
``close_time(r)``     ``end(r) + close_frac*T``      round ``r``'s update set is closed; vote
``tally_time(r)``     ``end(r) + tally_frac*T``      votes tallied; base of ``r+2`` computed
====================  =============================  ==============================================

Nothing here reads a clock: the time is always an argument, so the same code runs under the real
wall clock, under a fake clock in tests and inside a simulator.

Round lengths may change during a run (:mod:`dai_swarm.optim.schedule`): :meth:`RoundClock.following`
returns the clock whose rounds from ``since`` on last ``T'``, starting where the old clock ends round
``since - 1``; rounds and instants before that keep the old clock (``prior``). A close or tally of
round ``r`` lies in round ``r+1``'s span and uses that round's length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dai_swarm.errors import ConfigError

__all__ = ["CLOSE_FRAC", "TALLY_FRAC", "RoundClock"]


def _finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _round_index(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an int, got {value!r}")
    return value


#: Where round ``r``'s close and tally fall inside round ``r+1`` (fractions of T): one definition for
#: the real peer, the simulator and the tests. Close at 0.3 T leaves late announcements of a loaded
#: peer time to arrive; tally at 0.55 T leaves 0.45 T for a minority peer's re-sync before ``end(r+1)``.
CLOSE_FRAC, TALLY_FRAC = 0.3, 0.55


@dataclass(frozen=True)
class RoundClock:
    """Wall-clock rounds of length ``round_s`` seconds starting at ``t0`` (Unix seconds).

    ``close_frac`` and ``tally_frac`` place round ``r``'s close and tally inside round ``r+1``
    (``0 < close_frac < tally_frac < 1``, so the next base state is ready before ``end(r+1)``).
    ``margin_s`` is how long before ``end(r)`` inner training must stop so the update can be
    encoded and announced in time (``0 <= margin_s < round_s``). Invalid values raise
    :class:`~dai_swarm.errors.ConfigError`.
    """

    t0: float
    round_s: float
    close_frac: float = CLOSE_FRAC
    tally_frac: float = TALLY_FRAC
    margin_s: float = 0.0
    since: int | None = None  # first round of this length (None: every round)
    prior: "RoundClock | None" = None  # the clock of the rounds before ``since``

    def __post_init__(self) -> None:
        t0 = _finite("t0", self.t0)
        round_s = _finite("round_s", self.round_s)
        close_frac = _finite("close_frac", self.close_frac)
        tally_frac = _finite("tally_frac", self.tally_frac)
        margin_s = _finite("margin_s", self.margin_s)
        if round_s <= 0:
            raise ConfigError(f"round_s must be > 0, got {round_s}")
        if not 0.0 < close_frac < tally_frac < 1.0:
            raise ConfigError(
                f"need 0 < close_frac < tally_frac < 1, got close_frac={close_frac}, tally_frac={tally_frac}"
            )
        if not 0.0 <= margin_s < round_s:
            raise ConfigError(f"need 0 <= margin_s < round_s, got margin_s={margin_s}, round_s={round_s}")
        for name, value in (("t0", t0), ("round_s", round_s), ("close_frac", close_frac),
                            ("tally_frac", tally_frac), ("margin_s", margin_s)):
            object.__setattr__(self, name, value)
        if (self.since is None) != (self.prior is None):
            raise ConfigError("since and prior go together")
        if self.since is not None:
            _round_index("since", self.since)

    def following(self, since: int, round_s: float, keep: int = 2) -> "RoundClock":
        """The clock whose rounds from ``since`` on last ``round_s`` seconds; round ``since`` starts
        at this clock's ``start(since)`` and every earlier round keeps this clock. At most ``keep``
        earlier lengths are remembered (older instants are never asked for)."""
        since = _round_index("since", since)
        start = self.start(since)
        round_s = _finite("round_s", round_s)
        if round_s <= 0:
            raise ConfigError(f"round_s must be > 0, got {round_s}")
        return RoundClock(start - since * round_s, round_s, self.close_frac, self.tally_frac,
                          min(self.margin_s, 0.5 * round_s), since, self._trimmed(keep))

    def _trimmed(self, keep: int) -> "RoundClock":
        if self.prior is None:
            return self
        if keep <= 1:  # forget older lengths: this one then stands for every earlier round
            return RoundClock(self.t0, self.round_s, self.close_frac, self.tally_frac, self.margin_s)
        return RoundClock(self.t0, self.round_s, self.close_frac, self.tally_frac, self.margin_s,
                          self.since, self.prior._trimmed(keep - 1))

    def length(self, r: int) -> float:
        """How long round ``r`` lasts (the newest length from ``since`` on)."""
        if self.since is not None and _round_index("r", r) < self.since:
            return self.prior.length(r)
        return self.round_s

    def round_at(self, t: float) -> int:
        """The round whose span contains ``t``; negative before ``t0`` (round -1 ends at ``t0``).

        Exact at the edges: ``round_at(start(r)) == r`` and ``round_at(end(r)) == r + 1`` even when
        the float division would round the other way.
        """
        t = _finite("t", t)
        if self.since is not None and t < self.start(self.since):
            return self.prior.round_at(t)
        r = math.floor((t - self.t0) / self.round_s)
        while self.start(r + 1) <= t:
            r += 1
        while self.start(r) > t:
            r -= 1
        return r

    def start(self, r: int) -> float:
        """Instant round ``r`` starts (``t0 + r*T``)."""
        if self.since is not None and _round_index("r", r) < self.since:
            return self.prior.start(r)
        return self.t0 + _round_index("r", r) * self.round_s

    def end(self, r: int) -> float:
        """Instant round ``r`` ends, which is the start of round ``r+1``."""
        return self.start(_round_index("r", r) + 1)

    def train_deadline(self, r: int, margin_s: float | None = None) -> float:
        """Instant inner training of round ``r`` must stop: ``end(r) - margin_s``.

        ``margin_s`` defaults to the clock's own margin; it must satisfy ``0 <= margin_s < T``.
        """
        m = self.margin_s if margin_s is None else _finite("margin_s", margin_s)
        if not 0.0 <= m < self.length(r):
            raise ConfigError(f"need 0 <= margin_s < round_s, got {m}")
        return self.end(r) - m

    def close_time(self, r: int) -> float:
        """Instant round ``r``'s update set is closed locally and the peer publishes its vote."""
        return self.end(r) + self.close_frac * self.length(r + 1)

    def tally_time(self, r: int) -> float:
        """Instant round ``r``'s votes are tallied and the base of round ``r+2`` is computed.

        Always strictly before ``end(r+1)``, i.e. before round ``r+2`` starts.
        """
        return self.end(r) + self.tally_frac * self.length(r + 1)
