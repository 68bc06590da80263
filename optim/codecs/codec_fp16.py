"""``fp16``: values rounded to IEEE half precision (round-to-nearest-even)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from dai_swarm.errors import NonFiniteValues

from .base import Codec, check_finite, register
from .codec_none import as_bytes

__all__ = ["Fp16Codec"]

_FP16_MAX = 65504.0


@register
class Fp16Codec(Codec):
    """Half-precision values; decodes back to the original dtype.

    Values beyond the fp16 range (|x| > 65504) would become Inf and are refused with
    :class:`NonFiniteValues` rather than silently saturated.
    """

    name = "fp16"
    codec_id = 2
    checks_input_finite = True

    def encode_tensor(self, t: torch.Tensor, **params: Any) -> memoryview:
        """Check the input once (NaN/Inf, and whether any value can round past 65504), round, return the bytes."""
        if t.numel() == 0:
            return memoryview(b"")
        lo, hi = torch.aminmax(t.reshape(-1))
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise NonFiniteValues("tensor holds NaN or Inf values")
        half = t.detach().to(dtype=torch.float16).to("cpu").contiguous()
        if max(-lo, hi) > _FP16_MAX:  # only then can rounding have produced an Inf
            try:
                check_finite(half, "fp16-rounded tensor")
            except NonFiniteValues:
                raise NonFiniteValues("tensor holds values outside the fp16 range (|x| > 65504)") from None
        return as_bytes(half)

    def decode_stored(
        self, view: memoryview, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, **params: Any
    ) -> torch.Tensor:
        """Widen in one pass from the frame's bytes for float32/float64 (exact), else copy first."""
        if dtype in (torch.float32, torch.float64) and view.nbytes == 2 * math.prod(shape):
            wide = np.frombuffer(view, dtype=np.float16).astype(np.float32 if dtype == torch.float32 else np.float64)
            return torch.from_numpy(wide).reshape(shape).to(device)
        return super().decode_stored(view, shape, dtype, device, **params)

    def decode_tensor(
        self, raw: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, **params: Any
    ) -> torch.Tensor:
        """Reinterpret as fp16 and convert to ``dtype`` on ``device``."""
        return raw.view(torch.float16).reshape(shape).to(device=device, dtype=dtype)

    def max_raw_size(self, numel: int, dtype: torch.dtype, **params: Any) -> int:
        """Exactly two bytes per value."""
        return 2 * numel
