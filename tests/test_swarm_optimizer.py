"""SwarmOptimizer honours the torch optimizer contract (SPEC §1); the runtime is faked here."""

from __future__ import annotations

import pickle

import pytest
import torch

from dai_swarm import SwarmOptimizer


class FakeRuntime:
    """Counts inner steps like RoundRuntime and keeps a position; no network."""

    def __init__(self):
        self.steps = 0
        self.round = 7
        self.restored = None

    def after_inner_step(self, opt):
        self.steps += 1

    def position(self):
        return {"round": self.round, "steps": self.steps, "samples": 32 * self.steps, "base_hash": "ab" * 32}

    def restore_position(self, pos):
        self.restored = dict(pos)
        self.round, self.steps = pos["round"], pos["steps"]


def make(lr=0.1):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    rt = FakeRuntime()
    return model, SwarmOptimizer(torch.optim.AdamW(model.parameters(), lr=lr), rt), rt


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)


def test_is_a_torch_optimizer_with_live_views():
    model, opt, _ = make()
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is opt.inner.param_groups
    opt.param_groups[0]["lr"] = 0.5
    assert opt.inner.param_groups[0]["lr"] == 0.5
    assert opt.defaults["lr"] == 0.1
    assert opt.state is opt.inner.state


def test_step_with_closure_and_zero_grad():
    model, opt, rt = make()
    x, y = batch()

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    before = [p.detach().clone() for p in model.parameters()]
    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and rt.steps == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())
    closure()
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_state_dict_round_trip_includes_round():
    model, opt, rt = make()
    x, y = batch()
    for _ in range(3):
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    sd = opt.state_dict()
    assert sd["swarm"]["round"] == 7 and sd["swarm"]["steps"] == 3
    model2, opt2, rt2 = make()
    opt2.load_state_dict(sd)
    assert rt2.restored["round"] == 7 and rt2.round == 7
    s1, s2 = opt.inner.state_dict()["state"], opt2.inner.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for k in s1:
        assert torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"])
    with pytest.raises(ValueError):
        opt2.load_state_dict({"state": {}, "param_groups": []})


def test_reset_inner_state_forgets_moments():
    model, opt, _ = make()
    x, y = batch()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    assert len(opt.state) > 0
    opt.reset_inner_state()
    assert len(opt.state) == 0


def test_grad_scaler_and_lr_scheduler():
    model, opt, rt = make()
    scaler = torch.amp.GradScaler("cpu")
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = batch()
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.mse_loss(model(x).float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        sched.step()
    assert rt.steps == 2
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.25)


def test_accelerate_prepare():
    accelerate = pytest.importorskip("accelerate")
    model, opt, rt = make()
    acc = accelerate.Accelerator(cpu=True)
    model, opt_p = acc.prepare(model, opt)
    x, y = batch()
    loss = torch.nn.functional.mse_loss(model(x), y)
    acc.backward(loss)
    opt_p.step()
    opt_p.zero_grad()
    assert rt.steps == 1
    assert isinstance(opt_p.state_dict(), dict)


def test_hooks_and_refusals():
    model, opt, rt = make()
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: seen.append("post"))
    x, y = batch()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    assert seen == ["pre", "post"]
    with pytest.raises(RuntimeError):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))]})
    with pytest.raises(TypeError):
        pickle.dumps(opt)
