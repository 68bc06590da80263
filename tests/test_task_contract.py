"""The task contract: natural tasks (``self.dataset = ...`` in ``__init__``) load and train; each broken
piece is refused when the task loads, with a TaskError naming the task, the piece and the fix."""

from __future__ import annotations

import textwrap

import pytest
import torch

import dai_swarm
from dai_swarm.cli import main as cli_main
from dai_swarm.errors import TaskError
from dai_swarm.reference import run_centralized
from dai_swarm.tasks import load_task
from dai_swarm.tasks.contract import contract_checks, validate_task

NATURAL = textwrap.dedent('''
    import torch
    import dai_swarm


    class Natural(dai_swarm.Task):
        """Written the way most torch code is: the data set in __init__."""

        name, batch_size = "natural", 8

        def __init__(self, n=64):
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(n, 2, generator=gen)
            self.dataset = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))

        def build_model(self, seed):
            torch.manual_seed(seed)
            return torch.nn.Linear(2, 1)

        def loss(self, model, batch):
            x, y = batch
            return torch.nn.functional.mse_loss(model(x), y)

        def inner_optimizer(self, params):
            return torch.optim.SGD(params, lr=0.1)

        def evaluate(self, model):
            with torch.no_grad():
                x, y = self.dataset[:16]
                return {"loss": self.loss(model, (x, y)).item()}

        def config(self):
            return {"n": len(self.dataset)}


    class NoDataset(Natural):
        def __init__(self):
            pass


    class NoBatchSize(Natural):
        batch_size = None


    class BadBatchSize(Natural):
        batch_size = 0


    class NoLossMetric(Natural):
        def evaluate(self, model):
            return {"mse": 0.5}


    class TensorLossMetric(Natural):
        def evaluate(self, model):
            return {"loss": torch.tensor(0.5)}


    class Unseeded(Natural):
        def build_model(self, seed):
            return torch.nn.Linear(2, 1)  # draws from the global RNG without seeding it


    class Incomplete(dai_swarm.Task):
        batch_size = 4

        def __init__(self):
            self.dataset = [torch.zeros(1)]
''')


@pytest.fixture
def mod(tmp_path, monkeypatch):
    (tmp_path / "natural_tasks.py").write_text(NATURAL)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield "natural_tasks"


def test_natural_task_loads_and_trains_a_few_steps(mod):
    task = load_task(f"{mod}:Natural")
    assert len(task.dataset) == 64 and task.batch_size == 8
    model = task.build_model(0)
    opt = task.inner_optimizer(model.parameters())
    first = task.evaluate(model)["loss"]
    for step in range(20):
        batch = task.get_batch([(8 * step + i) % 64 for i in range(task.batch_size)])  # default collate
        loss = task.loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert task.evaluate(model)["loss"] < first / 2
    res = run_centralized(task, samples=64, eval_every=32, threads=1)  # the Swarm-free trainer
    assert res["val_loss"][-1] < res["val_loss"][0]


def test_loading_a_task_leaves_the_global_rng_alone(mod):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    load_task(f"{mod}:Natural")  # its build_model seeds the global RNG: checks run on a copy
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("attr, piece, hint", [
    ("NoDataset", "dataset", "self.dataset = "),
    ("NoBatchSize", "batch_size", "set batch_size"),
    ("BadBatchSize", "batch_size", "positive int"),
    ("NoLossMetric", "evaluate(model)", '"loss"'),
    ("TensorLossMetric", "evaluate(model)", "not a finite Python number"),
    ("Unseeded", "build_model(seed)", "torch.manual_seed(seed)"),
    ("Incomplete", "Incomplete does not define", "build_model"),
])
def test_each_broken_piece_is_a_clear_task_error(mod, attr, piece, hint):
    spec = f"{mod}:{attr}"
    with pytest.raises(TaskError) as info:
        load_task(spec)
    text = str(info.value)
    assert spec in text and piece in text and "fix:" in text and hint in text, text
    assert "abstract" not in text and "AttributeError" not in text


def test_swarm_refuses_a_broken_task_before_starting_anything(mod):
    import natural_tasks

    with pytest.raises(TaskError, match=r"'NoBatchSize': batch_size: not set"):
        dai_swarm.Swarm(natural_tasks.NoBatchSize(), run_id="never-started")


def test_contract_checks_name_each_piece_in_order(mod):
    import natural_tasks

    names = [c.name for c in contract_checks(natural_tasks.Natural())]
    assert names == ["type", "dataset", "batch_size", "config()", "build_model(seed)", "loss(model, batch)",
                     "inner_optimizer(params)", "evaluate(model)"]
    with pytest.raises(TaskError, match="not a dai_swarm.Task"):
        validate_task(object())


def test_builtin_tasks_keep_the_contract():
    for spec in ("regression", "tinylm-small"):
        assert validate_task(load_task(spec)) is not None


def test_cli_task_check(mod, capsys):
    assert cli_main(["task", "check", f"{mod}:Natural"]) == 0
    out = capsys.readouterr().out
    assert out.count("  ok  ") == 8 and "keeps the contract" in out
    assert cli_main(["task", "check", f"{mod}:Unseeded"]) == 1
    out = capsys.readouterr().out
    assert "ok    dataset" in out and "FAIL" in out and "build_model(seed)" in out
    assert "ok    evaluate" not in out  # stops at the first failure
