"""Fuzz the frame decoder: random and mutated frames raise only CodecError subclasses."""

from __future__ import annotations

import random

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dai_swarm.errors import CodecError
from dai_swarm.optim.codecs import decode
from dai_swarm.optim.codecs.mutate import MUTATION_KINDS, fix_crc, mutate

from benchmarks.codec_fuzz import fuzz, seed_frames, sparse_frames


def test_mutated_frames_raise_only_codec_errors():
    res = fuzz(3000, seed=2)  # seed 2 reaches every error type with the version-2 layout (seed 1: no ShapeMismatch)
    assert res["crashes"] == []
    outcomes = res["outcomes"]
    assert sum(outcomes.values()) == 3000
    # the campaign reaches the deep checks, not only the CRC
    for name in ("PayloadCorrupt", "PayloadTooLarge", "UnknownCodec", "ShapeMismatch", "NonFiniteValues"):
        assert outcomes.get(name, 0) > 0, outcomes


def test_every_mutation_kind_is_exercised():
    rng = random.Random(5)
    frame = seed_frames()[2]
    kinds = {mutate(frame, rng, donor=frame)[0] for _ in range(500)}
    assert kinds == set(MUTATION_KINDS)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes(data):
    try:
        out = decode(data, max_bytes=1 << 20)
    except CodecError:
        return
    assert isinstance(out, dict) and all(isinstance(t, torch.Tensor) for t in out.values())


_FRAMES = seed_frames() + sparse_frames()


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_single_byte_edits_with_fixed_crc(data):
    frame = bytearray(data.draw(st.sampled_from(_FRAMES)))
    i = data.draw(st.integers(0, len(frame) - 5))
    frame[i] = data.draw(st.integers(0, 255))
    try:
        out = decode(fix_crc(bytes(frame)), max_bytes=64 << 20)
    except CodecError:
        return
    assert all(isinstance(t, torch.Tensor) for t in out.values())
