"""The trust core in simulation: detection rate at p = 0.2, no false slashes, bounded loss."""

from __future__ import annotations

import random

import pytest
import torch

from benchmarks.detection import wilson
from dai_swarm.tasks import load_task
from dai_swarm.verification.simulate import PROTOCOL_LAG, detection_trial, training_run

torch.set_num_threads(1)


def test_always_cheating_attackers_are_slashed_within_20_rounds():
    rng = random.Random(11)
    res = [r for _ in range(250) for r in detection_trial(rng, n_honest=3, n_attackers=2, p=0.2, cheat=1.0,
                                                         rounds=20)]
    caught = sum(r is not None for r in res)
    assert caught / len(res) >= 0.99
    assert min(r for r in res if r is not None) >= PROTOCOL_LAG  # a slash needs vote + tally first


def test_detection_rate_matches_the_model_for_intermittent_cheaters():
    rng = random.Random(5)
    p, c, v, horizon = 0.2, 0.3, 2, 20
    res = [r for _ in range(400) for r in detection_trial(rng, n_honest=v, n_attackers=1, p=p, cheat=c,
                                                         rounds=horizon)]
    q = c * (1 - (1 - p) ** v)
    expected = 1 - (1 - q) ** (horizon - PROTOCOL_LAG)
    lo, hi = wilson(sum(r is not None for r in res), len(res), z=3.0)
    assert lo <= expected <= hi


def test_a_single_honest_verifier_cannot_slash_alone():
    res = detection_trial(random.Random(1), n_honest=1, n_attackers=1, p=1.0, cheat=1.0, rounds=10)
    assert res == [None]


@pytest.fixture(scope="module")
def task():
    return load_task("regression")


def test_honest_swarm_real_recomputations_no_false_slash(task):
    run = training_run(task, n_peers=4, attackers={}, rounds=6, steps=5, p=0.5, verifier_threads=2,
                       rng=random.Random(3))
    assert run["honest_checks"] > 10 and run["false_slashes"] == 0
    assert max(run["honest_distances"]) <= 1e-4
    assert run["val_loss"][-1] < run["val_loss"][0]


def test_sign_flip_is_slashed_and_loss_stays_near_no_attack(task):
    kw = dict(n_peers=4, rounds=10, steps=5, p=0.5, rng=random.Random(4))
    clean = training_run(task, attackers={}, **kw)
    kw["rng"] = random.Random(4)
    ours = training_run(task, attackers={3: "sign_flip"}, **kw)
    kw["rng"] = random.Random(4)
    plain = training_run(task, attackers={3: "sign_flip"}, verify=False, robust=False, **kw)
    assert "sign_flip#3" in ours["slashed_round"] and ours["false_slashes"] == 0
    # 10 short rounds, the attacker counts (clipped) until its slash: near, not at, the clean loss
    assert ours["val_loss"][-1] <= 1.3 * clean["val_loss"][-1]
    assert plain["val_loss"][-1] > ours["val_loss"][-1]
