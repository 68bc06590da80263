"""Spot-check verdicts: the signed, re-checkable outcome of one recomputation.

A verdict is published as the verifier's ``verdict.<region>`` round record for the round of the
checked update (so the DHT signature binds it to verifier, run and round). Its id is the SHA-256
of the canonical JSON of (domain, round, verifier, body): votes carry ids, and every peer maps an
id back to its content deterministically with :func:`verdict_id`.

A verdict is well-formed only if its body names the record's signer as verifier and the record's
round, and does not judge the verifier's own update; everything else is refused with
:class:`~dai_swarm.errors.MalformedRecord`.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from dai_swarm.canonical import canonical_json, sha256_hex
from dai_swarm.dht.wire import MAX_VERDICTS, typed
from dai_swarm.errors import MalformedRecord

__all__ = ["MAX_PER_RECORD", "Verdict", "record_body", "verdict_id", "verdicts_from_record"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX = re.compile(r"^[0-9a-f]{2,256}$")
_DOMAIN = "dai_swarm.verdict.v1"
#: distances are published rounded to this many significant digits (JSON-stable floats)
_SIG_DIGITS = 6
#: verdicts one verifier may publish for one round (one record holds them all)
MAX_PER_RECORD = MAX_VERDICTS


def _round_sig(x: float) -> float:
    if not math.isfinite(x):
        return -1.0  # JSON has no inf: a negative distance means "not comparable" (always a fail)
    return float(f"{x:.{_SIG_DIGITS}g}")


@dataclass(frozen=True)
class Verdict:
    """One spot check: ``verifier`` recomputed ``target``'s update ``digest`` of ``round``.

    ``passed`` says whether ``distance`` (relative L2, −1 when not comparable) was within τ;
    ``recomputed`` is the digest of the verifier's own encoding of its recomputation (so anyone can
    re-check the re-check); ``steps`` the step count that was replayed; ``latency_s`` the time from
    the round's close to the verdict.
    """

    round: int
    verifier: str
    target: str
    digest: str
    passed: bool
    distance: float
    recomputed: str
    steps: int
    latency_s: float = 0.0
    recheck: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.round, bool) or not isinstance(self.round, int) or self.round < 0:
            raise MalformedRecord("verdict round must be an int >= 0")
        for name in ("verifier", "target"):
            v = getattr(self, name)
            if not isinstance(v, str) or not _HEX.match(v):
                raise MalformedRecord(f"verdict {name} must be a lowercase hex public key")
        for name in ("digest", "recomputed"):
            v = getattr(self, name)
            if not isinstance(v, str) or not (_HEX64.match(v) or v == ""):
                raise MalformedRecord(f"verdict {name} must be 64 lowercase hex characters")
        if not isinstance(self.passed, bool) or not isinstance(self.recheck, bool):
            raise MalformedRecord("verdict pass/recheck must be booleans")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise MalformedRecord("verdict steps must be an int >= 0")
        for name in ("distance", "latency_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise MalformedRecord(f"verdict {name} must be a finite number")
        if self.verifier == self.target:
            raise MalformedRecord("a peer cannot judge its own update")

    def body(self) -> dict:
        """The record body to publish (JSON-able; ``round`` and ``verifier`` are also in the envelope)."""
        d = asdict(self)
        d["distance"] = _round_sig(float(self.distance)) if self.distance >= 0 else -1.0
        d["latency_s"] = round(float(self.latency_s), 4)
        d["pass"] = d.pop("passed")
        return d

    @property
    def id(self) -> str:
        """The verdict id votes carry (see :func:`verdict_id`)."""
        return verdict_id(self.round, self.verifier, self.body())

    @classmethod
    def from_body(cls, round: int, signer: str, body: Mapping[str, Any]) -> "Verdict":
        """Parse an untrusted body published by ``signer`` for ``round``; raise MalformedRecord."""
        if not isinstance(body, Mapping):
            raise MalformedRecord("verdict body is not an object")
        expected = {"round", "verifier", "target", "digest", "pass", "distance", "recomputed", "steps",
                    "latency_s", "recheck"}
        if set(body) != expected:
            raise MalformedRecord(f"verdict body has fields {sorted(body)}, expected {sorted(expected)}")
        if body["verifier"] != signer:
            raise MalformedRecord("verdict names another verifier than its signer")
        if body["round"] != round:
            raise MalformedRecord("verdict names another round than its record (replayed?)")
        try:
            return cls(round=body["round"], verifier=body["verifier"], target=body["target"], digest=body["digest"],
                       passed=body["pass"], distance=body["distance"], recomputed=body["recomputed"],
                       steps=body["steps"], latency_s=body["latency_s"], recheck=body["recheck"])
        except TypeError as e:
            raise MalformedRecord(f"verdict body: {e}") from e


def verdict_id(round: int, verifier: str, body: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of (domain, round, verifier, body)."""
    return sha256_hex(canonical_json([_DOMAIN, round, verifier, dict(body)]))


def record_body(verdicts: list[Verdict]) -> dict:
    """The body of a verifier's verdict record of one round: all its verdicts of that round.

    The DHT keeps one record per (signer, round, kind), so a verifier re-publishes the full list
    each time it adds a verdict (the newest record replaces the older one).
    """
    if len(verdicts) > MAX_PER_RECORD:
        verdicts = verdicts[-MAX_PER_RECORD:]
    return {"verdicts": [v.body() for v in verdicts]}


def verdicts_from_record(record: Any) -> tuple[list[Verdict], int]:
    """Parse a signed DHT round record (``.round``, ``.signer``, ``.body``) into its verdicts.

    Returns ``(verdicts, n_malformed)``; malformed items are skipped one by one. A record that is
    not a verdict list at all raises :class:`~dai_swarm.errors.MalformedRecord`.
    """
    if record.round is None:
        raise MalformedRecord("not a round record")
    items = typed(record, "verdict").verdicts  # schema: dai_swarm.dht.wire.VerdictsBody (<= MAX_PER_RECORD)
    out, bad = [], 0
    for item in items:
        try:
            out.append(Verdict.from_body(record.round, record.signer, item))
        except MalformedRecord:
            bad += 1
    return out, bad
