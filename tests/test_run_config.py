"""The run config (optim/config.py): built once from the manifest, frozen, checked; the ports' types."""

from __future__ import annotations

import dataclasses
import time
from types import SimpleNamespace

import pytest

from dai_swarm.dht.records import RunManifest
from dai_swarm.errors import ConfigError
from dai_swarm.optim.config import RecordBoard, RoundContext, RunConfig, Verifier
from dai_swarm.optim.rules import NullVerifier
from fakes import run_config

MANIFEST = RunManifest(run_id="r", task="regression", task_config_hash="00", round_s=8, cross_region_period=4,
                       max_inner_steps=100, outer_lr=0.7, outer_momentum=0.9, codec="int8", checks_per_update=0.2,
                       seed=0, t0=time.time(), versions={"torch": "2.13.0"})
LIMITS = SimpleNamespace(max_payload_bytes=5000, max_decoded_bytes=20000, max_state_bytes=90000)


def test_built_from_the_manifest_and_the_derived_caps():
    cfg = RunConfig.from_manifest(MANIFEST, "r1", 32, LIMITS)
    assert (cfg.run_id, cfg.region, cfg.codec, cfg.batch_size, cfg.max_inner_steps) == ("r", "r1", "int8", 32, 100)
    assert (cfg.cross_region_period, cfg.outer_lr, cfg.outer_momentum) == (4, 0.7, 0.9)
    assert (cfg.max_payload_bytes, cfg.max_decoded_bytes, cfg.max_state_bytes) == (5000, 20000, 90000)
    # a lower cap from the operator wins; a higher one cannot widen what the model allows
    assert RunConfig.from_manifest(MANIFEST, "r1", 32, LIMITS, max_payload_bytes=100).max_payload_bytes == 100
    assert RunConfig.from_manifest(MANIFEST, "r1", 32, LIMITS, max_payload_bytes=10**9).max_payload_bytes == 5000


def test_frozen_and_checked():
    cfg = run_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.outer_lr = 1.0
    for bad in (dict(batch_size=0), dict(max_payload_bytes=True), dict(cross_region_period=-1)):
        with pytest.raises(ConfigError):
            run_config(**bad)


def test_the_ports_are_protocols_the_fakes_and_the_defaults_satisfy():
    board = SimpleNamespace(publish_round_record=lambda *a, **k: True, get_round_records=lambda *a: [])
    assert isinstance(board, RecordBoard) and not isinstance(SimpleNamespace(), RecordBoard)
    assert isinstance(NullVerifier(), Verifier)


def test_the_runtime_provides_every_method_of_the_round_context():
    from dai_swarm.runtime import RoundRuntime

    methods = [n for n, v in vars(RoundContext).items() if callable(v) and not n.startswith("_")]
    assert methods and all(callable(getattr(RoundRuntime, n, None)) for n in methods), methods
