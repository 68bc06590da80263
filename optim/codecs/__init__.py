"""Compression codecs and the one bounded wire frame for named tensors.

``encode(tensors, codec, **params) -> bytes`` and ``decode(blob, expect=...) -> dict`` are the
whole user surface. Codecs: ``none`` (exact), ``fp16``, ``int8`` (bitsandbytes blockwise),
``topk`` (sparse, delta-encoded indices) and ``sparse`` (chunked top-k, 2-bit values, Rice-coded
indices; used with error feedback, :mod:`dai_swarm.optim.feedback`), each followed by zstandard; see :mod:`.frame` for the
format and its caps. Every ``codec_*.py`` module in this package is imported, so adding a codec
is adding a file.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib import metadata
from typing import Any, Mapping

import torch

from .base import Codec, get_codec, register, registered_codecs
from .frame import (
    DEFAULT_MAX_DECODED_BYTES,
    FORMAT_VERSION,
    MAX_BYTES,
    MAX_ELEMENTS,
    ZSTD_LEVEL,
    decode_frame,
    encode_frame,
)

#: the codec parameters of a new run unless its creator chooses others (the manifest records them):
#: every stream through zstd, so update frames are as small as the codec allows
RUN_CODEC_PARAMS: dict[str, Any] = {"zstd": "always"}

__all__ = [
    "DEFAULT_MAX_DECODED_BYTES",
    "RUN_CODEC_PARAMS",
    "FORMAT_VERSION",
    "MAX_BYTES",
    "MAX_ELEMENTS",
    "ZSTD_LEVEL",
    "Codec",
    "available_codecs",
    "codec_versions",
    "decode",
    "decode_cap_for",
    "encode",
    "get_codec",
    "max_encoded_size",
    "register",
    "roundtrip",
]

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name.startswith("codec_"):
        importlib.import_module(f"{__name__}.{_mod.name}")


def encode(tensors: Mapping[str, torch.Tensor], codec: str = "int8", **params: Any) -> bytes:
    """Encode named tensors into one frame; the same tensors always give the same bytes.

    ``params`` are codec parameters (``int8``: ``blocksize``; ``topk``: ``fraction``,
    ``values``, ``blocksize``; ``sparse``: ``chunk``, ``k``, ``bits``). Refuses NaN/Inf with :class:`~dai_swarm.errors.NonFiniteValues`.
    """
    return encode_frame(tensors, codec, **params)


def decode(
    blob: bytes | bytearray | memoryview,
    *,
    expect: Mapping[str, tuple[tuple[int, ...], torch.dtype]] | None = None,
    max_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    max_elements: int = MAX_ELEMENTS,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """Decode a frame into ``{name: tensor}`` with the original names, shapes and dtypes.

    All declared sizes are checked against ``max_bytes`` / ``max_elements`` (and the module
    caps) before anything is allocated; every failure is a :class:`~dai_swarm.errors.CodecError`.
    Without ``max_bytes`` a frame may declare at most :data:`DEFAULT_MAX_DECODED_BYTES` (8 MiB)
    of framed, raw or decoded bytes: callers that decode model-sized frames pass a cap derived
    from the model (``RoundRuntime.max_decoded_bytes``), never an unbounded one.
    """
    return decode_frame(blob, expect=expect, max_bytes=max_bytes, max_elements=max_elements, device=device)


def max_encoded_size(shapes: Mapping[str, tuple[tuple[int, ...], torch.dtype]], codec: str, **params: Any) -> int:
    """Worst-case frame size for tensors of ``shapes`` under ``codec`` (see :meth:`Codec.max_encoded_size`)."""
    return get_codec(codec).max_encoded_size(shapes, **params)


def roundtrip(tensors: Mapping[str, torch.Tensor], codec: str = "int8", **params: Any) -> dict[str, torch.Tensor]:
    """The tensors as a receiver decodes them after ``encode(tensors, codec, **params)``.

    For local, trusted tensors only (recomputations, simulations): the decode cap is the frame's
    own worst case for these shapes, so any model size round-trips.
    """
    return decode(encode(tensors, codec, **params), max_bytes=decode_cap_for(tensors, codec, **params))


def decode_cap_for(tensors: Mapping[str, torch.Tensor], codec: str, **params: Any) -> int:
    """The ``max_bytes`` that decoding a frame of exactly these tensors' shapes needs: the larger of
    their decoded size and the codec's worst-case frame (for frames this peer encoded itself)."""
    shapes = {n: (tuple(t.shape), t.dtype) for n, t in tensors.items()}
    decoded = sum(t.numel() * t.element_size() for t in tensors.values())
    return max(decoded, max_encoded_size(shapes, codec, **params))


def available_codecs() -> list[str]:
    """Names of the registered codecs, sorted."""
    return list(registered_codecs())


def codec_versions() -> dict[str, str]:
    """Versions of everything that changes the encoded bytes; peers of one run must agree.

    Includes the frame format, the zstd level, and the zstandard, bitsandbytes and torch
    library versions (bitsandbytes releases quantise differently).
    """
    out = {"frame": str(FORMAT_VERSION), "zstd_level": str(ZSTD_LEVEL), "torch": torch.__version__}
    for dist in ("bitsandbytes", "zstandard"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "missing"
    return dict(sorted(out.items()))
