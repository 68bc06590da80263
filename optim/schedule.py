"""Rounds that fit the swarm: the round length is replicated state, decided by one pure rule.

The manifest's ``round_s`` is where a run starts, not a promise. Every update announcement carries
``need_s``, the round length its author's machine measured it needs (:mod:`dai_swarm.lateness`:
the slowest of its post-deadline announce work, its close and its tally, with headroom). When the
base of round ``q+2`` is computed from round ``q``'s agreed update set (:func:`~.rules.compute_next_base`),
:class:`ScheduleRule` reads the ``need_s`` of exactly the agreed updates, weighted by the standing in
the replicated state, and writes the schedule into the base's metadata (``extra["schedule"]``)::

    {"since": R, "start": S, "round_s": T, "n": updates agreed in round q}

Rounds ``r >= R`` start at ``S + (r - R) * T``. Every honest peer holds the same agreed set and the
same standing, hence computes the same schedule (I1); it is inside the state hash, so a peer that
disagrees is in the minority and re-syncs to it. A change decided at base ``q+2`` takes effect from
round ``q+3`` (``R = q+3``, ``S`` the old clock's start of it), so it is known a full round before
it applies, and it changes nothing already under way (I2: every deadline is known in advance).

The rule (:func:`next_length`), for the agreed set of round ``q``:

* **no agreed update** although the previous round had some: the round was too short for anyone
  (or everyone left): ``T * GROW_EMPTY``;
* else ``need`` = standing-weighted median of the agreed ``need_s`` (unweighted while nobody holds
  standing), so keys holding less than half the standing cannot move it; it grows at once to
  ``need`` when ``need > (1 + HYSTERESIS) * T`` (a swarm that falls apart must not wait for several
  steps), and shrinks at most to ``SHRINK * T`` per change when ``need < SHRINK * T``;
* always within the manifest's bounds ``[round_s, round_s_max]``, and at most one change in flight:
  after a change, the next is decided only two rounds after it took effect (so what the peers
  report was measured under it); the manifest's first length is judged from the first tally on.

**Several regions.** Each region decides from its own agreed updates, so per-round changes would
give the regions different clocks and their merge windows would stop meeting. Once a peer sees a
live peer of another region (:attr:`ScheduleRule.multi_region`), while the region of one of the
run's founders is not known yet, or when the last merge combined several regions
(``extra["xregions"]``, replicated), a region only *asks*: the schedule record's ``want`` is
the longest length the rule chose since the last merge. Each region's ``xdelta`` record carries its
schedule and ask; at a merge every merged region takes the longest ask of the regions in it, from
round ``r + 1`` on, starting when the latest of their clocks starts that round
(:meth:`ScheduleRule.at_merge`): the same record in every merged region, so their clocks are one.
A region that merges with nobody while another region is live keeps asking; alone in the run, it
applies its own ask. Changes are then at most one per merge period.

A joiner learns the schedule from the peer records of the run's trust anchors (heartbeats carry
it), then from the verified state it downloads (:meth:`dai_swarm.runtime.RoundRuntime.adopt_schedule`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from dai_swarm.errors import ConfigError, ProtocolError

from .clock import RoundClock

__all__ = ["GROW_EMPTY", "HYSTERESIS", "SHRINK", "XREGIONS", "Schedule", "ScheduleRule", "needs_of",
           "next_length", "schedule_of", "weighted_median"]

KEY = "schedule"
XREGIONS = "xregions"  # extra: how many regions the last cross-region merge combined (crossregion.merged_base)
GROW_EMPTY = 1.5
SHRINK = 0.8
HYSTERESIS = 0.1
SETTLE_ROUNDS = 2  # rounds a new length runs before the next decision


@dataclass(frozen=True)
class Schedule:
    """Rounds ``r >= since`` start at ``start + (r - since) * round_s``; ``n`` is the number of
    updates agreed in the round whose base carries this record."""

    since: int
    start: float
    round_s: float
    n: int = 0
    prev: tuple[int, float, float] | None = None  # the length before: (since, start, round_s)
    gen: float = 0.0  # start of the run generation that decided it (a resumed run starts afresh)
    want: float | None = None  # multi-region: the length asked for since the last merge (applied at the next)

    def __post_init__(self) -> None:
        if self.prev is not None:
            if not isinstance(self.prev, (tuple, list)) or len(self.prev) != 3:
                raise ProtocolError(f"schedule: prev must be [since, start, round_s], got {self.prev!r}")
            Schedule(*self.prev)  # the same checks
            object.__setattr__(self, "prev", (int(self.prev[0]), float(self.prev[1]), float(self.prev[2])))
        if isinstance(self.since, bool) or not isinstance(self.since, int) or self.since < 0:
            raise ProtocolError(f"schedule: since must be a round number, got {self.since!r}")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 0:
            raise ProtocolError(f"schedule: n must be a count, got {self.n!r}")
        if self.want is not None and (isinstance(self.want, bool) or not isinstance(self.want, (int, float))
                                      or not math.isfinite(self.want) or self.want <= 0):
            raise ProtocolError(f"schedule: want must be a positive number of seconds, got {self.want!r}")
        for name in ("start", "round_s", "gen"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ProtocolError(f"schedule: {name} must be a finite number, got {v!r}")
        if self.round_s <= 0:
            raise ProtocolError(f"schedule: round_s must be > 0, got {self.round_s}")

    def to_json(self) -> dict:
        """The replicated form (``extra["schedule"]``)."""
        out = {"since": self.since, "start": float(self.start), "round_s": float(self.round_s), "n": self.n,
               "gen": float(self.gen)}
        if self.prev is not None:
            out["prev"] = list(self.prev)
        if self.want is not None:
            out["want"] = float(self.want)
        return out

    def start_of(self, r: int) -> float:
        """When round ``r >= since`` starts under this schedule."""
        return self.start + (r - self.since) * self.round_s

    def clock(self, base: RoundClock) -> RoundClock:
        """``base`` with this schedule from round ``since`` on (``base`` itself if it already is).

        Rounds from ``since`` start at ``start + (r - since) * round_s`` exactly as every peer
        computes it; rounds from ``prev``'s ``since`` on use ``prev``; earlier ones keep ``base``."""
        t0 = self.start - self.since * self.round_s
        if base.length(self.since) == self.round_s and base.start(self.since) == self.start:
            return base  # the same rounds from ``since`` on (e.g. the manifest's first schedule)
        root = base
        while root.prior is not None:
            root = root.prior
        prior = root
        if self.prev is not None and self.prev[0] < self.since:
            ps, pt, pl = self.prev
            prior = RoundClock(pt - ps * pl, pl, base.close_frac, base.tally_frac, min(root.margin_s, 0.5 * pl),
                               ps, root) if ps > 0 else RoundClock(pt, pl, base.close_frac, base.tally_frac,
                                                                   min(root.margin_s, 0.5 * pl))
        return RoundClock(t0, self.round_s, base.close_frac, base.tally_frac, min(root.margin_s, 0.5 * self.round_s),
                          self.since, prior)


def schedule_of(extra: Mapping | None) -> Schedule | None:
    """The schedule in a base state's metadata, or None (the manifest's clock holds).

    Raises :class:`~dai_swarm.errors.ProtocolError` for a malformed record.
    """
    raw = (extra or {}).get(KEY)
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or set(raw) - {"since", "start", "round_s", "n", "prev", "gen", "want"}:
        raise ProtocolError(f"malformed schedule record {raw!r}")
    try:
        return Schedule(raw["since"], raw["start"], raw["round_s"], raw.get("n", 0), raw.get("prev"),
                        raw.get("gen", 0.0), raw.get("want"))
    except KeyError as e:
        raise ProtocolError(f"schedule record lacks {e}") from e


def weighted_median(pairs: Iterable[tuple[float, float]]) -> float | None:
    """The lower weighted median of ``(weight, value)`` pairs (equal weights if all weights are 0)."""
    pairs = sorted((float(v), max(0.0, float(w))) for w, v in pairs if math.isfinite(float(v)))
    if not pairs:
        return None
    total = sum(w for _, w in pairs)
    if total <= 0:
        pairs, total = [(v, 1.0) for v, _ in pairs], float(len(pairs))
    seen = 0.0
    for v, w in pairs:
        seen += w
        if seen >= total / 2:
            return v
    return pairs[-1][0]


def next_length(round_s: float, needs: list[tuple[float, float]], included: int, previous: int,
                lo: float, hi: float) -> float:
    """The round length after one agreed round (see the module docstring); ``needs`` are
    ``(weight, need_s)`` of the agreed updates, ``previous`` the agreed count of the round before."""
    if included == 0:
        return min(hi, max(lo, round_s * GROW_EMPTY)) if previous > 0 else round_s
    need = weighted_median(needs)
    if need is None:
        return round_s
    if need > (1 + HYSTERESIS) * round_s:
        return min(hi, max(lo, need))
    if need < SHRINK * round_s:
        return min(hi, max(lo, SHRINK * round_s, need))
    return round_s


class ScheduleRule:
    """The hook :func:`~.rules.compute_next_base` calls: ``settle(prev_extra, extra, q, needs, included)``
    returns ``extra`` with the schedule for the base of round ``q + 2`` (see the module docstring).

    ``clock`` is the run generation's starting clock (from the manifest), ``origin`` its first
    round, ``lo``/``hi`` the manifest's bounds. A schedule record of another generation (a resumed
    run's exported state carries its parent's) does not hold: the generation starts on its manifest.
    """

    def __init__(self, clock: RoundClock, lo: float, hi: float, origin: int = 0):
        if not 0 < lo <= hi:
            raise ConfigError(f"need 0 < round_s_min <= round_s_max, got {lo}, {hi}")
        self.clock, self.lo, self.hi, self.origin = clock, float(lo), float(hi), int(origin)
        self.gen = float(clock.start(self.origin))
        self.multi_region = False  # set (for good) once this peer sees a live peer of another region
        self.founders_placed = True  # False while some founder's region is unknown (the runtime sets both)

    def gated(self, extra: Mapping | None) -> bool:
        """Whether lengths change only at cross-region merges: once another region is live, while a
        founder's region is not known yet (it may be another), or when the last merge combined
        several regions (so every region runs the same clock; module docstring)."""
        return self.multi_region or not self.founders_placed or int((extra or {}).get(XREGIONS, 1)) >= 2

    def recorded(self, extra: Mapping | None) -> Schedule | None:
        """The schedule of this generation in a base's metadata, or None (the manifest's clock)."""
        got = schedule_of(extra)
        return got if got is not None and got.gen == self.gen else None

    def current(self, extra: Mapping | None) -> Schedule:
        """The schedule in force in a base's metadata (the manifest's clock when none is recorded)."""
        got = self.recorded(extra)
        return got if got is not None else Schedule(self.origin, self.gen, self.clock.round_s, 0, None, self.gen)

    def settle(self, prev_extra: Mapping, extra: dict, q: int, needs: list[tuple[float, float]],
               included: int | None = None) -> dict:
        """``extra`` (the metadata of the base of round ``q + 2``) with its schedule record;
        ``needs`` as for :func:`next_length`, ``included`` the agreed update count (default: len(needs))."""
        cur = self.current(prev_extra)
        n = len(needs) if included is None else int(included)
        length = cur.round_s
        if q >= cur.since + (SETTLE_ROUNDS if cur.prev is not None else 0):
            length = next_length(cur.round_s, needs, n, cur.n, self.lo, self.hi)
        length = round(length, 2)  # readable lengths; the same float on every peer
        if self.gated(prev_extra):  # several regions: ask for it at the next merge (at_merge)
            want = cur.want if q < cur.since + (SETTLE_ROUNDS if cur.prev is not None else 0) else (
                length if cur.want is None else max(cur.want, length))
            cur = Schedule(cur.since, cur.start, cur.round_s, n, cur.prev, self.gen, want)
        elif length != cur.round_s:
            since = q + 3
            start = cur.start + (since - cur.since) * cur.round_s
            cur = Schedule(since, start, length, n, (cur.since, cur.start, cur.round_s), self.gen)
        else:
            cur = Schedule(cur.since, cur.start, cur.round_s, n, cur.prev, self.gen)
        out = dict(extra)
        out[KEY] = cur.to_json()
        return out

    def published(self, extra: Mapping | None) -> dict:
        """What this region's ``xdelta`` record says of its schedule (:class:`~dai_swarm.dht.wire.XSchedule`)."""
        cur = self.current(extra)
        return {"since": cur.since, "start": float(cur.start), "round_s": float(cur.round_s),
                "want": float(cur.want if cur.want is not None else cur.round_s)}

    def at_merge(self, extra: Mapping, r: int, others: Iterable[tuple[int, float, float, float]], *,
                 alone: bool, follow: bool = False) -> dict:
        """``extra`` (of the merged base of sync round ``r``) with the schedule every merged region
        computes alike: from round ``r + 1`` the longest length any of them asked for (``want``),
        starting when the latest of their clocks starts round ``r + 1`` (so their clocks become one;
        the round before is stretched, which starts only after the merge). ``others``: the admitted
        regions' ``(since, start, round_s, want)``. With none, this region applies its own ``want``
        only if it is ``alone`` (no other region with standing is live); else it keeps asking.
        ``follow``: this region has no member with standing, so the others do not admit its record
        (docs/design.md, "Cross-region trust"): it takes what they compute, without its own ask."""
        cur = self.current(extra)
        others = [o for o in others if o is not None]
        if not others and not alone:
            return dict(extra)
        mine = [(cur.since, cur.start, cur.round_s, cur.want if cur.want is not None else cur.round_s)]
        entries = others if follow and others else mine + others
        length = round(min(self.hi, max(self.lo, max(float(e[3]) for e in entries))), 2)
        since = r + 1
        start = max(float(st) + (since - int(si)) * float(t) for si, st, t, _ in entries)
        if length == cur.round_s and start == cur.start_of(since):
            new = Schedule(cur.since, cur.start, cur.round_s, cur.n, cur.prev, self.gen)
        else:  # (a change decided at this very tally, since == r + 1, is replaced: its prev still holds)
            prev = cur.prev if cur.since >= since else (cur.since, cur.start, cur.round_s)
            new = Schedule(since, start, length, cur.n, prev, self.gen)
        out = dict(extra)
        out[KEY] = new.to_json()
        return out


def needs_of(included: Iterable[Any], weights: Mapping[str, float]) -> list[tuple[float, float]]:
    """``(standing, need_s)`` of agreed announcements that report a need (``a.need_s`` not None)."""
    return [(float(weights.get(a.peer, 0.0)), float(a.need_s)) for a in included
            if getattr(a, "need_s", None) is not None]
