"""The delay-compensated outer step (optim/rules.py) and the run setting that scales it.

Round q's updates are computed from θ_q and applied to θ_{q+1}; the pseudo-gradient is
mean(Δ) + c (θ_{q+1} − θ_q) with c the run's ``delay_compensation`` (1 for int8 runs, 0.25 for
sparse ones: with plain SGD at lr 1, c = 1 makes θ_{q+2} = θ_q − mean(Δ), two interleaved chains
at half the progress; docs/design.md "Sparse updates"). Pure and fast.
"""

from __future__ import annotations

import time

import pytest
import torch

from dai_swarm.dht.records import RunManifest
from dai_swarm.errors import ConfigError
from dai_swarm.optim.book import BookLimits, RoundBook, UpdateAnnouncement
from dai_swarm.optim.config import RunConfig
from dai_swarm.optim.rules import NullVerifier, compute_next_base
from dai_swarm.optim.states import BaseState

DIGEST = "ab" * 32
PEER = "cd" * 32


def _next_base(c: float, lr: float = 1.0) -> torch.Tensor:
    base_q = BaseState.make(4, {"w": torch.zeros(4)}, {"w": torch.zeros(4)})
    base_next = BaseState.make(5, {"w": torch.full((4,), 2.0)}, {"w": torch.zeros(4)})
    book = RoundBook("run", 4, base_q.hash, limits=BookLimits(max_inner_steps=4, batch_size=8,
                                                             max_payload_bytes=1 << 16, codecs=frozenset({"none"})))
    book.offer_many([UpdateAnnouncement("run", 4, base_q.hash, PEER, 4, 32, "none", DIGEST, 100)])
    book.close()
    book.mark_fetched(DIGEST, True)
    out = compute_next_base(book, {DIGEST: {"w": torch.full((4,), 0.5)}}, base_next, base_q, NullVerifier(), (),
                            outer_lr=lr, outer_momentum=0.0, delay_compensation=c)
    assert out.round == 6
    return out.params["w"]


@pytest.mark.parametrize("c, expected", [(1.0, -0.5), (0.25, 1.0), (0.0, 1.5)])
def test_the_outer_step_adds_the_set_fraction_of_the_base_move(c, expected):
    # θ_{q+1} = 2, θ_q = 0, mean Δ = 0.5, lr 1: θ_{q+2} = 2 - (0.5 + c * 2); with c = 1 that is
    # θ_q − mean Δ whatever θ_{q+1} did: the step forgets the last base move (two interleaved chains)
    assert torch.equal(_next_base(c), torch.full((4,), expected))


def _manifest(**changes) -> RunManifest:
    base = dict(run_id="run", task="regression", task_config_hash="ab" * 32, round_s=5.0, cross_region_period=3,
                max_inner_steps=20, outer_lr=0.6, outer_momentum=0.9, codec="int8", checks_per_update=0.2, seed=0,
                t0=float(int(time.time())), versions={}, founders=())
    base.update(changes)
    return RunManifest(**base)


def test_the_manifest_carries_the_setting_and_old_manifests_keep_their_hash():
    plain = _manifest()
    assert plain.delay_compensation == 1.0 and "delay_compensation" not in plain.to_body()
    assert _manifest(delay_compensation=1.0).to_body() == plain.to_body()
    sparse = _manifest(codec="sparse", outer_lr=1.25, outer_momentum=0.0, delay_compensation=0.25)
    assert sparse.to_body()["delay_compensation"] == 0.25
    assert RunManifest(**sparse.to_body()).delay_compensation == 0.25
    with pytest.raises(ValueError):
        _manifest(delay_compensation=1.5)


def test_new_runs_default_to_full_compensation_with_momentum_and_a_quarter_without():
    from dai_swarm.swarm import outer_defaults

    assert outer_defaults("int8") == outer_defaults("fp16") == (0.6, 0.9, 1.0)
    assert outer_defaults("sparse") == (1.4, 0.0, 0.3)


def test_the_run_config_takes_it_from_the_manifest_and_refuses_nonsense():
    from fakes import run_config

    assert run_config().delay_compensation == 1.0
    assert run_config(delay_compensation=True).delay_compensation == 1.0
    assert run_config(delay_compensation=0.25).delay_compensation == 0.25
    with pytest.raises(ConfigError):
        run_config(delay_compensation=-0.1)
    limits = type("Limits", (), {"max_payload_bytes": 1 << 20, "max_decoded_bytes": 1 << 20, "max_state_bytes": 1 << 22})()
    cfg = RunConfig.from_manifest(_manifest(delay_compensation=0.25), "r0", 16, limits)
    assert cfg.delay_compensation == 0.25
