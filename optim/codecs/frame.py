"""The one bounded wire frame for named tensors.

Layout (all integers little-endian)::

    prefix   magic b"DSWF" | version u8 | codec id u8 | zstd level i8 | reserved u8 (0)
             | n_tensors u32 | total raw (decompressed) bytes u64 | params length u16
    params   canonical JSON object of the codec params (complete, defaults explicit)
    table    per tensor, names strictly sorted: name length u16 | UTF-8 name | dtype code u8
             | ndim u8 | stage u8 | ndim x dim u64 | raw length u64 | stored length u64
    payload  per tensor, in table order: stage 0 = the raw stream as is (stored length equals
             raw length); stage 1 = one zstandard frame (content size set, no checksum)
    crc      u32 = zlib.crc32(everything above)

The stage of each stream is chosen by the encoder's ``zstd`` policy: ``"always"``, ``"never"``
or ``"auto"`` (default), a fixed rule on the bytes themselves so that the same tensors always
give the same frame: streams under :data:`PROBE_BYTES` are compressed; a longer one is compressed
only if :data:`PROBE_SLICES` evenly spaced slices of it shrink by at least :data:`MIN_SAVING` and
the whole compressed stream is shorter than the raw one. (int8 codes of Gaussian-like data save
about 11%, fp32 values a few %: not worth zstd's time; top-k index planes save far more.)

The decoder checks magic, version, codec, CRC, then every declared count and length against the
module caps and the per-call ``max_bytes``/``max_elements`` *before* allocating or decompressing;
each zstd frame must declare exactly its raw length and end exactly at its compressed length, and
is decompressed into a buffer of that size; a stored stream is read in place. Nothing is unpickled.

Version 1 frames (every stream zstd, no stage byte) are refused with :class:`UnknownCodec`.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any, Mapping

import torch
import zstandard

from dai_swarm.canonical import canonical_json
from dai_swarm.errors import CodecError, PayloadCorrupt, PayloadTooLarge, UnknownCodec

from .base import DTYPE_CODES, Codec, check_finite, get_codec, get_codec_by_id
from .frame_checks import check_expect, parse_params

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_BYTES",
    "MAX_ELEMENTS",
    "MAX_NAME_BYTES",
    "MAX_NDIM",
    "MAX_PARAMS_BYTES",
    "MAX_TENSORS",
    "MIN_SAVING",
    "PROBE_BYTES",
    "PROBE_SLICES",
    "STAGE_STORED",
    "STAGE_ZSTD",
    "ZSTD_LEVEL",
    "ZSTD_POLICIES",
    "DEFAULT_MAX_DECODED_BYTES",
    "decode_frame",
    "encode_frame",
    "max_frame_size",
    "zstd_bound",
]

MAGIC = b"DSWF"
FORMAT_VERSION = 2
ZSTD_LEVEL = 1  # fixed; recorded in every frame. Single-threaded zstd: same input, same bytes.
MAX_BYTES = 4 << 30  # frame size, total raw size and total decoded size, each
#: What :func:`decode_frame` accepts when the caller passes no ``max_bytes``: a frame that declares
#: more (decoded, raw or framed) is refused before anything is allocated. Callers that decode
#: model-sized frames pass caps derived from the model (see ``RoundRuntime``).
DEFAULT_MAX_DECODED_BYTES = 8 << 20
MAX_ELEMENTS = 1 << 31  # total decoded elements (also keeps top-k deltas within 4 bytes)
MAX_TENSORS = 1 << 16
MAX_NAME_BYTES = 1024
MAX_NDIM = 16
MAX_PARAMS_BYTES = 1024
STAGE_STORED, STAGE_ZSTD = 0, 1
ZSTD_POLICIES = ("auto", "always", "never")
PROBE_BYTES = 1 << 16  # "auto": streams shorter than this are always compressed
PROBE_SLICES = 8  # "auto": slices of PROBE_BYTES // PROBE_SLICES bytes probed on longer streams
MIN_SAVING = 0.125  # "auto": compress when the probe shrinks by at least this fraction

_PREFIX = struct.Struct("<4sBBbBIQH")
_U16 = struct.Struct("<H")
_DT_ND_ST = struct.Struct("<BBB")
_LENS = struct.Struct("<QQ")
_CRC = struct.Struct("<I")
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}
_ITEMSIZE = {dtype: torch.empty((), dtype=dtype).element_size() for dtype in DTYPE_CODES}


def _params_bytes(codec: Codec, params: dict[str, Any]) -> bytes:
    data = canonical_json(params)
    if len(data) > MAX_PARAMS_BYTES:
        raise CodecError(f"codec params take {len(data)} bytes, cap is {MAX_PARAMS_BYTES}")
    return data


def _choose_stage(cctx: zstandard.ZstdCompressor, raw: memoryview, policy: str) -> tuple[int, Any]:
    """Return ``(stage, payload)`` for one raw stream under the ``zstd`` policy (deterministic)."""
    n = raw.nbytes
    if n == 0 or policy == "never":
        return STAGE_STORED, raw
    if policy == "auto" and n >= PROBE_BYTES:
        step, width = (n - PROBE_BYTES // PROBE_SLICES) // (PROBE_SLICES - 1), PROBE_BYTES // PROBE_SLICES
        probe = b"".join(raw[i * step : i * step + width] for i in range(PROBE_SLICES))
        if len(cctx.compress(probe)) > (1 - MIN_SAVING) * len(probe):
            return STAGE_STORED, raw
    comp = cctx.compress(raw)
    if policy == "auto" and len(comp) >= n:
        return STAGE_STORED, raw
    return STAGE_ZSTD, comp


def zstd_bound(n: int) -> int:
    """zstandard's worst-case compressed size of ``n`` bytes (``ZSTD_COMPRESSBOUND``)."""
    return n + (n >> 8) + ((((128 << 10) - n) >> 11) if n < (128 << 10) else 0)


def max_frame_size(codec: Codec, shapes: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
                   params: Mapping[str, Any]) -> int:
    """Largest frame :func:`encode_frame` can produce for tensors of ``shapes`` with ``codec``.

    Every stream is counted at its codec's :meth:`~Codec.max_raw_size`, grown to zstandard's
    worst case (the ``"always"`` policy may keep a stream that did not shrink), plus the prefix,
    the canonical params, each tensor's table entry and the CRC. ``params`` are completed by the
    codec's ``check_params`` first.
    """
    checked = codec.check_params({k: v for k, v in params.items() if k != "zstd"})
    total = _PREFIX.size + len(_params_bytes(codec, checked)) + _CRC.size
    for name, (shape, dtype) in shapes.items():
        numel = 1
        for d in shape:
            numel *= int(d)
        raw = codec.max_raw_size(numel, dtype, **checked)
        total += _U16.size + len(name.encode()) + _DT_ND_ST.size + 8 * len(shape) + _LENS.size + zstd_bound(raw)
    return total


def encode_frame(tensors: Mapping[str, torch.Tensor], codec: str = "int8", **params: Any) -> bytes:
    """Encode named tensors with ``codec`` into one frame (see the module docstring).

    ``params`` are the codec's, plus ``zstd`` (one of :data:`ZSTD_POLICIES`, default ``"auto"``),
    which picks the stage of each stream and is not itself recorded (each stream's stage is).
    Raises :class:`NonFiniteValues` on NaN/Inf, :class:`UnknownCodec` on an unknown codec,
    :class:`CodecError` on bad names, dtypes, params or sizes.
    """
    c = get_codec(codec)
    params = dict(params)
    policy = params.pop("zstd", "auto")
    if policy not in ZSTD_POLICIES:
        raise CodecError(f"zstd policy must be one of {ZSTD_POLICIES}, got {policy!r}")
    params = c.check_params(params)
    if not isinstance(tensors, Mapping):
        raise CodecError(f"tensors must be a mapping of name to tensor, got {type(tensors).__name__}")
    if len(tensors) > MAX_TENSORS:
        raise CodecError(f"{len(tensors)} tensors, cap is {MAX_TENSORS}")
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True, write_checksum=False, threads=0)
    table, payload, total_raw, total_elems = [], [], 0, 0
    for name in sorted(tensors, key=_name_key):
        t = tensors[name]
        if not isinstance(t, torch.Tensor):
            raise CodecError(f"{name!r} is a {type(t).__name__}, not a tensor")
        if not c.supports(t.dtype):
            raise CodecError(f"codec {codec!r} cannot carry {name!r} of dtype {t.dtype}")
        if t.dim() > MAX_NDIM:
            raise CodecError(f"{name!r} has {t.dim()} dims, cap is {MAX_NDIM}")
        total_elems += t.numel()
        if total_elems > MAX_ELEMENTS:
            raise PayloadTooLarge(f"more than {MAX_ELEMENTS} elements in one frame")
        t = t.detach().contiguous()
        if not c.checks_input_finite:
            check_finite(t, f"tensor {name!r}")
        raw = memoryview(c.encode_tensor(t, **params)).cast("B")
        raw_len = raw.nbytes
        if not c.min_raw_size(t.numel(), t.dtype, **params) <= raw_len <= c.max_raw_size(t.numel(), t.dtype, **params):
            raise CodecError(f"codec {codec!r} produced {raw_len} raw bytes for {name!r}: outside its own bounds")
        stage, stored = _choose_stage(cctx, raw, policy)
        total_raw += raw_len
        bname = name.encode()
        table.append(_U16.pack(len(bname)) + bname + _DT_ND_ST.pack(DTYPE_CODES[t.dtype], t.dim(), stage))
        table.append(struct.pack(f"<{t.dim()}Q", *t.shape) + _LENS.pack(raw_len, len(stored)))
        payload.append(stored)
    pbytes = _params_bytes(c, params)
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, c.codec_id, ZSTD_LEVEL, 0, len(tensors), total_raw, len(pbytes))
    parts = [prefix, pbytes, *table, *payload]
    crc = 0
    for p in parts:
        crc = zlib.crc32(p, crc)
    parts.append(_CRC.pack(crc))
    frame = b"".join(parts)
    if len(frame) > MAX_BYTES:
        raise PayloadTooLarge(f"frame of {len(frame)} bytes exceeds the cap of {MAX_BYTES}")
    return frame


def _name_key(name: Any) -> bytes:
    if not isinstance(name, str) or not name:
        raise CodecError(f"tensor names must be non-empty strings, got {name!r}")
    b = name.encode("utf-8", errors="strict") if name.isprintable() else b""
    if not b or len(b) > MAX_NAME_BYTES:
        raise CodecError(f"tensor name {name[:40]!r}... is empty, unprintable or over {MAX_NAME_BYTES} bytes")
    return b


class _Reader:
    """Bounds-checked cursor over the frame header."""

    def __init__(self, buf: memoryview, end: int):
        self.buf, self.pos, self.end = buf, 0, end

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > self.end:
            raise PayloadCorrupt(f"frame truncated: need {n} bytes at offset {self.pos}, header ends at {self.end}")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, st: struct.Struct) -> tuple:
        return st.unpack(self.take(st.size))


def _zstd_frame_size(buf: memoryview) -> int:
    """Exact length of the zstd frame at the start of ``buf``, walking its block headers."""
    if bytes(buf[:4]) != _ZSTD_MAGIC:
        raise PayloadCorrupt("tensor stream is not a zstd frame")
    pos = zstandard.frame_header_size(buf)
    while True:
        if pos + 3 > len(buf):
            raise PayloadCorrupt("zstd frame truncated")
        hdr = int.from_bytes(buf[pos : pos + 3], "little")
        last, btype, bsize = hdr & 1, (hdr >> 1) & 3, hdr >> 3
        pos += 3 + (1 if btype == 1 else bsize)
        if btype == 3:
            raise PayloadCorrupt("zstd frame has a reserved block type")
        if last:
            break
    if zstandard.get_frame_parameters(buf).has_checksum:
        pos += 4
    return pos


def _decompress_into(dctx: zstandard.ZstdDecompressor, comp: memoryview, raw_len: int) -> torch.Tensor:
    """Decompress one zstd frame into a fresh uint8 tensor of exactly ``raw_len`` bytes."""
    if _zstd_frame_size(comp) != len(comp):
        raise PayloadCorrupt("zstd frame length differs from the declared compressed length")
    if zstandard.frame_content_size(comp) != raw_len:
        raise PayloadCorrupt("zstd frame content size differs from the declared raw length")
    out = torch.empty(raw_len, dtype=torch.uint8)
    mv, filled = memoryview(out.numpy()), 0
    reader = dctx.stream_reader(comp, read_across_frames=False)
    while filled < raw_len:
        n = reader.readinto(mv[filled:])
        if n == 0:
            break
        filled += n
    if filled != raw_len or reader.read(1):
        raise PayloadCorrupt("zstd frame decompressed to a different size than declared")
    return out


def decode_frame(
    blob: bytes | bytearray | memoryview,
    *,
    expect: Mapping[str, tuple[tuple[int, ...], torch.dtype]] | None = None,
    max_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    max_elements: int = MAX_ELEMENTS,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """Decode a frame made by :func:`encode_frame`; every check happens before allocation.

    ``max_bytes`` caps the frame size, the total raw size and the total decoded size (default
    :data:`DEFAULT_MAX_DECODED_BYTES`, 8 MiB; pass a cap derived from the model to decode more);
    ``max_elements`` caps the decoded element count (both clamped to the module caps).
    ``expect`` maps each name to its ``(shape, dtype)``; any difference (missing or extra names
    included) raises :class:`ShapeMismatch`. Other failures raise :class:`PayloadTooLarge`,
    :class:`PayloadCorrupt`, :class:`UnknownCodec` or :class:`NonFiniteValues`.
    """
    max_bytes, max_elements = min(int(max_bytes), MAX_BYTES), min(int(max_elements), MAX_ELEMENTS)
    try:
        buf = memoryview(blob).cast("B")
    except TypeError:
        raise CodecError(f"frame must be bytes-like, got {type(blob).__name__}") from None
    if len(buf) > max_bytes:
        raise PayloadTooLarge(f"frame of {len(buf)} bytes exceeds the cap of {max_bytes}")
    if len(buf) < _PREFIX.size + _CRC.size:
        raise PayloadCorrupt(f"frame truncated: {len(buf)} bytes")
    end = len(buf) - _CRC.size
    rd = _Reader(buf, end)
    magic, version, codec_id, _level, reserved, n, total_raw, plen = rd.unpack(_PREFIX)
    if magic != MAGIC:
        raise PayloadCorrupt("bad magic: not a dai_swarm tensor frame")
    if version != FORMAT_VERSION:
        raise UnknownCodec(f"frame format version {version}; this build reads version {FORMAT_VERSION}")
    codec = get_codec_by_id(codec_id)
    if zlib.crc32(buf[:end]) != _CRC.unpack(buf[end:])[0]:
        raise PayloadCorrupt("CRC mismatch")
    if reserved != 0:
        raise PayloadCorrupt("reserved header byte is not zero")
    if n > MAX_TENSORS:
        raise PayloadTooLarge(f"frame declares {n} tensors, cap is {MAX_TENSORS}")
    if total_raw > max_bytes:
        raise PayloadTooLarge(f"frame declares {total_raw} decompressed bytes, cap is {max_bytes}")
    if plen > MAX_PARAMS_BYTES:
        raise PayloadTooLarge(f"codec params of {plen} bytes, cap is {MAX_PARAMS_BYTES}")
    params = parse_params(codec, bytes(rd.take(plen)))

    entries, prev, raw_sum, elems, out_bytes, comp_sum = [], b"", 0, 0, 0, 0
    for _ in range(n):
        (nlen,) = rd.unpack(_U16)
        if nlen == 0 or nlen > MAX_NAME_BYTES:
            raise PayloadCorrupt(f"tensor name length {nlen} out of range")
        bname = bytes(rd.take(nlen))
        if bname <= prev:
            raise PayloadCorrupt("tensor names are duplicated or not sorted")
        prev = bname
        try:
            name = bname.decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadCorrupt("tensor name is not UTF-8") from None
        dcode, ndim, stage = rd.unpack(_DT_ND_ST)
        if dcode not in _DTYPES:
            raise PayloadCorrupt(f"unknown dtype code {dcode} for {name!r}")
        dtype = _DTYPES[dcode]
        if not codec.supports(dtype):
            raise PayloadCorrupt(f"codec {codec.name!r} cannot carry dtype {dtype} ({name!r})")
        if ndim > MAX_NDIM:
            raise PayloadCorrupt(f"{name!r} declares {ndim} dims, cap is {MAX_NDIM}")
        if stage not in (STAGE_STORED, STAGE_ZSTD):
            raise PayloadCorrupt(f"{name!r} declares unknown stage {stage}")
        shape = struct.unpack(f"<{ndim}Q", rd.take(8 * ndim))
        if any(d > max_elements for d in shape):
            raise PayloadTooLarge(f"{name!r} declares a dimension over {max_elements}")
        numel = 1
        for d in shape:
            numel *= d
            if numel > max_elements:  # also stops a huge product early
                break
        elems += numel
        if elems > max_elements:
            raise PayloadTooLarge(f"frame declares more than {max_elements} elements")
        out_bytes += numel * _ITEMSIZE[dtype]
        if out_bytes > max_bytes:
            raise PayloadTooLarge(f"frame declares more than {max_bytes} decoded bytes")
        raw_len, comp_len = rd.unpack(_LENS)
        lo, hi = codec.min_raw_size(numel, dtype, **params), codec.max_raw_size(numel, dtype, **params)
        if not lo <= raw_len <= hi:
            raise PayloadCorrupt(f"{name!r}: raw length {raw_len} outside [{lo}, {hi}] for codec {codec.name!r}")
        if stage == STAGE_STORED and comp_len != raw_len:
            raise PayloadCorrupt(f"{name!r}: stored stream of {comp_len} bytes, raw length is {raw_len}")
        raw_sum += raw_len
        comp_sum += comp_len
        entries.append((name, dtype, tuple(shape), stage, raw_len, comp_len))
    if raw_sum != total_raw:
        raise PayloadCorrupt("raw lengths do not add up to the declared total")
    if rd.pos + comp_sum != end:
        raise PayloadCorrupt(f"payload is {end - rd.pos} bytes, the table declares {comp_sum} (truncated or trailing)")
    if expect is not None:
        check_expect(entries, expect)

    dev = torch.device(device)
    dctx = zstandard.ZstdDecompressor()
    out: dict[str, torch.Tensor] = {}
    pos = rd.pos
    for name, dtype, shape, stage, raw_len, comp_len in entries:
        view = buf[pos : pos + comp_len]
        pos += comp_len
        if stage == STAGE_STORED:
            t = codec.decode_stored(view, shape, dtype, dev, **params)
        else:
            try:
                raw = _decompress_into(dctx, view, raw_len)
            except zstandard.ZstdError as e:
                raise PayloadCorrupt(f"{name!r}: bad zstd stream: {e}") from None
            t = codec.decode_tensor(raw, shape, dtype, dev, **params)
        if not codec.checks_output_finite:
            check_finite(t, f"decoded tensor {name!r}")
        out[name] = t
    return out
