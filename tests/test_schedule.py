"""Adaptive round lengths: the clock across a change, the pure rule, the replicated record, how a
peer follows it, and what a peer reports (optim/schedule.py, optim/clock.py, dai_swarm/pace.py,
dai_swarm/lateness.py)."""

from __future__ import annotations

import math

import pytest
import torch

from dai_swarm.errors import ConfigError, MalformedRecord, ProtocolError
from dai_swarm.lateness import Lateness
from dai_swarm.optim.book import BookLimits, RoundBook, UpdateAnnouncement
from dai_swarm.optim.clock import RoundClock
from dai_swarm.optim.rules import NullVerifier, compute_next_base
from dai_swarm.optim.schedule import (GROW_EMPTY, SHRINK, Schedule, ScheduleRule, next_length, schedule_of,
                                      weighted_median)
from dai_swarm.optim.states import BaseState
from dai_swarm.pace import Pace

T0 = 1_000.0


def test_clock_following_keeps_the_past_and_moves_the_future():
    c = RoundClock(T0, 10.0, margin_s=1.0)
    d = c.following(5, 20.0)
    assert [d.start(r) for r in (0, 4, 5, 6, 7)] == [T0, T0 + 40, T0 + 50, T0 + 70, T0 + 90]
    assert d.round_at(T0 + 49.999) == 4 and d.round_at(T0 + 50) == 5 and d.round_at(T0 + 69.999) == 5
    assert d.round_at(T0 + 70) == 6 and d.round_at(T0 - 0.1) == -1
    assert d.length(4) == 10.0 and d.length(5) == 20.0
    # the close and tally of round 4 lie in round 5's span and use its length; a tally still ends before end(r+1)
    assert d.close_time(4) == pytest.approx(T0 + 50 + 0.3 * 20) and d.tally_time(4) == pytest.approx(T0 + 50 + 0.55 * 20)
    for r in range(0, 9):
        assert d.start(r) < d.close_time(r - 1 if r else 0) or r == 0
        assert d.tally_time(r) < d.end(r + 1)
        assert d.round_at(d.start(r)) == r
    # a third length: the oldest stays reachable through the chain
    e = d.following(8, 15.0)
    assert e.start(8) == d.start(8) and e.start(9) == d.start(8) + 15 and e.start(6) == d.start(6) and e.start(2) == T0 + 20
    with pytest.raises(ConfigError):
        c.following(3, 0.0)
    with pytest.raises(ConfigError):
        RoundClock(T0, 10.0, since=3)


def test_weighted_median_resists_a_minority_of_standing():
    assert weighted_median([]) is None
    assert weighted_median([(1.0, 5.0), (1.0, 7.0), (1.0, 100.0)]) == 7.0
    # ten keys without standing shouting 1000 s count for nothing while anyone holds standing
    assert weighted_median([(0.4, 6.0), (0.35, 8.0)] + [(0.0, 1000.0)] * 10) == 6.0
    assert weighted_median([(0.3, 6.0), (0.7, 900.0)]) == 900.0  # a standing majority can (within the bounds)
    assert weighted_median([(0.0, 3.0), (0.0, 9.0), (0.0, 4.0)]) == 4.0  # nobody has standing: equal weights


@pytest.mark.parametrize("round_s,needs,included,previous,want", [
    (6.0, [(1, 30.0), (1, 34.0), (1, 20.0)], 3, 3, 30.0),        # grows at once to what the machines need
    (6.0, [(1, 300.0)] * 3, 3, 3, 48.0),                         # ... within the manifest's bound
    (6.0, [(1, 6.5)] * 3, 3, 3, 6.0),                            # inside the hysteresis: unchanged
    (20.0, [(1, 2.0)] * 3, 3, 3, 20.0 * SHRINK),                 # shrinks slowly
    (20.0, [(1, 2.0)] * 3, 3, 3, 20.0 * SHRINK),
    (7.0, [(1, 2.0)] * 3, 3, 3, 6.0),                            # never below the manifest's length
    (6.0, [], 0, 4, 6.0 * GROW_EMPTY),                           # an empty round after a full one
    (6.0, [], 0, 0, 6.0),                                        # nobody trains: nothing to learn
    (6.0, [], 3, 3, 6.0),                                        # old peers report nothing: unchanged
])
def test_next_length(round_s, needs, included, previous, want):
    assert next_length(round_s, needs, included, previous, 6.0, 48.0) == pytest.approx(want)


def test_rule_records_a_change_three_rounds_ahead_and_settles_before_the_next():
    clock = RoundClock(T0, 6.0, margin_s=0.6)
    rule = ScheduleRule(clock, 6.0, 48.0)
    extra: dict = {}
    seen = []
    for q in range(0, 14):
        extra = rule.settle(extra, {"epoch_samples": q}, q, [(1.0, 25.004)] * 3)
        seen.append(schedule_of(extra))
    first = seen[0]
    assert first.since == 3 and first.round_s == 25.0 and first.start == T0 + 3 * 6.0 and first.prev == (0, T0, 6.0)
    assert all(s == Schedule(3, T0 + 18, 25.0, 3, (0, T0, 6.0), T0) for s in seen)  # need met: no further change
    # the metadata other hooks wrote is kept
    assert extra["epoch_samples"] == 13
    # a second change: only two rounds after the first took effect (q >= 5), then from q + 3
    extra = rule.settle({"schedule": seen[0].to_json()}, {}, 4, [(1.0, 40.0)])
    assert schedule_of(extra).since == 3
    extra = rule.settle({"schedule": seen[0].to_json()}, {}, 5, [(1.0, 40.0)])
    s = schedule_of(extra)
    assert (s.since, s.round_s, s.start, s.prev) == (8, 40.0, T0 + 18 + 5 * 25.0, (3, T0 + 18, 25.0))


def test_another_generations_schedule_does_not_hold():
    clock = RoundClock(T0, 6.0)
    parent = ScheduleRule(clock, 6.0, 48.0)
    extra = parent.settle({}, {}, 0, [(1.0, 30.0)])
    resumed = ScheduleRule(clock, 6.0, 48.0, origin=40)  # a later generation of the run, from round 40
    assert resumed.recorded(extra) is None
    assert resumed.current(extra) == Schedule(40, T0 + 240, 6.0, 0, None, T0 + 240)


@pytest.mark.parametrize("raw", [
    [1, 2, 3], {"since": 3}, {"since": -1, "start": T0, "round_s": 5.0}, {"since": 3, "start": T0, "round_s": 0},
    {"since": 3, "start": math.inf, "round_s": 5.0}, {"since": 3, "start": T0, "round_s": 5.0, "evil": 1},
    {"since": True, "start": T0, "round_s": 5.0}, {"since": 3, "start": T0, "round_s": 5.0, "prev": [1, 2]},
])
def test_malformed_schedule_records_are_typed_errors(raw):
    with pytest.raises(ProtocolError):
        schedule_of({"schedule": raw})


def test_a_joiner_builds_the_same_clock_from_the_record_as_a_peer_that_followed_every_change():
    manifest_clock = RoundClock(T0, 6.0, margin_s=0.6)
    rule = ScheduleRule(manifest_clock, 6.0, 48.0)
    follower, extra = manifest_clock, {}
    for q, need in ((0, 20.0), (5, 7.0), (10, 30.0)):
        extra = rule.settle(extra, {}, q, [(1.0, need)])
        follower = schedule_of(extra).clock(follower)
    joiner = schedule_of(extra).clock(manifest_clock)
    last = schedule_of(extra)
    for r in range(last.prev[0], last.since + 6):
        assert joiner.start(r) == follower.start(r) and joiner.close_time(r) == follower.close_time(r)
    for t in (follower.start(last.prev[0]) + 0.5, follower.start(last.since) - 0.01, follower.start(last.since + 3)):
        assert joiner.round_at(t) == follower.round_at(t)


def test_pace_follows_the_newest_base_and_a_joiner_trusts_its_anchors():
    clock = RoundClock(T0, 6.0)
    rule = ScheduleRule(clock, 6.0, 48.0)
    newer = rule.settle({}, {}, 0, [(1.0, 30.0)])
    older = rule.settle({}, {}, 0, [(1.0, 12.0)])
    pace = Pace(clock, rule)
    assert pace.follow(newer, 2) is not None and pace.clock.length(3) == 30.0
    assert pace.follow(older, 1) is None and pace.clock.length(3) == 30.0  # an older base changes nothing
    assert pace.status()["round_s"] == 30.0
    joiner = Pace(clock, rule)
    got = joiner.from_peers([("a" * 64, older["schedule"]), ("b" * 64, older["schedule"]), ("f" * 64, newer["schedule"]),
                             ("c" * 64, {"since": "x"})], anchors=frozenset({"f" * 64}))
    assert got is not None and got.length(3) == 30.0
    assert Pace(clock, None).follow(newer, 2) is None  # fixed rounds


def test_a_peer_left_behind_by_a_schedule_change_takes_only_a_newer_schedule_from_peer_records():
    clock = RoundClock(T0, 6.0)
    rule = ScheduleRule(clock, 6.0, 48.0)
    first = rule.settle({}, {}, 0, [(1.0, 12.0)])
    second = rule.settle(first, {}, 5, [(1.0, 30.0)])
    assert schedule_of(second).since > schedule_of(first).since
    laggard = Pace(clock, rule)
    assert laggard.newer_from_peers([], frozenset()) is None  # nobody reports a schedule: keep the clock
    assert laggard.follow(first, 2) is not None
    held = laggard.clock
    # the schedule it holds, or an older one, changes nothing whatever the number of keys reporting it
    assert laggard.newer_from_peers([(k * 64, first["schedule"]) for k in "abcde"], frozenset()) is None
    assert laggard.newer_from_peers([(k * 64, {"since": "x"}) for k in "abc"], frozenset()) is None
    got = laggard.newer_from_peers([("a" * 64, first["schedule"]), ("f" * 64, second["schedule"])],
                                   anchors=frozenset({"f" * 64}))
    assert got is not None and got is laggard.clock and got.length(20) == schedule_of(second).round_s
    assert got.start(3) == held.start(3)  # rounds before the change keep their times
    assert Pace(clock, None).newer_from_peers([("f" * 64, second["schedule"])], frozenset({"f" * 64})) is None


def _ann(peer: str, need: float | None, **kw) -> UpdateAnnouncement:
    return UpdateAnnouncement(run_id="run", round=4, base_hash="a" * 64, peer=peer, steps=2, samples=8, codec="none",
                              digest=peer[:2] * 32, size_bytes=100, need_s=need, **kw)


@pytest.mark.parametrize("need", [-1.0, math.nan, math.inf, True, "5", 1e6])
def test_announcement_need_must_be_a_plausible_number_of_seconds(need):
    with pytest.raises(MalformedRecord):
        _ann("ab" * 32, need)


def test_compute_next_base_writes_the_same_schedule_for_the_agreed_needs():
    like = BaseState.initial(torch.nn.Linear(3, 2))
    base = BaseState.make(5, like.params, like.momentum, {}, like.anchor)
    rule = ScheduleRule(RoundClock(T0, 6.0), 6.0, 48.0)
    book = RoundBook("run", 4, "a" * 64, limits=BookLimits(max_inner_steps=10, batch_size=4, max_payload_bytes=10_000,
                                                           codecs=frozenset({"none"})))
    anns = [_ann(k * 64, n) for k, n in (("a", 20.0), ("b", 30.0), ("c", None))]
    for a in anns:
        assert not hasattr(book.offer(a), "error")
        book.mark_fetched(a.digest, True)
    assert len(book.close()) == 3
    payloads = {a.digest: {n: torch.full_like(p, 0.01) for n, p in base.params.items()} for a in anns}
    got = [compute_next_base(book, payloads, base, None, NullVerifier(), (), outer_lr=1.0, outer_momentum=0.0,
                             schedule=rule) for _ in range(2)]
    assert got[0].hash == got[1].hash
    s = schedule_of(got[0].extra)
    assert s.n == 3 and s.round_s == 20.0 and s.since == 7  # the lower median of 20 and 30, from round 4 + 3


def test_lateness_reports_the_round_length_its_work_needs():
    lat = Lateness(RoundClock(T0, 10.0, margin_s=1.0))
    assert lat.need_s() is None
    lat.tallied(close_s=2.0, tally_lag_s=0.9)
    lat.announced(0, T0 + 9.0 + 1.6)  # 1.6 s after the training deadline
    lat.closed(0, True)
    # max((1.6 - 1) / 0.3, 2.0 / 0.25, 0.9 / 0.45) = 8.0, with 20% headroom
    assert lat.need_s() == pytest.approx(9.6)
    assert lat.status()["need_s"] == pytest.approx(9.6)


def test_swarm_refuses_a_longest_round_below_the_first_and_names_invalid_settings():
    from dai_swarm.swarm import Swarm, _manifest

    with pytest.raises(ConfigError, match="round_s_max"):
        Swarm("regression", "run", round_s=5.0, round_s_max=2.0)
    with pytest.raises(ConfigError, match="round_s: Input should be greater than 0"):
        _manifest(run_id="run", task="regression", task_config_hash="h", round_s=-1.0, cross_region_period=1,
                  max_inner_steps=1, outer_lr=1.0, outer_momentum=0.0, codec="int8", checks_per_update=0.25, seed=0,
                  t0=T0)
    with pytest.raises(ConfigError, match="founders"):
        _manifest(run_id="run", task="regression", task_config_hash="h", round_s=5.0, cross_region_period=1,
                  max_inner_steps=1, outer_lr=1.0, outer_momentum=0.0, codec="int8", checks_per_update=0.25, seed=0,
                  t0=T0, founders=tuple(f"{i:064x}" for i in range(17)))


# --- several regions: lengths change only at merges, to one clock for every merged region ------------------


def test_with_several_regions_a_region_only_asks_and_the_longest_ask_of_its_period_stands():
    rule = ScheduleRule(RoundClock(T0, 6.0), 6.0, 48.0)
    rule.multi_region = True
    extra: dict = {}
    for q, need in ((0, 20.0), (1, 6.0), (2, 9.0)):
        extra = rule.settle(extra, {}, q, [(1.0, need)])
    s = schedule_of(extra)
    assert (s.since, s.start, s.round_s, s.want) == (0, T0, 6.0, 20.0)  # no change yet: 20 s asked for
    assert rule.published(extra) == {"since": 0, "start": T0, "round_s": 6.0, "want": 20.0}
    # the last merge combined two regions (replicated): gated even for a peer that saw no other region yet
    fresh = ScheduleRule(RoundClock(T0, 6.0), 6.0, 48.0)
    assert not fresh.gated({}) and fresh.gated({"xregions": 2}) and not fresh.gated({"xregions": 1})
    fresh.founders_placed = False  # a founder not seen yet may be in another region: ask, do not change
    assert fresh.gated({})
    assert schedule_of(fresh.settle({"xregions": 2}, {}, 0, [(1.0, 20.0)])).since == 0


def test_merged_regions_take_one_clock_whichever_region_computes_it():
    rule = ScheduleRule(RoundClock(T0, 6.0), 6.0, 48.0)
    a = Schedule(0, T0, 6.0, 3, None, T0, want=9.0)   # region A asked for 9 s
    b = Schedule(4, T0 + 24.5, 6.0, 3, (0, T0, 6.0), T0, want=14.0)  # B is 0.5 s late and asked for 14 s
    out_a = rule.at_merge({"schedule": a.to_json()}, 10, [(b.since, b.start, b.round_s, b.want)], alone=False)
    out_b = rule.at_merge({"schedule": b.to_json()}, 10, [(a.since, a.start, a.round_s, a.want)], alone=False)
    sa, sb = schedule_of(out_a), schedule_of(out_b)
    assert (sa.since, sa.start, sa.round_s, sa.want) == (11, T0 + 24.5 + 7 * 6.0, 14.0, None)
    assert (sb.since, sb.start, sb.round_s) == (sa.since, sa.start, sa.round_s)
    ca, cb = sa.clock(RoundClock(T0, 6.0)), sb.clock(RoundClock(T0, 6.0))
    for r in range(11, 20):  # one clock from the round after the merge
        assert ca.start(r) == cb.start(r) and ca.tally_time(r) == cb.tally_time(r)
    assert ca.start(10) == T0 + 60 and ca.end(10) == T0 + 66.5  # A's round 10 (not started yet) is stretched
    # a region that merged with nobody while another region is live keeps asking; alone, it applies its ask
    kept = rule.at_merge({"schedule": a.to_json()}, 10, [], alone=False)
    assert schedule_of(kept) == a
    solo = schedule_of(rule.at_merge({"schedule": a.to_json()}, 10, [], alone=True))
    assert (solo.since, solo.start, solo.round_s, solo.want, solo.prev) == (11, T0 + 66, 9.0, None, (0, T0, 6.0))
    # nothing asked beyond the current length and the clocks already one: the ask is cleared, no change
    same = schedule_of(rule.at_merge({"schedule": Schedule(0, T0, 6.0, 3, None, T0, 6.0).to_json()}, 10,
                                     [(0, T0, 6.0, 5.0)], alone=False))
    assert same == Schedule(0, T0, 6.0, 3, None, T0)


def test_a_follower_region_takes_the_others_schedule_without_its_own_ask():
    rule = ScheduleRule(RoundClock(T0, 6.0), 6.0, 48.0)
    mine = Schedule(0, T0, 6.0, 2, None, T0, want=40.0)
    other = (0, T0, 6.0, 9.0)
    led = schedule_of(rule.at_merge({"schedule": mine.to_json()}, 10, [other], alone=False))
    followed = schedule_of(rule.at_merge({"schedule": mine.to_json()}, 10, [other], alone=False, follow=True))
    assert led.round_s == 40.0 and (followed.since, followed.start, followed.round_s) == (11, T0 + 66, 9.0)
