"""The pure round-protocol core: clock, round book, votes, planner, and a small in-memory swarm."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dai_swarm.canonical import sha256_hex, tensor_bytes
from dai_swarm.errors import (
    ConfigError,
    DigestMismatch,
    MalformedRecord,
    PayloadTooLarge,
    ProtocolError,
    StaleRound,
    UnknownCodec,
    WrongBase,
)
from dai_swarm.optim.aggregate import update_weight, weighted_mean
from dai_swarm.optim.book import Accepted, BookLimits, Rejected, RoundBook, UpdateAnnouncement
from dai_swarm.optim.clock import CLOSE_FRAC, TALLY_FRAC, RoundClock
from dai_swarm.optim.outer import OuterState, outer_step
from dai_swarm.optim.machine import (
    Announce, ApplyBase, CloseRound, Done, RoundMachine, Tally, TrainUntil, WaitUntil,
)
from dai_swarm.optim.votes import HeadCount, Vote, inclusion_digest, majority_state_hash, tally

H0, H1 = "a" * 64, "b" * 64


class FakeClock:
    """Manual clock in the spirit of trio's MockClock: time moves only when told to."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def now(self) -> float:
        return self.t

    def jump(self, to: float) -> None:
        assert to >= self.t, "time never goes backwards"
        self.t = to


# ------------------------------------------------------------------------------ clock
def test_clock_spans_and_deadlines():
    c = RoundClock(1000.0, 60.0, margin_s=5.0)
    assert (c.start(0), c.end(0), c.start(3)) == (1000.0, 1060.0, 1180.0)
    assert c.train_deadline(0) == 1055.0 and c.train_deadline(0, margin_s=0.0) == 1060.0
    assert (c.close_frac, c.tally_frac) == (CLOSE_FRAC, TALLY_FRAC) == (0.3, 0.55)  # one definition
    assert c.close_time(0) == 1060.0 + 0.3 * 60 and c.tally_time(0) == 1060.0 + 0.55 * 60
    assert c.end(0) < c.close_time(0) < c.tally_time(0) < c.end(1)
    assert c.round_at(999.999) == -1 and c.round_at(1000.0) == 0 and c.round_at(1059.999) == 0


@given(t0=st.floats(0, 2e9), round_s=st.floats(0.01, 1e4), r=st.integers(0, 10**6))
@settings(max_examples=300, deadline=None)
def test_clock_edges_are_exact(t0, round_s, r):
    c = RoundClock(t0, round_s)
    assert c.round_at(c.start(r)) == r
    assert c.round_at(c.end(r)) == r + 1
    assert c.round_at(math.nextafter(c.start(r + 1), -math.inf)) == r
    assert c.end(r) < c.close_time(r) < c.tally_time(r) < c.end(r + 1)


@pytest.mark.parametrize("kw", [
    {"round_s": 0}, {"round_s": -1}, {"round_s": float("nan")}, {"t0": float("inf")},
    {"close_frac": 0.0}, {"close_frac": 0.8, "tally_frac": 0.7}, {"tally_frac": 1.0},
    {"margin_s": 60.0}, {"margin_s": -1.0}, {"round_s": "60"}, {"round_s": True},
])
def test_clock_rejects_bad_config(kw):
    args = {"t0": 0.0, "round_s": 60.0} | kw
    with pytest.raises(ConfigError):
        RoundClock(**args)


def test_clock_rejects_bad_arguments():
    c = RoundClock(0.0, 10.0)
    with pytest.raises(ConfigError):
        c.start(1.5)
    with pytest.raises(ConfigError):
        c.round_at(float("nan"))
    with pytest.raises(ConfigError):
        c.train_deadline(0, margin_s=10.0)


# ------------------------------------------------------------------------------- book
LIM = BookLimits(max_inner_steps=100, batch_size=8, max_payload_bytes=1 << 20, codecs=frozenset({"int8"}))


def ann(peer: str = "01", digest: str = "c" * 64, **kw) -> UpdateAnnouncement:
    f = dict(run_id="run", round=1, base_hash=H1, peer=peer, steps=10, samples=80, codec="int8",
             digest=digest, size_bytes=1000, region="eu")
    f.update(kw)
    return UpdateAnnouncement(**f)


def dg(i: int) -> str:
    return f"{i:064x}"


@pytest.mark.parametrize("bad, reason, error", [
    (dict(run_id="other"), "wrong_run", ProtocolError),
    (dict(round=0, base_hash=H0), "stale_round", StaleRound),
    (dict(round=2), "future_round", StaleRound),
    (dict(base_hash=H0), "wrong_base", WrongBase),
    (dict(codec="topk"), "wrong_codec", UnknownCodec),
    (dict(size_bytes=(1 << 20) + 1), "too_large", PayloadTooLarge),
    (dict(size_bytes=0), "empty", PayloadTooLarge),
    (dict(steps=101, samples=808), "implausible_steps", ProtocolError),
    (dict(steps=0, samples=0), "implausible_steps", ProtocolError),
    (dict(samples=81), "implausible_samples", ProtocolError),
])
def test_book_rejects_each_reason_and_counts_it(bad, reason, error):
    book = RoundBook("run", 1, H1, limits=LIM)
    res = book.offer(ann(**bad))
    assert isinstance(res, Rejected) and res.reason == reason and res.error is error
    assert isinstance(res.exception(), error)
    assert book.rejections == {reason: 1}
    assert book.to_fetch() == () and book.close() == ()


def test_announcement_fields_are_type_checked():
    for bad in (dict(round=-1), dict(steps="3"), dict(digest="C" * 64), dict(peer="xyz"),
                dict(base_hash="ab"), dict(run_id=""), dict(size_bytes=True)):
        with pytest.raises(MalformedRecord):
            ann(**bad)
    book = RoundBook("run", 1, H1, limits=LIM)
    assert book.offer({"not": "an announcement"}).reason == "malformed"


def test_book_accepts_fetches_and_includes():
    book = RoundBook("run", 1, H1, limits=LIM)
    assert book.offer(ann("01", dg(2))) == Accepted(dg(2), 1.0)
    assert book.offer(ann("02", dg(1))) == Accepted(dg(1), 1.0)
    assert book.offer(ann("02", dg(1))).duplicate
    assert book.to_fetch() == (dg(1), dg(2))
    assert book.mark_fetched(dg(2), True) and not book.mark_fetched(dg(9), True)
    assert book.inclusion() == (dg(2),) and not book.mark_fetched(dg(2), False)
    book.mark_fetched(dg(1), False, "digest_mismatch")
    assert book.close() == (dg(2),)
    assert book.rejections == {"digest_mismatch": 1}
    assert book.offer(ann("03", dg(3))).reason == "late"
    ((a, discount),) = book.included()
    assert a.peer == "01" and discount == 1.0


def test_copy_rejects_both_and_equivocation_rejects_the_peer():
    book = RoundBook("run", 1, H1, limits=LIM)
    assert isinstance(book.offer(ann("01", dg(1))), Accepted)
    assert book.offer(ann("02", dg(1))).reason == "copy"  # same digest, another peer
    assert isinstance(book.offer(ann("03", dg(3))), Accepted)
    assert book.offer(ann("03", dg(4))).reason == "equivocation"  # same peer, second digest
    assert isinstance(book.offer(ann("05", dg(5))), Accepted)
    assert book.offer(ann("05", dg(5), steps=9, samples=72)).reason == "equivocation"
    assert isinstance(book.offer(ann("06", dg(6))), Accepted)
    for d in (dg(1), dg(3), dg(4), dg(5), dg(6)):
        book.mark_fetched(d, True)
    assert book.close() == (dg(6),)
    assert book.rejections == {"copy": 2, "equivocation": 4}
    assert book.digests() == {dg(1), dg(3), dg(4), dg(5), dg(6)}


@given(st.permutations(list(range(9))))
@settings(max_examples=60, deadline=None)
def test_book_inclusion_does_not_depend_on_arrival_order(order):
    anns = [ann("01", dg(1)), ann("02", dg(1)), ann("03", dg(3)), ann("03", dg(4)),
            ann("05", dg(5)), ann("06", dg(6)), ann("07", dg(7), round=0, base_hash=H0),
            ann("08", dg(8)), ann("05", dg(5), steps=9, samples=72)]
    book = RoundBook("run", 1, H1, limits=LIM)
    book.offer_many(anns[i] for i in order)
    for d in book.to_fetch():
        book.mark_fetched(d, True)
    assert book.close() == (dg(6), dg(8))
    assert book.rejections == {"copy": 2, "equivocation": 4, "stale_round": 1}


def test_late_update_counts_next_round_with_discount_only_if_allowed():
    lim = BookLimits(100, 8, 1 << 20, allow_stale=True, stale_discount=0.5)
    book = RoundBook("run", 1, H1, limits=lim, prev_base_hash=H0)
    assert book.offer(ann("01", dg(1), round=0, base_hash=H0)) == Accepted(dg(1), 0.5)
    assert book.offer(ann("02", dg(2), round=0, base_hash=H1)).reason == "wrong_base"
    assert book.offer(ann("03", dg(3), round=1, base_hash=H0)).reason == "wrong_base"
    assert book.offer(ann("04", dg(4))) == Accepted(dg(4), 1.0)
    assert RoundBook("run", 2, H1, limits=lim, prev_base_hash=H0).offer(
        ann("01", dg(1), round=0, base_hash=H0)).reason == "stale_round"
    # the previous round's winning vote included dg(1) after all: it must not count twice
    assert book.retire([dg(1), dg(9)]) == 1
    for d in book.to_fetch():
        book.mark_fetched(d, True)
    assert book.close() == (dg(4),)
    assert book.rejections == {"wrong_base": 2, "counted_earlier": 1}


def test_round_zero_and_one_share_a_base_but_not_a_round():
    lim = BookLimits(100, 8, 1 << 20, allow_stale=True)
    book = RoundBook("run", 1, H0, limits=lim, prev_base_hash=H0)
    assert book.offer(ann("01", dg(1), round=0, base_hash=H0)).discount == 0.5
    assert book.offer(ann("02", dg(2), round=1, base_hash=H0)).discount == 1.0


def test_adopt_takes_missing_announcements_after_close():
    book = RoundBook("run", 1, H1, limits=LIM)
    book.offer(ann("01", dg(1)))
    book.offer(ann("02", dg(2)))
    book.mark_fetched(dg(1), True)
    book.mark_fetched(dg(2), True)
    assert book.close() == (dg(1), dg(2))
    missing = book.adopt([dg(3), dg(1)])
    assert missing == (dg(3),) and book.inclusion() == (dg(1), dg(3)) and not book.ready
    with pytest.raises(DigestMismatch):
        book.included()
    assert book.offer(ann("09", dg(9))).reason == "late"
    assert isinstance(book.offer(ann("03", dg(3))), Accepted)
    assert book.to_fetch() == (dg(3),)
    book.mark_fetched(dg(3), True)
    assert book.ready and [a.peer for a, _ in book.included()] == ["01", "03"]
    with pytest.raises(MalformedRecord):
        book.adopt(["nothex"])


def test_book_and_limits_validate_config():
    for kw in (dict(max_inner_steps=0), dict(batch_size=1.5), dict(stale_discount=0.0)):
        with pytest.raises(ConfigError):
            BookLimits(**(dict(max_inner_steps=1, batch_size=1, max_payload_bytes=1) | kw))
    with pytest.raises(ConfigError):
        RoundBook("", 0, H0, limits=LIM)
    with pytest.raises(ConfigError):
        RoundBook("run", -1, H0, limits=LIM)
    with pytest.raises(ConfigError):
        RoundBook("run", 0, "zz", limits=LIM)


# ------------------------------------------------------------------------------ votes
def vote(voter: str, inc=(), state: str = H0, **kw) -> Vote:
    return Vote(kw.get("run_id", "run"), kw.get("round", 3), voter, tuple(inc), state)


def test_tally_reputation_weighted_majority_and_minority_adopts():
    votes = [vote("a", [dg(1), dg(2)], H0), vote("b", [dg(1), dg(2)], H0), vote("c", [dg(1)], H1)]
    res = tally(votes, {"a": 1.0, "b": 1.0, "c": 1.5}, run_id="run", round=3)
    assert res.decided and res.inclusion == (dg(1), dg(2)) and res.state_hash == H0
    assert res.inclusion_digest == inclusion_digest([dg(2), dg(1)])
    assert res.weight == 2.0 and res.total_weight == 3.5 and res.weight_share == 2.0 / 3.5
    assert res.agrees(votes[0]) and not res.agrees(votes[2]) and not res.same_inclusion(votes[2])
    heavy = tally(votes, {"a": 1.0, "b": 1.0, "c": 2.5})
    assert heavy.inclusion == (dg(1),) and heavy.state_hash == H1


def test_tally_ties_are_deterministic():
    v = [vote("a", [dg(1)]), vote("b", [dg(2)])]
    by_digest = min(inclusion_digest([dg(1)]), inclusion_digest([dg(2)]))
    for order in itertools.permutations(v):
        assert tally(order, {"a": 1.0, "b": 1.0}).inclusion_digest == by_digest
    # equal weight, more voters wins
    v3 = [vote("a", [dg(1)]), vote("b", [dg(2)]), vote("c", [dg(2)])]
    assert tally(v3, {"a": 1.0, "b": 0.5, "c": 0.5}).inclusion == (dg(2),)
    # same inclusion, two state hashes: the heavier, then the smaller hash
    v4 = [vote("a", [dg(1)], H1), vote("b", [dg(1)], H0)]
    assert tally(v4, {"a": 1.0, "b": 1.0}).state_hash == H0
    assert tally(v4, {"a": 2.0, "b": 1.0}).state_hash == H1


def test_tally_head_count_without_verification_and_drops_bad_votes():
    v = [vote("a", [dg(1)]), vote("b", [dg(1)]), vote("c", [dg(2)]),
         vote("x", [dg(2)]), vote("x", [dg(3)]),  # equivocating voter: both dropped
         vote("a", [dg(1)]),  # identical repeat counts once
         vote("d", [dg(2)], round=4), vote("e", [dg(2)], run_id="other")]
    res = tally(v, HeadCount(), run_id="run", round=3)
    assert res.decided and res.inclusion == (dg(1),) and res.voters == 3 and res.ignored == 4
    assert math.isclose(res.weight, 2.0)
    assert not tally(v, HeadCount(), round=3, min_weight=3.0).decided
    # standing weights: voters nobody knows weigh 0, and a vote of weightless keys decides nothing
    unknown = tally(v, {}, run_id="run", round=3)
    assert not unknown.decided and unknown.weight == 0.0 and unknown.voters == 3
    assert tally(v, {"c": 0.3}, run_id="run", round=3).inclusion == (dg(2),)
    empty = tally([], {"a": 1.0})
    assert not empty.decided and empty.weight_share == 0.0 and not empty.agrees(vote("a"))
    with pytest.raises(ConfigError):
        tally(v, {"a": float("nan")})


def test_vote_validation():
    for bad in (dict(inc=[dg(2), dg(1)]), dict(inc=[dg(1), dg(1)]), dict(inc=["xy"]), dict(state="no")):
        with pytest.raises(MalformedRecord):
            vote("a", bad.get("inc", ()), bad.get("state", H0))
    with pytest.raises(MalformedRecord):
        vote("a", round=-1)


def test_majority_state_hash_names_who_must_resync():
    res = majority_state_hash({"a": H0, "b": H0, "c": H1}, {"a": 1.0, "b": 1.0, "c": 1.9})
    assert res.state_hash == H0 and res.holders == ("a", "b") and res.dissenters == ("c",)
    res = majority_state_hash([("a", H0), ("b", H0), ("c", H1), ("b", H1)], {"c": 0.1})
    assert res.state_hash == H1 and res.holders == ("c",) and res.dissenters == ("a",)
    assert majority_state_hash({}, {}) is None
    with pytest.raises(MalformedRecord):
        majority_state_hash({"a": "bad"}, {})


# ---------------------------------------------------------------------------- planner
def run_planner(planner: RoundMachine, clock: FakeClock, handle_s: float = 0.0, limit: int = 500):
    """Drive a planner with a fake clock; each discrete action takes ``handle_s`` seconds."""
    timeline = []
    for _ in range(limit):
        a = planner.next_action(clock.now())
        timeline.append((clock.now(), a))
        if isinstance(a, Done):
            return timeline
        if isinstance(a, TrainUntil):
            clock.jump(a.deadline)
        elif isinstance(a, WaitUntil):
            clock.jump(a.time)
        else:
            clock.jump(clock.now() + handle_s)
    raise AssertionError("planner did not finish")


def test_planner_timeline_follows_the_clock_only():
    c = RoundClock(100.0, 10.0, close_frac=0.35, tally_frac=0.7, margin_s=1.0)
    fc = FakeClock(95.0)
    tl = run_planner(RoundMachine(c, 0, 2), fc)
    discrete = [(t, a) for t, a in tl if not isinstance(a, (TrainUntil, WaitUntil, Done))]
    assert [a for _, a in discrete] == [
        Announce(0, 109.0), CloseRound(0, 113.5), Tally(0, 117.0), ApplyBase(2, 117.0),
        Announce(1, 119.0), CloseRound(1, 123.5), Tally(1, 127.0), ApplyBase(3, 127.0),
        Announce(2, 129.0), CloseRound(2, 133.5), Tally(2, 137.0), ApplyBase(4, 137.0)]
    assert all(t == a.due for t, a in discrete), "each action fires exactly at its deadline"
    trains = [a for _, a in tl if isinstance(a, TrainUntil)]
    assert trains[0] == TrainUntil(0, 109.0) and TrainUntil(1, 113.5) in trains  # cut at CloseRound(0)
    assert tl[0] == (95.0, WaitUntil(100.0))


def test_planner_never_waits_on_a_silent_peer_and_catches_up_when_late():
    c = RoundClock(0.0, 10.0)
    # slow handling (2 s per action) still never shifts any later deadline
    tl = run_planner(RoundMachine(c, 0, 4), FakeClock(0.0), handle_s=2.0)
    for t, a in tl:
        if isinstance(a, (Announce, CloseRound, Tally, ApplyBase)):
            assert a.due <= t < a.due + 2.0 * 2 + 1e-9
    # a driver that stalls past several deadlines gets the overdue actions, oldest first
    p = RoundMachine(c, 0, 1)
    got = [p.next_action(100.0) for _ in range(9)]
    assert [type(a).__name__ for a in got] == ["Announce", "CloseRound", "Tally", "ApplyBase",
                                               "Announce", "CloseRound", "Tally", "ApplyBase", "Done"]
    assert [a.due for a in got[:-1]] == sorted(a.due for a in got[:-1])


def test_planner_for_joiner_observes_the_previous_round():
    c = RoundClock(0.0, 10.0, close_frac=0.35, tally_frac=0.7)
    p = RoundMachine.for_joiner(c, 34.0, rounds=1)
    assert (p.first_round, p.last_round) == (4, 4)
    assert p.next_action(34.0) == WaitUntil(40.0)
    got = [p.next_action(1e9) for _ in range(8)]
    assert got[:4] == [CloseRound(3, 43.5), Tally(3, 47.0), ApplyBase(5, 47.0), Announce(4, 50.0)]
    assert isinstance(got[-1], Done)
    with pytest.raises(ConfigError):
        RoundMachine(c, 3, 2)


# --------------------------------------------------- in-memory swarm over the pure core
def _delta(peer: str, r: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(int(sha256_hex(f"{peer}/{r}".encode())[:8], 16))
    return {"w": torch.randn(6, 4, generator=g) * 0.1, "b": torch.randn(4, generator=g) * 0.1}


def _digest(tensors) -> str:
    return sha256_hex(b"".join(tensor_bytes(tensors[k]) for k in sorted(tensors)))


def _state_after(base: OuterState, book: RoundBook, payloads) -> OuterState:
    items = [(a.digest, update_weight(a.samples, 1.0, disc), payloads[a.digest]) for a, disc in book.included()]
    return outer_step(base, weighted_mean(items), lr=0.7, momentum=0.9) if items else base


def test_replicas_agree_through_votes_and_silent_peer_costs_nothing():
    """Four peers, 4 rounds: peer 'd' never reports, peer 'c' misses announcements each round and
    adopts the majority inclusion; every honest replica ends with the same state hash."""
    lim = BookLimits(max_inner_steps=50, batch_size=4, max_payload_bytes=1 << 16)
    theta0 = OuterState.initial({"w": torch.zeros(6, 4), "b": torch.zeros(4)})
    replicas = ["a", "b", "c"]
    ids = {"a": "0a", "b": "0b"}
    bases = {p: {0: theta0, 1: theta0} for p in replicas}
    payloads: dict[str, dict] = {}
    for r in range(4):
        anns = []
        for peer in ("a", "b"):  # 'c' trains but its announcement is lost; 'd' is silent
            delta = _delta(peer, r)
            d = _digest(delta)
            payloads[d] = delta
            anns.append(UpdateAnnouncement("run", r, bases["a"][r].hash(), ids[peer], 10, 40, "none", d, 1000))
        books, votes = {}, []
        for p in replicas:
            book = RoundBook("run", r, bases[p][r].hash(), limits=lim)
            seen = anns if p != "c" else anns[:1]  # 'c' saw only one announcement (DHT lag)
            book.offer_many(seen)
            for d in book.to_fetch():
                book.mark_fetched(d, True)
            book.close()
            books[p] = book
            votes.append(Vote("run", r, p, book.inclusion(), _state_after(bases[p][r + 1], book, payloads).hash()))
        res = tally(votes, {"a": 1.0, "b": 1.0, "c": 1.0}, run_id="run", round=r)
        assert res.decided and res.weight_share == pytest.approx(2 / 3)
        for p in replicas:
            book = books[p]
            if not res.same_inclusion(next(v for v in votes if v.voter == p)):
                missing = set(book.adopt(res.inclusion))
                book.offer_many(a for a in anns if a.digest in missing)
                for d in book.to_fetch():
                    book.mark_fetched(d, True)
                assert book.ready
            bases[p][r + 2] = _state_after(bases[p][r + 1], book, payloads)
            assert bases[p][r + 2].hash() == res.state_hash
    final = {p: bases[p][5].hash() for p in replicas}
    assert len(set(final.values())) == 1
    assert final["a"] != theta0.hash()
    assert majority_state_hash(final, {}).dissenters == ()
