"""The update strategy (optim/strategy.py): honest by default; attacks and faults replace it whole."""

from __future__ import annotations

import pathlib

import pytest
import torch

from dai_swarm.errors import ConfigError
from dai_swarm.optim.states import BaseState
from dai_swarm.optim.strategy import HONEST, UpdateStrategy
from dai_swarm.verification.attacks import ATTACK_KINDS, make_attack

REPO = pathlib.Path(__file__).resolve().parents[1]


def _base(round: int = 4) -> BaseState:
    params = {"w": torch.arange(4.0)}
    return BaseState.make(round, params, {"w": torch.zeros(4)}, {}, params)


def test_the_honest_strategy_changes_nothing():
    delta, blob, base = {"w": torch.ones(3)}, b"frame", _base()
    assert HONEST.tamper(delta, 3) is delta and HONEST.tamper_blob(blob, 3) is blob
    assert HONEST.claimed_steps(7) == 7 and HONEST.tamper_batch("batch") == "batch"
    assert HONEST.tamper_base(3, base) is base


@pytest.mark.parametrize("kind", ATTACK_KINDS)
def test_every_attack_is_a_strategy(kind):
    assert isinstance(make_attack(kind), UpdateStrategy)


def test_diverge_perturbs_the_base_at_its_round_only():
    fault, base = make_attack("diverge@3"), _base()
    assert fault.tamper_base(2, base) is base
    bad = fault.tamper_base(3, base)
    assert bad.hash != base.hash and torch.allclose(bad.params["w"], base.params["w"] + 1e-3)
    assert fault.rounds_attacked == [3]
    with pytest.raises(ConfigError):
        make_attack("diverge@soon")


def test_the_production_path_asks_no_one_whether_it_attacks():
    """No environment switch and no attribute probe decide a real peer's behaviour."""
    for rel in ("optim/coordinator.py", "dai_swarm/runtime.py", "dai_swarm/swarm.py"):
        text = (REPO / rel).read_text()
        assert "os.environ" not in text, rel
        assert "attack is not None" not in text.replace("attack if attack is not None", ""), rel
        assert 'hasattr(rt.attack' not in text and "ctx.attack" not in text, rel
