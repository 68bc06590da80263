"""Signed envelopes and the DHT validator: signature, tampering, moved records, replay, size cap."""

import json
import time

import msgpack
import pytest
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord
from hivemind.utils.serializer import MSGPackSerializer

from dai_swarm.canonical import canonical_json
from dai_swarm.dht.envelope import MAX_RECORD_BYTES, open_envelope, seal
from dai_swarm.dht.keys import peers_key, round_key
from dai_swarm.dht.records import PeerRecord, RoundRecord, RunManifest, parse_body, validate_maddr
from dai_swarm.dht.regions import founded_region_name, pick_region
from dai_swarm.dht.validator import SwarmRecordValidator, check_dht_record
from dai_swarm.errors import ConfigError, ExpiredRecord, ForgedRecord, MalformedRecord
from dai_swarm.identity import Identity

PEER_ID = "12D3KooWJQj9LupCFFMxY7goNMC2XNR4GSdm49WXRJ5GFZ1K6pZU"


@pytest.fixture(scope="module")
def ident():
    return Identity.generate()


def _round(ident, ttl_s=60.0, issued_at=None, run_id="run1", round_=3):
    return seal(ident, RoundRecord(kind="note", round=round_, body={"digest": "ab" * 32, "samples": 128}),
                run_id=run_id, ttl_s=ttl_s, issued_at=issued_at)


def _resign(ident, fields):
    unsigned = {k: v for k, v in fields.items() if k != "sig"}
    fields = dict(fields, sig=ident.sign(canonical_json(unsigned)).hex())
    return canonical_json(fields)


def test_roundtrip(ident):
    signed = open_envelope(_round(ident))
    assert signed.signer == ident.public_key_hex == signed.subkey
    assert signed.body == {"digest": "ab" * 32, "samples": 128}
    assert (signed.kind, signed.round, signed.key) == ("note", 3, round_key("run1", "note", 3))
    assert signed.expiration - signed.issued_at == pytest.approx(60.0)


@pytest.mark.parametrize("field,value", [
    ("type", "peer"), ("run_id", "run2"), ("key", round_key("run1", "note", 4)), ("issued_at", 1.0),
    ("expiration", 4e9), ("body", {"kind": "note", "round": 4, "body": {}}), ("v", 2),
])
def test_tampering_any_field_breaks_signature(ident, field, value):
    fields = json.loads(_round(ident))
    fields[field] = value
    with pytest.raises((ForgedRecord, MalformedRecord)):
        open_envelope(canonical_json(fields))


def test_tampered_signature_and_foreign_signer(ident):
    fields = json.loads(_round(ident))
    fields["sig"] = fields["sig"][:-2] + ("00" if fields["sig"][-2:] != "00" else "01")
    with pytest.raises(ForgedRecord, match="bad signature"):
        open_envelope(canonical_json(fields))
    other = Identity.generate()
    fields = json.loads(_round(ident))
    fields["signer"] = other.public_key_hex  # claim another key, keep our signature
    with pytest.raises(ForgedRecord):
        open_envelope(canonical_json(fields))


def test_subkey_must_be_signer(ident):
    other = Identity.generate()
    fields = json.loads(_round(ident))
    fields["subkey"] = other.public_key_hex  # validly re-signed, but writes another peer's slot
    with pytest.raises(ForgedRecord, match="subkey"):
        open_envelope(_resign(ident, fields))


def test_moved_record_refused_even_if_resigned(ident):
    fields = json.loads(_round(ident))
    fields["key"] = round_key("run1", "note", 9)  # content says round 3
    with pytest.raises(MalformedRecord, match="key its content implies"):
        open_envelope(_resign(ident, fields))


def test_replay_after_expiration(ident):
    old = _round(ident, ttl_s=5.0, issued_at=time.time() - 100)
    with pytest.raises(ExpiredRecord):
        open_envelope(old)
    future = _round(ident, ttl_s=5.0, issued_at=time.time() + 3600)
    with pytest.raises(ExpiredRecord, match="implausible"):
        open_envelope(future)


def test_oversize_checked_before_parsing(ident):
    with pytest.raises(MalformedRecord, match="cap") as info:
        open_envelope(b"{" * (MAX_RECORD_BYTES + 1))
    assert info.value.reason == "oversized"
    with pytest.raises(MalformedRecord, match="cap"):
        seal(ident, RoundRecord(kind="note", round=0, body={"x": "y" * MAX_RECORD_BYTES}), run_id="r", ttl_s=5)


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b'{"v":1}', "é".encode("latin-1"), b'{"a":NaN}'])
def test_malformed(data):
    with pytest.raises(MalformedRecord):
        open_envelope(data)


def test_bad_ttl(ident):
    for ttl in (0, -1, 1e9, float("nan")):
        with pytest.raises(MalformedRecord):
            _round(ident, ttl_s=ttl)


def test_schemas():
    with pytest.raises(MalformedRecord):
        parse_body("peer", {"run_id": "r", "peer_id": "nope", "maddrs": [], "region": "eu", "version": "1",
                            "public_key": "00" * 32})
    with pytest.raises(MalformedRecord):
        parse_body("manifest", {"run_id": "r"})
    with pytest.raises(MalformedRecord, match="unknown record type"):
        parse_body("nope", {})
    rec = parse_body("peer", {"run_id": "r", "peer_id": PEER_ID, "maddrs": ["/ip4/127.0.0.1/tcp/1"], "region": "eu",
                              "version": "1", "public_key": "00" * 32, "future_field": 7})
    assert rec.to_body()["future_field"] == 7  # extra fields pass through
    for bad in ("", "/ip4/999.0.0.1/tcp/1", "ip4/1.2.3.4", "/ip4/1.2.3.4/tcp/notaport"):
        with pytest.raises(ConfigError):
            validate_maddr(bad)
    m = RunManifest(run_id="r", task="tinylm", task_config_hash="00", round_s=10, cross_region_period=4,
                    max_inner_steps=100, outer_lr=0.7, outer_momentum=0.9, codec="int8", checks_per_update=0.2,
                    seed=1, t0=1.0, versions={"torch": "2.13.0"})
    assert parse_body("manifest", m.to_body()) == m


def _dht_record(ident, data, key=None, subkey=None, expiration=None):
    signed = open_envelope(data)
    return DHTRecord(
        key=DHTID.generate(source=key or signed.key).to_bytes(),
        subkey=MSGPackSerializer.dumps(subkey or signed.subkey),
        value=MSGPackSerializer.dumps(data),
        expiration_time=signed.expiration if expiration is None else expiration,
    )


def test_validator_binds_hashed_key_subkey_expiration(ident):
    v = SwarmRecordValidator()
    data = _round(ident)
    assert v.validate(_dht_record(ident, data))
    assert not v.validate(_dht_record(ident, data, key=round_key("run1", "note", 4)))
    assert not v.validate(_dht_record(ident, data, subkey=Identity.generate().public_key_hex))
    assert not v.validate(_dht_record(ident, data, expiration=open_envelope(data).expiration + 1000))
    assert not v.validate(DHTRecord(b"k" * 20, b"s", msgpack.packb([1, 2]), time.time() + 10))
    assert not v.validate(DHTRecord(b"k" * 20, b"s", b"\xc6" + b"\xff" * 8, time.time() + 10))
    assert not v.validate(DHTRecord(b"k" * 20, b"s", b"x" * (MAX_RECORD_BYTES + 100), time.time() + 10))
    assert v.counters == {"accepted": 1, "forged": 3, "malformed": 2, "oversized": 1}
    with pytest.raises(ExpiredRecord):
        check_dht_record(_dht_record(ident, data), now=time.time() + 61)


def test_peer_record_key(ident):
    rec = PeerRecord(run_id="run1", peer_id=PEER_ID, maddrs=("/ip4/127.0.0.1/tcp/5",), region="eu", version="0",
                     public_key=ident.public_key_hex)
    assert open_envelope(seal(ident, rec, run_id="run1", ttl_s=5)).key == peers_key("run1")
    with pytest.raises(MalformedRecord):
        seal(ident, rec, run_id="run2", ttl_s=5)  # body says run1


def test_pick_region_rule():
    rtts = {"eu": {"a": 0.010, "b": 0.012, "c": None}, "us": {"d": 0.002}, "asia": {"e": None}}
    assert pick_region(rtts, threshold_s=0.05) == ("us", 0.002)
    assert pick_region(rtts, threshold_s=0.001) == (None, None)
    assert pick_region({}, 1.0) == (None, None)
    assert founded_region_name("run", "ab" * 32) == founded_region_name("run", "ab" * 32)
    assert founded_region_name("run", "ab" * 32) != founded_region_name("run", "cd" * 32)


def test_envelope_cache_verifies_once_and_still_expires_and_refuses(monkeypatch):
    """A thousand-vote read costs one signature check per record, not one per read; a cached
    record still expires; forged or non-bytes values are refused and never cached."""
    from dai_swarm.dht import envelope
    from dai_swarm.dht.envelope import EnvelopeCache
    from dai_swarm.dht.records import RoundRecord
    from dai_swarm.errors import ExpiredRecord, ForgedRecord, MalformedRecord
    from dai_swarm.identity import Identity

    calls = []
    real = envelope.verify_signature
    monkeypatch.setattr(envelope, "verify_signature", lambda *a: calls.append(1) or real(*a))
    key = round_key("run", "note.a", 3)
    ids = [Identity.generate() for _ in range(20)]
    now = time.time()
    data = [seal(i, RoundRecord(kind="note.a", round=3, body={"n": 1}), run_id="run", ttl_s=60, issued_at=now)
            for i in ids]
    cache = EnvelopeCache()
    kw = dict(expected_key=key, expected_type="round", expected_run_id="run")
    for _ in range(5):
        got = [cache.open(d, now=now, expected_subkey=i.public_key_hex, **kw) for d, i in zip(data, ids)]
    assert len(calls) == 20 and {g.signer for g in got} == {i.public_key_hex for i in ids}
    with pytest.raises(ExpiredRecord):
        cache.open(data[0], now=now + 61, expected_subkey=ids[0].public_key_hex, **kw)
    forged = data[1].replace(b'"n":1', b'"n":2')
    for _ in range(2):
        with pytest.raises(ForgedRecord):
            cache.open(forged, now=now, expected_subkey=ids[1].public_key_hex, **kw)
    with pytest.raises(ForgedRecord):  # the same bytes under another subkey are checked, not served
        cache.open(data[2], now=now, expected_subkey=ids[3].public_key_hex, **kw)
    with pytest.raises(MalformedRecord):
        cache.open(10**9, now=now, expected_subkey=ids[0].public_key_hex, **kw)


def test_votes_have_one_key_per_signer():
    """A vote's key names its signer: a record sealed by one key cannot live under another's vote key."""
    alice, bob = Identity.generate(), Identity.generate()
    vote = RoundRecord(kind="vote.r0", round=3, body={"inclusion": [], "state_hash": "ab" * 32, "verdicts": []})
    assert round_key("run", "vote.r0", 3, alice.public_key_hex).endswith("/3/" + alice.public_key_hex)
    assert round_key("run", "update.r0", 3, alice.public_key_hex) == round_key("run", "update.r0", 3)
    with pytest.raises(ValueError, match="per signer"):
        round_key("run", "vote.r0", 3)
    data = seal(alice, vote, run_id="run", ttl_s=30)
    assert open_envelope(data).key == round_key("run", "vote.r0", 3, alice.public_key_hex)
    with pytest.raises(MalformedRecord, match="belongs under"):
        seal(alice, vote, run_id="run", ttl_s=30, key=round_key("run", "vote.r0", 3, bob.public_key_hex))
    fields = json.loads(data)
    with pytest.raises(ForgedRecord):  # the key field edited: the signature no longer holds
        open_envelope(canonical_json({**fields, "key": round_key("run", "vote.r0", 3, bob.public_key_hex)}))
