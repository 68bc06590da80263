"""The ``sparse`` codec: chunked top-k selection with index tie-break, 2-bit values, exact bounds,
deterministic bytes across torch thread counts, canonical streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dai_swarm.errors import CodecError, PayloadCorrupt, PayloadTooLarge
from dai_swarm.optim.codecs import decode, encode, get_codec
from dai_swarm.optim.codecs.codec_sparse import chunk_refs, chunk_sizes, decode_flat, rice_bits, select_topk
from dai_swarm.optim.codecs.mutate import build_frame, fix_crc


def _rt(x: torch.Tensor, **params) -> torch.Tensor:
    return decode(encode({"w": x}, "sparse", **params), max_bytes=1 << 26)["w"]


@pytest.mark.parametrize("n", [1, 5, 64, 100, 4096, 4097, 3 * 4096 + 777])
def test_keeps_the_top_k_of_each_chunk_with_exact_signs_and_extremes(n):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    y = _rt(x)
    for s in range(0, n, 4096):
        c, yc = x[s : s + 4096], y[s : s + 4096]
        k = min(c.numel(), -(-64 * c.numel() // 4096))
        top = set(torch.topk(c.abs(), k).indices.tolist())
        assert set(torch.nonzero(yc).flatten().tolist()) == top
        kept = sorted(top)
        assert torch.equal(torch.sign(yc[kept]), torch.sign(c[kept]))
        mags = c.abs()[kept]
        assert set(yc.abs()[kept].tolist()) <= {mags.min().item(), mags.max().item()}  # 2 bits: lo or hi
        assert float(yc.abs().max()) == float(c.abs().max())


def test_ties_go_to_the_lower_index():
    mags = np.array([[1.0, 3.0, 2.0, 2.0, 2.0, 0.5]], dtype=np.float32)
    assert select_topk(mags, 3).tolist() == [[False, True, True, True, False, False]]
    y = _rt(torch.ones(4096))
    assert torch.nonzero(y).flatten().tolist() == list(range(64))


def test_chunks_with_fewer_nonzeros_than_k_decode_exactly():
    x = torch.zeros(10_000)
    x[[5, 9000]] = torch.tensor([1.0, -2.0])
    assert torch.equal(_rt(x), x)
    assert torch.equal(_rt(torch.zeros(5000)), torch.zeros(5000))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_more_bits_less_error(bits):
    x = torch.randn(50_000, generator=torch.Generator().manual_seed(1))
    y = _rt(x, bits=bits)
    m = y != 0
    err = float((y[m] - x[m]).norm() / x[m].norm())
    assert err < {2: 0.15, 3: 0.07, 4: 0.03, 8: 0.002}[bits]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_and_shapes(dtype):
    x = torch.randn(33, 129, generator=torch.Generator().manual_seed(2)).to(dtype)
    y = _rt(x, chunk=1024, k=16)
    assert y.dtype == dtype and y.shape == x.shape
    assert int((y != 0).sum()) == chunk_sizes(x.numel(), 1024, 16)[3]


def test_same_bytes_on_one_and_two_torch_threads():
    g = torch.Generator().manual_seed(3)
    ts = {"a": torch.randn(70_001, generator=g), "b": torch.randn(64, 64, generator=g)}
    old = torch.get_num_threads()
    try:
        blobs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            blobs.append(encode(ts, "sparse"))
    finally:
        torch.set_num_threads(old)
    assert blobs[0] == blobs[1] == encode(dict(reversed(list(ts.items()))), "sparse")


def test_raw_size_bounds_hold_and_are_tight():
    codec = get_codec("sparse")
    p = codec.check_params({})
    for x in (torch.randn(9000), torch.zeros(9000), torch.arange(9000.0), torch.arange(9000.0).flip(0)):
        raw = bytes(codec.encode_tensor(x, **p))
        assert codec.min_raw_size(9000, torch.float32, **p) <= len(raw) <= codec.max_raw_size(9000, torch.float32, **p)
    # kept values at the end of every chunk give the longest unary part: the bound is reached
    worst = torch.zeros(2 * 4096)
    worst[4096 - 64 : 4096] = 1.0
    worst[-64:] = 1.0
    assert len(bytes(codec.encode_tensor(worst, **p))) == codec.max_raw_size(worst.numel(), torch.float32, **p)


def test_params_are_checked():
    for bad in ({"chunk": 1000}, {"k": 0}, {"k": 5000}, {"bits": 1}, {"bits": 9}, {"k": 2.0}, {"x": 1}):
        with pytest.raises(CodecError):
            encode({"w": torch.ones(3)}, "sparse", **bad)
    assert get_codec("sparse").check_params({}) == {"bits": 2, "chunk": 4096, "k": 64}
    assert rice_bits(4096, 64) == 5 and rice_bits(64, 64) == 0


def test_chunk_ids_run_over_sorted_names():
    refs = chunk_refs({"b": 5000, "a": 10}, 4096, 64)
    assert [(r.name, r.start, r.length, r.k) for r in refs] == [("a", 0, 10, 1), ("b", 0, 4096, 64), ("b", 4096, 904, 15)]
    assert [r.chunk_id for r in refs] == [0, 1, 2]


def test_non_canonical_streams_are_refused():
    codec = get_codec("sparse")
    p = codec.check_params({})
    raw = bytearray(codec.encode_tensor(torch.randn(5000, generator=torch.Generator().manual_seed(4)), **p))
    padded = raw + b"\x00"  # a trailing zero byte of unary padding
    with pytest.raises(PayloadCorrupt):
        decode_flat(np.frombuffer(bytes(padded), dtype=np.uint8), 5000, p)
    bad_scale = bytearray(raw)
    bad_scale[0:8] = np.array([2.0, 1.0], dtype="<f4").tobytes()  # lo > hi
    with pytest.raises(PayloadCorrupt):
        decode_flat(np.frombuffer(bytes(bad_scale), dtype=np.uint8), 5000, p)


def test_declared_sizes_above_the_cap_are_refused_before_allocating():
    params = b'{"bits":2,"chunk":4096,"k":64}'
    huge = 1 << 33
    frame = build_frame(5, params, [("w", 0, [huge], 100, b"\x00" * 100, 0)])
    with pytest.raises(PayloadTooLarge):
        decode(frame, max_bytes=1 << 20)
    ok = encode({"w": torch.randn(1000)}, "sparse")
    with pytest.raises(CodecError):
        decode(fix_crc(ok.replace(b'"k":64', b'"k":99')), max_bytes=1 << 20)
