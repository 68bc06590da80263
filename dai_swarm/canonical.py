"""Canonical encodings and hashes shared by every subsystem.

Everything that is signed or hashed goes through here, so that two honest peers always produce
the same bytes for the same content: canonical JSON (sorted keys, no whitespace, UTF-8, finite
numbers only) and a tensor-state hash that is independent of memory layout.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # torch is imported where tensors are hashed: the JSON helpers stay light
    import torch

__all__ = ["canonical_json", "sha256_hex", "state_hash", "tensor_bytes"]


def _check_finite(obj: Any) -> None:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"canonical JSON refuses non-finite number {obj!r}")
    if isinstance(obj, Mapping):
        for v in obj.values():
            _check_finite(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check_finite(v)


def canonical_json(obj: Any) -> bytes:
    """Return the canonical JSON bytes of ``obj`` (sorted keys, compact, UTF-8, no NaN/Inf)."""
    _check_finite(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def tensor_bytes(t: torch.Tensor) -> bytes:
    """Raw little-endian bytes of a tensor in C order, whatever its device or strides."""
    import torch

    t = t.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def state_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """Hash a named set of tensors: names sorted, each with dtype, shape and raw bytes.

    Two states hash equal iff they hold the same names, dtypes, shapes and bitwise-equal values.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        header = canonical_json([name, str(t.dtype), list(t.shape)])
        h.update(len(header).to_bytes(4, "little"))
        h.update(header)
        h.update(tensor_bytes(t))
    return h.hexdigest()
