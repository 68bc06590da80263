"""The library way in: a Swarm in this process trains, closes rounds and shuts down cleanly."""

from __future__ import annotations

import os
import time

import pytest
import torch

import dai_swarm

pytestmark = pytest.mark.integration


def test_single_peer_library_loop_closes_rounds_and_shuts_down():
    torch.set_num_threads(1)
    task = dai_swarm.load_task("regression")
    swarm = dai_swarm.Swarm(task, run_id=f"lib-{time.time_ns()}", region="solo", round_s=2.0,
                            t0=time.time() + 1.0, max_inner_steps=20)
    ours = list(swarm.dht._sockets)
    try:
        opt = swarm.optimizer()
        assert isinstance(opt, torch.optim.Optimizer)
        # the creator is the run's founder, and its join line pins the manifest it published
        assert swarm.manifest.founders == (swarm.identity.public_key_hex,)
        assert f"--manifest {swarm.manifest_hash[:32]} --initial-peers /ip4/" in swarm.join_line
        assert swarm.dht.get_manifest(swarm.manifest.run_id, manifest_hash=swarm.manifest_hash) == swarm.manifest
        first = task.evaluate(swarm.model)["loss"]
        for batch in swarm.batches(max_rounds=4):
            loss = task.loss(swarm.model, batch)
            loss.backward()
            opt.step()
            opt.zero_grad()
        deadline = time.time() + 10
        while not swarm.runtime.history and time.time() < deadline:
            time.sleep(0.2)
        status = swarm.status()
        assert status["round"] >= 3
        hist = swarm.runtime.history
        assert hist and all(h["agreed"] is not False for h in hist)
        assert hist[-1]["val_loss"] < first
        assert opt.state_dict()["swarm"]["round"] == status["round"]
    finally:
        swarm.shutdown()
    swarm.shutdown()  # idempotent
    assert ours and not [p for p in ours if os.path.exists(p)]
    assert not swarm.runtime._heartbeat.is_alive() and not swarm.runtime.coordinator._thread.is_alive()
