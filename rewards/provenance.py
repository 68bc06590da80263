"""What a reward log proves about a model: the chain of round records behind a state hash.

Each round record names the state hash the round produced and (since the export format) the hash
of the base it was applied to (``parent_hash``); round records are also chained by the log's
round-chain head (``h_r = sha256(h_{r-1} || canonical body)``, see :mod:`.log`). An export
carries the chain it could read from its exporter's log (:func:`log_provenance`), and
:func:`check_model` checks an export against any verified log: its state hash is the one recorded
for its round, its parent and chain entries match the log's records, and (when the chain starts
where the log's round records start) its round-chain head is the log's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from dai_swarm.errors import ExportMismatch, LedgerError

from .records import ROUND, ZERO_HASH
from .verify import scan

__all__ = ["ModelCheck", "check_model", "log_provenance", "require_recorded", "round_records"]


@dataclass(frozen=True)
class ModelCheck:
    """Outcome of :func:`check_model`: ``ok``, the first ``mismatch`` (None when ok) and how many
    chain entries the log confirmed (``linked``) or could not check (``unchecked``)."""

    ok: bool
    mismatch: str | None
    round: int
    state_hash: str
    linked: int = 0
    unchecked: int = 0


def round_records(path: str) -> list[tuple[int, dict, bytes]]:
    """``(round, body, body_bytes)`` of the round records among the log's leading valid records
    (a record after the first bad one is not trusted). Raises :class:`LedgerError` if unreadable."""
    from .diff import iter_records

    try:
        with open(path, "rb") as f:
            valid = scan(f.read()).valid
    except OSError as e:
        raise LedgerError(f"cannot read reward log {path!r}: {e.strerror}") from e
    out = []
    for i, rec in enumerate(iter_records(path)):
        if i >= valid:
            break
        if rec.type == ROUND and isinstance(rec.body.get("round"), int):
            out.append((rec.body["round"], rec.body, rec.body_bytes))
    return out


def _link(body: dict) -> dict:
    return {"round": body["round"], "state_hash": body.get("state_hash"), "parent_hash": body.get("parent_hash")}


def log_provenance(path: str, round: int) -> dict:
    """The chain behind round ``round`` in the log at ``path``: ``chain`` (links of every round
    record up to ``round``, oldest first), ``round_chain_head`` after ``round``'s record,
    ``contributors`` (samples and reward units per peer over the chain) and ``reward_units``."""
    head, chain, totals = ZERO_HASH, [], {}
    for r, body, data in round_records(path):
        if r > round:
            break
        head = hashlib.sha256(head + data).digest()
        chain.append(_link(body))
        for row in body.get("contributors", ()):
            t = totals.setdefault(row["peer"], {"peer": row["peer"], "samples": 0, "reward": 0, "rounds": 0})
            t["samples"] += int(row.get("samples", 0))
            t["reward"] += int(row.get("reward", 0))
            t["rounds"] += 1
    if not chain or chain[-1]["round"] != round:
        return {"chain": chain, "round_chain_head": None, "contributors": [], "reward_units": 0}
    return {"chain": chain, "round_chain_head": head.hex(), "contributors": sorted(totals.values(), key=lambda t: t["peer"]),
            "reward_units": sum(t["reward"] for t in totals.values())}


def check_model(path: str, provenance: Any, state_hash: str) -> ModelCheck:
    """Check an export (its :class:`~dai_swarm.export.Provenance` and recomputed ``state_hash``)
    against the log at ``path``; the first mismatch is reported (see the module docstring). The
    log itself is checked by the caller (:func:`~.verify.verify_log`)."""
    rnd = provenance.round
    records = round_records(path)
    by_round = {r: body for r, body, _ in records}

    def bad(why: str, linked: int = 0) -> ModelCheck:
        return ModelCheck(False, why, rnd, state_hash, linked)

    if state_hash != provenance.state_hash:
        return bad(f"the export's state hashes to {state_hash[:12]}, its provenance says {provenance.state_hash[:12]}")
    rec = by_round.get(rnd)
    if rec is None:
        have = f"{records[0][0]}..{records[-1][0]}" if records else "none"
        return bad(f"the log has no round {rnd} record (its round records: {have}): no record names state "
                   f"{state_hash[:12]}")
    if rec.get("state_hash") != state_hash:
        return bad(f"round {rnd}: the log records state {str(rec.get('state_hash'))[:12]}, the export holds "
                   f"{state_hash[:12]}")
    if provenance.parent_hash and rec.get("parent_hash") and rec["parent_hash"] != provenance.parent_hash:
        return bad(f"round {rnd}: the log's parent hash {rec['parent_hash'][:12]} differs from the export's "
                   f"{provenance.parent_hash[:12]}")
    linked = unchecked = 0
    for link in provenance.chain:
        theirs = by_round.get(link.get("round")) if isinstance(link, dict) else None
        if theirs is None:
            unchecked += 1
            continue
        if _link(theirs) != link:
            return bad(f"provenance chain: round {link.get('round')} names state {str(link.get('state_hash'))[:12]}, "
                       f"the log records {str(theirs.get('state_hash'))[:12]}", linked)
        linked += 1
    if provenance.chain and records and provenance.chain[0].get("round") == records[0][0] and not unchecked:
        head = log_provenance(path, rnd)["round_chain_head"]
        if provenance.round_chain_head != head:
            return bad(f"provenance chain head {str(provenance.round_chain_head)[:12]} is not the log's {str(head)[:12]}",
                       linked)
    return ModelCheck(True, None, rnd, state_hash, linked, unchecked)


def require_recorded(path: str, exported: Any) -> ModelCheck:
    """:func:`check_model` for a loaded :class:`~dai_swarm.export.Export`; raises
    :class:`ExportMismatch` naming the first mismatch (e.g. a state hash no record names)."""
    check = check_model(path, exported.provenance, exported.state.hash)
    if not check.ok:
        raise ExportMismatch(f"export {exported.path} against {path}: {check.mismatch}")
    return check
