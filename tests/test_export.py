"""Exports without a network: files, determinism, tamper detection, the reward-log check, resume manifests."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

import dai_swarm
from dai_swarm.dht.envelope import SignedRecord
from dai_swarm.dht.manifest import manifest_hash, select_manifest
from dai_swarm.dht.records import RunManifest
from dai_swarm.errors import ExportCorrupt, ExportMismatch
from dai_swarm.export import load_export, write_export
from dai_swarm.optim.states import BaseState
from dai_swarm.resume import resume_manifest
from dai_swarm.rewards import RewardLog, compute_round_record
from dai_swarm.rewards.provenance import check_model, log_provenance, require_recorded
from dai_swarm.swarm import manifest_versions

ROUND = 5


@pytest.fixture(scope="module")
def task():
    return dai_swarm.load_task("regression")


def _manifest(task, t0=None, founder="b" * 64) -> RunManifest:
    return RunManifest(run_id="r1", task="regression", task_config_hash=task.config_hash(), round_s=4.0,
                       cross_region_period=3, max_inner_steps=5, outer_lr=0.6, outer_momentum=0.9, codec="int8",
                       checks_per_update=0.2, seed=0, t0=time.time() if t0 is None else t0,
                       versions=manifest_versions(), founders=(founder,))


def _state(task, bump=0.0) -> BaseState:
    init = BaseState.initial(task.build_model(0))
    params = {k: v + bump for k, v in init.params.items()}
    return BaseState.make(ROUND + 2, params, init.momentum, {"reputation": {"a" * 64: 1.0}}, init.anchor)


def _write(path, task, state=None, **kw):
    m = kw.pop("manifest", None) or _manifest(task, t0=1.0e9)
    return write_export(str(path), state or _state(task), task=task, manifest=m, manifest_hash=manifest_hash(m),
                        round=ROUND, identity=kw.pop("identity", None) or dai_swarm.Identity.generate(), **kw)


def test_export_round_trip_and_determinism(tmp_path, task):
    from safetensors.torch import load_file

    a, b = _write(tmp_path / "a", task), _write(tmp_path / "b", task)
    assert a.exporter != b.exporter and a.state_hash == b.state_hash
    for name in ("model.safetensors", "state.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    exported = load_export(str(tmp_path / "a"), run_id="r1", task=task)
    assert exported.state.hash == _state(task).hash and exported.provenance.base_round == ROUND + 2
    model = task.build_model(0)
    model.load_state_dict(load_file(str(tmp_path / "a" / "model.safetensors")))
    assert all(torch.equal(p, _state(task).params[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("how", ["truncated", "flipped", "missing", "provenance", "json"])
def test_tampered_exports_are_refused(tmp_path, task, how):
    _write(tmp_path / "a", task)
    d = tmp_path / "a"
    if how == "truncated":
        data = (d / "state.safetensors").read_bytes()
        (d / "state.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "flipped":
        data = bytearray((d / "model.safetensors").read_bytes())
        data[-5] ^= 1
        (d / "model.safetensors").write_bytes(bytes(data))
    elif how == "missing":
        os.unlink(d / "model.safetensors")
    elif how == "provenance":  # a field changed after signing
        body = json.loads((d / "provenance.json").read_text())
        body["reward_units"] = 10**9
        (d / "provenance.json").write_text(json.dumps(body))
    else:
        (d / "provenance.json").write_text((d / "provenance.json").read_text()[:100])
    with pytest.raises(ExportCorrupt) as e:
        load_export(str(d))
    assert str(d) in str(e.value)


def test_export_of_another_run_or_task(tmp_path, task):
    _write(tmp_path / "a", task)
    with pytest.raises(ExportMismatch, match="from run 'r1', not 'r2'"):
        load_export(str(tmp_path / "a"), run_id="r2")
    with pytest.raises(ExportMismatch, match="config hash"):
        load_export(str(tmp_path / "a"), task=dai_swarm.load_task("regression", lr=0.5))


def _log(path, states) -> str:
    me = dai_swarm.Identity.generate()
    with RewardLog(str(path), me) as log:
        parent = None
        for r, st in states:
            log.append_round(compute_round_record(r, [], {}, [], st.hash, parent_hash=parent)).wait(5)
            parent = st.hash
    return str(path)


def test_ledger_check_passes_honest_and_names_the_first_mismatch(tmp_path, task):
    honest, other = _state(task), _state(task, bump=1e-3)
    earlier = [(r, _state(task, bump=r * 1e-4)) for r in range(1, ROUND)]
    log = _log(tmp_path / "p.log", earlier + [(ROUND, honest)])
    prov = _write(tmp_path / "a", task, ledger=log_provenance(log, ROUND), parent_hash=earlier[-1][1].hash)
    assert len(prov.chain) == ROUND and prov.round_chain_head
    ok = check_model(log, prov, honest.hash)
    assert ok.ok and ok.linked == ROUND, ok
    forged = _write(tmp_path / "f", task, state=other)
    bad = check_model(log, forged, other.hash)
    assert not bad.ok and f"round {ROUND}: the log records state {honest.hash[:12]}" in bad.mismatch
    short = _log(tmp_path / "short.log", earlier)
    bad = check_model(short, prov, honest.hash)
    assert not bad.ok and f"no round {ROUND} record" in bad.mismatch
    with pytest.raises(ExportMismatch, match="no round"):
        require_recorded(short, load_export(str(tmp_path / "a")))
    assert require_recorded(log, load_export(str(tmp_path / "a"))).ok
    lying = _log(tmp_path / "lying.log", earlier[:-1] + [(ROUND - 1, other), (ROUND, honest)])
    bad = check_model(lying, prov, honest.hash)
    assert not bad.ok and "parent hash" in bad.mismatch


def test_ledger_verify_model_cli(tmp_path, task, capsys):
    from dai_swarm.cli import main

    log = _log(tmp_path / "p.log", [(ROUND, _state(task))])
    _write(tmp_path / "a", task, ledger=log_provenance(log, ROUND))
    _write(tmp_path / "f", task, state=_state(task, bump=1e-3))
    assert main(["ledger", "verify", log, "--model", str(tmp_path / "a")]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["ledger", "verify", log, "--model", str(tmp_path / "f")]) == 1
    assert f"round {ROUND}: the log records state" in capsys.readouterr().out


def _signed(manifest: RunManifest, signer: str, issued_at: float) -> SignedRecord:
    return SignedRecord(record=manifest, record_type="manifest", run_id=manifest.run_id, key="k", subkey="s",
                        issued_at=issued_at, expiration=issued_at + 3600, signer=signer, signature="", raw=b"")


def test_a_resumed_generation_supersedes_its_parent(tmp_path, task):
    now = time.time()
    parent = _manifest(task, t0=now - 600)
    _write(tmp_path / "a", task, manifest=parent)
    exported = load_export(str(tmp_path / "a"))
    me = "c" * 64
    child = resume_manifest(exported, now + 5, (me,), manifest_versions())
    assert child.resume.parent == manifest_hash(parent) and child.resume.state_hash == exported.state.hash
    assert child.first_round == ROUND + 2 and abs(child.start_time - (now + 5)) < 1e-6 and child.founders == (me,)
    assert "resume" not in parent.to_body()  # a first generation's hash is unchanged
    records = [_signed(parent, "b" * 64, now - 610), _signed(child, me, now)]
    chosen = select_manifest(records)
    assert chosen.hash == manifest_hash(child)
    assert select_manifest(records[:1]).hash == manifest_hash(parent)
    late = _signed(child, me, now + 3600)  # issued long after its first round started: refused
    assert select_manifest([records[0], late]).hash == manifest_hash(parent)
