"""``none``: the tensor's raw little-endian bytes (lossless; zstandard still follows)."""

from __future__ import annotations

from typing import Any

import torch

from .base import Codec, register

__all__ = ["NoneCodec"]


def as_bytes(t: torch.Tensor) -> memoryview:
    """Zero-copy byte view of contiguous CPU tensor ``t`` (bf16 and bool included)."""
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


@register
class NoneCodec(Codec):
    """No quantisation: values are sent bit-exactly. Carries every supported dtype."""

    name = "none"
    codec_id = 1
    dtypes = None

    def encode_tensor(self, t: torch.Tensor, **params: Any) -> memoryview:
        """Return the tensor's bytes in C order."""
        return as_bytes(t.detach().to("cpu").contiguous())

    def decode_tensor(
        self, raw: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, **params: Any
    ) -> torch.Tensor:
        """Reinterpret ``raw`` as ``dtype`` and reshape (a view of ``raw`` on CPU)."""
        return raw.view(dtype).reshape(shape).to(device)

    def max_raw_size(self, numel: int, dtype: torch.dtype, **params: Any) -> int:
        """Exactly ``numel`` times the item size."""
        return numel * torch.empty((), dtype=dtype).element_size()
