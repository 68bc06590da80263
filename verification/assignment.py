"""Batch assignment: which dataset rows a peer must train on at a given round and inner step.

The indices are derived from SHA-256 over the canonical JSON of the public inputs (run, seed,
peer, round, step, batch size, dataset length, optional salt), so the peer cannot steer them and
any verifier in any process recomputes exactly the same batch (I4). Within one batch the indices
are distinct: a sparse Fisher-Yates shuffle driven by a SHA-256 counter stream with rejection
sampling, so every index is exactly uniform (no modulo bias).

``salt`` should be the round's base-state hash when the caller has it: the base of round ``r`` is
unknown until shortly before the round starts, which makes grinding peer keys for favourable
batches pointless.
"""

from __future__ import annotations

import hashlib
from typing import Iterator

from dai_swarm.canonical import canonical_json
from dai_swarm.errors import ConfigError

__all__ = ["assign", "samples_for"]

_DOMAIN = "dai_swarm.assign.v1"
_TWO64 = 1 << 64
_MAX_BATCH = 1 << 20


def _check(run_id: object, seed: object, peer: object, round: object, step: object,
           batch_size: object, dataset_len: object, salt: object) -> None:
    for name, v in (("run_id", run_id), ("peer", peer)):
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{name} must be a non-empty string")
    if not isinstance(salt, str):
        raise ConfigError("salt must be a string")
    for name, v, lo in (("seed", seed, None), ("round", round, 0), ("step", step, 0),
                        ("batch_size", batch_size, 1), ("dataset_len", dataset_len, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo):
            raise ConfigError(f"{name} must be an int{'' if lo is None else f' >= {lo}'}, got {v!r}")
    if batch_size > dataset_len:
        raise ConfigError(f"batch_size {batch_size} exceeds dataset_len {dataset_len}")
    if batch_size > _MAX_BATCH:
        raise ConfigError(f"batch_size {batch_size} exceeds {_MAX_BATCH}")


def _stream(key: bytes) -> Iterator[int]:
    """Unbounded stream of uniform 64-bit integers: SHA-256(key || counter), 4 per block."""
    counter = 0
    while True:
        block = hashlib.sha256(key + counter.to_bytes(8, "little")).digest()
        for i in range(0, 32, 8):
            yield int.from_bytes(block[i:i + 8], "little")
        counter += 1


def _below(stream: Iterator[int], n: int) -> int:
    """Uniform integer in ``[0, n)`` by rejection sampling (exact, no modulo bias)."""
    limit = _TWO64 - (_TWO64 % n)
    while True:
        x = next(stream)
        if x < limit:
            return x % n


def assign(run_id: str, seed: int, peer: str, round: int, step: int, batch_size: int,
           dataset_len: int, *, salt: str = "") -> list[int]:
    """The ``batch_size`` distinct dataset indices peer ``peer`` trains on at ``(round, step)``.

    Deterministic in every process and platform; bad arguments raise ConfigError.
    """
    _check(run_id, seed, peer, round, step, batch_size, dataset_len, salt)
    key = hashlib.sha256(canonical_json(
        [_DOMAIN, run_id, seed, peer, round, step, batch_size, dataset_len, salt])).digest()
    stream = _stream(key)
    swapped: dict[int, int] = {}
    out: list[int] = []
    for i in range(batch_size):
        j = i + _below(stream, dataset_len - i)
        vi, vj = swapped.get(i, i), swapped.get(j, j)
        swapped[j] = vi
        out.append(vj)
    return out


def samples_for(run_id: str, seed: int, peer: str, round: int, steps: int, batch_size: int,
                dataset_len: int, *, salt: str = "") -> list[list[int]]:
    """The batches of inner steps ``0 .. steps-1`` of one round (what a verifier replays)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"steps must be an int >= 0, got {steps!r}")
    return [assign(run_id, seed, peer, round, s, batch_size, dataset_len, salt=salt) for s in range(steps)]
