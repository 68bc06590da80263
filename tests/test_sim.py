"""Tests of the discrete-event simulator (dai_swarm.sim): determinism, a hand-computed case,
link arithmetic, config validation, Byzantine slashing and clustered vs flat traffic."""

from __future__ import annotations

import math

import pytest
import torch

from dai_swarm.errors import ConfigError
from dai_swarm.optim import codecs
from dai_swarm.optim.exchange import RESPONSE_HEADER_LEN
from dai_swarm.sim import LinkSpec, SimConfig, Simulator, simulate
from dai_swarm.sim.network import NetModel
from dai_swarm.sim.population import peer_key
from dai_swarm.tasks import load_task
from dai_swarm.verification.recompute import recompute_update


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SMALL = SimConfig(peers=6, regions=2, rounds=5, round_s=10.0, churn=0.5, byzantine=0.2, check_prob=1.0,
                  cross_region_period=2, max_inner_steps=2, seed=3)


def test_same_seed_same_trace_other_seed_other_trace():
    rows_a, sum_a = simulate(SMALL)
    rows_b, sum_b = simulate(SMALL)
    assert rows_a == rows_b
    assert sum_a["trace_digest"] == sum_b["trace_digest"]
    assert sum_a["counters"] == sum_b["counters"]
    assert sum_a["counters"].get("leaves", 0) + sum_a["counters"].get("crashes", 0) == 3  # 50% of 6
    _, sum_c = simulate(SMALL.with_(seed=4))
    assert sum_c["trace_digest"] != sum_a["trace_digest"]


def test_two_peers_one_round_matches_hand_computation():
    """2 peers, one region, round 0: both train ``cap`` steps, fetch each other's update, and the
    base of round 2 is θ0 − lr (1 + μ) mean(Δ) (Nesterov's first step from zero momentum)."""
    cfg = SimConfig(peers=2, regions=1, rounds=1, round_s=10.0, speed_median=100.0, speed_sigma=0.0,
                    max_inner_steps=3, check_prob=0.0, seed=7)
    sim = Simulator(cfg)
    rows = sim.run()
    assert len(rows) == 1
    row = rows[0]
    task = load_task("regression")
    theta0 = {n: p.detach().clone() for n, p in task.build_model(7).named_parameters()}
    blobs = [codecs.encode(recompute_update(task, theta0, "sim", 7, peer_key(7, i), 0, 3, raw=True), "int8",
                           **codecs.RUN_CODEC_PARAMS) for i in range(2)]  # as a real peer of a new run encodes
    deltas = [codecs.decode(b) for b in blobs]
    lr, mu = cfg.outer_lr, cfg.outer_momentum
    expect = {n: theta0[n] - lr * (1 + mu) * (deltas[0][n] + deltas[1][n]) / 2 for n in theta0}
    got = sim.states[sim.region_base[("r0", 2)]].params
    for n in theta0:
        assert torch.allclose(got[n], expect[n], atol=1e-6, rtol=0), n
    # bytes: each peer downloads the other's payload once, plus the response header; nothing cross
    assert row["bytes"] == {"intra": sum(len(b) + RESPONSE_HEADER_LEN for b in blobs), "cross": 0}
    # both agree at once; the base is ready at the tally, 0.55 T after the round ends
    assert (row["included"], row["agreed"], row["regions_in_agreement"]) == (2, 2, 1)
    assert row["completion_max_s"] == pytest.approx(cfg.tally_frac * cfg.round_s)
    assert not row["stalled"]


def test_link_and_dht_arithmetic():
    link = LinkSpec(0.05, 1e6)
    assert link.transfer_s(2_000_000) == pytest.approx(2.05)
    cfg = SimConfig(peers=16, regions=2, intra=LinkSpec(0.01, 1e7), cross=LinkSpec(0.1, 1e6))
    net = NetModel(cfg, 16)
    assert net.hops == 2  # ceil(log2(16) / 2)
    assert net.hop_s == pytest.approx(2 * (0.5 * 0.01 + 0.5 * 0.1))
    assert net.link_class("r0", "r0") == "intra" and net.link_class("r0", "r1") == "cross"
    assert net.spec("r0", "r1").bandwidth_Bps == 1e6


@pytest.mark.parametrize("bad", [dict(peers=0), dict(regions=3, peers=2), dict(exchange="mesh"),
                                 dict(churn=1.5), dict(byzantine=0.5), dict(round_s=0.0)])
def test_bad_config_is_refused(bad):
    with pytest.raises(ConfigError):
        SimConfig(**bad)
    with pytest.raises(ConfigError):
        LinkSpec(-1.0, 1.0)


def test_sign_flippers_are_slashed_and_nobody_else():
    cfg = SimConfig(peers=6, regions=1, rounds=6, round_s=10.0, byzantine=0.34, check_prob=1.0,
                    max_inner_steps=2, seed=1, evaluate=False)
    sim = Simulator(cfg)
    sim.run()
    s = sim.summary()
    assert s["byzantine_peers"] == 2
    assert s["slashes"] == 2 and s["slashed_byzantine"] == 2
    assert all(r["regions_in_agreement"] == r["regions"] for r in sim.rows)


def test_clustered_exchange_moves_far_fewer_cross_region_bytes_than_flat():
    base = SimConfig(peers=8, regions=4, rounds=4, round_s=10.0, cross_region_period=2, max_inner_steps=1,
                     check_prob=0.0, evaluate=False)
    _, clustered = simulate(base)
    _, flat = simulate(base.with_(exchange="flat"))
    assert clustered["bytes"]["cross"] > 0
    assert flat["bytes"]["cross"] > 3 * clustered["bytes"]["cross"]
    assert clustered["stalled_rounds"] == 0 and flat["stalled_rounds"] == 0
    assert math.isfinite(clustered["val_loss_last"] or 0.0)


def test_per_round_reads_real_histories():
    from dai_swarm.sim.realrun import per_round

    def entry(q, t, intra, h):
        return {"round": q, "time": t, "state_hash": h, "updates": 2,
                "traffic": {"received": {"intra": intra, "cross": 0}, "sent": {"intra": 0, "cross": 0}}}

    run = {"t0": 100.0, "round_s": 10.0, "regions": 1, "histories": {
        0: {"status": {"region": "r0"}, "history": [entry(0, 115.5, 100, "a"), entry(1, 125.0, 350, "b")]},
        1: {"status": {"region": "r0"}, "history": [entry(0, 116.0, 0, "a"), entry(1, 126.0, 50, "c")]}}}
    rows = per_round(run)
    assert rows[0]["completion_median_s"] == 5.75 and rows[0]["regions_in_agreement"] == 1
    assert rows[1]["bytes"] == {"intra": 300, "cross": 0}  # (350-100) + (50-0)
    assert rows[1]["regions_in_agreement"] == 0 and rows[1]["completion_max_s"] == 6.0
