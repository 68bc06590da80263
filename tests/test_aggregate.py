"""Deterministic aggregation and the Nesterov outer step (I1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from dai_swarm.canonical import state_hash
from dai_swarm.errors import ConfigError, NonFiniteValues, ShapeMismatch
from dai_swarm.optim.aggregate import sq_norm, update_weight, weighted_mean
from dai_swarm.optim.outer import OuterState, outer_state_hash, outer_step


def _d(i: int) -> str:
    return f"{i:064x}"


def _updates(n: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(_d(i * 7919 % 101), float(1 + i * 3), {"w": torch.randn(size, generator=g),
                                                     "b": torch.randn(3, 5, generator=g)})
            for i in range(n)]


def test_weighted_mean_matches_float64_reference():
    ups = _updates(4, 1000)
    out = weighted_mean(ups)
    total = sum(w for _, w, _ in ups)
    for name in ("w", "b"):
        ref = sum(t[name].double() * (w / total) for _, w, t in ups)
        assert out[name].dtype == torch.float32
        assert torch.allclose(out[name].double(), ref, rtol=0, atol=1e-6)


def test_weighted_mean_ignores_input_order():
    ups = _updates(5, 4097)
    a = weighted_mean(ups)
    b = weighted_mean(list(reversed(ups)))
    assert state_hash(a) == state_hash(b)


def test_single_update_with_any_weight_is_itself():
    (d, _, t), = _updates(1, 64)
    out = weighted_mean([(d, 123.0, t)])
    assert torch.equal(out["w"], t["w"]) and torch.equal(out["b"], t["b"])


@pytest.mark.parametrize(
    "mutate, error",
    [
        (lambda u: [], ConfigError),
        (lambda u: u + [u[0]], ConfigError),
        (lambda u: [(u[0][0], -1.0, u[0][2])] + u[1:], ConfigError),
        (lambda u: [(u[0][0], float("nan"), u[0][2])] + u[1:], ConfigError),
        (lambda u: [(d, 0.0, t) for d, _, t in u], ConfigError),
        (lambda u: [(u[0][0], 1.0, {"w": u[0][2]["w"]})] + u[1:], ShapeMismatch),
        (lambda u: [(u[0][0], 1.0, {"w": u[0][2]["w"][:-1], "b": u[0][2]["b"]})] + u[1:], ShapeMismatch),
        (lambda u: [(u[0][0], 1.0, {"w": u[0][2]["w"].long(), "b": u[0][2]["b"]})] + u[1:], ShapeMismatch),
        (lambda u: [(u[0][0], 1.0, {"w": torch.full_like(u[0][2]["w"], float("inf")), "b": u[0][2]["b"]})]
         + u[1:], NonFiniteValues),
    ],
)
def test_weighted_mean_rejects_bad_input(mutate, error):
    with pytest.raises(error):
        weighted_mean(mutate(_updates(3, 16)))


def test_non_finite_input_is_named_even_at_zero_weight_and_overflow_is_caught():
    ups = _updates(3, 16)
    bad = dict(ups[1][2], b=ups[1][2]["b"].clone())
    bad["b"][0, 0] = float("nan")
    with pytest.raises(NonFiniteValues, match=ups[1][0]):
        weighted_mean([ups[0], (ups[1][0], 0.0, bad), ups[2]])
    big = torch.full((4,), torch.finfo(torch.float32).max)  # 10 x (max * 0.1f) rounds past max
    with pytest.raises(NonFiniteValues, match="overflowed"):
        weighted_mean([(_d(i), 1.0, {"x": big}) for i in range(10)])


def test_rule_hook_gets_sorted_updates_and_normalised_weights():
    ups = _updates(3, 8)
    seen = {}

    def rule(updates, weights):
        seen["weights"] = list(weights)
        seen["first"] = updates[0]
        return {k: v.clone() for k, v in updates[-1].items()}

    out = weighted_mean(ups, rule=rule)
    ordered = sorted(ups, key=lambda u: u[0])
    assert seen["first"] is ordered[0][2]
    assert abs(sum(seen["weights"]) - 1.0) < 1e-12
    assert seen["weights"][0] == ordered[0][1] / sum(w for _, w, _ in ups)
    assert torch.equal(out["w"], ordered[-1][2]["w"])
    with pytest.raises(ShapeMismatch):
        weighted_mean(ups, rule=lambda u, w: {"w": u[0]["w"]})


def test_update_weight_and_sq_norm():
    assert update_weight(64, 0.5, 0.5) == 16.0
    assert update_weight(64) == 64.0
    for bad in ((-1,), (1, float("inf")), (1, 1.0, -0.1), (True,)):
        with pytest.raises(ConfigError):
            update_weight(*bad)
    t = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([[12.0]])}
    assert sq_norm(t) == 169.0


# ------------------------------------------------------------------------ outer step
def test_outer_step_matches_torch_sgd_nesterov():
    g = torch.Generator().manual_seed(1)
    params = {"w": torch.randn(257, 33, generator=g), "b": torch.randn(33, generator=g)}
    state = OuterState.initial(params)
    ref = {n: torch.nn.Parameter(t.clone()) for n, t in params.items()}
    opt = torch.optim.SGD(list(ref.values()), lr=0.7, momentum=0.9, nesterov=True)
    for _ in range(5):
        delta = {n: torch.randn(t.shape, generator=g) * 0.01 for n, t in params.items()}
        state = outer_step(state, delta, lr=0.7, momentum=0.9)
        for n, p in ref.items():
            p.grad = delta[n].clone()
        opt.step()
    for n, p in ref.items():
        assert torch.allclose(state.params[n], p.detach(), rtol=1e-5, atol=1e-6), n
        assert torch.allclose(state.momentum[n], opt.state[p]["momentum_buffer"], rtol=1e-5, atol=1e-6)


def test_outer_step_plain_momentum_and_purity():
    params = {"x": torch.tensor([1.0, 2.0])}
    s0 = OuterState.initial(params)
    h0 = s0.hash()
    s1 = outer_step(s0, {"x": torch.tensor([1.0, -1.0])}, lr=0.5, momentum=0.5, nesterov=False)
    s2 = outer_step(s1, {"x": torch.tensor([1.0, -1.0])}, lr=0.5, momentum=0.5, nesterov=False)
    assert s0.hash() == h0, "outer_step must not write into its input"
    assert torch.equal(s1.params["x"], torch.tensor([0.5, 2.5]))
    assert torch.equal(s2.momentum["x"], torch.tensor([1.5, -1.5]))
    assert torch.equal(s2.params["x"], torch.tensor([-0.25, 3.25]))
    assert s2.hash() == outer_state_hash(s2) != s1.hash()


def test_outer_state_hash_covers_momentum():
    params = {"x": torch.zeros(3)}
    a = OuterState.initial(params)
    b = OuterState({"x": torch.zeros(3)}, {"x": torch.tensor([0.0, 0.0, 1e-30])})
    assert a.hash() != b.hash()


@pytest.mark.parametrize(
    "delta, kw, error",
    [
        ({"y": torch.zeros(2)}, {}, ShapeMismatch),
        ({"x": torch.zeros(3)}, {}, ShapeMismatch),
        ({"x": torch.tensor([0.0, float("nan")])}, {}, NonFiniteValues),
        ({"x": torch.zeros(2)}, {"lr": 0.0}, ConfigError),
        ({"x": torch.zeros(2)}, {"momentum": 1.0}, ConfigError),
        ({"x": torch.zeros(2)}, {"lr": float("inf")}, ConfigError),
    ],
)
def test_outer_step_rejects_bad_input(delta, kw, error):
    args = {"lr": 0.1, "momentum": 0.9} | kw
    with pytest.raises(error):
        outer_step(OuterState.initial({"x": torch.zeros(2)}), delta, **args)


def test_outer_state_rejects_inconsistent_momentum():
    with pytest.raises(ShapeMismatch):
        OuterState({"x": torch.zeros(2)}, {"y": torch.zeros(2)})
    with pytest.raises(ShapeMismatch):
        OuterState({"x": torch.zeros(2)}, {"x": torch.zeros(2, dtype=torch.float64)})


# -------------------------------------------------- bitwise determinism across processes
_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    torch.set_num_threads(int(sys.argv[2]))
    from dai_swarm.optim.aggregate import weighted_mean
    from dai_swarm.optim.outer import OuterState, outer_step
    data = np.load(sys.argv[1], allow_pickle=False)
    n = int(data["n"])
    ups = [(f"{i:064x}", float(data["w"][i]), {"a": torch.from_numpy(data[f"a{i}"]),
                                              "b": torch.from_numpy(data[f"b{i}"])}) for i in range(n)]
    agg = weighted_mean(ups)
    st = OuterState.initial({"a": torch.from_numpy(data["pa"]), "b": torch.from_numpy(data["pb"])})
    st = outer_step(st, agg, lr=0.7, momentum=0.9)
    st = outer_step(st, agg, lr=0.7, momentum=0.9)
    print(json.dumps({"threads": torch.get_num_threads(),
                      "agg": __import__("dai_swarm.canonical", fromlist=["x"]).state_hash(agg),
                      "state": st.hash()}))
    """
)


def test_aggregation_and_outer_step_bitwise_identical_across_thread_counts(tmp_path):
    rng = np.random.default_rng(7)
    n, size = 6, 1_000_003  # odd size: vector chunks, scalar tails and thread splits all differ
    arrays = {"n": np.array(n), "w": rng.uniform(1, 100, n), "pa": rng.standard_normal(size).astype(np.float32),
              "pb": rng.standard_normal((333, 77)).astype(np.float32)}
    for i in range(n):
        arrays[f"a{i}"] = (rng.standard_normal(size) * 1e-2).astype(np.float32)
        arrays[f"b{i}"] = (rng.standard_normal((333, 77)) * 1e-2).astype(np.float32)
    path = tmp_path / "inputs.npz"
    np.savez(path, **arrays)
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    results = []
    for threads in (1, 2):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        proc = subprocess.run([sys.executable, str(script), str(path), str(threads)], capture_output=True,
                              text=True, env=env, timeout=120, check=True)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert [r["threads"] for r in results] == [1, 2]
    assert results[0]["agg"] == results[1]["agg"]
    assert results[0]["state"] == results[1]["state"]
