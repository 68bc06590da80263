"""Verify a reward log and pinpoint the first bad record.

:func:`verify_log` checks, for every record: format, CRC, sequence number (gap, duplicate,
reorder), previous-record hash, and for every checkpoint: signer is the log's writer (named in the
genesis record) and a participant (``trusted_keys``), the ed25519 signature, that it closes the
chain at its own position, and (``full=True``) its Merkle root and round-chain head. Records after
the last valid checkpoint are unsigned and make the log not ``ok``.

Speed: the chain is checked with one SHA-256 call per record and vectorized numpy gathers of the
fixed-width headers (no JSON parsing); only checkpoints
(one per durable batch) are parsed as JSON and have their signature verified. When a check fails,
a small diagnosis looks at the neighbours to name the record that was edited, deleted, inserted,
duplicated or reordered (see :func:`_diagnose`).
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from dai_swarm.errors import LedgerCorrupt, LedgerError
from dai_swarm.identity import verify_signature

from .merkle import MerkleAccumulator
from .records import CHECKPOINT, FORMAT, GENESIS, HEADER_LEN, MAX_LINE_LEN, MIN_LINE_LEN, ZERO_HASH, checkpoint_message, parse_line

__all__ = ["Scan", "scan", "verify_log"]

_HEXCHARS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_LETTERS = np.frombuffer(b"grvjlsc", dtype=np.uint8)
_POW16 = np.array([16**k for k in range(15, -1, -1)], dtype=np.uint64).astype(np.int64)


@dataclass
class Scan:
    """What one pass over a log's bytes found (the recovery and :func:`verify_log` both use it).

    ``records`` complete lines; ``valid`` leading records that pass every check; ``signed``
    leading records covered by the last valid checkpoint; ``first_bad``/``reason`` the first
    problem (None if none among complete lines); ``torn`` True when no record from ``first_bad``
    on has a valid CRC (a torn or garbage tail, safe to truncate); ``tail_bytes`` bytes after the
    last newline; ``offsets[i]`` byte offset of record i (``offsets[records]`` = end of last line);
    ``leaves`` concatenated hashes of records ``[0, valid)``; ``writer`` hex key from the genesis.
    """

    records: int
    valid: int
    signed: int
    first_bad: int | None
    reason: str | None
    torn: bool
    tail_bytes: int
    offsets: np.ndarray
    leaves: bytes
    writer: str | None
    round_head: bytes = ZERO_HASH
    rounds: int = 0
    checkpoints: list[int] = field(default_factory=list)


def _crc_ok(line: bytes) -> bool:
    if len(line) < MIN_LINE_LEN or line[-9:-8] != b" ":
        return False
    try:
        return zlib.crc32(line[:-9]) == int(line[-8:], 16) and line[-8:] == line[-8:].lower()
    except ValueError:
        return False


def _diagnose(j, lines, hexd, prevs, seqs, fmt_ok) -> tuple[int, str]:
    """Name the bad record given that record ``j`` fails its format, sequence or link check."""
    n = len(lines)

    def link_ok(i: int) -> bool:
        return bool(fmt_ok[i]) and bool((prevs[i] == (hexd[i - 1] if i else 48)).all())

    for i in (j - 1, j):
        if i >= 0 and not (fmt_ok[i] and _crc_ok(lines[i])):
            return i, "malformed record" if not fmt_ok[i] else "bad CRC"
    s = int(seqs[j])
    if s != j:
        if j > 0 and lines[j] == lines[j - 1]:
            return j, f"duplicate of record {j - 1}"
        if s == j - 1 and (prevs[j] == prevs[j - 1]).all() and j + 1 < n and link_ok(j + 1):
            return j - 1, "inserted record: it forks the chain and the records after it do not commit to it"
        if s == j + 1 and j + 1 < n and int(seqs[j + 1]) == j:
            return j, f"records {j} and {j + 1} are out of order"
        if s > j:
            return j, f"sequence gap: expected {j}, found {s} (record(s) deleted)"
        return j, f"sequence number {s} repeats or goes backwards (expected {j})"
    if j == 0:
        return 0, "record 0 must have an all-zero previous hash"
    if j + 1 < n and not link_ok(j + 1):
        return j, "record chains to neither neighbour (replaced, inserted or re-linked)"
    return j - 1, f"record's hash does not match the previous hash stored in record {j} (altered after it was chained)"


def _check_checkpoint(i, line, writer, trusted, full, acc, leaves, round_head, rounds) -> str | None:
    try:
        rec = parse_line(line, index=i)
    except LedgerCorrupt as e:
        return e.reason
    if rec.type != CHECKPOINT:
        return "malformed record"
    b = rec.body
    signer = b.get("signer")
    if signer != writer:
        return f"checkpoint signed by {str(signer)[:16]}..., not by the log's writer"
    if trusted is not None and signer not in trusted:
        return "checkpoint signer is not a participant"
    try:
        sig = bytes.fromhex(b.get("sig", ""))
        ok = verify_signature(bytes.fromhex(signer), sig, checkpoint_message(b))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        return "bad checkpoint signature"
    if b.get("head") != rec.prev.hex() or b.get("size") != i:
        return "checkpoint does not close the chain at its own position"
    if full:
        acc.extend(leaves[32 * acc.size : 32 * i])
        if b.get("merkle_root") != acc.root().hex():
            return "checkpoint Merkle root does not match the records before it"
        if b.get("round_head") != round_head.hex() or b.get("rounds") != rounds:
            return "checkpoint round-chain head does not match the round records before it"
    return None


def scan(buf: bytes, *, trusted_keys: Iterable[str] | None = None, full: bool = True) -> Scan:
    """Check the log held in ``buf`` (see :class:`Scan` for what comes back). Never raises on bad data."""
    trusted = None if trusted_keys is None else {k.lower() for k in trusted_keys}
    lines = buf.split(b"\n")
    tail = len(lines.pop())  # bytes after the last newline: an incomplete record, if any
    n = len(lines)
    # one SHA-256 per record; hexdigest so that the stored hex prev fields compare directly
    sha256 = hashlib.sha256
    hexs = "".join([sha256(line).hexdigest() for line in lines]).encode()
    digests = bytes.fromhex(hexs.decode()) if n else b""
    hexd = np.frombuffer(hexs, dtype=np.uint8).reshape(n, 64)
    lens = np.fromiter(map(len, lines), dtype=np.int64, count=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens + 1, out=offsets[1:])
    starts = offsets[:-1]
    good_len = (lens >= MIN_LINE_LEN) & (lens <= MAX_LINE_LEN + 200)
    arr = np.frombuffer(buf, dtype=np.uint8)
    if len(arr) <= HEADER_LEN:
        arr = np.concatenate([arr, np.zeros(HEADER_LEN + 1, np.uint8)])
    window = np.lib.stride_tricks.sliding_window_view(arr, HEADER_LEN + 1)
    hdr = window[np.where(good_len, starts, 0)]  # (n, 83): seq, prev and the type's first letter
    c = hdr[:, :16]
    digit = (c >= 48) & (c <= 57)
    fmt_ok = (
        good_len
        & (hdr[:, 16] == 32)
        & (hdr[:, 81] == 32)
        & np.isin(hdr[:, HEADER_LEN], _LETTERS)
        & (digit | ((c >= 97) & (c <= 102))).all(1)
    )
    seqs = (c.astype(np.int64) - 48 - 39 * (~digit)) @ _POW16
    prevs = hdr[:, 17:81]

    bad = ~fmt_ok | (seqs != np.arange(n, dtype=np.int64))
    if n:
        bad[0] |= bool((prevs[0] != 48).any())
        bad[1:] |= (prevs[1:] != hexd[:-1]).any(1)
    first_bad, reason = None, None
    idx = np.flatnonzero(bad)
    if len(idx):
        first_bad, reason = _diagnose(int(idx[0]), lines, hexd, prevs, seqs, fmt_ok)
    elif n and not _crc_ok(lines[-1]):
        first_bad, reason = n - 1, "bad CRC"

    # genesis, then checkpoints (the only records parsed as JSON), in order, within the good prefix
    limit = n if first_bad is None else first_bad
    writer, signed, checkpoints = None, 0, []
    acc, round_head, rounds = MerkleAccumulator(), ZERO_HASH, 0
    if limit > 0:
        try:
            g = parse_line(lines[0], index=0)
            if g.type != GENESIS or g.body.get("format") != FORMAT:
                raise LedgerCorrupt("record 0 is not a genesis record", index=0, reason="record 0 is not a genesis record")
            writer = str(g.body.get("writer", "")).lower()
            if trusted is not None and writer not in trusted:
                raise LedgerCorrupt("log writer is not a participant", index=0, reason="log writer is not a participant")
        except LedgerCorrupt as err:
            first_bad, reason, limit = 0, err.reason, 0
    # a checkpoint named by the chain diagnosis is checked too, for a more specific reason
    types = hdr[: min(limit + 1, n), HEADER_LEN]
    round_idx = np.flatnonzero(types == ord("r")).tolist() if full else []
    ri = 0
    for i in np.flatnonzero(types == ord("c")).tolist():
        while ri < len(round_idx) and round_idx[ri] < i:
            line = lines[round_idx[ri]]
            round_head = hashlib.sha256(round_head + line[HEADER_LEN + 6 : -9]).digest()
            rounds, ri = rounds + 1, ri + 1
        problem = _check_checkpoint(i, lines[i], writer, trusted, full, acc, digests, round_head, rounds)
        if problem or i >= limit:
            if problem:
                first_bad, reason, limit = i, problem, i
            break
        signed = i + 1
        checkpoints.append(i)
    if full:  # round records after the last checkpoint still count towards the head of the valid prefix
        while ri < len(round_idx) and round_idx[ri] < limit:
            round_head = hashlib.sha256(round_head + lines[round_idx[ri]][HEADER_LEN + 6 : -9]).digest()
            rounds, ri = rounds + 1, ri + 1

    torn = False
    if first_bad is not None:
        torn = not any(_crc_ok(lines[i]) for i in range(first_bad, n))
    return Scan(n, limit, signed, first_bad, reason, torn, tail, offsets, digests[: 32 * limit], writer,
                round_head, rounds, checkpoints)


def verify_log(path: str, *, trusted_keys: Iterable[str] | None = None, full: bool = True,
               known_head: tuple[int, str] | None = None) -> dict:
    """Verify the reward log at ``path``; returns ``{"ok", "records", "first_bad", "reason", ...}``.

    ``trusted_keys``: hex public keys of the participants; a log written or signed by anyone else
    is rejected. ``full``: also recompute each checkpoint's Merkle root and round-chain head.
    ``known_head``: ``(size, head_hex)`` published elsewhere (e.g. the DHT); a log that ends before
    it or disagrees with it is rejected (truncation of whole signed batches is only visible so).
    """
    try:
        with open(path, "rb") as f:
            buf = f.read()
    except OSError as e:
        raise LedgerError(f"cannot read reward log {path!r}: {e.strerror}") from e
    sc = scan(buf, trusted_keys=trusted_keys, full=full)
    first_bad, reason = sc.first_bad, sc.reason
    if first_bad is None and sc.tail_bytes:
        first_bad, reason = sc.records, f"incomplete record at end of file ({sc.tail_bytes} bytes, torn write)"
    if first_bad is None and sc.records == 0:
        first_bad, reason = 0, "empty log (no genesis record)"
    if first_bad is None and sc.signed < sc.records:
        first_bad, reason = sc.signed, f"{sc.records - sc.signed} record(s) after the last signed checkpoint"
    head_mismatch = False
    if first_bad is None and known_head is not None:
        size, head = known_head
        if sc.records < size:
            first_bad, reason, head_mismatch = sc.records, f"log ends before the published head (size {size})", True
        elif sc.leaves[32 * (size - 1) : 32 * size].hex() != head:
            first_bad, reason, head_mismatch = size - 1, "record differs from the published head", True
    return {
        "ok": first_bad is None,
        "records": sc.records,
        "first_bad": first_bad,
        "reason": reason,
        # what the writer's recovery repairs on reopen: a torn/garbage tail, unsigned valid records
        "recoverable": first_bad is not None and (sc.torn or sc.first_bad is None) and not head_mismatch,
        "signed_records": sc.signed,
        "checkpoints": len(sc.checkpoints),
        "writer": sc.writer,
        "bytes": len(buf),
    }
