"""The round machine (optim/machine.py): every round decision, pure, driven with a fake clock.

One test per protocol situation the real-process tests cover (minority re-sync, merge-round
minority, late joiner, payload retry, stale inputs, post-merge confirmation), plus the assertion
that the real peer and the simulator run this one class.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dai_swarm.errors import ConfigError
from dai_swarm.optim.clock import RoundClock
from dai_swarm.optim.coordinator import Coordinator
from dai_swarm.optim.machine import (ADOPT_FETCH_FRAC, AdoptInclusion, CloseRound, KeepState, NoState, ResyncState,
                                     RoundMachine, Tally)
from dai_swarm.optim.states import BaseStore
from dai_swarm.optim.votes import HeadCount, Vote, tally
from fakes import run_config

T = 10.0
CLOCK = RoundClock(0.0, T, close_frac=0.3, tally_frac=0.55)
A, B, C = "a" * 64, "b" * 64, "c" * 64
D1, D2, D3 = "1" * 64, "2" * 64, "3" * 64
P1, P2, P3 = "01" * 32, "02" * 32, "03" * 32


def _peer(first: int = 0, **kw) -> RoundMachine:
    return RoundMachine(CLOCK, first, observe_from=first, kinds=("close", "tally"), **kw)


def _result(votes, weights=None, q: int = 5):
    return tally([Vote("run", q, voter, tuple(sorted(inc)), h) for voter, inc, h in votes], weights or HeadCount(),
                 run_id="run", round=q)


# --------------------------------------------------------------------------- when
def test_due_gives_close_then_tally_in_clock_order_once_each():
    m = _peer(0)
    assert m.due(CLOCK.close_time(0) - 0.01) == []
    assert m.due(CLOCK.close_time(0)) == [CloseRound(0, 13.0)]
    assert m.due(CLOCK.tally_time(0)) == [Tally(0, 15.5)]
    assert m.due(CLOCK.tally_time(0)) == []  # never twice
    assert m.due(CLOCK.tally_time(1)) == [CloseRound(1, 23.0), Tally(1, 25.5)]


def test_a_driver_far_behind_skips_rounds_older_than_lookback():
    m = _peer(0, lookback=3)
    got = m.due(CLOCK.close_time(9))  # stalled for nine rounds
    assert {a.round for a in got} == {7, 8, 9} and m.dropped == 2 * 7  # as the old loop: q >= current - 3
    assert got == sorted(got, key=lambda a: a.due)


def test_a_failed_round_emits_no_tally():
    m = _peer(0)
    assert m.due(CLOCK.close_time(2)) == [CloseRound(0, 13.0), Tally(0, 15.5), CloseRound(1, 23.0),
                                          Tally(1, 25.5), CloseRound(2, 33.0)]
    assert not m.cancelled(2)
    m.failed(2)  # the close of round 2 raised on the network side
    assert m.cancelled(2)
    assert m.due(CLOCK.tally_time(3)) == [CloseRound(3, 43.0), Tally(3, 45.5)] and m.dropped == 1


def test_a_new_schedule_moves_the_due_times():
    m = _peer(0)
    m.due(CLOCK.tally_time(1))
    m.clock = CLOCK.following(2, 20.0)  # rounds from 2 on last 20 s
    assert m.clock.round_s == 20.0
    assert m.due(CLOCK.close_time(2)) == []  # the old close time of round 2 is no longer due
    assert m.due(m.clock.close_time(2)) == [CloseRound(2, m.clock.close_time(2))]


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError):
        RoundMachine(SimpleNamespace(round_s=1.0), 0)
    with pytest.raises(ConfigError):
        RoundMachine(CLOCK, 3, 2)
    with pytest.raises(ConfigError):
        RoundMachine(CLOCK, 0, kinds=("sleep",))
    with pytest.raises(ConfigError):
        RoundMachine(CLOCK, -1)


# --------------------------------------------------------------------------- what
def test_agreed_state_is_kept_and_confirmed_only_if_someone_did_not_vote_for_it():
    m = _peer(0)
    res = _result([(P1, [D1], A), (P2, [D1], A)])
    cmd = m.decide(5, res, candidate=A, inclusion=(D1,), winners={P1, P2}, now=55.5)
    assert cmd == KeepState(5, A, True, False)
    assert not m.must_confirm(5, cmd, {P1, P2}, {P1: A, P2: A}, P1)
    assert m.must_confirm(5, cmd, {P1, P2, P3}, {P1: A, P2: A}, P1)  # P3 is live but did not vote


def test_minority_adopts_the_majority_inclusion_then_keeps_or_resyncs():
    m = _peer(0)
    res = _result([(P1, [D1, D2], A), (P2, [D1, D2], A), (P3, [D1], B)])
    cmd = m.decide(5, res, candidate=B, inclusion=(D1,), winners={P1, P2}, now=55.5)
    assert cmd == AdoptInclusion(5, (D1, D2), 55.5 + ADOPT_FETCH_FRAC * T)
    # recomputed on the majority inclusion: the same state as the majority (I1)
    assert m.adopted(5, res, candidate=A, winners={P1, P2}, now=57.0) == KeepState(5, A, True, False)
    # a payload could not be fetched in time (payload retry fell short): download the majority's state
    cmd = m.adopted(5, res, candidate=None, winners={P1, P2}, now=57.5)
    assert isinstance(cmd, ResyncState) and (cmd.target, cmd.merged) == (A, False)
    assert cmd.give_up == CLOCK.start(7) - 0.15 * T  # until shortly before round q+2 needs the base


def test_same_inclusion_other_state_resyncs_without_adopting():
    m = _peer(0)
    res = _result([(P1, [D1], A), (P2, [D1], A), (P3, [D1], B)])
    cmd = m.decide(5, res, candidate=B, inclusion=(D1,), winners={P1, P2}, now=55.5)
    assert isinstance(cmd, ResyncState) and cmd.target == A
    assert not m.must_confirm(5, cmd, {P1, P2, P3}, {}, P3)


def test_merge_round_minority_follows_the_winning_voters_merged_state():
    m = _peer(0, merge_period=5)  # the base of round 5 + 2 = 7 is no sync point; of 8 + 2 = 10 it is
    res = _result([(P1, [D1], A), (P2, [D1], A), (P3, [D1], B)], q=8)
    cmd = m.decide(8, res, candidate=B, inclusion=(D1,), winners={P1, P2}, now=95.5)
    assert isinstance(cmd, ResyncState) and cmd.merged and cmd.voters == frozenset({P1, P2})
    keep = m.decide(8, res, candidate=A, inclusion=(D1,), winners={P1, P2}, now=95.5)
    assert keep == KeepState(8, A, True, True)
    assert m.must_confirm(8, keep, {P1, P2}, {P1: A, P2: A}, P1)  # post-merge confirmation: always
    refused = m.merge_failed(8, 96.0)  # region off the global chain: any majority state, until the deadline
    assert isinstance(refused, ResyncState) and refused.target == "" and not m.must_confirm(8, refused, {P1}, {}, P1)
    assert refused.give_up == m.resync_give_up(8, 96.0) > 96.0
    assert not m.is_sync_round(0) and not m.is_sync_round(7) and m.is_sync_round(10)


def test_undecided_tally_keeps_a_candidate_and_leaves_a_peer_without_one_waiting():
    m = _peer(0)
    nobody = _result([(P3, [D1], B)], weights={P1: 1.0})  # only a key without standing voted
    assert not nobody.decided
    assert m.decide(5, nobody, candidate=B, inclusion=(D1,), winners=set(), now=55.5) == KeepState(5, B, False, False)
    assert m.decide(5, nobody, candidate=None, inclusion=None, winners=set(), now=55.5) == NoState(5)


def test_only_a_peer_with_standing_keeps_a_state_its_region_never_confirmed():
    keeps = RoundMachine.keeps_unconfirmed
    assert keeps(P1, {P1, P2}, {P1: 0.5, P2: 0.5})
    assert not keeps(P3, {P1, P3}, {P1: 0.5})  # a joiner defers to the founder's records
    assert keeps(P3, {P3, P2}, {P1: 0.5})  # nobody in its region has standing: it carries on alone
    assert keeps(P3, set(), {})


def test_a_late_joiner_votes_only_after_it_tallied_the_previous_round():
    m = RoundMachine.for_joiner(CLOCK, 34.0, kinds=("close", "tally"))  # joins in round 3
    assert (m.first_round, m.observe_from) == (4, 3)
    assert not m.may_vote(3) and not m.may_vote(4)
    verdicts = _result([(P1, [D3], A), (P2, [D3], A)], q=3)
    assert m.tallied_verdicts(3, verdicts) == (D3,)
    assert m.may_vote(4) and m.verdicts_for(4) == (D3,)  # round 4's computation applies them
    assert _peer(0).may_vote(0)


def test_stale_verdict_tallies_are_forgotten():
    m = _peer(0)
    for q in range(6):
        m.tallied_verdicts(q, _result([(P1, [D1], A)], q=q))
    assert sorted(m.verdicts) == [3, 4, 5]


def test_prefetch_only_between_the_previous_tally_and_the_close_at_most_every_quarter_round():
    m = _peer(0)
    held = {3}
    holds = held.__contains__
    assert not m.should_prefetch(3, CLOCK.tally_time(2) - 0.1, holds, float("-inf"))
    assert m.should_prefetch(3, CLOCK.tally_time(2), holds, float("-inf"))
    assert not m.should_prefetch(3, CLOCK.tally_time(2) + 1.0, holds, CLOCK.tally_time(2))  # throttled
    assert not m.should_prefetch(3, CLOCK.close_time(3), holds, float("-inf"))
    held.add(4)
    assert not m.should_prefetch(3, CLOCK.tally_time(2), holds, float("-inf"))


# --------------------------------------------------------------------------- one class, two drivers
def test_the_real_peer_and_the_simulator_run_the_same_machine():
    from dai_swarm.sim.config import SimConfig
    from dai_swarm.sim.engine import Simulator

    real = Coordinator(SimpleNamespace(clock=CLOCK, config=run_config(cross_region_period=5)), BaseStore())
    assert type(real.machine) is RoundMachine and real.machine.merge_period == 5
    sim = Simulator(SimConfig(peers=3, regions=1, rounds=3, task="regression", evaluate=False))
    sim.run()
    assert type(sim.planner) is RoundMachine
    assert {type(p.machine) for p in sim.peers} == {RoundMachine}
    assert all(p.machine.verdicts for p in sim.peers)  # their tallies went through the machine
