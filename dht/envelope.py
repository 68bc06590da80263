"""Signed, expiring envelopes: the only form in which dai_swarm records enter the DHT.

An envelope binds the record type, run id, DHT key, subkey, issue time, expiration, body and the
signer's ed25519 public key; the signature covers ``canonical_json`` of all of them (everything
but the signature itself). Copying a valid record to another key, round or run, extending its
expiration, or editing any field breaks the signature. The subkey must be the signer's public key,
so that only its owner can write that slot (hivemind hashes DHT keys before validators see them,
so a key inside the DHT *key* would protect nothing; SPEC §10).

Size is checked before anything is parsed: an envelope is at most :data:`MAX_RECORD_BYTES`.
"""

from __future__ import annotations

import json
from collections import OrderedDict
import math
import time
from dataclasses import dataclass
from typing import Any

from ..canonical import canonical_json
from ..errors import ExpiredRecord, ForgedRecord, MalformedRecord
from ..identity import Identity, verify_signature
from .keys import key_for
from .records import RoundRecord, _Record, parse_body, validate_name

__all__ = [
    "EnvelopeCache",
    "ENVELOPE_VERSION",
    "MAX_CLOCK_SKEW_S",
    "MAX_RECORD_BYTES",
    "MAX_TTL_S",
    "SignedRecord",
    "open_envelope",
    "oversized",
    "seal",
]

ENVELOPE_VERSION = 1
MAX_RECORD_BYTES = 64 * 1024
MAX_TTL_S = 7 * 24 * 3600.0
MAX_CLOCK_SKEW_S = 60.0
_FIELDS = ("v", "type", "run_id", "key", "subkey", "issued_at", "expiration", "body", "signer", "sig")


@dataclass(frozen=True)
class SignedRecord:
    """A verified envelope: the typed ``record`` plus who signed it, when, and where it lives."""

    record: _Record
    record_type: str
    run_id: str
    key: str
    subkey: str
    issued_at: float
    expiration: float
    signer: str
    signature: str
    raw: bytes

    @property
    def body(self) -> dict:
        """The round body for a :class:`RoundRecord`, else the record's JSON body."""
        if isinstance(self.record, RoundRecord):
            return dict(self.record.body)
        return self.record.to_body()

    @property
    def wire(self) -> Any:
        """The typed body of a protocol round record (:mod:`.wire`), validated when it was read; else None."""
        return self.record.wire if isinstance(self.record, RoundRecord) else None

    @property
    def kind(self) -> str | None:
        """The record kind of a round record (None for other types)."""
        return self.record.kind if isinstance(self.record, RoundRecord) else None

    @property
    def round(self) -> int | None:
        """The round of a round record (None for other types)."""
        return self.record.round if isinstance(self.record, RoundRecord) else None


def oversized(message: str) -> MalformedRecord:
    """A MalformedRecord tagged ``reason = "oversized"`` (so that it is counted apart)."""
    error = MalformedRecord(message)
    error.reason = "oversized"  # type: ignore[attr-defined]
    return error


def _unsigned(fields: dict) -> bytes:
    return canonical_json({k: v for k, v in fields.items() if k != "sig"})


def seal(
    identity: Identity,
    record: _Record,
    *,
    run_id: str,
    ttl_s: float,
    key: str | None = None,
    issued_at: float | None = None,
) -> bytes:
    """Sign ``record`` of run ``run_id`` (subkey: the signer's public key); returns the envelope bytes.

    ``key`` defaults to the one key the record may live under (:func:`~dai_swarm.dht.keys.key_for`).

    Raises :class:`MalformedRecord` if the envelope would exceed :data:`MAX_RECORD_BYTES` or the TTL
    is not a positive number below :data:`MAX_TTL_S`.
    """
    if not (isinstance(ttl_s, (int, float)) and 0 < ttl_s <= MAX_TTL_S):
        raise MalformedRecord(f"ttl_s must be in (0, {MAX_TTL_S:.0f}] seconds, got {ttl_s!r}")
    issued_at = time.time() if issued_at is None else float(issued_at)
    if getattr(record, "run_id", run_id) != run_id:
        raise MalformedRecord(f"{record.TYPE} record names run {record.run_id!r}, not {run_id!r}")
    try:
        own = key_for(record, run_id, identity.public_key_hex)
    except ValueError as e:
        raise MalformedRecord(str(e)) from None
    key = own if key is None else key
    if key != own:
        raise MalformedRecord(f"{record.TYPE} record of run {run_id!r} belongs under {own!r}, not {key!r}")
    fields: dict[str, Any] = {
        "v": ENVELOPE_VERSION,
        "type": record.TYPE,
        "run_id": run_id,
        "key": key,
        "subkey": identity.public_key_hex,
        "issued_at": issued_at,
        "expiration": issued_at + float(ttl_s),
        "body": record.to_body(),
        "signer": identity.public_key_hex,
    }
    fields["sig"] = identity.sign(_unsigned(fields)).hex()
    data = canonical_json(fields)
    if len(data) > MAX_RECORD_BYTES:
        raise oversized(f"{record.TYPE} record is {len(data)} bytes, over the {MAX_RECORD_BYTES}-byte cap")
    return data


def _number(fields: dict, name: str) -> float:
    v = fields.get(name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise MalformedRecord(f"envelope field {name!r} is not a finite number")
    return float(v)


def open_envelope(
    data: bytes,
    *,
    now: float | None = None,
    expected_key: str | None = None,
    expected_type: str | None = None,
    expected_run_id: str | None = None,
    expected_subkey: str | None = None,
) -> SignedRecord:
    """Check and parse envelope bytes from anyone; return the :class:`SignedRecord`.

    Order: size cap (before parsing), JSON shape, signature, subkey == signer, expiration window,
    expected key/type/run, then the body schema. Raises :class:`MalformedRecord` (oversized, not
    JSON, wrong shape or schema, wrong key/type/run), :class:`ForgedRecord` (bad signature, subkey
    not the signer) or :class:`ExpiredRecord` (expired, or issued implausibly far in the future).
    """
    if not isinstance(data, (bytes, bytearray)):
        raise MalformedRecord(f"envelope must be bytes, got {type(data).__name__}")
    if len(data) > MAX_RECORD_BYTES:
        raise oversized(f"record of {len(data)} bytes exceeds the {MAX_RECORD_BYTES}-byte cap")
    try:
        fields = json.loads(bytes(data))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise MalformedRecord(f"record is not valid JSON: {e}") from e
    if not isinstance(fields, dict) or set(fields) != set(_FIELDS):
        raise MalformedRecord("record is not a dai_swarm envelope (wrong set of fields)")
    if fields["v"] != ENVELOPE_VERSION:
        raise MalformedRecord(f"unknown envelope version {fields['v']!r}")
    for name in ("type", "run_id", "key", "subkey", "signer", "sig"):
        if not isinstance(fields[name], str):
            raise MalformedRecord(f"envelope field {name!r} is not a string")
    issued_at, expiration = _number(fields, "issued_at"), _number(fields, "expiration")
    try:
        public_key, signature = bytes.fromhex(fields["signer"]), bytes.fromhex(fields["sig"])
    except ValueError as e:
        raise ForgedRecord("signer or signature is not hex") from e
    try:
        message = _unsigned(fields)
    except ValueError as e:  # non-finite numbers inside the body
        raise MalformedRecord(f"record is not canonical JSON: {e}") from e
    if not verify_signature(public_key, signature, message):
        raise ForgedRecord(f"bad signature on {fields['type']} record under key {fields['key']!r}")
    if fields["subkey"] != fields["signer"]:
        raise ForgedRecord("record subkey is not its signer's public key")
    if expected_subkey is not None and fields["subkey"] != expected_subkey:
        raise ForgedRecord("record is stored under another peer's subkey")
    now = time.time() if now is None else now
    if expiration <= now:
        raise ExpiredRecord(f"{fields['type']} record expired {now - expiration:.1f} s ago")
    if issued_at > now + MAX_CLOCK_SKEW_S or expiration < issued_at or expiration - issued_at > MAX_TTL_S:
        raise ExpiredRecord("record's issue/expiration times are implausible")
    for name, expected in (("key", expected_key), ("type", expected_type), ("run_id", expected_run_id)):
        if expected is not None and fields[name] != expected:
            raise MalformedRecord(f"record {name} {fields[name]!r} is not the expected {expected!r}")
    record = parse_body(fields["type"], fields["body"])
    if getattr(record, "run_id", fields["run_id"]) != fields["run_id"]:
        raise MalformedRecord("record body names another run than its envelope")
    try:
        validate_name(fields["run_id"], "run id")
    except ValueError as e:
        raise MalformedRecord(str(e)) from e
    if fields["key"] != key_for(record, fields["run_id"], fields["signer"]):
        raise MalformedRecord(f"record is stored under key {fields['key']!r}, not the key its content implies")
    return SignedRecord(
        record=record,
        record_type=fields["type"],
        run_id=fields["run_id"],
        key=fields["key"],
        subkey=fields["subkey"],
        issued_at=issued_at,
        expiration=expiration,
        signer=fields["signer"],
        signature=fields["sig"],
        raw=bytes(data),
    )


class EnvelopeCache:
    """Envelopes already verified, by their exact bytes and where they were read (LRU).

    A peer reads the same round records several times a round (votes for the tally, again for the
    verdict set and the post-tally check); with a thousand fresh-key votes under one key, checking
    every signature on every read cost honest peers whole rounds of CPU. A hit is re-checked only
    for what changes with time (expiry); anything :func:`open_envelope` refuses is never cached.
    """

    def __init__(self, size: int = 50_000):
        self.size = int(size)
        self._items: "OrderedDict[tuple, SignedRecord]" = OrderedDict()

    def open(self, data: bytes, *, now: float, expected_key: str, expected_type: str, expected_run_id: str,
             expected_subkey: str) -> "SignedRecord":
        """:func:`open_envelope` with the same checks, from the cache when these bytes passed before."""
        if not isinstance(data, bytes):  # never cached (open_envelope refuses what is not bytes)
            return open_envelope(data, now=now, expected_key=expected_key, expected_type=expected_type,
                                 expected_run_id=expected_run_id, expected_subkey=expected_subkey)
        k = (expected_key, expected_subkey, expected_type, expected_run_id, data)
        signed = self._items.get(k)
        if signed is not None:
            if signed.expiration <= now:
                del self._items[k]
                raise ExpiredRecord(f"{signed.kind or 'round'} record expired {now - signed.expiration:.1f} s ago")
            self._items.move_to_end(k)
            return signed
        signed = open_envelope(data, now=now, expected_key=expected_key, expected_type=expected_type,
                               expected_run_id=expected_run_id, expected_subkey=expected_subkey)
        self._items[k] = signed
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return signed
