"""The record validator honest dai_swarm nodes run inside hivemind's DHT.

hivemind calls :meth:`SwarmRecordValidator.validate` when another node asks us to store a record,
when a node answers our lookups, and on our own stores. We accept only dai_swarm envelopes that
verify: within the size cap (checked before parsing), signed by the key that is also the subkey,
bound to the very DHT key (hivemind hands us the *hashed* key, so we re-hash the key named in the
envelope and compare), with the DHT expiration equal to the signed one, and not yet expired. An
old record replayed after its expiration is therefore refused, and so is one moved to another
key, round or run. Every refusal is counted by reason. :func:`open_dictionary` applies the same
checks to what a read returns (values can come from nodes that run no validator).
"""

from __future__ import annotations

import collections
import time
from collections import Counter
from typing import Any

import msgpack
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from hivemind.utils.serializer import MSGPackSerializer

from ..errors import ExpiredRecord, ForgedRecord, MalformedRecord, RecordRejected
from ..logging import get_logger
from .envelope import MAX_RECORD_BYTES, EnvelopeCache, SignedRecord, open_envelope, oversized

__all__ = ["REASONS", "SwarmRecordValidator", "check_dht_record", "open_dictionary", "reason_of"]

logger = get_logger(__name__)
REASONS = ("forged", "expired", "malformed", "oversized")
_MSGPACK_OVERHEAD = 16


def reason_of(error: RecordRejected) -> str:
    """Counter name for a rejection: forged, expired, oversized or malformed."""
    if isinstance(error, ForgedRecord):
        return "forged"
    if isinstance(error, ExpiredRecord):
        return "expired"
    return getattr(error, "reason", "malformed")


def check_dht_record(record: DHTRecord, now: float | None = None) -> SignedRecord:
    """Verify a raw hivemind record (hashed key, msgpack subkey and value); raise RecordRejected."""
    value = record.value
    if not isinstance(value, (bytes, bytearray)) or len(value) > MAX_RECORD_BYTES + _MSGPACK_OVERHEAD:
        raise oversized(f"DHT value exceeds the {MAX_RECORD_BYTES}-byte cap")
    try:
        data = msgpack.unpackb(value, raw=False, max_bin_len=MAX_RECORD_BYTES + 1, max_str_len=0,
                               max_array_len=0, max_map_len=0, max_ext_len=0)
    except (ValueError, msgpack.UnpackException, TypeError) as e:
        raise MalformedRecord(f"DHT value is not a msgpack byte string: {e}") from e
    if not isinstance(data, bytes):
        raise MalformedRecord("DHT value is not a byte string")
    signed = open_envelope(data, now=now)
    if DHTID.generate(source=signed.key).to_bytes() != record.key:
        raise ForgedRecord(f"record signed for key {signed.key!r} was stored under another key")
    if MSGPackSerializer.dumps(signed.subkey) != record.subkey:
        raise ForgedRecord("record stored under a subkey that is not its signer's public key")
    if record.expiration_time != signed.expiration:
        raise ForgedRecord("DHT expiration differs from the signed expiration")
    return signed


class SwarmRecordValidator(RecordValidatorBase):
    """hivemind validator: accept only verified dai_swarm envelopes, count the rest by reason.

    The instance lives in the DHT process (hivemind forks it there), so its ``counters`` are read
    back with :func:`dai_swarm.dht.node.SwarmDHT.counters`.
    """

    def __init__(self) -> None:
        self.counters: collections.Counter = collections.Counter()

    def validate(self, record: DHTRecord) -> bool:
        """True iff ``record`` is a valid, unexpired dai_swarm envelope bound to its key and subkey."""
        try:
            check_dht_record(record, now=time.time())
        except RecordRejected as e:
            reason = reason_of(e)
            self.counters[reason] += 1
            logger.debug("refused DHT record (%s): %s", reason, e)
            return False
        self.counters["accepted"] += 1
        return True

    @property
    def priority(self) -> int:
        """Run before any deserializing validator (we see raw values)."""
        return 10

    def merge_with(self, other: RecordValidatorBase) -> bool:
        """Two instances of this validator are one."""
        return isinstance(other, SwarmRecordValidator)


def open_dictionary(key: str, found: Any, cache: EnvelopeCache, expected_type: str,
                    run_id: str) -> tuple[list[SignedRecord], Counter, int]:
    """The records of a DHT dictionary value read under ``key`` (``found``: hivemind's
    ``ValueWithExpiration`` or None) that pass every envelope check, sorted by signer; the dropped
    ones counted by reason; the bytes read."""
    drops: Counter = Counter()
    if found is None:
        return [], drops, 0
    if not isinstance(found.value, dict):
        drops["malformed"] += 1
        return [], drops, 0
    size = sum(len(i.value) for i in found.value.values() if isinstance(i.value, bytes))
    now, out = time.time(), []
    for subkey, item in found.value.items():
        try:
            if not isinstance(subkey, str):
                raise RecordRejected("subkey is not a string")
            signed = cache.open(item.value, now=now, expected_key=key, expected_type=expected_type,
                                expected_run_id=run_id, expected_subkey=subkey)
            if item.expiration_time != signed.expiration:
                raise RecordRejected("DHT expiration differs from the signed expiration")
        except RecordRejected as e:
            drops[reason_of(e) if type(e) is not RecordRejected else "forged"] += 1
            logger.debug("dropped record under %s: %s", key, e)
            continue
        out.append(signed)
    out.sort(key=lambda s: s.signer)
    return out, drops, size
