"""Hostile-frame builders for robustness tests: hand-built frames, zstd bombs, random mutations.

Used by the test-suite and ``python -m benchmarks.codec_fuzz``; also handy to fuzz a deployment.
Everything is deterministic given the ``random.Random`` passed in.
"""

from __future__ import annotations

import random
import struct
import zlib
from typing import Sequence

from .frame import FORMAT_VERSION, MAGIC, STAGE_ZSTD, ZSTD_LEVEL

__all__ = ["MUTATION_KINDS", "build_frame", "fix_crc", "mutate", "random_stream_frame", "zstd_bomb"]

MUTATION_KINDS = ("bitflip", "byteset", "truncate", "append", "insert", "delete", "field", "splice", "random")
_EXTREMES = (0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 40, (1 << 63) - 1, (1 << 64) - 1)


def build_frame(
    codec_id: int,
    params: bytes,
    entries: Sequence[tuple],
    *,
    magic: bytes = MAGIC,
    version: int = FORMAT_VERSION,
    total_raw: int | None = None,
    n_tensors: int | None = None,
    good_crc: bool = True,
) -> bytes:
    """Assemble a frame from parts, without any validation (to craft hostile frames).

    ``entries`` are ``(name, dtype_code, shape, raw_len, stream)`` with a zstd ``stream``, or
    ``(name, dtype_code, shape, raw_len, stream, stage)`` to set the stage byte (0 = stored);
    ``total_raw`` and ``n_tensors`` default to the honest values.
    """
    table = b""
    for name, dcode, shape, raw_len, stream, *rest in entries:
        stage = rest[0] if rest else STAGE_ZSTD
        b = name.encode()
        table += struct.pack("<H", len(b)) + b + struct.pack("<BBB", dcode, len(shape), stage)
        table += struct.pack(f"<{len(shape)}Q", *shape) + struct.pack("<QQ", raw_len, len(stream))
    if total_raw is None:
        total_raw = sum(e[3] for e in entries)
    n = len(entries) if n_tensors is None else n_tensors
    prefix = struct.pack("<4sBBbBIQH", magic, version, codec_id, ZSTD_LEVEL, 0, n, total_raw, len(params))
    body = prefix + params + table + b"".join(e[4] for e in entries)
    crc = zlib.crc32(body) if good_crc else zlib.crc32(body) ^ 0xDEADBEEF
    return body + struct.pack("<I", crc)


def random_stream_frame(codec_id: int, params: bytes, name: str, shape: Sequence[int], raw_len: int,
                        rng: random.Random, *, dtype_code: int = 0) -> bytes:
    """A well-formed frame (right CRC, lengths and table) whose one stored stream is random bytes.

    Gets past every frame-level check, so the codec's own stream checks are what decides; pick
    ``raw_len`` inside the codec's ``[min_raw_size, max_raw_size]`` for the shape.
    """
    return build_frame(codec_id, params, [(name, dtype_code, list(shape), raw_len, rng.randbytes(raw_len), 0)])


def fix_crc(frame: bytes) -> bytes:
    """Recompute the trailing CRC32 so that a mutated frame gets past the checksum."""
    if len(frame) < 4:
        return frame
    return frame[:-4] + struct.pack("<I", zlib.crc32(frame[:-4]))


def zstd_bomb(content_size: int, declared_size: int | None = None) -> bytes:
    """A valid zstd frame of RLE blocks that inflates to ``content_size`` zero bytes.

    About 4 bytes per 128 KiB of output (a 1 GiB bomb is 32 KiB). ``declared_size`` sets the
    frame-header content size (defaults to the truth) to craft lying headers.
    """
    declared = content_size if declared_size is None else declared_size
    out = bytearray(b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + struct.pack("<Q", declared))
    block = 128 * 1024
    left = content_size
    while True:
        size = min(block, left)
        left -= size
        last = 1 if left == 0 else 0
        out += (last | (1 << 1) | (size << 3)).to_bytes(3, "little") + b"\x00"
        if last:
            return bytes(out)


def mutate(frame: bytes, rng: random.Random, *, donor: bytes | None = None) -> tuple[str, bytes]:
    """Apply one random mutation to ``frame``; half the time the CRC is fixed afterwards.

    Returns ``(kind, mutated)``. ``donor`` (another valid frame) feeds the ``splice`` kind.
    """
    kind = rng.choice(MUTATION_KINDS)
    b = bytearray(frame)
    n = len(b)
    if kind == "bitflip":
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(n)
            b[i] ^= 1 << rng.randrange(8)
    elif kind == "byteset":
        b[rng.randrange(n)] = rng.randrange(256)
    elif kind == "truncate":
        del b[rng.randrange(n) :]
    elif kind == "append":
        b += rng.randbytes(rng.randint(1, 64))
    elif kind == "insert":
        i = rng.randrange(n)
        b[i:i] = rng.randbytes(rng.randint(1, 16))
    elif kind == "delete":
        i = rng.randrange(n)
        del b[i : i + rng.randint(1, 16)]
    elif kind == "field":  # overwrite an aligned-ish integer in the header with an extreme value
        width = rng.choice((1, 2, 4, 8))
        i = rng.randrange(max(1, min(n, 200) - width))
        val = rng.choice(_EXTREMES) & ((1 << (8 * width)) - 1)
        b[i : i + width] = val.to_bytes(width, "little")
    elif kind == "splice" and donor:
        i, j = rng.randrange(n), rng.randrange(len(donor))
        b = b[:i] + bytearray(donor[j:])
    else:
        b = bytearray(rng.randbytes(rng.randint(0, 2 * n)))
        if rng.random() < 0.5 and len(b) >= 6:
            b[:6] = frame[:6]  # keep magic, version and codec so the deeper checks run
    out = bytes(b)
    if rng.random() < 0.5:
        out = fix_crc(out)
    return kind, out
