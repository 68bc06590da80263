"""``topk``: keep the largest-magnitude fraction of values; send sorted, delta-encoded indices.

Raw stream, in order (larger items first, so every part is aligned)::

    values     k fp16 values, or (values="int8") ceil(k/blocksize) float32 absmax + k uint8 codes
    planes     the k index deltas as ``width`` little-endian byte planes (plane 0 = low bytes)
    width      one byte, 1..4: bytes per delta

``k = ceil(fraction * numel)`` (at least 1 for a non-empty tensor) is recomputed by the decoder
from the frame params, so it is never taken from the stream. Deltas are ``idx[0]`` then
``idx[i] - idx[i-1] >= 1``; byte planes make the high bytes runs of zeros that zstandard
squeezes out. Dropped values decode as exact zeros.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dai_swarm.errors import CodecError, PayloadCorrupt

from .base import Codec, raw_view, register
from .codec_int8 import BLOCKSIZES, blockwise_dequantize, blockwise_quantize

__all__ = ["TopKCodec", "topk_count", "topk_select"]

_VALUE_KINDS = ("fp16", "int8")
_MAX_WIDTH = 4


def topk_count(numel: int, fraction: float) -> int:
    """Number of values kept out of ``numel``: ``ceil(fraction * numel)``, at least 1 if any."""
    if numel == 0:
        return 0
    return min(numel, max(1, math.ceil(fraction * numel)))


def topk_select(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted int64 indices of ``k`` largest-magnitude entries of 1-D ``flat``."""
    if k >= flat.numel():
        return torch.arange(flat.numel(), device=flat.device)
    idx = torch.topk(flat.abs(), k, sorted=False).indices
    return torch.sort(idx).values


def _values_size(k: int, kind: str, blocksize: int) -> int:
    if kind == "fp16":
        return 2 * k
    return k + 4 * (-(-k // blocksize))


@register
class TopKCodec(Codec):
    """Sparse top-k by magnitude. Params: ``fraction`` in (0, 1] (default 0.01), ``values``
    ("fp16" default, or "int8" blockwise) and ``blocksize`` (for int8 values, default 256)."""

    name = "topk"
    codec_id = 4

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Validate ``fraction``, ``values`` and ``blocksize``; fill defaults."""
        unknown = set(params) - {"fraction", "values", "blocksize"}
        if unknown:
            raise CodecError(f"topk codec: unknown params {sorted(unknown)}")
        fraction = params.get("fraction", 0.01)
        if type(fraction) not in (int, float) or not (0.0 < fraction <= 1.0):
            raise CodecError(f"topk codec: fraction must be in (0, 1], got {fraction!r}")
        kind = params.get("values", "fp16")
        if kind not in _VALUE_KINDS:
            raise CodecError(f"topk codec: values must be one of {_VALUE_KINDS}, got {kind!r}")
        blocksize = params.get("blocksize", 256)
        if type(blocksize) is not int or blocksize not in BLOCKSIZES:
            raise CodecError(f"topk codec: blocksize must be one of {BLOCKSIZES}, got {blocksize!r}")
        return {"blocksize": blocksize, "fraction": float(fraction), "values": kind}

    def encode_tensor(self, t: torch.Tensor, **params: Any) -> bytes | memoryview:
        """Select, delta-encode and quantise; see the module docstring for the layout."""
        flat = t.reshape(-1)
        k = topk_count(flat.numel(), params["fraction"])
        if k == 0:
            return b""
        idx = topk_select(flat, k)
        vals = flat[idx]
        deltas = torch.diff(idx, prepend=idx.new_zeros(1)).cpu()
        width = max(1, (int(deltas.max()).bit_length() + 7) // 8)
        planes = deltas.view(torch.uint8).reshape(k, 8)[:, :width].t().contiguous().reshape(-1)
        if params["values"] == "fp16":
            vpart = vals.to(torch.float16).cpu().view(torch.uint8)
        else:
            absmax, codes = blockwise_quantize(vals.to(torch.float32), params["blocksize"])
            vpart = torch.cat([absmax.cpu().view(torch.uint8), codes.cpu().reshape(-1)])
        out = torch.cat([vpart.reshape(-1), planes, torch.tensor([width], dtype=torch.uint8)])
        return memoryview(out.numpy())

    def decode_tensor(
        self, raw: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, **params: Any
    ) -> torch.Tensor:
        """Rebuild the dense tensor: zeros except the ``k`` sent positions."""
        numel = math.prod(shape)
        out = torch.zeros(numel, dtype=dtype, device=device)
        k = topk_count(numel, params["fraction"])
        if k == 0:
            return out.reshape(shape)
        vsize = _values_size(k, params["values"], params["blocksize"])
        width = int(raw[-1])
        if not (1 <= width <= _MAX_WIDTH) or raw.numel() != vsize + width * k + 1:
            raise PayloadCorrupt(f"topk raw stream: bad delta width {width} or length {raw.numel()}")
        planes = raw[vsize : vsize + width * k].reshape(width, k).to(torch.int64)
        deltas = planes[0].clone()
        for i in range(1, width):
            deltas |= planes[i] << (8 * i)
        if k > 1 and int(deltas[1:].min()) < 1:
            raise PayloadCorrupt("topk indices are not strictly increasing")
        idx = torch.cumsum(deltas, 0)
        if int(idx[-1]) >= numel:
            raise PayloadCorrupt("topk index out of range")
        if params["values"] == "fp16":
            vals = raw_view(raw, 0, k, torch.float16)
        else:
            nb = -(-k // params["blocksize"])
            absmax = raw_view(raw, 0, nb, torch.float32)
            codes = raw_view(raw, 4 * nb, k, torch.uint8)
            vals = blockwise_dequantize(absmax.to(device), codes.to(device), params["blocksize"])
        out[idx.to(device)] = vals.to(device=device, dtype=dtype)
        return out.reshape(shape)

    def max_raw_size(self, numel: int, dtype: torch.dtype, **params: Any) -> int:
        """Values plus 4-byte deltas plus the width byte."""
        k = topk_count(numel, params["fraction"])
        return 0 if k == 0 else _values_size(k, params["values"], params["blocksize"]) + _MAX_WIDTH * k + 1

    def min_raw_size(self, numel: int, dtype: torch.dtype, **params: Any) -> int:
        """Values plus 1-byte deltas plus the width byte."""
        k = topk_count(numel, params["fraction"])
        return 0 if k == 0 else _values_size(k, params["values"], params["blocksize"]) + k + 1
