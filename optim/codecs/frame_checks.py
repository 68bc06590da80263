"""Checks a frame's header must pass before any tensor is allocated: canonical, normalised codec
params and the expected tensor names, shapes and dtypes (:func:`~.frame.decode_frame` calls them)."""

from __future__ import annotations

import json
from typing import Any, Mapping

import torch

from dai_swarm.canonical import canonical_json
from dai_swarm.errors import CodecError, PayloadCorrupt, ShapeMismatch, UnknownCodec

from .base import Codec

__all__ = ["check_expect", "parse_params"]


def parse_params(codec: Codec, data: bytes) -> dict[str, Any]:
    """A frame's codec params: canonical JSON that the codec's ``check_params`` leaves unchanged."""
    try:
        params = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise PayloadCorrupt("codec params are not valid JSON") from None
    if not isinstance(params, dict):
        raise PayloadCorrupt("codec params are not a JSON object")
    try:
        if canonical_json(params) != data:
            raise PayloadCorrupt("codec params are not canonical JSON")
        checked = codec.check_params(dict(params))
    except UnknownCodec:
        raise
    except (CodecError, ValueError, TypeError) as e:
        raise PayloadCorrupt(f"bad codec params: {e}") from None
    if checked != params:
        raise PayloadCorrupt("codec params are incomplete or not normalised")
    return params


def check_expect(entries: list, expect: Mapping[str, tuple[tuple[int, ...], torch.dtype]]) -> None:
    """The frame's table (``(name, dtype, shape, ...)`` entries) names exactly the expected tensors."""
    got = {name for name, *_ in entries}
    if got != set(expect):
        missing, extra = sorted(set(expect) - got), sorted(got - set(expect))
        raise ShapeMismatch(f"tensor names differ from expected: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, dtype, shape, *_ in entries:
        want_shape, want_dtype = expect[name]
        if tuple(want_shape) != shape or want_dtype != dtype:
            raise ShapeMismatch(f"{name!r}: got {shape} {dtype}, expected {tuple(want_shape)} {want_dtype}")
