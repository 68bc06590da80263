"""The protocol's round records on the wire: one strict schema per kind, in one place.

Six kinds of round record carry the protocol (the kind's first dotted part names it; the rest is
the region, e.g. ``vote.r0``):

==========  ============================================================  ========================
kind        what                                                          written by
==========  ============================================================  ========================
update      an update announcement (I3): digest, size, base, claimed work  ``Coordinator.announce``
vote        a closed round's inclusion, state hash and verdict ids        ``Coordinator.close_round``
state       a snapshot offer: state hash, blob digest, chunking, donor     ``download.state_record``
xdelta      a region's merge delta at a cross-region sync round           ``CrossRegionMerger.merge``
verdict     a verifier's verdicts of one round (each checked by its own    ``verification.spotcheck``
            parser, :meth:`~dai_swarm.verification.verdicts.Verdict.from_body`)
loghead     a peer's reward-log round-chain head                          ``roundlog.write_round_record``
==========  ============================================================  ========================

Every body is validated against its model when a :class:`~.records.RoundRecord` is built, i.e.
once where a record is read from the DHT (inside the envelope check, whose verdicts are cached)
and once where one is written: a malformed body never reaches the protocol, and the reader counts
it under ``malformed`` (``SwarmDHT.read_drops``), as hivemind's ``SchemaValidator`` does for its
records. Models are strict (no type coercion, no unknown fields, finite numbers); the size caps
that do not depend on the run live here. Caps that do (the run's payload cap) stay with the rule
that uses them.
"""

from __future__ import annotations

from typing import Annotated, Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from ..errors import MalformedRecord

__all__ = ["FeedbackCommitBody", "Hex64", "LogHeadBody", "MAX_INCLUSION", "MAX_NEED_S", "StateBody", "UpdateBody",
           "VerdictsBody",
           "VoteBody", "WIRE_KINDS", "XDeltaBody", "parse_wire", "typed", "wire_kind"]

#: a lowercase hex SHA-256 digest or state hash
Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
#: a lowercase hex public key (ed25519 keys are 64 characters)
PeerKey = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{2,256}$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Short = Annotated[str, StringConstraints(max_length=128)]
Count = Annotated[int, Field(ge=0, le=(1 << 63) - 1)]
Positive = Annotated[int, Field(gt=0, le=(1 << 63) - 1)]

MAX_NEED_S = 86400.0  #: a round length report above a day is malformed
MAX_INCLUSION = 4096  #: digests one vote may include (a region's updates of one round)
MAX_VERDICT_IDS = 4096  #: verdict ids one vote may carry
MAX_VERDICTS = 256  #: verdicts in one verifier's record of one round


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    def body(self) -> dict:
        """The JSON object to publish (fields left at ``None`` are left out)."""
        return self.model_dump(mode="json", exclude_none=True)


class FeedbackCommitBody(_Wire):
    """A ``sparse`` update's commitment to the author's error-feedback buffer
    (:class:`~dai_swarm.optim.feedback_chain.FeedbackCommit`): Merkle roots before and after the
    round and the digests of the stored buffer blobs (``pre_blob`` empty for the zero buffer)."""

    pre: Hex64
    post: Hex64
    pre_blob: Annotated[str, StringConstraints(pattern=r"^([0-9a-f]{64})?$")]
    post_blob: Hex64


class UpdateBody(_Wire):
    """An update announcement (I3); ``ef`` only in ``sparse`` runs."""

    run_id: Name
    round: Count
    base_hash: Hex64
    peer: PeerKey
    steps: Count
    samples: Count
    codec: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    digest: Hex64
    size_bytes: Count
    region: Short = ""
    p2p_id: Short = ""
    need_s: Annotated[float, Field(ge=0.0, le=MAX_NEED_S)] | None = None
    ef: FeedbackCommitBody | None = None


class VoteBody(_Wire):
    """A vote on a closed round: its inclusion, the state hash computed from it, and the verdict ids."""

    inclusion: Annotated[list[Hex64], Field(max_length=MAX_INCLUSION)]
    state_hash: Hex64
    verdicts: Annotated[list[Hex64], Field(max_length=MAX_VERDICT_IDS)] = []


class StateBody(_Wire):
    """A snapshot offer: served in chunks of ``chunk_bytes`` whose hash list hashes to ``chunks_digest``."""

    state_hash: Hex64
    digest: Hex64
    size: Positive
    p2p_id: Short
    chunk_bytes: Positive
    chunks_digest: Hex64


class XSchedule(_Wire):
    """A region's round schedule at a sync round (rounds from ``since`` start at ``start + (r -
    since) * round_s``) and the length ``want`` its agreed updates asked for since the last merge."""

    since: Count
    start: Annotated[float, Field(ge=0)]
    round_s: Annotated[float, Field(gt=0, le=86_400)]
    want: Annotated[float, Field(gt=0, le=86_400)]


class XDeltaBody(_Wire):
    """A region's delta at a sync round; ``anchor`` is ``"%08d:<state hash>"`` (merges behind it);
    ``schedule`` only in runs whose rounds adapt (optim/schedule.py)."""

    region: Name
    digest: Hex64
    size: Positive
    samples: Count
    p2p_id: Short
    anchor: Annotated[str, StringConstraints(pattern=r"^[0-9]{8}:[0-9a-f]{64}$")]
    schedule: XSchedule | None = None


class VerdictsBody(_Wire):
    """A verifier's verdicts of one round; each one is parsed by its own strict parser, so one bad
    verdict costs only itself."""

    verdicts: Annotated[list[dict[str, Any]], Field(max_length=MAX_VERDICTS)]


class LogHeadBody(_Wire):
    """A peer's reward-log head: the round-chain hash and how many rounds it covers."""

    round_chain_head: Hex64
    rounds: Count


#: the protocol's record kinds (first dotted part of a round record's kind) and their schemas
WIRE_KINDS: dict[str, type[_Wire]] = {"update": UpdateBody, "vote": VoteBody, "state": StateBody,
                                      "xdelta": XDeltaBody, "verdict": VerdictsBody, "loghead": LogHeadBody}


def wire_kind(kind: str) -> str:
    """The protocol kind of a record kind (``"vote.r0"`` -> ``"vote"``)."""
    return kind.split(".", 1)[0]


def parse_wire(kind: str, body: Any) -> _Wire | None:
    """The typed body of a ``kind`` record (None for a kind that is not a protocol kind); raise
    :class:`~dai_swarm.errors.MalformedRecord` naming the first problem."""
    model = WIRE_KINDS.get(wire_kind(kind))
    if model is None:
        return None
    if not isinstance(body, Mapping):
        raise MalformedRecord(f"{kind} record body is not a JSON object")
    try:
        return model.model_validate(dict(body))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())) or "body"
        raise MalformedRecord(f"{kind} record: {where}: {first.get('msg', 'invalid')}") from None


def typed(record: Any, kind: str) -> _Wire:
    """The typed body of a round ``record``: the one validated when it was read from the DHT, or
    (for an in-memory record board) parsed now. Raise MalformedRecord."""
    wire = getattr(record, "wire", None)
    if isinstance(wire, WIRE_KINDS.get(wire_kind(kind), ())):
        return wire
    parsed = parse_wire(kind, record.body)
    if parsed is None:
        raise MalformedRecord(f"{kind} is not a protocol record kind")
    return parsed
