"""``fp16``: values rounded to IEEE half precision (round-to-nearest-even)."""

from __future__ import annotations

from typing import Any

import torch

from dai_swarm.errors import NonFiniteValues

from .base import Codec, check_finite, register
from .codec_none import as_bytes

__all__ = ["Fp16Codec"]


@register
class Fp16Codec(Codec):
    """Half-precision values; decodes back to the original dtype.

    Values beyond the fp16 range (|x| > 65504) would become Inf and are refused with
    :class:`NonFiniteValues` rather than silently saturated.
    """

    name = "fp16"
    codec_id = 2

    def encode_tensor(self, t: torch.Tensor, **params: Any) -> memoryview:
        """Round to fp16 and return the bytes."""
        half = t.detach().to(dtype=torch.float16).to("cpu").contiguous()
        try:
            check_finite(half, "fp16-rounded tensor")
        except NonFiniteValues:
            raise NonFiniteValues("tensor holds values outside the fp16 range (|x| > 65504)") from None
        return as_bytes(half)

    def decode_tensor(
        self, raw: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, **params: Any
    ) -> torch.Tensor:
        """Reinterpret as fp16 and convert to ``dtype`` on ``device``."""
        return raw.view(torch.float16).reshape(shape).to(device=device, dtype=dtype)

    def max_raw_size(self, numel: int, dtype: torch.dtype, **params: Any) -> int:
        """Exactly two bytes per value."""
        return 2 * numel
