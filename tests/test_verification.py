"""Unit tests of the trust core: recomputation, verdicts, reputation rules, the robust rule."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from dai_swarm.errors import ConfigError, MalformedRecord, ShapeMismatch
from dai_swarm.optim import codecs
from dai_swarm.optim.aggregate import weighted_mean
from dai_swarm.tasks import load_task
from dai_swarm.verification.assignment import assign
from dai_swarm.verification.recompute import recompute_update, relative_distance
from dai_swarm.verification.reputation import (ReputationPolicy, initial_extra, is_slashed, reputation_of,
                                               update_reputation)
from dai_swarm.verification.robust import CenteredClip
from dai_swarm.verification.verdicts import Verdict, record_body, verdict_id, verdicts_from_record

torch.set_num_threads(1)
K = [f"{i:02x}" * 32 for i in range(10)]  # public keys
D = [f"{i + 100:02x}" * 32 for i in range(10)]  # digests


@pytest.fixture(scope="module")
def task():
    return load_task("regression")


def _trainer_loop(task, model, run_id, seed, peer, round, steps):
    """What a peer's user loop + SwarmOptimizer do in one round (one inner optimizer, state cleared)."""
    inner = task.inner_optimizer(model.parameters())
    for step in range(steps):
        batch = task.get_batch(assign(run_id, seed, peer, round, step, task.batch_size, len(task.dataset)))
        loss = task.loss(model, batch)
        loss.backward()
        inner.step()
        inner.zero_grad()
    return inner


def test_recompute_matches_the_training_loop_bitwise(task):
    model = task.build_model(0)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    # a first round with this optimizer object, then a state reset, as SwarmOptimizer does
    inner = _trainer_loop(task, model, "r", 0, K[3], 0, 3)
    inner.state.clear()
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(base[n])
    for step in range(7):
        batch = task.get_batch(assign("r", 0, K[1], 4, step, task.batch_size, len(task.dataset)))
        task.loss(model, batch).backward()
        inner.step()
        inner.zero_grad()
    author = {n: base[n] - p.detach() for n, p in model.named_parameters()}
    mine = recompute_update(task, base, "r", 0, K[1], 4, 7, raw=True)
    assert all(torch.equal(author[n], mine[n]) for n in author)
    assert relative_distance(author, mine) == 0.0
    # through the run's codec both sides see identical decoded payloads
    blob = codecs.encode(author, "int8")
    assert relative_distance(codecs.decode(blob), recompute_update(task, base, "r", 0, K[1], 4, 7, codec="int8")) == 0.0


def test_recompute_differs_for_other_steps_peer_or_round(task):
    base = {n: p.detach().clone() for n, p in task.build_model(0).named_parameters()}
    ref = recompute_update(task, base, "r", 0, K[1], 4, 6, raw=True)
    for other in (recompute_update(task, base, "r", 0, K[1], 4, 3, raw=True),
                  recompute_update(task, base, "r", 0, K[2], 4, 6, raw=True),
                  recompute_update(task, base, "r", 0, K[1], 5, 6, raw=True)):
        assert relative_distance(other, ref) > 1e-2
    with pytest.raises(ConfigError):
        recompute_update(task, base, "r", 0, K[1], 4, 0)
    with pytest.raises(ShapeMismatch):
        recompute_update(task, {"nope": torch.zeros(1)}, "r", 0, K[1], 4, 1)


def test_relative_distance_edge_cases():
    a = {"w": torch.ones(3)}
    assert relative_distance(a, a) == 0.0
    assert relative_distance({"w": torch.zeros(3)}, {"w": torch.zeros(3)}) == 0.0
    assert relative_distance({"w": torch.ones(4)}, a) == math.inf
    assert relative_distance({"x": torch.ones(3)}, a) == math.inf
    assert relative_distance({"w": torch.tensor([1.0, float("nan"), 1.0])}, a) == math.inf
    assert relative_distance({"w": -torch.ones(3)}, a) == pytest.approx(2.0)


def test_recompute_across_thread_counts_stays_far_below_tau(task):
    """Two processes with 1 and 2 torch threads: the distance is tiny (τ is calibrated far above)."""
    code = ("import sys, torch; torch.set_num_threads(int(sys.argv[1])); "
            "from dai_swarm.tasks import load_task; from dai_swarm.verification.recompute import recompute_update;"
            "t = load_task('regression'); b = {n: p.detach().clone() for n, p in t.build_model(0).named_parameters()};"
            "d = recompute_update(t, b, 'r', 0, '%s', 3, 20, codec='int8');"
            "torch.save(d, sys.argv[2])" % K[1])
    paths = []
    for threads in (1, 2):
        path = f"/tmp/dai_swarm_recompute_{os.getpid()}_{threads}.pt"
        subprocess.run([sys.executable, "-c", code, str(threads), path], check=True, timeout=120)
        paths.append(path)
    d1, d2 = (torch.load(p, weights_only=True) for p in paths)  # files this test wrote itself
    for p in paths:
        os.remove(p)
    from dai_swarm.verification.spotcheck import DEFAULT_TAU
    assert relative_distance(d1, d2) < DEFAULT_TAU / 10


# --- verdicts --------------------------------------------------------------------------------------
def _v(verifier, target, digest, passed, round=5, **kw):
    return Verdict(round=round, verifier=verifier, target=target, digest=digest, passed=passed,
                   distance=0.0 if passed else 0.7, recomputed=D[9], steps=4, **kw)


class _Rec:
    def __init__(self, round, signer, body):
        self.round, self.signer, self.body = round, signer, body


def test_verdict_roundtrip_and_ids():
    v = _v(K[1], K[2], D[0], False)
    rec = _Rec(5, K[1], record_body([v, _v(K[1], K[3], D[1], True)]))
    parsed, bad = verdicts_from_record(rec)
    assert bad == 0 and parsed[0] == v and parsed[0].id == v.id
    assert v.id == verdict_id(5, K[1], v.body()) and len(v.id) == 64
    assert _v(K[1], K[2], D[0], True).id != v.id


@pytest.mark.parametrize("change", [
    {"verifier": K[4]},  # forged: names another verifier than its signer
    {"round": 4},  # replayed into another round
    {"target": K[1]},  # judging itself
    {"pass": "yes"}, {"distance": "x"}, {"digest": "zz"}, {"steps": -1}, {"extra": 1},
])
def test_malformed_verdicts_are_refused_one_by_one(change):
    good = _v(K[1], K[2], D[0], True).body()
    bad = dict(good)
    bad.update(change)
    parsed, n_bad = verdicts_from_record(_Rec(5, K[1], {"verdicts": [bad, good]}))
    assert n_bad == 1 and [p.body() for p in parsed] == [good]
    with pytest.raises(MalformedRecord):
        Verdict.from_body(5, K[1], bad)


def test_verdict_record_must_be_a_bounded_list():
    with pytest.raises(MalformedRecord):
        verdicts_from_record(_Rec(5, K[1], {"verdicts": "no"}))
    with pytest.raises(MalformedRecord):
        verdicts_from_record(_Rec(5, K[1], {"verdicts": [{}] * 300}))


# --- reputation ----------------------------------------------------------------------------------------
P = ReputationPolicy()


def test_newcomers_are_capped_until_warm():
    extra = initial_extra([K[1], K[3]])  # the verifiers hold standing (founders)
    for r in range(1, 6):
        extra = update_reputation(extra, r, [_v(K[1], K[2], D[r], True, round=r), _v(K[3], K[2], D[r], True, round=r)])
        rep = reputation_of(extra)[K[2]]
        assert rep <= (P.newcomer_cap if r < P.warmup_passes else P.max_reputation)
    assert reputation_of(extra)[K[2]] > P.newcomer_cap
    assert reputation_of(extra).get(K[7], 1.0) == P.newcomer  # unknown keys never get the caller's default


def test_one_fail_alone_never_slashes():
    extra = update_reputation({}, 10, [_v(K[1], K[2], D[0], False)])
    assert not is_slashed(extra, K[2]) and reputation_of(extra)[K[2]] == P.newcomer


def test_two_independent_fails_slash_for_a_period_then_start_over():
    extra = update_reputation({"other": 1}, 10, [_v(K[1], K[2], D[0], False), _v(K[3], K[2], D[0], False),
                                                  _v(K[4], K[2], D[0], True)])
    assert is_slashed(extra, K[2]) and is_slashed(extra, K[4])  # the voucher for a bad update too
    assert reputation_of(extra)[K[2]] == 0.0 and extra["other"] == 1 and extra["slashed_now"] == sorted([K[2], K[4]])
    later = update_reputation(extra, 10 + P.slash_rounds - 1, [])
    assert is_slashed(later, K[2])
    back = update_reputation(later, 10 + P.slash_rounds, [])
    assert not is_slashed(back, K[2]) and reputation_of(back)[K[2]] == P.newcomer


def test_false_accuser_is_slashed_by_rechecks():
    extra = update_reputation({}, 10, [_v(K[1], K[2], D[0], False), _v(K[3], K[2], D[0], True),
                                       _v(K[4], K[2], D[0], True)])
    assert is_slashed(extra, K[1]) and not is_slashed(extra, K[2])
    assert reputation_of(extra)[K[2]] > P.newcomer


def test_equal_weights_tie_changes_nothing_and_equivocators_are_slashed():
    extra = update_reputation({}, 10, [_v(K[1], K[2], D[0], False), _v(K[3], K[2], D[0], True)])
    assert not is_slashed(extra, K[1]) and not is_slashed(extra, K[2])
    extra = update_reputation({}, 10, [_v(K[1], K[2], D[0], False), _v(K[1], K[2], D[0], True)])
    assert is_slashed(extra, K[1])


def test_slashed_verifiers_do_not_count():
    extra = update_reputation({}, 10, [_v(K[1], K[9], D[0], False), _v(K[3], K[9], D[0], False)])
    assert is_slashed(extra, K[9])
    extra = update_reputation({}, 10, [_v(K[1], K[2], D[1], False), _v(K[3], K[2], D[1], True),
                                       _v(K[4], K[2], D[1], True)])  # K1 slashed as a false accuser
    extra2 = update_reputation(extra, 11, [_v(K[1], K[5], D[2], False, round=11), _v(K[6], K[5], D[2], False, round=11)])
    assert not is_slashed(extra2, K[5])  # only one fail counted: K1 weighs 0


def test_reputation_update_is_order_independent_and_json_stable():
    import json
    vs = [_v(K[i], K[(i + 1) % 6], D[i % 3], i % 4 != 0) for i in range(6)]
    a = update_reputation({}, 7, vs)
    b = update_reputation({}, 7, list(reversed(vs)))
    assert a == b
    assert json.loads(json.dumps(a)) == a
    with pytest.raises(ConfigError):
        ReputationPolicy(newcomer=0.0)


# --- robust rule ---------------------------------------------------------------------------------------
def _updates(n, seed=0, dim=50):
    g = torch.Generator().manual_seed(seed)
    return [{"a": torch.randn(dim, generator=g) * 0.1 + 1.0, "b": torch.randn(3, 2, generator=g) * 0.1}
            for _ in range(n)]


def test_centered_clip_bounds_an_outlier():
    honest = _updates(6)
    mean = {n: torch.stack([u[n] for u in honest]).mean(0) for n in honest[0]}
    bad = {n: t * -1000 for n, t in honest[0].items()}
    rule = CenteredClip()
    w = [1 / 7] * 7
    robust = rule(honest + [bad], w)
    plain = weighted_mean([(D[i], 1.0, u) for i, u in enumerate(honest + [bad])])
    err_robust = relative_distance(robust, mean)
    err_plain = relative_distance(plain, mean)
    assert err_robust < 0.1 < err_plain


def test_centered_clip_is_deterministic_and_exact_on_identical_inputs():
    u = _updates(1)[0]
    out = CenteredClip()([u, u, u], [0.2, 0.3, 0.5])
    assert all(torch.equal(out[n], u[n]) for n in u)
    ups = _updates(5, seed=3)
    r1 = CenteredClip()(ups, [0.2] * 5)
    torch.set_num_threads(2)
    r2 = CenteredClip()(ups, [0.2] * 5)
    torch.set_num_threads(1)
    assert all(torch.equal(r1[n], r2[n]) for n in r1)


def test_centered_clip_ignores_zero_weights_and_plugs_into_weighted_mean():
    ups = _updates(3)
    bad = {n: t * 1e6 for n, t in ups[0].items()}
    out = weighted_mean([(D[0], 1.0, ups[0]), (D[1], 1.0, ups[1]), (D[2], 0.0, bad)], rule=CenteredClip())
    ref = CenteredClip()([ups[0], ups[1]], [0.5, 0.5])
    assert all(torch.equal(out[n], ref[n]) for n in out)
    with pytest.raises(ConfigError):
        CenteredClip(iterations=0)
