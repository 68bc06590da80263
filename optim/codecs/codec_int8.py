"""``int8``: bitsandbytes blockwise 8-bit quantisation (dynamic codebook, one absmax per block).

Raw stream: ``absmax`` (float32, one per block) then the codes (uint8, one per value). The
codebook itself is not sent: it is the local bitsandbytes' dynamic map, and its CRC32 travels in
the frame params so that a peer whose bitsandbytes quantises differently refuses the frame
(:class:`UnknownCodec`) instead of decoding wrong values. Runs on CPU or CUDA tensors.
"""

from __future__ import annotations

import zlib
from typing import Any

import torch

from dai_swarm.errors import CodecError, PayloadCorrupt, UnknownCodec

from .base import Codec, raw_view, register

__all__ = ["BLOCKSIZES", "DEFAULT_BLOCKSIZE", "Int8Codec", "blockwise_dequantize", "blockwise_quantize", "codebook_crc"]

BLOCKSIZES = (64, 128, 256, 512, 1024, 2048, 4096)
DEFAULT_BLOCKSIZE = 4096
_CODES: dict[torch.device, torch.Tensor] = {}


def _bnb():
    import bitsandbytes.functional as bnbf  # imported lazily: it is slow to import

    return bnbf


def _code(device: torch.device) -> torch.Tensor:
    if device not in _CODES:
        _CODES[device] = _bnb().create_dynamic_map().to(device=device, dtype=torch.float32)
    return _CODES[device]


def codebook_crc() -> int:
    """CRC32 of the local bitsandbytes dynamic codebook (identifies how this build quantises)."""
    return zlib.crc32(_code(torch.device("cpu")).numpy().tobytes())


def blockwise_quantize(t: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise flat tensor ``t`` (fp32/fp16/bf16) to (absmax float32 per block, uint8 codes)."""
    codes, state = _bnb().quantize_blockwise(t, code=_code(t.device), blocksize=blocksize)
    return state.absmax.to(torch.float32), codes


def blockwise_dequantize(absmax: torch.Tensor, codes: torch.Tensor, blocksize: int) -> torch.Tensor:
    """Inverse of :func:`blockwise_quantize`; returns float32 on the codes' device."""
    return _bnb().dequantize_blockwise(codes, absmax=absmax, code=_code(codes.device), blocksize=blocksize)


def _blocks(numel: int, blocksize: int) -> int:
    return -(-numel // blocksize)


@register
class Int8Codec(Codec):
    """Blockwise int8 via ``bitsandbytes.functional.quantize_blockwise``.

    Params: ``blocksize`` (one of :data:`BLOCKSIZES`, default 4096). The per-element error is
    bounded by the block's absmax times the codebook's largest half-gap.
    """

    name = "int8"
    codec_id = 3

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Accept ``blocksize`` and (from a frame) ``codebook_crc``; fill defaults."""
        unknown = set(params) - {"blocksize", "codebook_crc"}
        if unknown:
            raise CodecError(f"int8 codec: unknown params {sorted(unknown)}")
        blocksize = params.get("blocksize", DEFAULT_BLOCKSIZE)
        if type(blocksize) is not int or blocksize not in BLOCKSIZES:
            raise CodecError(f"int8 codec: blocksize must be one of {BLOCKSIZES}, got {blocksize!r}")
        crc = codebook_crc()
        if "codebook_crc" in params and params["codebook_crc"] != crc:
            raise UnknownCodec(
                f"int8 frame was quantised with codebook crc {params['codebook_crc']!r}, "
                f"local bitsandbytes has {crc}: versions differ"
            )
        return {"blocksize": blocksize, "codebook_crc": crc}

    def encode_tensor(self, t: torch.Tensor, **params: Any) -> bytes | memoryview:
        """Quantise and return ``absmax || codes``."""
        if t.numel() == 0:
            return b""
        if t.dtype == torch.float64:
            t = t.to(torch.float32)
        absmax, codes = blockwise_quantize(t.reshape(-1), params["blocksize"])
        nb = absmax.numel()
        buf = torch.empty(4 * nb + codes.numel(), dtype=torch.uint8)
        buf[: 4 * nb].view(torch.float32).copy_(absmax)
        buf[4 * nb :].copy_(codes.reshape(-1))
        return memoryview(buf.numpy())

    def decode_tensor(
        self, raw: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, **params: Any
    ) -> torch.Tensor:
        """Split ``raw`` into absmax and codes and dequantise on ``device``."""
        numel = _numel(shape)
        if numel == 0:
            return torch.empty(shape, dtype=dtype, device=device)
        blocksize = params["blocksize"]
        nblocks = _blocks(numel, blocksize)
        absmax = raw_view(raw, 0, nblocks, torch.float32)
        codes = raw_view(raw, 4 * nblocks, numel, torch.uint8)
        if 4 * nblocks + numel != raw.numel():
            raise PayloadCorrupt("int8 raw stream has the wrong length")
        out = blockwise_dequantize(absmax.to(device), codes.to(device), blocksize)
        return out.reshape(shape).to(dtype)

    def max_raw_size(self, numel: int, dtype: torch.dtype, **params: Any) -> int:
        """Exactly ``numel + 4 * ceil(numel / blocksize)`` bytes."""
        return numel + 4 * _blocks(numel, params["blocksize"])


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
