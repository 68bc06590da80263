"""Error feedback, buffer commitments and the per-chunk verifier check (pure functions)."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from dai_swarm.errors import ShapeMismatch
from dai_swarm.optim.feedback import buffer_refs, commit_buffer, feedback_step, prove_chunks, verify_chunk_proof, zero_buffer
from dai_swarm.tasks import load_task
from dai_swarm.verification.feedback_check import check_chunks, detection_probability, sample_chunks
from dai_swarm.verification.recompute import recompute_update


def _delta(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(96, 64, generator=g) * 1e-2, "a.bias": torch.randn(64, generator=g) * 1e-3,
            "b": torch.randn(5000, generator=g) * 1e-2}


def _all(step, delta, post_override=None, pre_root=None):
    """Check every chunk of ``step`` against ``delta``; returns the verdicts."""
    refs = buffer_refs(step.pre)
    ids = [r.chunk_id for r in refs]
    post = step.post if post_override is None else post_override
    res = check_chunks(delta, step.sent, prove_chunks(step.pre, ids), prove_chunks(post, ids),
                       pre_root or commit_buffer(step.pre), commit_buffer(post), refs, bits=2)
    assert not res.ok or all(c.ok for c in res.chunks)
    return res


def test_residual_is_carried_and_nothing_is_lost():
    buf = zero_buffer(_delta(0))
    total_sent = {n: torch.zeros_like(t) for n, t in buf.items()}
    total_delta = {n: torch.zeros_like(t) for n, t in buf.items()}
    for r in range(6):
        d = _delta(r)
        step = feedback_step(d, buf)
        for n in d:
            assert torch.equal(step.post[n], torch.sub(torch.add(d[n], buf[n]), step.sent[n]))
            total_sent[n] += step.sent[n]
            total_delta[n] += d[n]
        buf = step.post
    for n in buf:  # everything computed was either sent or is still in the buffer
        torch.testing.assert_close(total_sent[n] + buf[n], total_delta[n], rtol=0, atol=1e-6)
    assert feedback_step(_delta(1), zero_buffer(_delta(1))).blob == feedback_step(_delta(1), zero_buffer(_delta(1))).blob


def test_shapes_must_match():
    with pytest.raises(ShapeMismatch):
        feedback_step(_delta(0), {"a.weight": torch.zeros(96, 64)})


def test_proofs_verify_and_tampering_does_not():
    buf = feedback_step(_delta(0), zero_buffer(_delta(0))).post
    refs, root = buffer_refs(buf), commit_buffer(buf)
    proofs = prove_chunks(buf, range(len(refs)))
    assert all(verify_chunk_proof(p, root, refs) for p in proofs)
    p = proofs[1]
    bad = p.values.clone()
    bad[0] += 1e-3
    assert not verify_chunk_proof(dataclasses.replace(p, values=bad), root, refs)
    assert not verify_chunk_proof(dataclasses.replace(p, chunk_id=2), root, refs)
    assert not verify_chunk_proof(p, commit_buffer(zero_buffer(buf)), refs)
    assert commit_buffer(zero_buffer(buf)) != root


def test_honest_update_passes_exactly():
    d = _delta(0)
    step = feedback_step(d, zero_buffer(d))
    step2 = feedback_step(_delta(1), step.post)
    res = _all(step2, _delta(1))
    assert res.ok and res.distance == 0.0 and all(c.exact and not c.index_mismatch for c in res.chunks)


def test_cheats_are_caught_on_the_chunks_they_touch():
    d0, d1 = _delta(0), _delta(1)
    prev = feedback_step(d0, zero_buffer(d0))
    honest = feedback_step(d1, prev.post)
    chained_root = commit_buffer(prev.post)  # the previous round's committed post buffer
    # 1. falsified buffer: the author encodes with another pre buffer than the one it committed
    fake = {n: t.clone() for n, t in prev.post.items()}
    fake["b"][:100] += 0.05
    cheat = feedback_step(d1, fake)
    res = _all(cheat, d1, pre_root=chained_root)
    assert not res.ok and any("proof" in c.reason for c in res.chunks)
    # 2. top-k of something else (another update), consistent commitments
    other = feedback_step(_delta(7), prev.post)
    res = _all(other, d1)
    assert not res.ok and res.distance > 0.5
    # 3. a payload inconsistent with the committed post buffer (the author zeroes its buffer)
    res = _all(honest, d1, post_override=zero_buffer(honest.post))
    assert not res.ok and not any(c.ok for c in res.chunks)
    # 4. sign flip of the sent values
    flipped = dataclasses.replace(honest, sent={n: -t for n, t in honest.sent.items()})
    assert not _all(flipped, d1).ok
    # 5. a payload that is not the top-k of the committed accumulator (one position moved)
    moved = {n: t.clone() for n, t in honest.sent.items()}
    flat = moved["b"].reshape(-1)
    i = int(torch.nonzero(flat)[0])
    j = next(j for j in range(4096) if flat[j] == 0 and j != i)
    flat[j], flat[i] = flat[i], 0.0
    post = {n: torch.sub(torch.add(d1[n], prev.post[n]), moved[n]) for n in d1}
    res = _all(dataclasses.replace(honest, sent=moved), d1, post_override=post)
    assert not res.ok and any("top-k" in c.reason for c in res.chunks)


def test_honest_recomputation_on_two_threads_is_never_failed():
    task = load_task("tinylm-small")
    base = {n: p.detach().clone() for n, p in task.build_model(0).named_parameters()}
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        author = recompute_update(task, base, "r", 0, "peer", 0, 3, raw=True)
        torch.set_num_threads(2)
        verifier = recompute_update(task, base, "r", 0, "peer", 0, 3, raw=True)
    finally:
        torch.set_num_threads(old)
    step = feedback_step(author, zero_buffer(author))
    res = _all(step, verifier)
    assert res.ok and res.distance < 1e-3, res


def test_sampling_and_detection_probability():
    ids = sample_chunks(random.Random(1), 51, 4)
    assert len(set(ids)) == 4 and ids == sorted(ids) and max(ids) < 51
    assert detection_probability(51, 1, 4) == pytest.approx(4 / 51)
    assert detection_probability(51, 0, 4) == 0.0 and detection_probability(10, 8, 4) == 1.0
    assert detection_probability(51, 5, 8) > 0.55
