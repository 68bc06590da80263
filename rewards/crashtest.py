"""Crash campaign for the reward log: real processes killed with SIGKILL at random moments.

A forked child opens (and so recovers) the log, appends records in a loop, and after each
acknowledged batch writes ``"<seq> <n>\\n"`` for every record of it to a pipe, only once
``Receipt.wait()`` returned (the record is fsync'd and signed). The parent kills the child after a
random delay, reopens the log (recovery), and checks that every acknowledged record is present
with its content and that the whole file verifies (nothing corrupt accepted). Used by
``tests/test_ledger_crash.py`` (~50 kills) and ``python -m benchmarks.ledger --kills 1000``.
POSIX only (``os.fork``).
"""

from __future__ import annotations

import os
import random
import select
import signal
import time

from dai_swarm.errors import LedgerCorrupt, LedgerError
from dai_swarm.identity import Identity

from .diff import iter_records
from .log import RewardLog
from .verify import verify_log

__all__ = ["run_crash_campaign"]


def _child(path: str, identity: Identity, wfd: int, seed: int, batch_size: int, flush_interval_s: float) -> None:
    rng = random.Random(seed)
    try:
        log = RewardLog(path, identity, batch_size=batch_size, flush_interval_s=flush_interval_s)
        n = 0
        while True:
            burst = [log.append("join", {"peer": f"p{rng.randrange(8)}", "n": n + k, "w": seed, "pad": "x" * rng.randrange(40)})
                     for k in range(rng.randrange(1, 64))]
            n += len(burst)
            burst[-1].wait()
            os.write(wfd, b"".join(b"%d %d %d\n" % (r.seq, n - len(burst) + k, seed) for k, r in enumerate(burst)))
    except BaseException as e:  # noqa: BLE001 - report anything to the parent, then die
        os.write(wfd, f"ERR {type(e).__name__}: {e}\n".encode())
        os._exit(3)


def _read_all(fd: int, deadline_s: float) -> bytes:
    out = bytearray()
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            out += chunk
    return bytes(out)


def run_crash_campaign(directory: str, kills: int, *, seed: int = 0, max_delay_s: float = 0.08,
                       batch_size: int = 64, flush_interval_s: float = 0.001, kills_per_file: int = 25) -> dict:
    """SIGKILL a writer ``kills`` times at random moments; return counts of what survived.

    Returns ``{"kills", "acknowledged", "lost", "corrupt_accepted", "child_errors", "recoveries_truncating",
    "truncated_bytes", "resigned_records", "files", "seconds"}``; ``lost`` and ``corrupt_accepted``
    must be 0.
    """
    rng = random.Random(seed)
    identity = Identity.generate()
    stats = {"kills": 0, "acknowledged": 0, "lost": 0, "corrupt_accepted": 0, "child_errors": 0,
             "recoveries_truncating": 0, "truncated_bytes": 0, "resigned_records": 0, "files": 0}
    errors: list[str] = []
    t0 = time.perf_counter()
    acked: dict[int, tuple[int, int]] = {}
    lost: set[tuple[str, int]] = set()
    path = ""
    for k in range(kills):
        if k % kills_per_file == 0:
            stats["files"] += 1
            path = os.path.join(directory, f"crash-{stats['files']:04d}.log")
            acked = {}
        rfd, wfd = os.pipe()
        child_seed = rng.randrange(1 << 30)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            os.close(rfd)
            _child(path, identity, wfd, child_seed, batch_size, flush_interval_s)
            os._exit(0)
        os.close(wfd)
        time.sleep(rng.uniform(0, max_delay_s))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        stats["kills"] += 1
        data = _read_all(rfd, 1.0)
        os.close(rfd)
        for line in data.split(b"\n")[:-1]:  # an incomplete last line is ignored (conservative)
            if line.startswith(b"ERR"):
                stats["child_errors"] += 1
                errors.append(line.decode(errors="replace"))
                continue
            seq, n, w = map(int, line.split())
            acked[seq] = (n, w)
            stats["acknowledged"] += 1
        # reopen: recovery must not refuse the file, and must keep every acknowledged record
        try:
            log = RewardLog(path, identity, batch_size=batch_size)
        except (LedgerCorrupt, LedgerError) as e:
            stats["child_errors"] += 1
            errors.append(f"reopen: {e}")
            continue
        rec = log.recovery
        log.close()
        if rec.truncated_bytes:
            stats["recoveries_truncating"] += 1
            stats["truncated_bytes"] += rec.truncated_bytes
        stats["resigned_records"] += rec.resigned_records
        result = verify_log(path)
        if not result["ok"]:
            stats["corrupt_accepted"] += 1
            errors.append(f"verify after recovery: {result}")
        present = {r.seq: (r.body.get("n"), r.body.get("w")) for r in iter_records(path) if r.type == "join"}
        lost.update((path, seq) for seq, want in acked.items() if present.get(seq) != want)
    stats["lost"] = len(lost)
    stats["seconds"] = round(time.perf_counter() - t0, 2)
    stats["errors"] = errors[:10]
    return stats
