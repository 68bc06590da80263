"""``sparse``: chunked top-k with low-bit values, the wire half of sparse updates with error feedback.

Each tensor is flattened and cut into chunks of ``chunk`` values (the last one may be shorter).
Every full chunk keeps its ``k`` largest-magnitude values; a last chunk of ``L`` values keeps
``ceil(k * L / chunk)``. Ties at the threshold go to the lower index, so the selection is a pure
function of the values (:func:`select_topk`). ``k`` and the chunk layout come from the frame
params and the declared shape, never from the stream.

Values: ``bits`` per kept value (2 by default): one sign bit and ``bits - 1`` magnitude bits that
place ``|v|`` uniformly between the chunk's smallest (``lo``) and largest (``hi``) kept magnitude,
rounded to nearest (half to even). Top-k magnitudes all sit above the chunk's threshold, so
``[lo, hi]`` is far narrower than ``[0, hi]``; the largest value and the sign are always exact;
what the rounding loses is carried by error feedback (``optim/feedback.py``).

Indices: per chunk the gaps ``g = idx[i] - idx[i-1] - 1`` (``idx[0]`` itself first) are Rice
coded with ``r = rice_bits(chunk, k)`` bits: the low ``r`` bits fixed-width, the quotient in unary
(``q`` zero bits then a one). With 64 of 4,096 that is about 7.6 bits per index instead of 12.

Raw stream of one tensor, in order::

    scales     per chunk (lo, hi) as float32, 8 bytes per chunk
    codes      k_total x bits bits, LSB first (sign is the top bit of each code)
    remainders k_total x r bits, LSB first
    quotients  unary bits, one terminating 1 per kept value, zero padding to a byte

All arithmetic is numpy, elementwise or exact integer work (no reductions whose order depends on
thread counts), so the same values give the same bytes on any torch thread count. The decoder
refuses non-canonical streams (padding bits, codes above zero where ``lo == hi``, a byte length
other than the exact one), so one update has exactly one encoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from dai_swarm.errors import CodecError, NonFiniteValues, PayloadCorrupt

from .base import Codec, check_finite, register

__all__ = [
    "DEFAULT_BITS",
    "DEFAULT_CHUNK",
    "DEFAULT_K",
    "ChunkRef",
    "SparseCodec",
    "chunk_refs",
    "chunk_rows",
    "chunk_sizes",
    "decode_flat",
    "dequantize",
    "quantize",
    "rice_bits",
    "select_topk",
]

DEFAULT_CHUNK = 4096
DEFAULT_K = 64
DEFAULT_BITS = 2
_CHUNKS = tuple(1 << i for i in range(6, 17))  # 64 .. 65536
_BITS = tuple(range(2, 9))


def rice_bits(chunk: int, k: int) -> int:
    """Fixed low bits per index gap: ``floor(log2(chunk / k * ln 2))`` (Golomb's optimum), >= 0."""
    return max(0, (chunk * 693 // (1000 * k)).bit_length() - 1)


def chunk_sizes(numel: int, chunk: int, k: int) -> tuple[int, int, int, int]:
    """``(full chunks, last chunk's length or 0, last chunk's k, total kept values)`` for ``numel``."""
    full, tail = divmod(int(numel), chunk)
    k_tail = min(tail, -(-k * tail // chunk)) if tail else 0
    return full, tail, k_tail, full * k + k_tail


@dataclass(frozen=True)
class ChunkRef:
    """One chunk of a named tensor: global id, tensor name, flat offset, length and kept count."""

    chunk_id: int
    name: str
    start: int
    length: int
    k: int


def chunk_refs(numels: Mapping[str, int], chunk: int = DEFAULT_CHUNK, k: int = DEFAULT_K) -> list[ChunkRef]:
    """Every chunk of tensors with these element counts; ids run over names sorted, then offsets."""
    out: list[ChunkRef] = []
    for name in sorted(numels):
        full, tail, k_tail, _ = chunk_sizes(numels[name], chunk, k)
        for j in range(full):
            out.append(ChunkRef(len(out), name, j * chunk, chunk, k))
        if tail:
            out.append(ChunkRef(len(out), name, full * chunk, tail, k_tail))
    return out


def select_topk(mags: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the ``k`` largest entries of each row of ``mags`` (2-D), ties to lower index."""
    rows, width = mags.shape
    if k >= width:
        return np.ones(mags.shape, dtype=bool)
    thr = np.partition(mags, width - k, axis=1)[:, width - k : width - k + 1]  # k-th largest per row
    above = mags > thr
    at = mags == thr
    need = k - above.sum(axis=1, keepdims=True)
    return above | (at & (np.cumsum(at, axis=1) <= need))


def quantize(vals: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantise rows of kept values (float32, 2-D): ``(lo, hi, codes)``; see the module docstring."""
    mags = np.abs(vals)
    lo, hi = mags.min(axis=1), mags.max(axis=1)
    steps = (1 << (bits - 1)) - 1
    span = (hi - lo).astype(np.float64)[:, None]
    safe = np.where(span > 0, span, 1.0)
    mag_code = np.where(span > 0, np.rint((mags - lo[:, None]).astype(np.float64) / safe * steps), 0.0)
    codes = mag_code.astype(np.uint16) | (np.signbit(vals).astype(np.uint16) << (bits - 1))
    return lo, hi, codes


def dequantize(lo: np.ndarray, hi: np.ndarray, codes: np.ndarray, bits: int) -> np.ndarray:
    """Float32 values of ``codes`` (rows) with per-row ``lo``/``hi``: ``±(lo + (hi - lo) * c / steps)``."""
    steps = (1 << (bits - 1)) - 1
    mag_code = (codes & ((1 << (bits - 1)) - 1)).astype(np.float64)
    lo64, span = lo.astype(np.float64)[:, None], (hi.astype(np.float64) - lo.astype(np.float64))[:, None]
    mag = (lo64 + span * (mag_code / steps)).astype(np.float32)
    return np.where((codes >> (bits - 1)) & 1 == 1, -mag, mag)


def _pack(vals: np.ndarray, width: int) -> bytes:
    """Pack unsigned ints (< 2**width, width <= 16) LSB first, zero padding to a byte."""
    if width == 0 or vals.size == 0:
        return b""
    bits = np.unpackbits(vals.astype("<u2").view(np.uint8).reshape(-1, 2), axis=1, bitorder="little")
    return np.packbits(bits[:, :width].reshape(-1), bitorder="little").tobytes()


def _unpack(buf: np.ndarray, count: int, width: int) -> np.ndarray:
    """Inverse of :func:`_pack`; refuses non-zero padding bits."""
    if width == 0 or count == 0:
        return np.zeros(count, dtype=np.uint16)
    bits = np.unpackbits(buf, bitorder="little")
    if bits[count * width :].any():
        raise PayloadCorrupt("sparse stream: non-zero padding bits")
    weights = (1 << np.arange(width, dtype=np.uint32)).astype(np.uint32)
    return (bits[: count * width].reshape(count, width).astype(np.uint32) @ weights).astype(np.uint16)


def chunk_rows(flat: np.ndarray, chunk: int, k: int) -> list[tuple[np.ndarray, int, int]]:
    """Flat ``flat`` as its full chunks in one 2-D block and its tail in another: ``(block, offset, k)``."""
    full, tail, k_tail, _ = chunk_sizes(flat.size, chunk, k)
    out = []
    if full:
        out.append((flat[: full * chunk].reshape(full, chunk), 0, k))
    if tail:
        out.append((flat[full * chunk :].reshape(1, tail), full * chunk, k_tail))
    return out


def _sizes(numel: int, p: Mapping[str, Any]) -> tuple[int, int, int, int, int]:
    """``(chunks, k_total, scale bytes, code bytes, remainder bytes)`` of one tensor."""
    full, tail, _, k_total = chunk_sizes(numel, p["chunk"], p["k"])
    n_chunks = full + (1 if tail else 0)
    r = rice_bits(p["chunk"], p["k"])
    return n_chunks, k_total, 8 * n_chunks, -(-k_total * p["bits"] // 8), -(-k_total * r // 8)


@register
class SparseCodec(Codec):
    """Chunked top-k, ``bits``-bit values with a per-chunk ``[lo, hi]``, Rice-coded indices.

    Params: ``chunk`` (a power of two, 64..65536, default 4096), ``k`` kept per full chunk
    (1..chunk, default 64) and ``bits`` per value (2..8, default 2).
    """

    name = "sparse"
    codec_id = 5
    checks_output_finite = True

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Validate ``chunk``, ``k`` and ``bits``; fill defaults."""
        unknown = set(params) - {"chunk", "k", "bits"}
        if unknown:
            raise CodecError(f"sparse codec: unknown params {sorted(unknown)}")
        chunk, k, bits = params.get("chunk", DEFAULT_CHUNK), params.get("k", DEFAULT_K), params.get("bits", DEFAULT_BITS)
        if type(chunk) is not int or chunk not in _CHUNKS:
            raise CodecError(f"sparse codec: chunk must be one of {_CHUNKS}, got {chunk!r}")
        if type(k) is not int or not 1 <= k <= chunk:
            raise CodecError(f"sparse codec: k must be an int in [1, chunk], got {k!r}")
        if type(bits) is not int or bits not in _BITS:
            raise CodecError(f"sparse codec: bits must be one of {_BITS}, got {bits!r}")
        return {"bits": bits, "chunk": chunk, "k": k}

    def encode_tensor(self, t: torch.Tensor, **params: Any) -> bytes:
        """Select, quantise and pack; see the module docstring for the layout."""
        flat = t.detach().reshape(-1).to(device="cpu", dtype=torch.float32).numpy()
        if flat.size == 0:
            return b""
        bits, r = params["bits"], rice_bits(params["chunk"], params["k"])
        scales, codes, gaps = [], [], []
        for block, _, k in chunk_rows(flat, params["chunk"], params["k"]):
            mask = select_topk(np.abs(block), k)
            rows, cols = np.nonzero(mask)  # row-major: ascending index within each chunk
            vals = block[rows, cols].reshape(-1, k)
            lo, hi, c = quantize(vals, bits)
            scales.append(np.stack([lo, hi], axis=1).astype("<f4"))
            codes.append(c.reshape(-1))
            idx = cols.reshape(-1, k).astype(np.int64)
            gaps.append(np.diff(idx, axis=1, prepend=-1).reshape(-1) - 1)
        gap = np.concatenate(gaps)
        quot = gap >> r
        unary = np.zeros(int(quot.sum()) + gap.size, dtype=np.uint8)
        unary[np.cumsum(quot + 1) - 1] = 1
        return b"".join([np.concatenate(scales).tobytes(), _pack(np.concatenate(codes), bits),
                         _pack(gap & ((1 << r) - 1), r), np.packbits(unary, bitorder="little").tobytes()])

    def decode_tensor(
        self, raw: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, **params: Any
    ) -> torch.Tensor:
        """Rebuild the dense tensor: zeros except the kept values; refuses inconsistent streams."""
        numel = math.prod(shape)
        if numel == 0:
            return torch.zeros(shape, dtype=dtype, device=device)
        out = torch.from_numpy(decode_flat(raw.numpy(), numel, params)).reshape(shape).to(device=device, dtype=dtype)
        if dtype not in (torch.float32, torch.float64):  # narrower dtypes can overflow to Inf
            check_finite(out, "decoded sparse tensor")
        return out

    def max_raw_size(self, numel: int, dtype: torch.dtype, **params: Any) -> int:
        """Fixed parts plus the longest unary part: a quotient sum of at most ``(L - k) >> r`` per chunk."""
        if numel == 0:
            return 0
        full, tail, k_tail, k_total = chunk_sizes(numel, params["chunk"], params["k"])
        r = rice_bits(params["chunk"], params["k"])
        quot = full * ((params["chunk"] - params["k"]) >> r) + ((tail - k_tail) >> r if tail else 0)
        return sum(_sizes(numel, params)[2:]) + -(-(k_total + quot) // 8)

    def min_raw_size(self, numel: int, dtype: torch.dtype, **params: Any) -> int:
        """Fixed parts plus one terminating bit per kept value."""
        if numel == 0:
            return 0
        return sum(_sizes(numel, params)[2:]) + -(-_sizes(numel, params)[1] // 8)


def decode_flat(raw: np.ndarray, numel: int, params: Mapping[str, Any]) -> np.ndarray:
    """Dense float32 values of one tensor's raw stream (uint8 array); :class:`PayloadCorrupt` if bad."""
    chunk, k, bits = params["chunk"], params["k"], params["bits"]
    n_chunks, k_total, s_len, c_len, r_len = _sizes(numel, params)
    r = rice_bits(chunk, k)
    if raw.size < s_len + c_len + r_len:
        raise PayloadCorrupt("sparse stream shorter than its fixed parts")
    scales = raw[:s_len].copy().view("<f4").reshape(n_chunks, 2)
    if not np.isfinite(scales).all():
        raise NonFiniteValues("sparse stream holds a NaN or Inf chunk scale")
    lo, hi = scales[:, 0], scales[:, 1]
    if (lo < 0).any() or (hi < lo).any() or np.signbit(lo).any():
        raise PayloadCorrupt("sparse stream: a chunk scale is negative or lo > hi")
    codes = _unpack(raw[s_len : s_len + c_len], k_total, bits)
    rem = _unpack(raw[s_len + c_len : s_len + c_len + r_len], k_total, r).astype(np.int64)
    unary = np.unpackbits(raw[s_len + c_len + r_len :], bitorder="little")
    ends = np.flatnonzero(unary)
    if ends.size != k_total or unary.size != 8 * -(-(int(ends[-1]) + 1) // 8):
        raise PayloadCorrupt("sparse stream: index quotients do not match the kept count")
    gap = ((np.diff(ends, prepend=-1) - 1) << r) | rem
    full, tail, k_tail, _ = chunk_sizes(numel, chunk, k)
    per_chunk = np.full(n_chunks, k, dtype=np.int64)
    length = np.full(n_chunks, chunk, dtype=np.int64)
    if tail:
        per_chunk[-1], length[-1] = k_tail, tail
    chunk_of = np.repeat(np.arange(n_chunks), per_chunk)
    steps = np.cumsum(gap + 1)
    first = np.concatenate([[0], np.cumsum(per_chunk)[:-1]])
    local = steps - np.repeat(steps[first] - gap[first] - 1, per_chunk) - 1
    if (local >= length[chunk_of]).any():
        raise PayloadCorrupt("sparse stream: an index lies outside its chunk")
    mag_mask = (1 << (bits - 1)) - 1
    if ((codes & mag_mask)[np.repeat(hi == lo, per_chunk)] != 0).any():
        raise PayloadCorrupt("sparse stream: magnitude codes in a chunk with lo == hi")
    out = np.zeros(numel, dtype=np.float32)
    vals = dequantize(np.repeat(lo, per_chunk), np.repeat(hi, per_chunk), codes[:, None], bits)
    out[chunk_of * chunk + local] = vals[:, 0]
    return out
