"""Self-certifying runs: a run is named by its id *and* the hash of its manifest.

Anyone can sign a manifest for any run id, so a run id alone cannot say which manifest is the
run's. Every peer therefore prints its join line as ``--run-id R --manifest HASH --initial-peers
...``; ``HASH`` is the SHA-256 of the manifest's canonical JSON (:func:`manifest_hash`), and a
peer given it (``--manifest``, ``manifest_hash=``) accepts no other manifest
(:class:`~dai_swarm.errors.ManifestPinMismatch`, naming what was expected and what was found).

Printed pins are :data:`PIN_HEX` = 32 hex characters (128 bits); shorter ones are refused. A
second manifest with the same 128-bit prefix as an honest one costs ~2^128 hashes (second
preimage); even a dishonest creator grinding two manifests onto one prefix (a collision, to show
different peers different runs) needs ~2^64, out of reach. 16 hex (64 bits) would leave that
collision at ~2^32: minutes on a laptop.

Whatever the pin, a manifest record counts only if

* one of the manifest's ``founders`` signed it (the creator's key, filled in by the ``Swarm`` that
  creates the run): a copy re-signed by another key is not the run's;
* it is not back-dated: its envelope's ``issued_at`` lies in ``[t0 − MAX_LEAD_S, t0 + skew]``. A
  run's manifest is published when the run is created, a few seconds before ``t0`` by default,
  at most a day ahead for a scheduled run; an ``issued_at`` days before ``t0`` is a forgery
  aimed at the "earliest issued" rule, and one after ``t0`` (beyond the clock skew) was not there
  when the run started. (The envelope already refuses an ``issued_at`` in the future.)

Without a pin a joiner takes the earliest issued of the remaining manifests (then the smaller
hash), then follows resumed generations: a valid manifest whose ``resume.parent`` is the chosen
one supersedes it (the earliest issued such child, again and again). It logs the hash it pinned,
and warns when several compete. That is first-come, not proof:
an attacker can still sign a different manifest issued inside the window, so the pin is what
protects a joiner; see docs/design.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

from ..canonical import canonical_json, sha256_hex
from ..errors import ConfigError, ManifestPinMismatch
from .envelope import MAX_CLOCK_SKEW_S, SignedRecord
from .records import RunManifest

__all__ = ["MAX_LEAD_S", "PIN_HEX", "ManifestChoice", "check_pin", "manifest_hash", "refusal", "select_manifest"]

PIN_HEX = 32
MAX_LEAD_S = 24 * 3600.0
_PIN_RE = re.compile(r"^[0-9a-f]{32,64}$")


def manifest_hash(manifest: RunManifest) -> str:
    """SHA-256 (64 hex) of the manifest's canonical JSON body: what ``--manifest`` pins (a prefix)."""
    return sha256_hex(canonical_json(manifest.to_body()))


def check_pin(pin: str | None) -> str | None:
    """Normalise a ``--manifest`` value (32-64 hex characters, any case); ConfigError otherwise."""
    if pin is None:
        return None
    value = pin.strip().lower() if isinstance(pin, str) else pin
    if not isinstance(value, str) or not _PIN_RE.match(value):
        raise ConfigError(f"invalid manifest hash {pin!r}: give the {PIN_HEX} (or up to 64) hex characters a "
                          "peer of the run prints after --manifest")
    return value


def refusal(signed: SignedRecord) -> str | None:
    """Why a verified manifest record does not count (None if it does); see the module docstring."""
    m: RunManifest = signed.record  # type: ignore[assignment]
    if not m.founders:
        return "names no founders"
    if signed.signer not in m.founders:
        return f"signed by {signed.signer[:16]}, not by a founder"
    start = m.start_time  # t0, or the start of a resumed generation's first round
    if signed.issued_at < start - MAX_LEAD_S:
        return f"back-dated: issued {(start - signed.issued_at) / 3600:.1f} h before t0 (at most {MAX_LEAD_S / 3600:.0f} h)"
    if signed.issued_at > start + MAX_CLOCK_SKEW_S:
        return f"issued {signed.issued_at - start:.0f} s after t0 (at most {MAX_CLOCK_SKEW_S:.0f} s)"
    return None


@dataclass(frozen=True)
class ManifestChoice:
    """The manifest a peer adopts, its full hash, and what else it saw (``hash -> reason``)."""

    manifest: RunManifest
    hash: str
    pinned: bool
    competing: tuple[str, ...] = ()
    refused: dict[str, str] = field(default_factory=dict)


def _describe(h: str, m: RunManifest, why: str) -> str:
    return (f"{h[:PIN_HEX]} ({why}; task {m.task}, t0 {m.t0:.0f}, checks_per_update {m.checks_per_update}, "
            f"founders {', '.join(k[:12] for k in m.founders) or 'none'})")


def select_manifest(records: Iterable[SignedRecord], pin: str | None = None) -> ManifestChoice | None:
    """Pick the run's manifest among verified manifest records (pure; see the module docstring).

    With ``pin`` (a normalised hash prefix): the valid record whose hash starts with it, else
    :class:`ManifestPinMismatch` if any manifest was seen, else None. Without: the earliest issued
    valid record (ties: smaller hash), or None.
    """
    valid: list[tuple[float, str, RunManifest]] = []
    refused: dict[str, str] = {}
    seen: dict[str, RunManifest] = {}
    for s in records:
        m: RunManifest = s.record  # type: ignore[assignment]
        h = manifest_hash(m)
        seen[h] = m
        why = refusal(s)
        if why is None:
            valid.append((s.issued_at, h, m))
        else:
            refused.setdefault(h, why)
    hashes = tuple(sorted({h for _, h, _ in valid}))
    if pin is not None:
        match = [v for v in valid if v[1].startswith(pin)]
        if match:
            _, h, m = min(match, key=lambda v: (v[0], v[1]))
            return ManifestChoice(m, h, True, tuple(x for x in hashes if x != h), refused)
        if not seen:
            return None
        found = tuple(_describe(h, m, refused.get(h) or ("valid, another hash" if not h.startswith(pin)
                                                          else "refused")) for h, m in sorted(seen.items()))
        run = next(iter(seen.values())).run_id
        raise ManifestPinMismatch(f"run {run!r}: no valid manifest has the pinned hash {pin}; found "
                                  f"{'; '.join(found)}. Check --manifest against the join line a peer of "
                                  "the run prints", expected=pin, found=found)
    if not valid:
        return None
    known = {h for _, h, _ in valid}
    roots = [v for v in valid if v[2].resume is None or v[2].resume.parent not in known]
    _, h, m = min(roots or valid, key=lambda v: (v[0], v[1]))
    for _ in range(len(valid)):  # a resumed generation supersedes its parent
        children = [v for v in valid if v[2].resume is not None and v[2].resume.parent == h]
        if not children:
            break
        _, h, m = min(children, key=lambda v: (v[0], v[1]))
    return ManifestChoice(m, h, False, tuple(x for x in hashes if x != h), refused)
