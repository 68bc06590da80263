"""The append-only reward log: hash-chained records, group commit, signed checkpoints, recovery.

``RewardLog(path, identity)`` opens (or creates) one log file written by one peer. ``append()``
hash-chains a record into memory and returns a :class:`Receipt` at once; a background thread
commits pending records in batches (up to ``batch_size`` records or ``flush_interval_s`` seconds):
it closes each batch with a checkpoint record signed by the writer over the chain head (with the
Merkle root of every record so far and the round-chain head), writes the batch with one
``write()``, ``fdatasync``s, and only then marks the batch's receipts done. A crash therefore
loses only records whose receipt was not yet done (invariant I5).

On open, recovery scans the file: a torn or garbage tail (no record from the first bad one on
has a valid CRC) is truncated at the last valid record and reported in :attr:`RewardLog.recovery`;
valid records after the last checkpoint (written but never acknowledged) are kept and signed by
a fresh checkpoint; a corrupt record followed by valid ones raises :class:`LedgerCorrupt` with its
index, never skipped. Single writer per file; ``append`` is thread-safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from typing import Any, Mapping

from dai_swarm.errors import LedgerCorrupt, LedgerError
from dai_swarm.identity import Identity
from dai_swarm.logging import get_logger

from .merkle import MerkleAccumulator, inclusion_proof
from .records import _TYPE_BYTES, CHECKPOINT, FORMAT, GENESIS, ROUND, ZERO_HASH, canonical_body, checkpoint_message, frame
from .verify import scan

__all__ = ["RecoveryReport", "Receipt", "RewardLog"]

logger = get_logger(__name__)
_sha256 = hashlib.sha256
EVENT_TYPES = frozenset({"round", "verdict", "join", "leave", "slash"})


@dataclass(frozen=True)
class RecoveryReport:
    """What opening the log found: records kept, tail bytes and records dropped, records re-signed."""

    records: int
    truncated_bytes: int = 0
    dropped_records: int = 0
    resigned_records: int = 0
    created: bool = False


class _Batch:
    __slots__ = ("event", "error")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.error: BaseException | None = None


class Receipt:
    """Handle of one appended record; ``wait()`` returns its sequence number once it is durable."""

    __slots__ = ("seq", "_batch")

    def __init__(self, seq: int, batch: _Batch) -> None:
        self.seq = seq
        self._batch = batch

    def done(self) -> bool:
        """True once the record is durable (or its batch failed)."""
        return self._batch.event.is_set()

    def wait(self, timeout_s: float | None = None) -> int:
        """Block until the record is fsync'd and covered by a signed checkpoint; return its seq.

        Raises :class:`LedgerError` if the batch could not be written or ``timeout_s`` passed.
        """
        if not self._batch.event.wait(timeout_s):
            raise LedgerError(f"record {self.seq} not durable after {timeout_s} s")
        if self._batch.error is not None:
            raise LedgerError(f"record {self.seq} was not written: {self._batch.error}") from self._batch.error
        return self.seq


class RewardLog:
    """A single-writer, crash-safe, tamper-evident reward log file (see the module docstring).

    ``batch_size``: records per group commit at most; ``flush_interval_s``: longest time a
    record waits for its batch to fill; ``fsync``: False only for tests and benchmarks of the
    non-durable path.
    """

    def __init__(self, path: str, identity: Identity, *, batch_size: int = 4096, flush_interval_s: float = 0.005,
                 fsync: bool = True) -> None:
        if batch_size < 1 or flush_interval_s < 0:
            raise LedgerError("batch_size must be >= 1 and flush_interval_s >= 0")
        self.path = os.path.abspath(path)
        self.identity = identity
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self._fsync = fsync
        self._writer_hex = identity.public_key_hex
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._pending: list[bytes] = []
        self._batch = _Batch()
        self._inflight: _Batch | None = None
        self._closed = False
        self._failed: BaseException | None = None
        self._force = False
        self._leaves = bytearray()
        self._acc = MerkleAccumulator()
        self._seq = 0
        self._last = ZERO_HASH
        self._last_hex = ZERO_HASH.hex().encode()
        self._round_head = ZERO_HASH
        self._rounds = 0
        self._last_round = -1
        self._durable = 0
        self._checkpoint_seq: int | None = None
        self.recovery = self._open()
        self._thread = threading.Thread(target=self._flusher, name="reward-log-flusher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ opening and recovery
    def _open(self) -> RecoveryReport:
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            raise LedgerError(f"cannot open reward log {self.path!r}: directory does not exist")
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            size = os.fstat(self._fd).st_size
            buf = os.pread(self._fd, size, 0) if size else b""
        except OSError as e:
            raise LedgerError(f"cannot open reward log {self.path!r}: {e.strerror}") from e
        sc = scan(buf, full=True) if buf else None
        if sc is not None and sc.first_bad is not None and not sc.torn:
            os.close(self._fd)
            raise LedgerCorrupt(f"reward log {self.path!r}: record {sc.first_bad}: {sc.reason}; refusing to open "
                                "(a corrupt record followed by valid ones is never skipped)",
                                index=sc.first_bad, reason=sc.reason)
        if sc is None or sc.valid == 0:  # new file, or not even the genesis survived: start afresh
            if buf:
                self._truncate(0)
            self._pending.append(self._encode(GENESIS, canonical_body({"format": FORMAT, "writer": self._writer_hex})))
            self._pending.append(self._checkpoint_line())
            self._write(self._pending)
            self._pending.clear()
            self._fsync_dir()
            self._durable, self._checkpoint_seq = self._seq, self._seq - 1
            return RecoveryReport(records=self._seq, truncated_bytes=len(buf),
                                  dropped_records=sc.records if sc else 0, created=True)
        if sc.writer != self._writer_hex:
            os.close(self._fd)
            raise LedgerError(f"reward log {self.path!r} belongs to writer {sc.writer[:16]}..., not to this identity")
        keep = sc.valid
        end = int(sc.offsets[keep])
        dropped_bytes = len(buf) - end
        dropped_records = sc.records - keep + (1 if sc.tail_bytes else 0)
        if dropped_bytes:
            logger.warning("reward log %s: torn tail: dropped %d bytes (%d partial/corrupt records) after record %d",
                           self.path, dropped_bytes, dropped_records, keep - 1)
            self._truncate(end)
        self._leaves += sc.leaves
        self._acc.extend(sc.leaves)
        self._seq, self._last = keep, sc.leaves[-32:]
        self._last_hex = self._last.hex().encode()
        self._round_head, self._rounds = sc.round_head, sc.rounds
        self._checkpoint_seq = sc.checkpoints[-1] if sc.checkpoints else None
        self._last_round = self._find_last_round(buf[int(sc.offsets[max(0, keep - 4096)]):end])
        resigned = keep - sc.signed
        if resigned:
            self._write([self._checkpoint_line()])
            self._checkpoint_seq = self._seq - 1
            logger.info("reward log %s: signed %d valid but unacknowledged record(s)", self.path, resigned)
        self._durable = self._seq
        return RecoveryReport(records=self._seq, truncated_bytes=dropped_bytes, dropped_records=dropped_records,
                              resigned_records=resigned)

    @staticmethod
    def _find_last_round(buf: bytes) -> int:
        for line in reversed(buf.split(b"\n")):
            if line[82:88] == b"round ":
                return int(json.loads(line[88:-9])["round"])
        return -1

    def _truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)
        os.fsync(self._fd)

    def _fsync_dir(self) -> None:
        if not self._fsync:
            return
        dfd = os.open(os.path.dirname(self.path), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _write(self, lines: list[bytes]) -> None:
        lines.append(b"")
        view = memoryview(b"\n".join(lines))
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if self._fsync:
            os.fdatasync(self._fd)

    # ------------------------------------------------------------------ appending
    def _encode(self, rtype: str, data: bytes) -> bytes:
        """Frame the next record (canonical body bytes ``data``) and advance the chain (lock held).

        Returns the line without its newline.
        """
        line = frame(self._seq, self._last_hex, _TYPE_BYTES[rtype], data)
        h = _sha256(line).digest()
        if rtype == ROUND:
            self._round_head = _sha256(self._round_head + data).digest()
            self._rounds += 1
        self._leaves += h
        self._acc.add(h)
        self._last = h
        self._last_hex = h.hex().encode()
        self._seq += 1
        return line

    def _checkpoint_line(self) -> bytes:
        body = {"head": self._last.hex(), "merkle_root": self._acc.root().hex(), "round_head": self._round_head.hex(),
                "rounds": self._rounds, "signer": self._writer_hex, "size": self._seq}
        body["sig"] = self.identity.sign(checkpoint_message(body)).hex()
        return self._encode(CHECKPOINT, canonical_body(body))

    def append(self, rtype: str, body: Mapping[str, Any]) -> Receipt:
        """Append a ``round``/``verdict``/``join``/``leave``/``slash`` record; returns at once.

        ``receipt.wait()`` blocks until the record is durable. Raises :class:`LedgerError` if the
        log is closed or failed, the type is not an event type, the body is not canonical-JSON
        encodable, or a round record's ``round`` does not increase.
        """
        if rtype not in EVENT_TYPES:
            raise LedgerError(f"cannot append a {rtype!r} record; expected one of {sorted(EVENT_TYPES)}")
        data = canonical_body(body)
        with self._lock:
            if self._closed or self._failed is not None:
                raise LedgerError(f"reward log is {'closed' if self._closed else 'failed: ' + str(self._failed)}")
            if rtype == ROUND:
                r = body.get("round")
                if not isinstance(r, int) or r <= self._last_round:
                    raise LedgerError(f"round records need an int 'round' above {self._last_round}, got {r!r}")
                self._last_round = r
            pending = self._pending
            pending.append(self._encode(rtype, data))
            if len(pending) == 1 or len(pending) >= self.batch_size:
                self._cond.notify()
            return Receipt(self._seq - 1, self._batch)

    def append_sync(self, rtype: str, body: Mapping[str, Any], timeout_s: float | None = None) -> int:
        """Append and wait until durable; returns the record's sequence number."""
        return self.append(rtype, body).wait(timeout_s)

    def append_round(self, body: Mapping[str, Any]) -> Receipt:
        """Append a round record (the body from :func:`dai_swarm.rewards.rules.compute_round_record`)."""
        return self.append(ROUND, body)

    def _flusher(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending and self._closed:
                    return
                if len(self._pending) < self.batch_size and not self._closed and not self._force:
                    self._cond.wait(self.flush_interval_s)
                self._force = False
                self._pending.append(self._checkpoint_line())
                lines, batch = self._pending, self._batch
                self._pending, self._batch = [], _Batch()
                self._inflight = batch
                size = self._seq
            try:
                self._write(lines)
            except OSError as e:
                err = LedgerError(f"writing reward log {self.path!r} failed: {e.strerror}")
                with self._lock:
                    self._failed = err
                    self._batch.error = err
                    self._batch.event.set()
                batch.error = err
                batch.event.set()
                logger.error("%s", err)
                return
            with self._lock:
                self._durable, self._checkpoint_seq = size, size - 1
            batch.event.set()

    # ------------------------------------------------------------------ state and lifecycle
    def flush(self, timeout_s: float | None = None) -> None:
        """Commit pending records now and wait until they are durable."""
        with self._lock:
            if self._pending:
                self._force = True
                batch = self._batch
                self._cond.notify()
            else:
                batch = self._inflight
        if batch is not None:
            Receipt(-1, batch).wait(timeout_s)

    def close(self) -> None:
        """Commit everything pending, stop the flusher and close the file (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._cond.notify()
        self._thread.join()
        os.close(self._fd)

    def __enter__(self) -> "RewardLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def size(self) -> int:
        """Number of records appended so far (durable or pending, checkpoints included)."""
        return self._seq

    @property
    def durable_size(self) -> int:
        """Number of records known to be on disk and covered by a signed checkpoint."""
        return self._durable

    @property
    def head(self) -> str:
        """Hex hash of the last record appended (the full-file chain head)."""
        return self._last.hex()

    @property
    def round_chain_head(self) -> str:
        """Hex head of the chain over round bodies only: equal on honest peers that wrote the same rounds."""
        return self._round_head.hex()

    @property
    def rounds(self) -> int:
        """Number of round records in the log."""
        return self._rounds

    def inclusion_proof(self, index: int) -> dict:
        """Merkle proof that record ``index`` is in the tree signed by the latest durable checkpoint.

        Returns ``{"index", "size", "leaf", "path", "root", "checkpoint"}`` (hashes in hex); check it
        with :func:`dai_swarm.rewards.merkle.verify_inclusion` against the checkpoint's ``merkle_root``.
        """
        with self._lock:
            cp = self._checkpoint_seq
            leaves = [bytes(self._leaves[k : k + 32]) for k in range(0, 32 * (cp or 0), 32)]
        if cp is None or not 0 <= index < cp:
            raise LedgerError(f"record {index} is not covered by a durable checkpoint yet")
        acc = MerkleAccumulator()
        for leaf in leaves:
            acc.add(leaf)
        return {"index": index, "size": cp, "leaf": leaves[index].hex(),
                "path": [p.hex() for p in inclusion_proof(leaves, index, cp)], "root": acc.root().hex(), "checkpoint": cp}
