"""The codec base class and the codec registry.

A codec turns one tensor into a *raw stream* of bytes and back. The frame (:mod:`.frame`) then
compresses each raw stream with zstandard and wraps everything in one bounded, checksummed
binary frame. Codecs never see untrusted lengths: by the time :meth:`Codec.decode_tensor` runs, the
frame has checked the declared raw length against :meth:`Codec.max_raw_size` and the caps.

Adding a codec is adding a file ``codec_<name>.py`` in this package that defines a subclass of
:class:`Codec` decorated with :func:`register`; the package imports every ``codec_*`` module.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Mapping

import numpy as np
import torch

from dai_swarm.errors import CodecError, NonFiniteValues, PayloadCorrupt, UnknownCodec

__all__ = [
    "DTYPE_CODES",
    "FLOAT_DTYPES",
    "Codec",
    "check_finite",
    "get_codec",
    "get_codec_by_id",
    "raw_view",
    "register",
    "registered_codecs",
]

#: Wire codes of the dtypes a frame can carry (never renumber: they are part of the format).
DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 0,
    torch.float16: 1,
    torch.bfloat16: 2,
    torch.float64: 3,
    torch.int64: 4,
    torch.int32: 5,
    torch.int16: 6,
    torch.int8: 7,
    torch.uint8: 8,
    torch.bool: 9,
}
FLOAT_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16, torch.float64})

_BY_NAME: dict[str, type[Codec]] = {}
_BY_ID: dict[int, type[Codec]] = {}


def check_finite(t: torch.Tensor, what: str) -> None:
    """Raise :class:`NonFiniteValues` if floating tensor ``t`` holds a NaN or an Inf.

    Uses one vectorised ``aminmax`` pass (max/min propagate NaN; an Inf shows up as a bound).
    """
    if t.dtype not in FLOAT_DTYPES or t.numel() == 0:
        return
    lo, hi = torch.aminmax(t.reshape(-1))
    if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        raise NonFiniteValues(f"{what} holds NaN or Inf values")


class Codec(ABC):
    """One tensor codec: a stable ``name``, a numeric wire ``codec_id`` and a raw-stream format.

    Subclasses implement :meth:`encode_tensor`, :meth:`decode_tensor` and :meth:`max_raw_size`,
    and override :meth:`check_params` if they take parameters. Codecs are stateless; one instance
    per class is shared.
    """

    name: ClassVar[str]
    codec_id: ClassVar[int]
    #: dtypes this codec accepts; ``None`` means every dtype in :data:`DTYPE_CODES`.
    dtypes: ClassVar[frozenset[torch.dtype] | None] = FLOAT_DTYPES
    #: True if :meth:`encode_tensor` itself refuses NaN/Inf input (the frame then skips its check).
    checks_input_finite: ClassVar[bool] = False
    #: True if the decode methods themselves refuse NaN/Inf output (the frame then skips its check).
    checks_output_finite: ClassVar[bool] = False

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Validate ``params`` and return them complete (defaults filled in), JSON-serialisable.

        Raises :class:`CodecError` on unknown keys or bad values. The default accepts no params.
        """
        if params:
            raise CodecError(f"codec {self.name!r} takes no parameters, got {sorted(params)}")
        return {}

    def supports(self, dtype: torch.dtype) -> bool:
        """True if this codec can carry tensors of ``dtype``."""
        return dtype in DTYPE_CODES and (self.dtypes is None or dtype in self.dtypes)

    @abstractmethod
    def encode_tensor(self, t: torch.Tensor, **params: Any) -> bytes | memoryview:
        """Return the raw stream of contiguous CPU-or-GPU tensor ``t`` (finite, supported dtype)."""

    @abstractmethod
    def decode_tensor(
        self, raw: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, **params: Any
    ) -> torch.Tensor:
        """Rebuild a tensor of ``shape``/``dtype`` on ``device`` from ``raw`` (1-D uint8, CPU).

        ``raw`` is writable and owned by the caller; a codec may return a view of it. Raises
        :class:`PayloadCorrupt` if the stream's content is inconsistent.
        """

    def decode_stored(
        self, view: memoryview, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, **params: Any
    ) -> torch.Tensor:
        """Like :meth:`decode_tensor`, from a read-only view of a stream stored without zstd.

        ``view`` points into the caller's frame: a codec must not keep it nor return a view of it.
        The default copies it into a fresh tensor and calls :meth:`decode_tensor`; codecs that
        can read it in place override this to save the copy.
        """
        raw = torch.empty(len(view), dtype=torch.uint8)
        if len(view):
            raw.numpy()[:] = np.frombuffer(view, dtype=np.uint8)
        return self.decode_tensor(raw, shape, dtype, device, **params)

    @abstractmethod
    def max_raw_size(self, numel: int, dtype: torch.dtype, **params: Any) -> int:
        """Upper bound on the raw-stream length for ``numel`` values of ``dtype``."""

    def min_raw_size(self, numel: int, dtype: torch.dtype, **params: Any) -> int:
        """Lower bound on the raw-stream length (defaults to the upper bound: fixed-size codecs)."""
        return self.max_raw_size(numel, dtype, **params)

    def max_encoded_size(self, shapes: Mapping[str, tuple[tuple[int, ...], torch.dtype]], **params: Any) -> int:
        """Worst-case size in bytes of a whole frame of tensors with these names, shapes and dtypes.

        The bound a receiver can derive from the model alone (payload caps are set from it, never
        a fixed number): every stream at :meth:`max_raw_size`, grown to zstandard's worst case,
        plus the frame's header, table and CRC. ``params`` as for encoding (defaults filled in).
        """
        from .frame import max_frame_size  # the frame module imports this one

        return max_frame_size(self, shapes, params)


def register(cls: type[Codec]) -> type[Codec]:
    """Class decorator: add ``cls`` to the registry under its ``name`` and ``codec_id``."""
    if not (0 < cls.codec_id < 256):
        raise ValueError(f"codec id {cls.codec_id} of {cls.__name__} must be in 1..255")
    for table, key in ((_BY_NAME, cls.name), (_BY_ID, cls.codec_id)):
        if key in table and table[key] is not cls:
            raise ValueError(f"codec key {key!r} of {cls.__name__} is already taken by {table[key].__name__}")
    _BY_NAME[cls.name] = cls
    _BY_ID[cls.codec_id] = cls
    return cls


_INSTANCES: dict[type[Codec], Codec] = {}


def _instance(cls: type[Codec]) -> Codec:
    if cls not in _INSTANCES:
        _INSTANCES[cls] = cls()
    return _INSTANCES[cls]


def get_codec(name: str) -> Codec:
    """Return the codec registered as ``name``; :class:`UnknownCodec` if there is none."""
    try:
        return _instance(_BY_NAME[name])
    except (KeyError, TypeError):
        raise UnknownCodec(f"unknown codec {name!r}; known: {sorted(_BY_NAME)}") from None


def get_codec_by_id(codec_id: int) -> Codec:
    """Return the codec with wire id ``codec_id``; :class:`UnknownCodec` if there is none."""
    try:
        return _instance(_BY_ID[codec_id])
    except KeyError:
        raise UnknownCodec(f"unknown codec id {codec_id}") from None


def registered_codecs() -> dict[str, int]:
    """Map of registered codec name to wire id, sorted by name."""
    return {name: _BY_NAME[name].codec_id for name in sorted(_BY_NAME)}


def raw_view(raw: torch.Tensor, offset: int, count: int, dtype: torch.dtype) -> torch.Tensor:
    """View ``count`` values of ``dtype`` in uint8 tensor ``raw`` at byte ``offset`` (no copy)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    end = offset + count * itemsize
    if end > raw.numel():
        raise PayloadCorrupt(f"raw stream too short: need {end} bytes, have {raw.numel()}")
    return raw[offset:end].view(dtype)
