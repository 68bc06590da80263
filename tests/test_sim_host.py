"""Host CPU time in the simulator (dai_swarm.sim.host): contention, config, its effect on rounds, and
the measurement of one peer's protocol work on this machine."""

from __future__ import annotations

import math

import pytest
from test_sim import _one_thread  # noqa: F401  (autouse: one torch thread, as real peers run here)

from dai_swarm.errors import ConfigError
from dai_swarm.sim import SimConfig, simulate
from dai_swarm.sim.host import HostCosts, contention, measure_host_costs


def test_contention_is_live_peers_per_core_and_never_a_speed_up():
    assert contention(8, 2.0) == 4.0
    assert contention(1, 2.0) == 1.0  # one peer on two cores trains no faster than on one
    assert contention(1000, 0.0) == 1.0  # 0: a machine per peer
    with pytest.raises(ConfigError):
        contention(3, -1.0)


@pytest.mark.parametrize("field", ["host_cores", "apply_s", "encode_s", "compute_s_per_update"])
@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), True])
def test_host_fields_must_be_finite_and_non_negative(field, bad):
    with pytest.raises(ConfigError, match=field):
        SimConfig(**{field: bad})


# 4 peers of the regression task, one region; each inner step 0.05 s of one core, 40 steps at most
HOST = SimConfig(peers=4, regions=1, rounds=6, speed_median=20.0, speed_sigma=0.0, max_inner_steps=40,
                 check_prob=0.0, evaluate=False, seed=1)


def test_a_machine_per_peer_is_todays_model():
    rows_a, _ = simulate(HOST.with_(round_s=2.0))
    rows_b, _ = simulate(HOST.with_(round_s=2.0, host_cores=0.0, apply_s=0.0, encode_s=0.0))
    assert [r["base_hashes"] for r in rows_a] == [r["base_hashes"] for r in rows_b]


def test_shared_cores_train_fewer_steps_and_late_bases_empty_rounds():
    """Four peers on one core: a base costs 0.3 s of CPU to install (1.2 s shared). In 1 s rounds it
    arrives after the next round started and after its train deadline: no update is trained. In 4 s
    rounds every base is in place before its round and everyone trains and agrees."""
    short, _ = simulate(HOST.with_(round_s=1.0, host_cores=1.0, apply_s=0.3))
    assert sum(r["late_bases"] for r in short) > 0
    assert any(r["trained"] == 0 for r in short[1:]), [r["trained"] for r in short]
    long, _ = simulate(HOST.with_(round_s=4.0, host_cores=1.0, apply_s=0.3))
    assert all(r["late_bases"] == 0 and r["trained"] == 4 for r in long), long
    assert all(r["regions_in_agreement"] == 1 for r in long)
    # inner steps share the core too: 4 peers on 1 core train a quarter of the steps of 4 machines
    own, _ = simulate(HOST.with_(round_s=4.0))
    shared, _ = simulate(HOST.with_(round_s=4.0, host_cores=1.0))
    assert sum(r["trained"] for r in own) == sum(r["trained"] for r in shared)  # everyone still trains
    assert own[-1]["base_hashes"] != shared[-1]["base_hashes"]  # ... on fewer steps


def test_late_votes_from_slow_aggregation_split_the_round():
    """Aggregation slower than the time between close and tally: votes arrive after the tally."""
    cfg = HOST.with_(round_s=2.0, host_cores=1.0, compute_s_per_update=0.2)  # 4 x 0.2 x 4 = 3.2 s per vote
    rows, _ = simulate(cfg)
    assert all(r["agreed"] == 0 for r in rows), [(r["agreed"], r["undecided"]) for r in rows]
    ok, _ = simulate(cfg.with_(round_s=30.0))
    assert all(r["agreed"] == 4 for r in ok)


def test_measured_costs_are_positive_and_feed_the_simulator():
    costs = measure_host_costs("regression", repeat=1, steps=2, updates=2)
    for name, v in vars(costs).items():
        assert math.isfinite(v) and v > 0, (name, v)
    cfg = SimConfig(**{**costs.sim_fields()}, host_cores=2.0, peers=2, regions=1, rounds=2)
    assert cfg.speed_median == costs.steps_per_s and cfg.apply_s == costs.apply_s
    assert isinstance(costs, HostCosts)
    with pytest.raises(ConfigError):
        measure_host_costs("regression", steps=0)
