"""load_task: built-in names, user ``module:attr`` specs, and actionable errors for bad specs."""

from __future__ import annotations

import textwrap

import pytest
import torch

import dai_swarm
from dai_swarm.errors import TaskError
from dai_swarm.tasks import BUILTIN_TASKS, RegressionTask, Task, TinyLMTask, load_task

USER_MODULE = textwrap.dedent('''
    import torch
    from dai_swarm.tasks import Task


    class MeanTask(Task):
        """A user task that keeps the default get_batch (collating dataset items)."""

        name = "mean"
        batch_size = 4

        def __init__(self, scale=1.0):
            self.scale = float(scale)
            self._data = [(torch.full((2,), float(i)), torch.tensor([self.scale * i])) for i in range(16)]

        @property
        def dataset(self):
            return self._data

        def build_model(self, seed):
            gen = torch.Generator().manual_seed(seed)
            model = torch.nn.Linear(2, 1)
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(torch.randn(p.shape, generator=gen))
            return model

        def loss(self, model, batch):
            x, y = batch
            return torch.nn.functional.mse_loss(model(x), y)

        def inner_optimizer(self, params):
            return torch.optim.SGD(params, lr=0.01)

        def evaluate(self, model):
            return {"loss": 0.0}

        def config(self):
            return {"task": self.name, "scale": self.scale}


    INSTANCE = MeanTask(scale=2.0)


    def make():
        return MeanTask(scale=3.0)


    def make_wrong():
        return "not a task"


    class NotATask:
        pass


    class Holder:
        task = MeanTask(scale=4.0)


    NUMBER = 7
''')


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_user_tasks.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_user_tasks"


def test_builtin_names():
    assert sorted(BUILTIN_TASKS) == ["regression", "tinylm", "tinylm-small"]
    assert isinstance(load_task("regression"), RegressionTask)
    small = load_task("tinylm-small")
    assert isinstance(small, TinyLMTask) and small.preset == "small"
    assert load_task("tinylm").preset == "default"
    assert load_task(" regression ").name == "regression"
    assert load_task("regression", hidden=4).cfg.hidden == 4
    assert dai_swarm.load_task is load_task and dai_swarm.Task is Task


def test_user_instance_class_factory_and_dotted_attr(user_module):
    inst = load_task(f"{user_module}:INSTANCE")
    assert isinstance(inst, Task) and inst.scale == 2.0
    assert load_task(f"{user_module}:MeanTask").scale == 1.0
    assert load_task(f"{user_module}:MeanTask", scale=5).scale == 5.0
    assert load_task(f"{user_module}:make").scale == 3.0
    assert load_task(f"{user_module}:Holder.task").scale == 4.0


def test_user_task_default_get_batch_collates_items(user_module):
    task = load_task(f"{user_module}:MeanTask")
    x, y = task.get_batch([1, 3])
    assert x.shape == (2, 2) and y.shape == (2, 1)
    assert torch.equal(x[1], torch.full((2,), 3.0))
    loss = task.loss(task.build_model(0), (x, y))
    assert loss.dim() == 0
    assert len(task.config_hash()) == 64
    with pytest.raises(TaskError):
        task.get_batch([16])


@pytest.mark.parametrize("spec, match", [
    ("", "non-empty"),
    ("   ", "non-empty"),
    ("tinylm-huge", "unknown task"),
    ("no_such_module_xyz:Task", "cannot import"),
    ("{mod}:Missing", "no attribute"),
    ("{mod}:NotATask", "does not subclass"),
    ("{mod}:NUMBER", "not a Task"),
    ("{mod}:make_wrong", "not a dai_swarm.Task"),
    ("{mod}:", "malformed"),
    (":MeanTask", "malformed"),
    ("{mod}:MeanTask:extra", "malformed"),
])
def test_bad_specs_raise_task_error(user_module, spec, match):
    with pytest.raises(TaskError, match=match):
        load_task(spec.format(mod=user_module))


def test_bad_overrides_raise_task_error(user_module):
    with pytest.raises(TaskError, match="Task instance"):
        load_task(f"{user_module}:INSTANCE", scale=2)
    with pytest.raises(TaskError, match="failed"):
        load_task(f"{user_module}:make", scale=2)
    with pytest.raises(TaskError, match="unknown option"):
        load_task("regression", bogus=1)
    with pytest.raises(TaskError):
        load_task(123)  # type: ignore[arg-type]
