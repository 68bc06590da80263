"""``int8``: bitsandbytes blockwise 8-bit quantisation (dynamic codebook, one absmax per block).

Raw stream: ``absmax`` (float32, one per block) then the codes (uint8, one per value). The
codebook itself is not sent: it is the local bitsandbytes' dynamic map, and its CRC32 travels in
the frame params so that a peer whose bitsandbytes quantises differently refuses the frame
(:class:`UnknownCodec`) instead of decoding wrong values. Runs on CPU or CUDA tensors.

On CPU the bitsandbytes kernels (OpenMP-parallel over blocks, so the bytes do not depend on the
thread count) are called directly: quantisation writes absmax and codes straight into the raw
stream, and dequantisation reads a stored stream in place from the frame. Both give the same
bytes as ``bitsandbytes.functional`` (tested); that public API is the fallback. A decoded block
is ``code[c] * absmax`` with ``|code| <= 1``, so the float32 output is finite exactly when every
absmax is: the decoder checks the absmax values instead of the whole output.
"""

from __future__ import annotations

import ctypes
import math
import zlib
from typing import Any

import numpy as np
import torch

from dai_swarm.errors import CodecError, NonFiniteValues, PayloadCorrupt, UnknownCodec

from .base import Codec, check_finite, raw_view, register

__all__ = ["BLOCKSIZES", "DEFAULT_BLOCKSIZE", "Int8Codec", "blockwise_dequantize", "blockwise_quantize", "codebook_crc"]

BLOCKSIZES = (64, 128, 256, 512, 1024, 2048, 4096)
DEFAULT_BLOCKSIZE = 4096
_CODES: dict[torch.device, torch.Tensor] = {}
_KERNEL_SUFFIX = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_KERNELS: dict[str, Any] = {}


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


def _kernel(name: str) -> Any:
    """The bitsandbytes C function ``name`` (GIL released while it runs), or ``None``."""
    if name not in _KERNELS:
        try:
            from bitsandbytes.cextension import lib

            _KERNELS[name] = getattr(lib, name)
        except (ImportError, AttributeError, RuntimeError, OSError):
            _KERNELS[name] = None
    return _KERNELS[name]


_SCRATCH: list[torch.Tensor] = []


def _scratch_code() -> torch.Tensor:
    """A private copy of the CPU codebook for the quantise kernel (some versions write code[0])."""
    if not _SCRATCH:
        _SCRATCH.append(_code(torch.device("cpu")).clone())
    return _SCRATCH[0]


def quantize_into(t: torch.Tensor, blocksize: int) -> torch.Tensor | None:
    """Quantise contiguous CPU ``t`` into a fresh ``absmax || codes`` uint8 stream, in one pass.

    Returns ``None`` where the direct kernel is unavailable (the caller falls back).
    """
    fn = _kernel(f"cquantize_blockwise_cpu_{_KERNEL_SUFFIX.get(t.dtype, '')}")
    if fn is None or t.device.type != "cpu":
        return None
    n, nb = t.numel(), _blocks(t.numel(), blocksize)
    raw = torch.empty(4 * nb + n, dtype=torch.uint8)  # 64-byte aligned: absmax floats at offset 0
    ptr = raw.data_ptr()
    fn(ctypes.c_void_p(_scratch_code().data_ptr()), ctypes.c_void_p(t.data_ptr()), ctypes.c_void_p(ptr),
       ctypes.c_void_p(ptr + 4 * nb), ctypes.c_longlong(blocksize), ctypes.c_longlong(n))
    return raw


def dequantize_from(view: memoryview, numel: int, blocksize: int) -> torch.Tensor | None:
    """Dequantise an ``absmax || codes`` stream read in place from ``view`` into new float32.

    Raises :class:`NonFiniteValues` if an absmax is NaN/Inf; ``None`` if the kernel is missing.
    """
    fn = _kernel("cdequantize_blockwise_cpu_fp32")
    if fn is None:
        return None
    nb = _blocks(numel, blocksize)
    if view.nbytes != 4 * nb + numel:
        raise PayloadCorrupt("int8 raw stream has the wrong length")
    absmax = np.frombuffer(view, dtype=np.float32, count=nb).copy()  # aligned and small
    if not np.isfinite(absmax).all():
        raise NonFiniteValues("int8 stream holds a NaN or Inf block scale")
    codes = np.frombuffer(view, dtype=np.uint8, count=numel, offset=4 * nb)
    out = torch.empty(numel, dtype=torch.float32)
    fn(ctypes.c_void_p(_code(torch.device("cpu")).data_ptr()), ctypes.c_void_p(codes.ctypes.data),
       ctypes.c_void_p(absmax.ctypes.data), ctypes.c_void_p(out.data_ptr()), ctypes.c_longlong(blocksize),
       ctypes.c_longlong(numel))
    return out


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
    checks_output_finite = True

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
        direct = quantize_into(t, params["blocksize"])
        if direct is not None:
            return memoryview(direct.numpy())
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
        return self.decode_stored(memoryview(raw.numpy()), shape, dtype, device, **params)

    def decode_stored(
        self, view: memoryview, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, **params: Any
    ) -> torch.Tensor:
        """Dequantise straight from the frame's bytes (CPU), else via bitsandbytes on ``device``."""
        numel = math.prod(shape)
        if numel == 0:
            return torch.empty(shape, dtype=dtype, device=device)
        blocksize = params["blocksize"]
        out = dequantize_from(view, numel, blocksize) if device.type == "cpu" else None
        if out is None:
            nblocks = _blocks(numel, blocksize)
            if 4 * nblocks + numel != view.nbytes:
                raise PayloadCorrupt("int8 raw stream has the wrong length")
            raw = torch.frombuffer(bytearray(view), dtype=torch.uint8)
            absmax = raw_view(raw, 0, nblocks, torch.float32)
            if not bool(torch.isfinite(absmax).all()):
                raise NonFiniteValues("int8 stream holds a NaN or Inf block scale")
            codes = raw_view(raw, 4 * nblocks, numel, torch.uint8)
            out = blockwise_dequantize(absmax.to(device), codes.to(device), blocksize)
        out = out.reshape(shape)
        if dtype != torch.float32:  # narrower dtypes can overflow to Inf when converted
            out = out.to(dtype)
            check_finite(out, "decoded int8 tensor")
        return out

    def max_raw_size(self, numel: int, dtype: torch.dtype, **params: Any) -> int:
        """Exactly ``numel + 4 * ceil(numel / blocksize)`` bytes."""
        return numel + 4 * _blocks(numel, params["blocksize"])

