"""The protocol's round records on the wire (dht/wire.py): one strict schema per kind."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from dai_swarm.dht.envelope import open_envelope, seal
from dai_swarm.dht.records import RoundRecord
from dai_swarm.dht.wire import MAX_INCLUSION, WIRE_KINDS, StateBody, VoteBody, parse_wire, typed
from dai_swarm.errors import MalformedRecord
from dai_swarm.identity import Identity

H = "ab" * 32
GOOD = {
    "update": dict(run_id="run", round=3, base_hash=H, peer="cd" * 32, steps=4, samples=128, codec="int8", digest=H,
                   size_bytes=100, region="r0", p2p_id="12D3KooWx"),
    "vote": dict(inclusion=[H], state_hash=H, verdicts=[]),
    "state": dict(state_hash=H, digest=H, size=10, p2p_id="p", chunk_bytes=1 << 20, chunks_digest=H),
    "xdelta": dict(region="r1", digest=H, size=10, samples=5, p2p_id="p", anchor=f"{2:08d}:{H}"),
    "verdict": dict(verdicts=[{"anything": 1}]),
    "loghead": dict(round_chain_head=H, rounds=3),
}


def test_every_protocol_kind_has_a_schema_and_its_good_body_parses():
    assert set(WIRE_KINDS) == set(GOOD)
    for kind, body in GOOD.items():
        w = parse_wire(f"{kind}.r0", body)
        assert type(w) is WIRE_KINDS[kind] and w.body() == body


@pytest.mark.parametrize("kind,change", [
    ("update", {"steps": True}),  # a bool is not a count
    ("update", {"steps": 4.0}),  # no coercion
    ("update", {"digest": "AB" * 32}),  # lowercase hex only
    ("update", {"need_s": math.nan}),
    ("update", {"need_s": 1e9}),  # over a day
    ("update", {"extra": 1}),  # unknown field
    ("vote", {"inclusion": ["x"]}),
    ("vote", {"inclusion": [H] * (MAX_INCLUSION + 1)}),
    ("state", {"size": 0}),
    ("state", {"chunks_digest": 5}),
    ("xdelta", {"anchor": f"2:{H}"}),
    ("xdelta", {"samples": -1}),
    ("verdict", {"verdicts": [{}] * 257}),
    ("loghead", {"rounds": "3"}),
])
def test_malformed_bodies_are_refused_with_the_field_named(kind, change):
    field = next(iter(change))
    with pytest.raises(MalformedRecord, match=field if field != "extra" else "extra"):
        parse_wire(kind, {**GOOD[kind], **change})


def test_other_kinds_pass_and_non_objects_are_refused():
    assert parse_wire("note.r0", {"x": 1}) is None
    with pytest.raises(MalformedRecord):
        parse_wire("vote", ["not", "an", "object"])


def test_a_round_record_carries_its_typed_body_and_refuses_a_malformed_one():
    rec = RoundRecord(kind="vote.r0", round=2, body=GOOD["vote"])
    assert rec.wire == VoteBody(**GOOD["vote"])
    with pytest.raises(ValueError):
        RoundRecord(kind="vote.r0", round=2, body={"inclusion": "x", "state_hash": H})
    ident = Identity.generate()
    signed = open_envelope(seal(ident, RoundRecord(kind="state.r0", round=4, body=GOOD["state"]), run_id="run",
                                ttl_s=30))
    assert isinstance(signed.wire, StateBody) and typed(signed, "state.r0") is signed.wire
    # a signed envelope whose body breaks the schema (built around the check) is refused on read
    bad = RoundRecord.model_construct(kind="vote.r0", round=2, body={"inclusion": ["x"], "state_hash": H})
    with pytest.raises(MalformedRecord):
        open_envelope(seal(ident, bad, run_id="run", ttl_s=30))


def test_typed_parses_records_of_an_in_memory_board():
    assert typed(SimpleNamespace(body=GOOD["xdelta"]), "xdelta").samples == 5
    with pytest.raises(MalformedRecord):
        typed(SimpleNamespace(body={"region": "r1"}), "xdelta")
    with pytest.raises(MalformedRecord):
        typed(SimpleNamespace(body={}), "note")
