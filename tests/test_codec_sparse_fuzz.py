"""Fuzz the ``sparse`` decoder: only CodecError subclasses, and no allocation above the model size."""

from __future__ import annotations

import json
import tracemalloc

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dai_swarm.errors import CodecError
from dai_swarm.optim.codecs import decode, get_codec
from dai_swarm.optim.codecs.mutate import random_stream_frame

from benchmarks.codec_fuzz import SPARSE_MODEL_BYTES, SPARSE_PARAMS, fuzz, sparse_frames

_FRAMES = sparse_frames()


def test_mutated_and_random_stream_frames_raise_only_codec_errors_within_the_model_size():
    tracemalloc.start()
    try:
        res = fuzz(3000, seed=3, max_bytes=SPARSE_MODEL_BYTES, corpus=_FRAMES, random_streams=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert res["crashes"] == []
    for name in ("PayloadCorrupt", "PayloadTooLarge", "NonFiniteValues", "decoded"):
        assert res["outcomes"].get(name, 0) > 0, res["outcomes"]
    # numpy's buffers are traced: the whole campaign never held much more than a few models' worth
    assert peak < 16 * SPARSE_MODEL_BYTES + (1 << 20), peak


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SPARSE_PARAMS), st.integers(1, 9000), st.data())
def test_any_stream_of_a_legal_length(params, numel, data):
    codec = get_codec("sparse")
    full = codec.check_params(dict(params))
    lo, hi = codec.min_raw_size(numel, torch.float32, **full), codec.max_raw_size(numel, torch.float32, **full)
    raw = data.draw(st.binary(min_size=lo, max_size=min(hi, lo + 64)))
    frame = random_stream_frame(5, json.dumps(full, sort_keys=True, separators=(",", ":")).encode(), "x", [numel],
                                len(raw), _Fixed(raw))
    try:
        out = decode(frame, expect={"x": ((numel,), torch.float32)}, max_bytes=1 << 20)
    except CodecError:
        return
    assert out["x"].shape == (numel,) and bool(torch.isfinite(out["x"]).all())


class _Fixed:
    """A stand-in for random.Random whose randbytes returns the given bytes."""

    def __init__(self, raw: bytes):
        self.raw = raw

    def randbytes(self, n: int) -> bytes:
        """The stored bytes (``n`` equals their length)."""
        return self.raw[:n]
