"""The spot-checker hooks end to end on an in-memory DHT: checks, re-checks, votes, next_extra."""

from __future__ import annotations

import random
import time
from types import SimpleNamespace

import pytest
import torch

from dai_swarm.optim import codecs
from dai_swarm.optim.book import UpdateAnnouncement
from dai_swarm.tasks import load_task
from dai_swarm.verification.recompute import recompute_update
from dai_swarm.verification.reputation import is_slashed
from dai_swarm.verification.spotcheck import SpotChecker

torch.set_num_threads(1)
KEYS = [f"{i + 1:02x}" * 32 for i in range(4)]
BASE_HASH = "ee" * 32


class MemoryDHT:
    """Round records by (kind, round), one per signer (like the real DHT's subkeys)."""

    def __init__(self):
        self.records: dict = {}

    def signer_view(self, signer):
        dht = self

        class View:
            def publish_round_record(self, run_id, kind, round, body, ttl_s=0.0):
                dht.records.setdefault((kind, round), {})[signer] = SimpleNamespace(round=round, signer=signer,
                                                                                    body=dict(body))
                return True

            def get_round_records(self, run_id, kind, round, signers=None):
                recs = dht.records.get((kind, round), {})
                return [recs[s] for s in sorted(recs) if signers is None or s in signers]
        return View()


class Book:
    def __init__(self, anns):
        self.anns = anns

    def included(self):
        return tuple((a, 1.0) for a in self.anns)


@pytest.fixture(scope="module")
def task():
    return load_task("regression")


def _checker(task, dht, key, checks):
    sc = SpotChecker(task, checks, rng=random.Random(1))
    sc.bind(SimpleNamespace(identity=SimpleNamespace(public_key_hex=key), region="a", run_id="run",
                            dht=dht.signer_view(key), manifest=SimpleNamespace(seed=0), codec="int8",
                            codec_params={}, clock=SimpleNamespace(round_s=2.0)))
    return sc


def _drain(checkers, timeout_s=60.0):
    deadline = time.time() + timeout_s
    while time.time() < deadline and any(not c._jobs.empty() for c in checkers):
        time.sleep(0.05)
    time.sleep(0.3)


def test_cheater_is_failed_rechecked_voted_and_slashed(task):
    dht = MemoryDHT()
    base = {n: p.detach().clone() for n, p in task.build_model(0).named_parameters()}
    payloads, anns = {}, []
    for i, key in enumerate(KEYS):
        delta = recompute_update(task, base, "run", 0, key, 4, 5, raw=True)
        if i == 3:
            delta = {n: -t for n, t in delta.items()}  # the cheater
        blob = codecs.encode(delta, "int8")
        digest = f"{i + 10:02x}" * 32
        payloads[digest] = codecs.decode(blob)
        anns.append(UpdateAnnouncement("run", 4, BASE_HASH, key, 5, 5 * task.batch_size, "int8", digest, len(blob)))
    state = SimpleNamespace(params=base)
    checkers = [_checker(task, dht, KEYS[0], 64.0)] + [_checker(task, dht, k, 0.0) for k in KEYS[1:]]
    try:
        for c in checkers:
            c.on_close(4, Book(anns), payloads, state)
        _drain(checkers)
        for c in checkers:  # the next close scans round 4's verdicts and re-checks the fail
            c.on_close(5, Book([]), {}, state)
        _drain(checkers)
        votes = [c.vote_verdicts(6) for c in checkers]
        assert votes[0] == votes[1] == votes[2] and len(votes[0]) >= 3 + 2
        # a peer that never saw the content fetches it from the DHT; every peer computes the same extra
        fresh = _checker(task, dht, "ff" * 32, 0.0)
        extras = [c.next_extra({"keep": 1}, 7, tuple(votes[0])) for c in checkers + [fresh]]
        assert all(e == extras[0] for e in extras)
        assert is_slashed(extras[0], KEYS[3]) and extras[0]["keep"] == 1
        assert not any(is_slashed(extras[0], k) for k in KEYS[:3])
        counts = checkers[1].verifier_counts(6, tuple(votes[0]))
        assert sum(counts.values()) == len(votes[0]) and counts[KEYS[0]] == 3  # checker 0 checked 3 updates
        assert checkers[1].verifier_counts(6, ("00" * 32,)) == {}  # an id never received counts nothing
        m = checkers[0].metrics(extras[0])
        assert m["checks"] == 3 and m["fails"] == 1 and m["max_pass_distance"] == 0.0 and m["slashed"] is False
    finally:
        for c in checkers:
            c.close()


def test_votes_ignore_verdicts_about_updates_not_included(task):
    dht = MemoryDHT()
    c = _checker(task, dht, KEYS[0], 0.0)
    ann = UpdateAnnouncement("run", 2, BASE_HASH, KEYS[1], 5, 5 * task.batch_size, "int8", "aa" * 32, 10)
    c.on_close(2, Book([ann]), {}, SimpleNamespace(params={}))
    forger = dht.signer_view(KEYS[2])
    ok = {"round": 2, "verifier": KEYS[2], "target": KEYS[1], "digest": "aa" * 32, "pass": True, "distance": 0.0,
          "recomputed": "bb" * 32, "steps": 5, "latency_s": 0.1, "recheck": False}
    made_up = dict(ok, digest="cc" * 32)
    wrong_steps = dict(ok, steps=9)
    forged = dict(ok, verifier=KEYS[3])
    forger.publish_round_record("run", "verdict.a", 2, {"verdicts": [ok, made_up, wrong_steps, forged]})
    ids = c.vote_verdicts(4)
    assert len(ids) == 1
    assert c.stats["invalid_verdicts"] == 1
    c.close()


def test_a_close_reads_each_round_of_verdicts_once(task):
    """A close reads round q - lag's verdicts for its vote (vote_verdicts); the re-check scan it queues takes
    them from the cache and reads only the newer round from the DHT: one read per round of verdicts, not two."""
    dht = MemoryDHT()
    c = _checker(task, dht, KEYS[0], 0.0)
    reads, get = [], c.rt.dht.get_round_records
    c.rt.dht.get_round_records = lambda run_id, kind, round: reads.append(round) or get(run_id, kind, round)
    try:
        c.vote_verdicts(6)
        c.on_close(6, Book([]), {}, SimpleNamespace(params={}))
        _drain([c])
        assert sorted(reads) == [4, 5]
    finally:
        c.close()


def test_the_verdicts_of_one_close_are_published_in_one_write(task):
    """Three checks drawn at one close: one DHT write of the verifier's verdict record when its queue
    runs dry, holding all three (not one write per check, each holding up the next check)."""
    dht = MemoryDHT()
    base = {n: p.detach().clone() for n, p in task.build_model(0).named_parameters()}
    payloads, anns = {}, []
    for i, key in enumerate(KEYS[1:]):
        blob = codecs.encode(recompute_update(task, base, "run", 0, key, 4, 2, raw=True), "int8")
        digest = f"{i + 40:02x}" * 32
        payloads[digest] = codecs.decode(blob)
        anns.append(UpdateAnnouncement("run", 4, BASE_HASH, key, 2, 2 * task.batch_size, "int8", digest, len(blob)))
    c = _checker(task, dht, KEYS[0], 64.0)
    writes, publish = [], c.rt.dht.publish_round_record
    c.rt.dht.publish_round_record = lambda *a, **k: writes.append(a[2]) or publish(*a, **k)
    try:
        c.on_close(4, Book(anns), payloads, SimpleNamespace(params=base))
        _drain([c])
        assert c.metrics()["checks"] == 3 and writes == [4]
        assert len(dht.records[("verdict.a", 4)][KEYS[0]].body["verdicts"]) == 3
    finally:
        c.close()


def test_a_flood_of_updates_costs_a_verifier_at_most_its_round_budget(task):
    """40 announced updates, every one drawn (c = 64): the verifier recomputes MAX_CHECKS_PER_ROUND of them (a
    random subset), not 40 (a fresh-key flood must not eat the honest peers' training time)."""
    from dai_swarm.verification.spotcheck import MAX_CHECKS_PER_ROUND

    dht = MemoryDHT()
    base = {n: p.detach().clone() for n, p in task.build_model(0).named_parameters()}
    delta = recompute_update(task, base, "run", 0, KEYS[1], 4, 1, raw=True)
    blob = codecs.encode(delta, "int8")
    payloads = {f"{i + 16:02x}" * 32: codecs.decode(blob) for i in range(40)}
    anns = [UpdateAnnouncement("run", 4, BASE_HASH, f"{i + 16:02x}" * 32, 1, task.batch_size, "int8", d, len(blob))
            for i, d in enumerate(sorted(payloads))]
    c = _checker(task, dht, KEYS[0], 64.0)
    try:
        c.on_close(4, Book(anns), payloads, SimpleNamespace(params=base))
        _drain([c])
        assert c.metrics()["checks"] == MAX_CHECKS_PER_ROUND < len(anns)
    finally:
        c.close()


def test_checks_per_update_stay_flat_as_the_region_grows():
    """c expected checks per update whatever n: per-peer checking cost is c updates' training."""
    from dai_swarm.verification.spotcheck import check_probability, detection_per_round

    for n in (2, 4, 8, 16, 32, 1000):
        p = check_probability(0.25, n)
        assert p == pytest.approx(min(1.0, 0.25 / (n - 1)))
        assert (n - 1) * p == pytest.approx(0.25)  # expected checks of one update (others, each with p)
        # a persistently cheating update is caught within 20 rounds with >= 99%
        assert 1 - (1 - detection_per_round(0.25, n)) ** 20 >= 0.99
    assert check_probability(8.0, 4) == 1.0 and check_probability(0.0, 9) == 0.0
    assert check_probability(1.0, 1) == 1.0  # alone: nobody else to check, nothing is drawn


def test_a_verifier_draws_about_c_over_n_minus_one_of_the_updates(task):
    """17 authors, c = 4: one verifier draws each of the 16 others' updates with p = 1/4."""
    dht = MemoryDHT()
    base = {n: p.detach().clone() for n, p in task.build_model(0).named_parameters()}
    anns = [UpdateAnnouncement("run", 4, BASE_HASH, f"{i + 16:02x}" * 32, 1, task.batch_size, "int8", f"{i + 16:02x}" * 32, 10)
            for i in range(16)]
    c = SpotChecker(task, 4.0, rng=random.Random(7), max_checks=64)
    drawn = []
    put = c._jobs.put
    c._jobs.put = lambda job: drawn.append(job) if job and job[0] == c._safe_check else None
    c.bind(SimpleNamespace(identity=SimpleNamespace(public_key_hex=KEYS[0]), region="a", run_id="run",
                           dht=dht.signer_view(KEYS[0]), manifest=SimpleNamespace(seed=0), codec="int8",
                           codec_params={}, clock=SimpleNamespace(round_s=2.0)))
    try:
        for q in range(50):
            c.on_close(q, Book(anns), {a.digest: {} for a in anns}, SimpleNamespace(params=base))
        assert 0.2 * 16 * 50 <= len(drawn) <= 0.3 * 16 * 50, len(drawn)  # expected 200 of 800
    finally:
        c._jobs.put = put
        c.close()


def test_fresh_keys_do_not_dilute_the_checks_of_updates_with_standing():
    """4 keys with standing (one of them the verifier) and 40 fresh keys, c = 1, budget 8: each update with
    standing is drawn with p = 1/3 (as without the flood: 3 other authors with standing), not 1/43, and
    kept ahead of the newcomers' when the budget binds; newcomers' updates are still drawn (they earn
    standing through checks) with p = 1/43 and only fill what is left."""
    from dai_swarm.verification.check_rate import draw_checks

    me, ranked = KEYS[0], KEYS[1:]
    fresh = [f"{i + 64:02x}" * 32 for i in range(40)]
    authors = {f"{i:02x}" * 32: k for i, k in enumerate([me, *ranked, *fresh])}
    rng = random.Random(5)
    of_ranked = of_fresh = 0
    for _ in range(3000):
        drawn = draw_checks(authors, me, KEYS, 1.0, 8, rng)
        assert len(drawn) <= 8 and drawn == sorted(drawn) and all(authors[d] != me for d in drawn)
        of_ranked += sum(authors[d] in ranked for d in drawn)
        of_fresh += sum(authors[d] in fresh for d in drawn)
    assert 0.30 <= of_ranked / (3 * 3000) <= 0.37  # p = 1/3 per update with standing
    assert 0.018 <= of_fresh / (40 * 3000) <= 0.029  # p = 1/43 per newcomer's update
    # a budget smaller than what was drawn keeps the updates with standing
    for _ in range(200):
        drawn = draw_checks(authors, me, KEYS, 64.0, 3, rng)  # every update drawn
        assert {authors[d] for d in drawn} == set(ranked)
    # with nobody holding standing it is the plain draw over all authors (the bootstrap window)
    drawn = draw_checks(authors, me, (), 64.0, 100, rng)
    assert len(drawn) == len(authors) - 1


def test_a_weightless_flood_does_not_dilute_the_checks_of_an_honest_newcomer():
    """Found by the Sybil-flood benchmark: 40 sign-flipped fresh-key updates (weight 0 after the
    direction gate) made an honest newcomer's update one of 41 newcomers' (p = 1/45 instead of
    1/5), so honest newcomers earned standing at rounds 6 and 8 instead of 3. Updates that carried
    weight are now drawn over the authors of weighted updates (as if the flood were not there); the
    weightless ones only fill what is left, still at p = 1/45 (they moved nothing)."""
    from dai_swarm.verification.check_rate import draw_checks

    me, ranked = KEYS[0], KEYS[1:]
    honest = "ab" * 32
    fresh = [f"{i + 64:02x}" * 32 for i in range(40)]
    authors = {f"{i:02x}" * 32: k for i, k in enumerate([me, *ranked, honest, *fresh])}
    weightless = {d for d, k in authors.items() if k in fresh}
    rng = random.Random(7)
    of_honest = of_fresh = 0
    for _ in range(3000):
        drawn = draw_checks(authors, me, KEYS, 1.0, 8, rng, weightless=weightless)
        assert len(drawn) <= 8 and drawn == sorted(drawn)
        of_honest += sum(authors[d] == honest for d in drawn)
        of_fresh += sum(authors[d] in fresh for d in drawn)
    assert 0.22 <= of_honest / 3000 <= 0.28  # p = 1/4: the 4 other authors of weighted updates
    assert 0.018 <= of_fresh / (40 * 3000) <= 0.029  # p = 1/44 per weightless update, unchanged
    # without the weights (or nothing weightless) the draw is the two-tier one: p = 1/44 for him too
    of_honest = sum(authors[d] == honest for _ in range(3000) for d in draw_checks(authors, me, KEYS, 1.0, 8, rng))
    assert of_honest / 3000 <= 0.04
    # a budget too small for all: updates with standing, then weighted newcomers, then the rest
    for _ in range(100):
        drawn = draw_checks(authors, me, KEYS, 64.0, 4, rng, weightless=weightless)
        assert {authors[d] for d in drawn} == {*ranked, honest}


def test_the_checker_reads_standing_from_the_base_it_closes(task):
    """on_close draws from the base's replicated trust table: with the other three keys standing and 40
    fresh keys, every update with standing is drawn at c = 8 (p = 1 over 3 others), budget 8; the
    newcomers' updates (p = 8/43 each) fill at most the 5 checks left."""
    from dai_swarm.verification.reputation import initial_extra

    dht = MemoryDHT()
    base = {n: p.detach().clone() for n, p in task.build_model(0).named_parameters()}
    keys = [*KEYS[1:], *(f"{i + 64:02x}" * 32 for i in range(40))]
    anns = [UpdateAnnouncement("run", 4, BASE_HASH, k, 1, task.batch_size, "int8", f"{i + 16:02x}" * 32, 10)
            for i, k in enumerate(keys)]
    c = SpotChecker(task, 8.0, rng=random.Random(3))
    drawn = []
    put = c._jobs.put
    c._jobs.put = lambda job: drawn.append(job[1][1].peer) if job and job[0] == c._safe_check else None
    c.bind(SimpleNamespace(identity=SimpleNamespace(public_key_hex=KEYS[0]), region="a", run_id="run",
                           dht=dht.signer_view(KEYS[0]), manifest=SimpleNamespace(seed=0), codec="int8",
                           codec_params={}, clock=SimpleNamespace(round_s=2.0)))
    try:
        fresh = 0
        for q in range(20):
            drawn.clear()
            c.on_close(q, Book(anns), {a.digest: {} for a in anns},
                       SimpleNamespace(params=base, extra=initial_extra(KEYS, c.policy)))
            assert set(KEYS[1:]) <= set(drawn) and len(drawn) <= 8, drawn
            fresh += len(drawn) - 3
        assert 60 <= fresh <= 100, fresh  # 20 rounds of min(5, Binomial(40, 8/43)): about 93
    finally:
        c._jobs.put = put
        c.close()


def test_fails_by_verifiers_with_standing_are_rechecked_first(task):
    """Round 2 holds 10 updates, each failed by a verdict; 2 of the fails come from a verifier with
    standing in round 2's base, 8 from a fresh key. With a budget of 2 re-checks, the scan re-checks
    exactly the two that a key with standing accused (only those can slash, once a second check
    agrees); with no standing anywhere it takes a random 2 of all 10."""
    from dai_swarm.verification.reputation import initial_extra

    fresh = "ee" * 32
    anns = [UpdateAnnouncement("run", 2, BASE_HASH, f"{i + 64:02x}" * 32, 5, 5 * task.batch_size, "int8",
                               f"{i + 16:02x}" * 32, 10) for i in range(10)]
    for extra, expect in ((initial_extra(KEYS[:2]), {anns[0].digest, anns[1].digest}), ({}, None)):
        dht = MemoryDHT()
        for verifier, targets in ((KEYS[1], anns[:2]), (fresh, anns[2:])):
            body = [{"round": 2, "verifier": verifier, "target": a.peer, "digest": a.digest, "pass": False,
                     "distance": 1.0, "recomputed": "bb" * 32, "steps": 5, "latency_s": 0.1, "recheck": False}
                    for a in targets]
            dht.signer_view(verifier).publish_round_record("run", "verdict.a", 2, {"verdicts": body})
        c = SpotChecker(task, 0.0, rng=random.Random(2), max_rechecks=2)
        c.bind(SimpleNamespace(identity=SimpleNamespace(public_key_hex=KEYS[0]), region="a", run_id="run",
                               dht=dht.signer_view(KEYS[0]), manifest=SimpleNamespace(seed=0), codec="int8",
                               codec_params={}, clock=SimpleNamespace(round_s=2.0)))
        try:
            c.on_close(2, Book(anns), {a.digest: {} for a in anns}, SimpleNamespace(params={}, extra=extra))
            done = []
            c._safe_check = lambda t, a, recheck, at: done.append(a.digest)
            c._scan(3)
            assert len(done) == 2, done
            if expect is not None:
                assert set(done) == expect
        finally:
            c.close()
