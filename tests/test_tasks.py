"""Contract tests for the built-in tasks (regression, tinylm small preset) and the tinylm corpus."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

from dai_swarm.canonical import canonical_json, state_hash
from dai_swarm.errors import TaskError
from dai_swarm.tasks import RegressionTask, Task, TinyLMTask, load_task, unigram_entropy
from dai_swarm.tasks.base import check_indices
from dai_swarm.tasks.corpus import DEFAULT_EXCLUDE, load_corpus


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the machine is shared, and oversubscribed threads slow training ~20x."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module", params=["regression", "tinylm-small"])
def task(request) -> Task:
    return load_task(request.param)


def _train(task: Task, steps: int, seed: int = 0) -> torch.nn.Module:
    model = task.build_model(seed)
    opt = task.inner_optimizer(model.parameters())
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(task.dataset), (task.batch_size,), generator=gen).tolist()
        task.loss(model, task.get_batch(idx)).backward()
        opt.step()
        opt.zero_grad()
    return model


def test_build_model_is_a_function_of_the_seed_only(task):
    rng_before = torch.get_rng_state()
    a, b, c = task.build_model(3), task.build_model(3), task.build_model(4)
    assert torch.equal(torch.get_rng_state(), rng_before), "build_model must not touch the global RNG"
    assert state_hash(a.state_dict()) == state_hash(b.state_dict())
    assert state_hash(a.state_dict()) != state_hash(c.state_dict())
    assert all(torch.isfinite(p).all() for p in a.parameters())


def test_dataset_items_and_batches_are_deterministic(task):
    other = load_task(task.name if task.name == "regression" else "tinylm-small")
    n = len(task.dataset)
    assert n > 100
    for i in (0, 1, n // 2, n - 1):
        assert state_hash({"a": _first(task.dataset[i])}) == state_hash({"a": _first(other.dataset[i])})
    idx = [5, 0, n - 1, 5]
    x1, y1 = task.get_batch(idx)
    x2, y2 = other.get_batch(idx)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape[0] == y1.shape[0] == len(idx)
    assert torch.equal(x1[0], x1[3]), "the same index gives the same item within a batch"


def _first(item):
    return item[0] if isinstance(item, tuple) else item


@pytest.mark.parametrize("bad", [[], [-1], [10**9], [1.5], ["3"], [True]])
def test_get_batch_rejects_bad_indices(task, bad):
    with pytest.raises(TaskError):
        task.get_batch(bad)


def test_loss_is_a_deterministic_scalar_with_gradients_everywhere(task):
    model = task.build_model(0)
    batch = task.get_batch(list(range(task.batch_size)))
    loss1 = task.loss(model, batch)
    loss2 = task.loss(model, batch)
    assert loss1.dim() == 0 and torch.isfinite(loss1)
    assert loss1.item() == loss2.item()
    loss1.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_inner_optimizer_is_fresh_and_covers_every_parameter(task):
    model = task.build_model(0)
    o1 = task.inner_optimizer(model.parameters())
    o2 = task.inner_optimizer(model.parameters())
    assert isinstance(o1, torch.optim.Optimizer) and o1 is not o2
    covered = {id(p) for g in o1.param_groups for p in g["params"]}
    assert covered == {id(p) for p in model.parameters()}
    assert not o1.state, "a fresh optimiser has no state"


def test_evaluate_is_pure_and_returns_a_float_loss(task):
    model = task.build_model(0)
    before = state_hash(model.state_dict())
    m1, m2 = task.evaluate(model), task.evaluate(model)
    assert m1 == m2
    assert isinstance(m1["loss"], float) and math.isfinite(m1["loss"]) and m1["loss"] > 0
    assert state_hash(model.state_dict()) == before
    assert model.training, "evaluate restores the training mode"


def test_config_is_json_and_hash_tracks_it(task):
    cfg = task.config()
    assert json.loads(canonical_json(cfg)) == cfg
    assert cfg["task"] == task.name
    h = task.config_hash()
    assert len(h) == 64 and h == load_task("tinylm-small" if task.name == "tinylm" else task.name).config_hash()
    changed = load_task("tinylm-small" if task.name == "tinylm" else task.name, lr=0.123)
    assert changed.config()["lr"] == 0.123 and changed.config_hash() != h


def test_regression_loss_falls_within_tens_of_steps():
    task = RegressionTask()
    start = task.evaluate(task.build_model(0))["loss"]
    end = task.evaluate(_train(task, 60))["loss"]
    assert end < start / 5, (start, end)
    assert sum(p.numel() for p in task.build_model(0).parameters()) < 1000


def test_tinylm_small_learns_below_unigram_entropy():
    task = TinyLMTask("small")
    h = task.unigram_entropy()
    start = task.evaluate(task.build_model(0))["loss"]
    end = task.evaluate(_train(task, 200))["loss"]
    assert start > math.log(256) - 0.2, "an untrained model is near uniform over 256 bytes"
    assert end < h - 0.3, (end, h)


def test_tinylm_sizes_and_batch_layout():
    default, small = TinyLMTask(), TinyLMTask("small")
    n_default = sum(p.numel() for p in default.build_model(0).parameters())
    assert 1_000_000 <= n_default <= 5_000_000
    assert sum(p.numel() for p in small.build_model(0).parameters()) < n_default / 5
    x, y = small.get_batch([0, 1])
    assert x.shape == (2, small.cfg.seq_len) and x.dtype == torch.int64
    assert torch.equal(x[0, 1:], y[0, :-1]), "targets are the inputs shifted by one byte"
    assert torch.equal(y[0, -1:], x[1, :1]), "window i+1 starts where window i's target ends"


@pytest.mark.parametrize("overrides", [{"nope": 1}, {"n_layer": 0}, {"d_model": 65}, {"lr": "fast"},
                                       {"n_layer": 1.5}, {"seq_len": True}])
def test_tinylm_rejects_bad_options(overrides):
    with pytest.raises(TaskError):
        TinyLMTask("small", **overrides)


def test_options_from_strings_are_converted():
    task = TinyLMTask("small", lr="0.01", n_layer="1")
    assert task.cfg.lr == 0.01 and task.cfg.n_layer == 1
    with pytest.raises(TaskError, match="preset"):
        TinyLMTask("huge")
    with pytest.raises(TaskError):
        RegressionTask(noise=-1.0)


def test_corpus_split_is_disjoint_sorted_and_skips_tests():
    c = load_corpus(2_000_000)
    assert load_corpus(2_000_000) is c, "the corpus is cached per process"
    assert set(c.train_files).isdisjoint(c.val_files)
    assert list(c.train_files) == sorted(c.train_files)
    for rel in c.train_files + c.val_files:
        assert not set(rel.split("/")[:-1]) & set(DEFAULT_EXCLUDE), rel
        assert rel.endswith(".py")
    assert 0.03 < len(c.val) / (len(c.train) + len(c.val)) < 0.3
    assert len(c.train) + len(c.val) <= 2_000_000
    assert b"def " in c.train and len(c.sha256) == 64
    with pytest.raises(TaskError):
        load_corpus(0)


def test_unigram_entropy_known_values():
    assert unigram_entropy(bytes(range(256)) * 4) == pytest.approx(math.log(256))
    assert unigram_entropy(b"aaaa") == 0.0
    assert unigram_entropy(b"ab") == pytest.approx(math.log(2))
    with pytest.raises(TaskError):
        unigram_entropy(b"")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(-5, 40), st.floats(allow_nan=True), st.text(max_size=2), st.booleans(),
                          st.none()), max_size=6))
def test_check_indices_accepts_exactly_in_range_ints(indices):
    ok = bool(indices) and all(type(i) is int and 0 <= i < 32 for i in indices)
    if ok:
        check_indices(indices, 32)
    else:
        with pytest.raises(TaskError):
            check_indices(indices, 32)
