"""Codecs and the wire frame: round-trips with per-codec error bounds, determinism, hostile frames."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
import tracemalloc

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dai_swarm.errors import (
    CodecError,
    NonFiniteValues,
    PayloadCorrupt,
    PayloadTooLarge,
    ShapeMismatch,
    UnknownCodec,
)
from dai_swarm.optim.codecs import available_codecs, codec_versions, decode, encode
from dai_swarm.optim.codecs.codec_int8 import _code, codebook_crc
from dai_swarm.optim.codecs.codec_topk import topk_count, topk_select
from dai_swarm.optim.codecs.mutate import build_frame, fix_crc, zstd_bomb

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@st.composite
def tensors(draw, dtypes=FLOATS, max_numel=3000):
    """A float tensor of random shape (0-3 dims, empty allowed) with wide-ranging finite values."""
    shape = tuple(draw(st.lists(st.integers(0, 40), min_size=0, max_size=3)))
    if math.prod(shape) > max_numel:
        shape = (max_numel,)
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**31))
    scale = draw(st.sampled_from([1e-4, 1.0, 300.0]))
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g, dtype=torch.float64)
    if draw(st.booleans()):  # heavy tails
        base = base * torch.exp(2 * torch.randn(shape, generator=g, dtype=torch.float64))
    return (base * scale).clamp(-60000, 60000).to(dtype)


def _roundtrip(x: torch.Tensor, codec: str, **params) -> torch.Tensor:
    out = decode(encode({"w": x}, codec, **params), expect={"w": (tuple(x.shape), x.dtype)})
    y = out["w"]
    assert y.shape == x.shape and y.dtype == x.dtype
    return y


@SETTINGS
@given(tensors(dtypes=FLOATS + (torch.int64, torch.int8, torch.bool)))
def test_none_is_bit_exact(x):
    if x.dtype == torch.bool:
        x = x > 0
    y = _roundtrip(x, "none")
    assert torch.equal(y.view(torch.uint8) if y.dtype == torch.bool else y, x.view(torch.uint8) if x.dtype == torch.bool else x)


@SETTINGS
@given(tensors())
def test_fp16_is_fp16_rounding(x):
    y = _roundtrip(x, "fp16")
    assert torch.equal(y, x.to(torch.float16).to(x.dtype))


@SETTINGS
@given(tensors(), st.sampled_from([64, 256, 4096]))
def test_int8_error_within_blockwise_absmax_bound(x, blocksize):
    y = _roundtrip(x, "int8", blocksize=blocksize)
    if x.numel() == 0:
        return
    # bitsandbytes' CPU kernel picks one of the two codes bracketing x/absmax (not always the
    # nearest: measured up to 0.2% past the half gap), so the bound is one codebook gap
    code = _code(torch.device("cpu")).double()
    gap = max(float((code[1:] - code[:-1]).max()), 1 + float(code[0]))
    flat = x.reshape(-1).double()
    pad = (-flat.numel()) % blocksize
    absmax = torch.nn.functional.pad(flat.abs(), (0, pad)).view(-1, blocksize).amax(1)
    bound = absmax.repeat_interleave(blocksize)[: flat.numel()] * gap
    err = (y.reshape(-1).double() - flat).abs()
    # the output dtype's own rounding (bf16 has 8 bits of mantissa) adds to the codebook bound
    out_eps = torch.finfo(x.dtype).eps * flat.abs().max()
    assert bool((err <= bound * (1 + 1e-5) + out_eps + 1e-30).all())


@SETTINGS
@given(tensors(), st.sampled_from([0.001, 0.05, 0.5, 1.0]), st.sampled_from(["fp16", "int8"]))
def test_topk_keeps_the_largest_values(x, fraction, values):
    y = _roundtrip(x, "topk", fraction=fraction, values=values)
    flat = x.reshape(-1)
    k = topk_count(flat.numel(), fraction)
    idx = topk_select(flat, k)
    assert idx.numel() == k and bool((idx[1:] > idx[:-1]).all())
    kept = torch.zeros(flat.numel(), dtype=torch.bool)
    kept[idx] = True
    if k and k < flat.numel():  # dropped ones are exactly the smallest magnitudes
        assert float(flat[kept].abs().min()) >= float(flat[~kept].abs().max())
    yf = y.reshape(-1)
    assert bool((yf[~kept] == 0).all())
    if values == "fp16":
        assert torch.equal(yf[kept], flat[kept].to(torch.float16).to(x.dtype))
    elif k:
        err = (yf[kept].double() - flat[kept].double()).abs()
        assert float(err.max()) <= 0.01 * float(flat[kept].double().abs().max()) + 1e-30


def test_topk_indices_need_more_than_one_byte():
    x = torch.zeros(200_000)
    x[[3, 70_000, 199_999]] = torch.tensor([1.0, -2.0, 3.0])
    y = _roundtrip(x, "topk", fraction=3 / 200_000)
    assert torch.equal(y, x)


def test_many_tensors_names_sorted_and_deterministic():
    g = torch.Generator().manual_seed(0)
    ts = {f"layer{i}.weight": torch.randn(17, i + 1, generator=g) for i in range(12)}
    for codec in available_codecs():
        a = encode(ts, codec)
        b = encode(dict(reversed(list(ts.items()))), codec)
        assert a == b
        out = decode(a)
        assert list(out) == sorted(ts)


@pytest.mark.integration
def test_same_bytes_in_two_processes():
    script = (
        "import hashlib, torch\n"
        "from dai_swarm.optim.codecs import encode\n"
        "g = torch.Generator().manual_seed(7)\n"
        "ts = {'a': torch.randn(3000, 7, generator=g), 'b': torch.randn(513, generator=g).half()}\n"
        "print(' '.join(hashlib.sha256(encode(ts, c)).hexdigest() for c in ('none','fp16','int8','topk')))\n"
    )
    outs = [
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120).stdout
        for _ in range(2)
    ]
    g = torch.Generator().manual_seed(7)
    ts = {"a": torch.randn(3000, 7, generator=g), "b": torch.randn(513, generator=g).half()}
    here = " ".join(hashlib.sha256(encode(ts, c)).hexdigest() for c in ("none", "fp16", "int8", "topk"))
    assert outs[0].split() == outs[1].split() == here.split()


@pytest.mark.parametrize("codec", ["none", "fp16", "int8", "topk"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_encode_refuses_non_finite(codec, bad):
    x = torch.randn(5000)
    x[4321] = bad
    with pytest.raises(NonFiniteValues):
        encode({"w": x}, codec)


def test_fp16_refuses_values_out_of_range():
    with pytest.raises(NonFiniteValues, match="fp16 range"):
        encode({"w": torch.tensor([1e6])}, "fp16")


def test_encode_rejects_bad_input():
    x = torch.randn(4)
    with pytest.raises(UnknownCodec):
        encode({"w": x}, "lz4")
    with pytest.raises(CodecError):
        encode({"w": x}, "int8", blocksize=100)
    with pytest.raises(CodecError):
        encode({"w": x}, "topk", fraction=0.0)
    with pytest.raises(CodecError):
        encode({"w": x}, "none", level=3)
    with pytest.raises(CodecError):
        encode({"w": [1.0, 2.0]}, "none")
    with pytest.raises(CodecError):
        encode({"w": torch.arange(4)}, "int8")
    with pytest.raises(CodecError):
        encode({"": x}, "none")
    with pytest.raises(CodecError):
        encode([("w", x)], "none")


def test_expect_mismatch_is_shape_mismatch():
    blob = encode({"a": torch.randn(4, 3), "b": torch.randn(2)}, "fp16")
    good = {"a": ((4, 3), torch.float32), "b": ((2,), torch.float32)}
    assert set(decode(blob, expect=good)) == {"a", "b"}
    for bad in (
        {**good, "a": ((3, 4), torch.float32)},
        {**good, "b": ((2,), torch.float16)},
        {"a": good["a"]},
        {**good, "c": ((1,), torch.float32)},
    ):
        with pytest.raises(ShapeMismatch):
            decode(blob, expect=bad)


def test_structural_rejections():
    blob = encode({"a": torch.randn(64)}, "int8")
    with pytest.raises(PayloadCorrupt, match="magic"):
        decode(b"XXXX" + blob[4:])
    with pytest.raises(UnknownCodec):
        decode(blob[:4] + bytes([9]) + blob[5:])
    with pytest.raises(UnknownCodec):
        decode(blob[:5] + bytes([200]) + blob[6:])
    with pytest.raises(PayloadCorrupt, match="CRC"):
        decode(blob[:-10] + bytes([blob[-10] ^ 1]) + blob[-9:])
    for cut in (0, 3, 10, 30, len(blob) - 1):
        with pytest.raises(PayloadCorrupt):
            decode(blob[:cut])
    with pytest.raises(CodecError):
        decode("not bytes")


def test_crafted_frames_are_refused_with_precise_errors():
    import zstandard

    z = zstandard.ZstdCompressor(level=1)
    ok = torch.randn(8).numpy().tobytes()
    assert decode(build_frame(1, b"{}", [("a", 0, [8], 32, z.compress(ok))]))["a"].shape == (8,)
    nan = torch.tensor([1.0, float("nan")]).numpy().tobytes()
    with pytest.raises(NonFiniteValues):
        decode(build_frame(1, b"{}", [("a", 0, [2], 8, z.compress(nan))]))
    with pytest.raises(PayloadCorrupt, match="duplicated"):
        decode(build_frame(1, b"{}", [("a", 0, [8], 32, z.compress(ok))] * 2))
    with pytest.raises(PayloadCorrupt, match="trailing"):
        decode(fix_crc(build_frame(1, b"{}", [("a", 0, [8], 32, z.compress(ok))])[:-4] + b"junk" + b"\0" * 4))
    with pytest.raises(PayloadCorrupt, match="zstd frame length"):
        decode(build_frame(1, b"{}", [("a", 0, [8], 32, z.compress(ok) + z.compress(b""))]))
    with pytest.raises(PayloadCorrupt):  # the zstd header lies about its content size
        decode(build_frame(1, b"{}", [("a", 0, [8], 32, zstd_bomb(64, declared_size=32))]))
    with pytest.raises(PayloadCorrupt, match="params"):
        decode(build_frame(1, b'{"x":1}', [("a", 0, [8], 32, z.compress(ok))]))
    with pytest.raises(PayloadCorrupt, match="params"):
        decode(build_frame(3, b'{"blocksize":4096}', [("a", 0, [8], 12, z.compress(bytes(12)))]))
    params = ('{"blocksize":64,"codebook_crc":%d}' % ((codebook_crc() + 1) % 2**32)).encode()
    with pytest.raises(UnknownCodec, match="codebook"):
        decode(build_frame(3, params, [("a", 0, [8], 12, z.compress(bytes(12)))]))
    with pytest.raises(PayloadCorrupt, match="total"):
        decode(build_frame(1, b"{}", [("a", 0, [8], 32, z.compress(ok))], total_raw=31))


def test_ten_gigabyte_claims_are_refused_without_allocating(monkeypatch):
    big = 10 << 30
    frames = [
        build_frame(1, b"{}", [("a", 0, [big // 4], big, zstd_bomb(0, declared_size=big))]),
        build_frame(1, b"{}", [("a", 0, [big // 4], 32, b"")], total_raw=32),
        build_frame(1, b"{}", [("a", 0, [1 << 20, 1 << 20, 0], 0, b"")]),
        build_frame(2, b"{}", [("a", 0, [3 << 29], 3 << 30, zstd_bomb(1 << 20))]),  # 6 GiB decoded
    ]
    sizes = []
    real_empty = torch.empty

    def spy(*args, **kwargs):
        sizes.append(args)
        return real_empty(*args, **kwargs)

    monkeypatch.setattr(torch, "empty", spy)
    tracemalloc.start()
    try:
        for f in frames:
            assert len(f) < 1024
            with pytest.raises(PayloadTooLarge):
                decode(f)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sizes == [] and peak < 1 << 20


def test_per_call_caps_stop_a_zstd_bomb_before_decompressing():
    bomb = zstd_bomb(64 << 20)
    assert len(bomb) < 4096
    frame = build_frame(1, b"{}", [("a", 8, [64 << 20], 64 << 20, bomb)])
    with pytest.raises(PayloadTooLarge):
        decode(frame, max_bytes=1 << 20)
    with pytest.raises(PayloadTooLarge):
        decode(frame, max_elements=1 << 20)
    with pytest.raises(PayloadTooLarge):  # no caps given: the 8 MiB default refuses 64 MiB
        decode(frame)
    assert decode(frame, max_bytes=64 << 20)["a"].numel() == 64 << 20  # an honest 64 MiB of zeros, capped by the caller


def test_default_cap_refuses_a_tiny_topk_frame_declaring_gigabytes(monkeypatch):
    # a 1e-9 top-k fraction keeps one value: a ~100-byte frame that decodes to 2 GiB of zeros
    from dai_swarm.canonical import canonical_json

    params = canonical_json({"blocksize": 256, "fraction": 1e-9, "values": "fp16"})
    frame = build_frame(4, params, [("w", 0, [1 << 29], len(_topk_raw_one()), _topk_raw_one(), 0)])
    assert len(frame) < 200
    allocated = []
    real_zeros, real_empty = torch.zeros, torch.empty
    monkeypatch.setattr(torch, "zeros", lambda *a, **k: allocated.append(a) or real_zeros(*a, **k))
    monkeypatch.setattr(torch, "empty", lambda *a, **k: allocated.append(a) or real_empty(*a, **k))
    with pytest.raises(PayloadTooLarge):
        decode(frame)  # declared 2 GiB decoded > DEFAULT_MAX_DECODED_BYTES, refused before allocating
    assert allocated == []
    monkeypatch.undo()
    from dai_swarm.optim.codecs import DEFAULT_MAX_DECODED_BYTES

    assert DEFAULT_MAX_DECODED_BYTES == 8 << 20
    ok = encode({"w": torch.randn((2 << 20) - 64)}, "none", zstd="never")  # just under 8 MiB: accepted
    assert decode(ok)["w"].numel() == (2 << 20) - 64
    with pytest.raises(PayloadTooLarge):
        decode(encode({"w": torch.randn((2 << 20) + 1)}, "none", zstd="never"))


def _topk_raw_one() -> bytes:
    return torch.tensor([1.0], dtype=torch.float16).view(torch.uint8).numpy().tobytes() + bytes([5, 1])


@pytest.mark.parametrize("codec,params", [("none", {}), ("fp16", {}), ("int8", {}), ("int8", {"blocksize": 64}),
                                          ("topk", {}), ("topk", {"fraction": 1.0}),
                                          ("topk", {"fraction": 0.3, "values": "int8", "blocksize": 64})])
def test_max_encoded_size_bounds_every_frame_and_is_tight(codec, params):
    from dai_swarm.optim.codecs import max_encoded_size

    g = torch.Generator().manual_seed(5)
    ts = {"emb.weight": torch.randn(300, 37, generator=g), "b": torch.randn(5, generator=g),
          "big": torch.rand(150_000, generator=g) * 1e4, "h": torch.randn(3, 4, 5, generator=g)}
    shapes = {n: (tuple(t.shape), t.dtype) for n, t in ts.items()}
    bound = max_encoded_size(shapes, codec, **params)
    sizes = [len(encode(ts, codec, zstd=z, **params)) for z in ("always", "never", "auto")]
    assert max(sizes) <= bound
    if codec != "topk":  # fixed-size codecs: the bound is within 1% of an uncompressed frame
        assert bound <= 1.01 * len(encode(ts, codec, zstd="never", **params))
    # incompressible bytes under zstd "always": still within the bound
    noise = {"n": torch.randint(0, 256, (70_000,), dtype=torch.uint8, generator=g)}
    assert len(encode(noise, "none", zstd="always")) <= max_encoded_size({"n": ((70_000,), torch.uint8)}, "none")


def test_codec_versions_name_the_quantiser():
    v = codec_versions()
    assert v["bitsandbytes"] != "missing" and v["zstandard"] != "missing"
    assert list(v) == sorted(v) and v["frame"] == "2"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_round_trip_matches_cpu_bytes():
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(3))
    for codec in available_codecs():
        blob_cpu = encode({"w": x}, codec)
        blob_gpu = encode({"w": x.cuda()}, codec)
        y = decode(blob_gpu, device="cuda")["w"]
        assert y.is_cuda
        assert torch.allclose(y.cpu(), decode(blob_cpu)["w"], atol=1e-6, rtol=0)


def test_direct_int8_kernel_gives_the_public_api_bytes():
    from dai_swarm.optim.codecs.codec_int8 import blockwise_quantize, dequantize_from, quantize_into

    g = torch.Generator().manual_seed(11)
    for n in (1, 63, 4096, 70_001):
        x = torch.randn(n, generator=g) * torch.exp(2 * torch.randn(n, generator=g))
        for bs in (64, 4096):
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                xd = x.clamp(-6e4, 6e4).to(dtype)
                absmax, codes = blockwise_quantize(xd, bs)
                raw = quantize_into(xd, bs)
                assert raw is not None
                assert torch.equal(raw, torch.cat([absmax.view(torch.uint8), codes.reshape(-1)]))
            out = dequantize_from(memoryview(raw.numpy()), n, bs)
            assert torch.equal(out, _bnb_dequant(absmax, codes, bs))


def _bnb_dequant(absmax, codes, bs):
    from dai_swarm.optim.codecs.codec_int8 import blockwise_dequantize

    return blockwise_dequantize(absmax, codes, bs)


@pytest.mark.parametrize("codec", ["none", "fp16", "int8", "topk"])
def test_zstd_policy_changes_bytes_never_values(codec):
    g = torch.Generator().manual_seed(4)
    ts = {"big": torch.randn(200_000, generator=g), "small": torch.randn(50, generator=g).half()}
    outs = {z: encode(ts, codec, zstd=z) for z in ("auto", "always", "never")}
    dec = {z: decode(b) for z, b in outs.items()}
    for z in outs:
        for name in ts:
            assert torch.equal(dec[z][name], dec["always"][name])
    assert outs["auto"] == encode(dict(reversed(list(ts.items()))), codec)  # deterministic default
    with pytest.raises(CodecError):
        encode(ts, codec, zstd="sometimes")


def test_auto_policy_stores_incompressible_and_compresses_redundant_streams():
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(1))
    stored = encode({"w": x}, "none")
    assert len(stored) > 400_000  # fp32 noise: stored raw
    assert len(encode({"w": torch.zeros(100_000)}, "none")) < 2000  # zeros: compressed
    assert len(encode({"w": x}, "int8")) == len(encode({"w": x}, "int8", zstd="never"))


def test_stored_stream_frames_are_checked():
    ok = torch.randn(8).numpy().tobytes()
    assert torch.equal(decode(build_frame(1, b"{}", [("a", 0, [8], 32, ok, 0)]))["a"], torch.frombuffer(bytearray(ok), dtype=torch.float32))
    with pytest.raises(PayloadCorrupt, match="stored stream"):
        decode(build_frame(1, b"{}", [("a", 0, [8], 32, ok[:28], 0)]))
    with pytest.raises(PayloadCorrupt, match="stage"):
        decode(build_frame(1, b"{}", [("a", 0, [8], 32, ok, 7)]))
    nan = torch.tensor([1.0, float("nan")]).numpy().tobytes()
    with pytest.raises(NonFiniteValues):
        decode(build_frame(1, b"{}", [("a", 0, [2], 8, nan, 0)]))
    params = ('{"blocksize":64,"codebook_crc":%d}' % codebook_crc()).encode()
    for scale in (float("nan"), float("inf")):
        raw = torch.tensor([scale]).numpy().tobytes() + bytes(8)
        with pytest.raises(NonFiniteValues):
            decode(build_frame(3, params, [("a", 0, [8], 12, raw, 0)]))
    big = torch.tensor([1e5]).numpy().tobytes() + bytes([255]) * 8  # fine as fp32, Inf as fp16
    assert float(decode(build_frame(3, params, [("a", 0, [8], 12, big, 0)]))["a"][0]) == 1e5
    with pytest.raises(NonFiniteValues):
        decode(build_frame(3, params, [("a", 1, [8], 12, big, 0)]))


def test_version_1_frames_are_refused():
    blob = encode({"a": torch.randn(64)}, "none")
    with pytest.raises(UnknownCodec, match="version 1"):
        decode(fix_crc(blob[:4] + bytes([1]) + blob[5:]))
