"""Shared helpers for the reward-log tests: build small multi-batch logs and edit their lines."""

from __future__ import annotations

import hashlib
import os

from dai_swarm.identity import Identity
from dai_swarm.rewards import RewardLog
from dai_swarm.rewards.records import encode_line, parse_line


def build_log(path: str, identity: Identity, batches: int = 4, per_batch: int = 5) -> list[bytes]:
    """Write a log of ``batches`` durable batches of ``per_batch`` join records; return its lines."""
    with RewardLog(path, identity, batch_size=10_000, flush_interval_s=10.0) as log:
        for b in range(batches):
            for k in range(per_batch):
                log.append("join", {"peer": f"peer-{b}-{k}", "region": "eu", "round": b})
            log.flush()
    return read_lines(path)


def read_lines(path: str) -> list[bytes]:
    """The log's lines, each with its trailing newline."""
    with open(path, "rb") as f:
        return f.read().splitlines(keepends=True)


def write_lines(path: str, lines: list[bytes]) -> None:
    """Overwrite the log file with ``lines``."""
    with open(path, "wb") as f:
        f.write(b"".join(lines))
        f.flush()
        os.fsync(f.fileno())


def reencode(line: bytes, *, seq: int | None = None, prev: bytes | None = None, body: dict | None = None) -> bytes:
    """Re-encode a record with some fields changed and a correct CRC (an attacker's edit)."""
    rec = parse_line(line)
    return encode_line(rec.seq if seq is None else seq, rec.prev if prev is None else prev, rec.type,
                       rec.body if body is None else body)


def line_hash(line: bytes) -> bytes:
    """Record hash of a line (with or without newline)."""
    return hashlib.sha256(line.rstrip(b"\n")).digest()


def types(lines: list[bytes]) -> list[str]:
    """Record type of each line."""
    return [parse_line(line).type for line in lines]
