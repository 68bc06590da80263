"""Compare two peers' reward logs: the first round whose round records disagree.

Round records are a deterministic function of replicated inputs, so honest peers that closed the
same rounds hold byte-identical round bodies whatever local events (their own verdicts, the joins
they saw) sit between them. :func:`diff_logs` walks both logs' round records by round number.
"""

from __future__ import annotations

from typing import Iterator

from dai_swarm.errors import LedgerError

from .records import ROUND, parse_line

__all__ = ["diff_logs", "iter_records", "round_bodies"]


def iter_records(path: str):
    """Yield every complete record of the log at ``path``, parsed and CRC-checked, in file order.

    An incomplete last line (torn write) is ignored; a malformed complete line raises
    :class:`~dai_swarm.errors.LedgerCorrupt` with its index.
    """
    try:
        with open(path, "rb") as f:
            buf = f.read()
    except OSError as e:
        raise LedgerError(f"cannot read reward log {path!r}: {e.strerror}") from e
    lines = buf.split(b"\n")
    for i, line in enumerate(lines[:-1]):
        yield parse_line(line, index=i)


def round_bodies(path: str) -> Iterator[tuple[int, bytes]]:
    """Yield ``(round, canonical body bytes)`` for each round record of the log, in order."""
    for rec in iter_records(path):
        if rec.type == ROUND:
            yield int(rec.body.get("round", -1)), rec.body_bytes


def diff_logs(a: str, b: str) -> int | None:
    """Return the first round number whose round records differ between logs ``a`` and ``b``.

    A round present in both must have identical bodies; a round present in one log and missing in
    the other, between the first and the last round both logs reached, is a disagreement too.
    Rounds before the start of the later log are not (that peer had not joined yet: its log starts
    at the state it joined from), nor rounds after the end of the shorter one (that peer is simply
    behind). Returns None when they agree.
    """
    ra = dict(round_bodies(a))
    rb = dict(round_bodies(b))
    if not ra or not rb:
        return None
    start, horizon = max(min(ra), min(rb)), min(max(ra), max(rb))
    for r in sorted(r for r in set(ra) | set(rb) if start <= r <= horizon):
        if ra.get(r) != rb.get(r):
            return r
    return None
