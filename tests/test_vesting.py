"""Vesting of reward units (rewards/vesting.py, dai_swarm/roundlog.py): pure, integer, replicated.

A round's units stay pending for ``window`` rounds (until every verdict about it has taken
effect), a slash forfeits everything a key has not vested yet, a key without standing keeps its
closed-window units held until it earns standing, and a peer that starts from a mid-run state
(a joiner, a resumed peer) computes the same sections and records as one that saw every round.
"""

from __future__ import annotations

import random

import pytest
import torch

from dai_swarm.canonical import canonical_json, sha256_hex
from dai_swarm.errors import LedgerError
from dai_swarm.identity import Identity
from dai_swarm.optim.book import BookLimits, RoundBook, UpdateAnnouncement
from dai_swarm.optim.rules import compute_next_base
from dai_swarm.optim.states import BaseState
from dai_swarm.rewards import RewardLog, compute_round_record, ledger_report
from dai_swarm.rewards.vesting import SECTION, pending_of, record_fields, settle
from dai_swarm.roundlog import RoundRewards
from dai_swarm.verification.reputation import initial_extra, reputation_of, update_reputation, vote_weights
from dai_swarm.verification.verdicts import Verdict

W = 3  # lag 2 + 1


def _run(awards_by_round, slashed_by_round=None, standing=None, start=None, first=0, last=None, window=W):
    """Settle rounds first..last; returns the sections and the per-round settlements."""
    section, out = start, []
    last = max(awards_by_round) if last is None else last
    for q in range(first, last + 1):
        s = settle(section, q, awards_by_round.get(q, {}), (slashed_by_round or {}).get(q, ()),
                   standing(q) if callable(standing) else standing, window=window)
        section = s.section
        out.append(s)
    return section, out


def test_units_vest_after_the_window_and_not_before():
    section, out = _run({0: {"a": 10, "b": 5}}, standing={"a", "b"}, last=4)
    assert [s.vested for s in out] == [{}, {}, {}, {"a": 10, "b": 5}, {}]
    assert out[0].pending == {"a": 10, "b": 5}
    assert pending_of(out[2].section) == {"a": 10, "b": 5} and pending_of(section) == {}


def test_a_slash_forfeits_every_pending_unit_and_keeps_the_vested_ones():
    awards = {q: {"cheat": 7, "honest": 3} for q in range(8)}
    _, out = _run(awards, slashed_by_round={5: ["cheat"], 6: ["cheat"], 7: ["cheat"]}, standing={"cheat", "honest"})
    vested = sum(s.vested.get("cheat", 0) for s in out)
    assert vested == 7 * 2  # rounds 0 and 1 had vested (records 3, 4) before the slash of record 5
    assert out[5].forfeited == {"cheat": 7 * 4}  # rounds 2, 3, 4 pending + round 5's own award
    assert out[6].forfeited == {"cheat": 7} and out[7].forfeited == {"cheat": 7}  # still slashed: nothing kept
    assert sum(s.vested.get("honest", 0) for s in out) == 3 * 5  # rounds 0..4 closed by record 7


def test_honest_vested_equals_pending_once_windows_close():
    rng = random.Random(3)
    awards = {q: {p: rng.randrange(0, 1000) for p in "abcd"} for q in range(20)}
    section, out = _run(awards, standing=set("abcd"), last=19 + W)
    for p in "abcd":
        assert sum(s.vested.get(p, 0) for s in out) == sum(a[p] for a in awards.values())
        assert sum(s.pending.get(p, 0) for s in out) == sum(a[p] for a in awards.values())
    assert section["pending"] == {} and section["held"] == {}


def test_no_standing_holds_units_until_a_verified_pass_or_forfeits_them():
    awards = {q: {"new": 4} for q in range(6)}
    _, out = _run(awards, standing=lambda q: {"new"} if q >= 5 else set(), last=6)
    assert [s.vested.get("new", 0) for s in out] == [0, 0, 0, 0, 0, 4 * 3, 4]  # held 0..2, then vested
    # a free-rider that never earns standing vests nothing and loses what it held at its slash
    _, out = _run(awards, slashed_by_round={6: ["new"]}, standing=set(), last=6)
    assert sum(s.vested.get("new", 0) for s in out) == 0
    assert out[6].forfeited == {"new": 4 * 6}
    # held units expire (forfeited) when the key earns no standing within max_hold_rounds
    s = None
    for q in range(10):
        s = settle(s.section if s else None, q, {"x": 1} if q == 0 else {}, (), set(), window=1, max_hold_rounds=5)
    assert pending_of(s.section) == {}


def test_no_verification_vests_everything_after_the_window():
    _, out = _run({0: {"a": 9}}, standing=None, last=0, window=0)
    assert out[0].vested == {"a": 9}


def test_determinism_same_inputs_same_bytes():
    awards = {"b": 5, "a": 10, "c": 0}
    s1 = settle({"pending": {"1": {"z": 1, "a": 2}}, "held": {}}, 4, awards, ["q", "a"], {"z"}, window=3)
    s2 = settle({"held": {}, "pending": {"1": {"a": 2, "z": 1}}}, 4, dict(reversed(list(awards.items()))),
                ["a", "q"], ["z"], window=3)
    assert canonical_json(s1.section) == canonical_json(s2.section)
    assert s1.forfeited == {"a": 12} and s1.vested == {"z": 1}


def test_malformed_sections_are_refused():
    for bad in ({"pending": {"x": {}}}, {"pending": {"1": {"a": -1}}}, {"held": {"a": [1]}},
                {"pending": {"9": {"a": 1}}}):
        with pytest.raises(LedgerError):
            settle(bad, 3, {}, (), None, window=1)
    with pytest.raises(LedgerError):
        record_fields({"now": {"round": 2}}, 3)


# --- through compute_next_base: the section is replicated state -----------------------------------
FOUNDER = sha256_hex(b"founder")
HONEST = sha256_hex(b"honest newcomer")
CHEAT = sha256_hex(b"free-rider")


class _Verifier:
    """The SpotChecker's pure rules with verdicts given by round (no threads, no DHT)."""

    lag, rule = 2, None

    def __init__(self, verdicts):
        self.verdicts = verdicts  # id -> Verdict

    def next_extra(self, extra, q, ids):
        return update_reputation(extra, q + 2, [self.verdicts[i] for i in ids if self.verdicts[i].round == q - 3])

    def reputation(self, extra):
        return reputation_of(extra)

    def vote_weights(self, extra):
        return vote_weights(extra)

    def verifier_counts(self, q, ids):
        out = {}
        for i in ids:
            if self.verdicts[i].round == q - self.lag:
                out[self.verdicts[i].verifier] = out.get(self.verdicts[i].verifier, 0) + 1
        return out


def _verdict(t, verifier, target, passed):
    return Verdict(round=t, verifier=verifier, target=target, digest=sha256_hex(f"{t}{target}".encode()),
                   passed=passed, distance=0.0 if passed else 1.0, recomputed="0" * 64, steps=2, latency_s=0.1)


def _chain(rounds=12):
    """Bases 0..rounds+1 of a 3-peer run (founder, honest newcomer, free-rider) whose every update is
    checked by the founder and the honest peer; returns (bases, verdict ids agreed per round)."""
    verdicts, agreed = {}, {}
    for t in range(rounds):
        ids = []
        for target in (HONEST, CHEAT):
            for verifier in (FOUNDER, HONEST):
                if verifier != target:
                    v = _verdict(t, verifier, target, target != CHEAT)
                    verdicts[v.id] = v
                    ids.append(v.id)
        v = _verdict(t, HONEST, FOUNDER, True)
        verdicts[v.id] = v
        agreed[t + 2] = tuple(sorted(ids + [v.id]))  # verdicts about t are agreed in round t + lag
    verifier = _Verifier(verdicts)
    rewards = RoundRewards(verifier)
    limits = BookLimits(max_inner_steps=4, batch_size=8, max_payload_bytes=1 << 16, codecs=frozenset({"none"}))
    b0 = BaseState.make(0, {"w": torch.zeros(4)}, {"w": torch.zeros(4)}, initial_extra([FOUNDER]))
    bases = {0: b0, 1: b0}
    for q in range(rounds):
        book = RoundBook("run", q, bases[q].hash, limits=limits)
        payloads = {}
        for i, peer in enumerate((FOUNDER, HONEST, CHEAT)):
            d = sha256_hex(f"{q}{peer}".encode())
            payloads[d] = {"w": torch.full((4,), 0.01 * (i + 1))}
            book.offer_many([UpdateAnnouncement("run", q, bases[q].hash, peer, 4, 32, "none", d, 100)])
        book.close()
        for d in payloads:
            book.mark_fetched(d, True)
        bases[q + 2] = compute_next_base(book, payloads, bases[q + 1], bases[q], verifier, agreed.get(q - 1, ()),
                                         outer_lr=0.5, outer_momentum=0.0, rewards=rewards)
    return bases, verifier, rewards


def _records(bases, start):
    return [canonical_json(compute_round_record(q, [], {}, [], bases[q + 2].hash,
                                                vesting=record_fields(bases[q + 2].extra[SECTION], q)))
            for q in range(start, max(bases) - 1)]


def test_free_rider_vests_nothing_and_honest_peers_vest_what_they_earned():
    bases, _, _ = _chain(12)
    recs = [record_fields(bases[q + 2].extra[SECTION], q) for q in range(12)]
    vested = {p: sum(r["vested"].get(p, 0) for r in recs) for p in (FOUNDER, HONEST, CHEAT)}
    pending = {p: sum(r["pending"].get(p, 0) for r in recs) for p in (FOUNDER, HONEST, CHEAT)}
    assert vested[CHEAT] == 0 and pending[CHEAT] > 0
    assert sum(r["forfeited"].get(CHEAT, 0) for r in recs) == pending[CHEAT]
    assert recs[-1]["unvested"].get(CHEAT, 0) == 0
    # every window closed by round 11 covers rounds 0..8: honest vested == honest pending there
    for p in (FOUNDER, HONEST):
        assert vested[p] == sum(r["pending"].get(p, 0) for r in recs[:12 - W]) > 0
        assert vested[p] + recs[-1]["unvested"][p] == pending[p]


def test_a_peer_starting_from_a_mid_run_state_writes_the_same_records():
    """A joiner (or a resumed peer) holds base k+1 only and computes bases k+2.. itself: identical
    states and byte-identical round records from then on."""
    full, verifier, rewards = _chain(12)
    k = 6
    joiner = {k: full[k], k + 1: full[k + 1]}  # downloaded (hash-verified) bases
    limits = BookLimits(max_inner_steps=4, batch_size=8, max_payload_bytes=1 << 16, codecs=frozenset({"none"}))
    agreed = {}
    for vid, v in verifier.verdicts.items():
        agreed.setdefault(v.round + 2, []).append(vid)
    for q in range(k, 12):
        book = RoundBook("run", q, joiner[q].hash, limits=limits)
        payloads = {}
        for i, peer in enumerate((FOUNDER, HONEST, CHEAT)):
            d = sha256_hex(f"{q}{peer}".encode())
            payloads[d] = {"w": torch.full((4,), 0.01 * (i + 1))}
            book.offer_many([UpdateAnnouncement("run", q, joiner[q].hash, peer, 4, 32, "none", d, 100)])
        book.close()
        for d in payloads:
            book.mark_fetched(d, True)
        joiner[q + 2] = compute_next_base(book, payloads, joiner[q + 1], joiner[q], verifier,
                                          tuple(sorted(agreed.get(q - 1, ()))), outer_lr=0.5, outer_momentum=0.0,
                                          rewards=RoundRewards(verifier))
        assert joiner[q + 2].hash == full[q + 2].hash
    assert _records(joiner, k) == _records(full, k)


def test_ledger_report_shows_vested_and_pending_and_ranks_on_vested(tmp_path):
    bases, _, _ = _chain(12)
    path = str(tmp_path / "r.log")
    with RewardLog(path, Identity.generate(), batch_size=8) as log:
        for q in range(12):
            log.append_round(compute_round_record(q, [], {}, [], bases[q + 2].hash,
                                                  vesting=record_fields(bases[q + 2].extra[SECTION], q)))
    rep = ledger_report(path)
    c = rep["contributors"]
    assert c[CHEAT]["vested"] == 0 and c[CHEAT]["pending"] == 0 and c[CHEAT]["forfeited"] > 0
    assert c[FOUNDER]["vested"] > 0 and c[FOUNDER]["pending"] > 0
    assert rep["units_vested"] == sum(x["vested"] for x in c.values())
    assert rep["vesting_window"] == W
    assert rep["effective_contributors"] <= 2.0 + 1e-9  # the free-rider's units are not in the vested shares
