"""A peer too slow for the run's rounds is told so, with the round length it would need."""

from __future__ import annotations

import logging

from dai_swarm.lateness import Lateness
from dai_swarm.optim.clock import RoundClock


def test_a_peer_whose_updates_keep_missing_the_close_is_told_the_round_length_it_needs(caplog):
    clock = RoundClock(1000.0, 10.0, margin_s=1.0)  # close 3 s after the round ends: slack 1 + 3 = 4 s
    late = Lateness(clock)
    assert late.status()["late"] is False and late.closed(0, True) is None  # never announced: not counted
    with caplog.at_level(logging.WARNING, logger="dai_swarm.lateness"):
        for r in range(5):  # announced 5 s after the training deadline: after the close, never included
            late.announced(r, clock.train_deadline(r) + 5.0)
            assert late.closed(r, included=False) is (r >= 2)
    st = late.status()
    assert st["missed"] == 5 and st["announce_lag_s"] == 5.0 and st["slack_s"] == 4.0
    # (5 - 1) / 0.3 = 13.3 s, with 20% headroom 16 s
    assert st["needed_round_s"] == 16.0 and st["late"] is True
    warnings = [r for r in caplog.records if "rounds of about 16 s" in r.getMessage()]
    assert len(warnings) == 1  # once per streak, not every round


def test_a_peer_that_fits_is_not_late_and_a_streak_ends():
    clock = RoundClock(0.0, 10.0, margin_s=1.0)
    late = Lateness(clock, window=5, threshold=3)
    for r in range(5):
        late.announced(r, clock.train_deadline(r) + 0.5)
        late.closed(r, included=r != 1)  # one unlucky round is not a pattern
    st = late.status()
    assert st == {"missed": 1, "rounds": 5, "need_s": 0.0, "announce_lag_s": 0.5, "slack_s": 4.0, "needed_round_s": None,
                  "late": False}


def test_a_peer_that_announces_in_time_but_misses_the_set_is_told_it_is_out_of_step(caplog):
    clock = RoundClock(0.0, 6.0, margin_s=0.6)
    late = Lateness(clock)
    with caplog.at_level(logging.WARNING, logger="dai_swarm.lateness"):
        for r in range(4):
            late.announced(r, clock.train_deadline(r) + 1.1)  # in time: the slack is 0.6 + 1.8 s
            late.closed(r, included=False)
    st = late.status()
    assert st["late"] is True and st["needed_round_s"] is None
    assert any("out of step" in r.getMessage() for r in caplog.records)
