"""Payload, decode and state caps derived from the model and the run's codec, never fixed numbers.

A receiver knows the model's parameter shapes and the run's codec before any byte arrives, so it
knows the largest frame an honest peer can send: :meth:`Codec.max_encoded_size` of those shapes
(each stream at the codec's worst case, grown to zstandard's worst case, plus the frame's header
and table). Anything that declares more is refused before it is downloaded or allocated:

* ``max_payload_bytes``: an update announcement's ``size_bytes`` and a fetched payload's declared
  size (the worst-case frame plus :data:`FRAMING_MARGIN`);
* ``max_decoded_bytes``: what ``codecs.decode`` may declare (framed, raw or decoded bytes): the
  model's float32 size, or the frame bound where a codec's raw stream is larger (top-k at
  fraction 1);
* ``max_state_bytes``: a state snapshot (parameters, momentum and anchor in the ``none`` codec,
  plus at most :data:`MAX_EXTRA_BYTES` of replicated metadata).

For an 821-byte update of the regression task the payload cap is a few KiB, not 256 MiB.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from . import codecs
from .states import BaseState

__all__ = ["FRAMING_MARGIN", "MAX_EXTRA_BYTES", "Limits", "derive_limits"]

#: Bytes allowed beyond a codec's worst case for a model (slack for rounding; a frame carries no
#: other variable part).
FRAMING_MARGIN = 4 << 10
#: Largest replicated metadata (reputation table, reward-log head) a state snapshot may carry.
MAX_EXTRA_BYTES = 4 << 20


@dataclass(frozen=True)
class Limits:
    """The three caps of one run on one model (bytes)."""

    max_payload_bytes: int
    max_decoded_bytes: int
    max_state_bytes: int


def derive_limits(like: BaseState, codec: str, codec_params: Mapping[str, Any] | None = None) -> Limits:
    """The caps for updates of ``like``'s parameters encoded with ``codec`` (see the module docstring)."""
    params = dict(codec_params or {})
    shapes = {n: (tuple(t.shape), torch.float32) for n, t in like.params.items()}
    frame = codecs.max_encoded_size(shapes, codec, **params)
    model_bytes = 4 * sum(t.numel() for t in like.params.values())
    named = BaseState._named(like.params, like.params, None, like.params)  # params, momentum, anchor
    state_shapes = {n: (tuple(t.shape), torch.float32) for n, t in named.items()}
    state_shapes["x/extra"] = ((MAX_EXTRA_BYTES,), torch.uint8)
    state = codecs.max_encoded_size(state_shapes, "none")
    payload = frame + FRAMING_MARGIN
    return Limits(max_payload_bytes=payload, max_decoded_bytes=max(model_bytes, payload), max_state_bytes=state)
