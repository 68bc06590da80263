"""Typed record schemas stored in the DHT: run manifest, peer record, region membership, round record.

Each record is a frozen pydantic model whose fields are checked on parse; the wire form of a record
is its ``body`` (a JSON object) inside a signed envelope (:mod:`dai_swarm.dht.envelope`). Unknown
fields are refused, except in :class:`PeerRecord`, which passes extra fields through so that later
versions can add metrics (round, state hash, reputation) without breaking older readers.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from ..errors import ConfigError, MalformedRecord
from .wire import parse_wire

__all__ = [
    "RECORD_TYPES",
    "PeerRecord",
    "RegionMembership",
    "ResumePoint",
    "RoundRecord",
    "RunManifest",
    "parse_body",
    "validate_maddr",
    "validate_name",
    "validate_peer_id",
]

_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_FOUNDERS = 16
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def validate_name(value: str, what: str = "name") -> str:
    """Check a run id, region name or record kind: 1-128 chars of ``[A-Za-z0-9._:-]``; raise ConfigError."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ConfigError(f"invalid {what} {value!r}: use 1-128 characters from [A-Za-z0-9._:-], not starting with a symbol")
    return value


def validate_maddr(value: str) -> str:
    """Parse ``value`` with the ``multiaddr`` package; return its canonical string or raise ConfigError."""
    from multiaddr import Multiaddr
    from multiaddr.exceptions import Error as MultiaddrError

    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigError(f"malformed multiaddr {value!r}: it must start with '/' (e.g. /ip4/127.0.0.1/tcp/31337/p2p/Qm...)")
    try:
        return str(Multiaddr(value))
    except (MultiaddrError, ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"malformed multiaddr {value!r}: {e}") from e


_PEER_ID_RE = re.compile(r"^(Qm[1-9A-HJ-NP-Za-km-z]{44}|12D3KooW[1-9A-HJ-NP-Za-km-z]{44})$")


def validate_peer_id(value: str) -> str:
    """Check a libp2p peer id (base58 ``Qm...`` or ``12D3KooW...``); raise ValueError."""
    from hivemind.p2p import PeerID

    if not isinstance(value, str) or not _PEER_ID_RE.match(value):
        raise ValueError(f"not a libp2p peer id: {value!r}")
    try:
        if PeerID.from_base58(value).to_base58() != value:
            raise ValueError(f"not a canonical libp2p peer id: {value!r}")
    except ValueError:
        raise
    except Exception as e:  # base58 / multihash errors come in several types
        raise ValueError(f"not a libp2p peer id: {value!r}") from e
    return value


class _Record(BaseModel):
    """Common configuration: frozen, strict about unknown fields, JSON-compatible values only."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    TYPE: ClassVar[str] = ""

    def to_body(self) -> dict:
        """The JSON object that goes into the signed envelope."""
        return self.model_dump(mode="json")


class ResumePoint(BaseModel):
    """Where a resumed run starts: the exported state (``state_hash``), the round whose base it is
    (``round``) and the manifest hash of the run generation it came from (``parent``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    parent: str = Field(pattern=r"^[0-9a-f]{64}$")
    round: int = Field(ge=2)
    state_hash: str = Field(pattern=r"^[0-9a-f]{64}$")


class RunManifest(_Record):
    """What a run is: task, its config hash, round clock, optimiser and codec settings, versions.

    Peers refuse to join a run whose manifest does not match their task (SPEC §4). ``founders``
    are the 64-hex ed25519 public keys of the run's founders (the creator's key, filled in by the
    ``Swarm`` that creates the run); a manifest record counts only if one of them signed it.
    ``delay_compensation`` is the fraction of the delay compensation in the outer step
    (:func:`dai_swarm.optim.rules.compute_next_base`; 1 unless the run set another). ``round_s`` is the round length; with ``round_s_max`` it is the first rounds' length and rounds
    then adapt to what the swarm measures, up to ``round_s_max`` (:attr:`round_bounds`). ``resume`` (absent in a run's first generation) names the exported state a later generation
    starts from (``dai-swarm peer --resume DIR``); its rounds continue the parent's numbering, so
    round ``resume.round`` starts at ``t0 + resume.round * round_s``.
    """

    TYPE: ClassVar[str] = "manifest"
    run_id: str
    task: str
    task_config_hash: str
    round_s: float = Field(gt=0)
    round_s_max: float | None = Field(default=None, gt=0)  # adaptive rounds up to this (None: fixed rounds)
    cross_region_period: int = Field(ge=1)
    max_inner_steps: int = Field(ge=1)
    outer_lr: float = Field(gt=0)
    outer_momentum: float = Field(ge=0, lt=1)
    delay_compensation: float = Field(default=1.0, ge=0, le=1)  # fraction of θ_{q+1} − θ_q in the outer step
    codec: str
    codec_params: dict[str, Any] = Field(default_factory=dict)
    checks_per_update: float = Field(ge=0, le=1024)
    seed: int
    t0: float
    versions: dict[str, str] = Field(default_factory=dict)
    founders: tuple[str, ...] = ()
    resume: ResumePoint | None = None

    @field_validator("run_id")
    @classmethod
    def _check_run_id(cls, v: str) -> str:
        return validate_name(v, "run id")

    @property
    def first_round(self) -> int:
        """The round this generation starts at: 0, or the resume point's round."""
        return self.resume.round if self.resume is not None else 0

    @property
    def round_bounds(self) -> tuple[float, float]:
        """Adaptive round lengths stay in ``[round_s, round_s_max]`` (optim/schedule.py); without
        ``round_s_max`` (or with it equal to ``round_s``) the run keeps fixed rounds."""
        hi = self.round_s_max if self.round_s_max is not None else self.round_s
        return self.round_s, max(self.round_s, hi)

    @property
    def start_time(self) -> float:
        """When this generation's first round starts (Unix seconds)."""
        return self.t0 + self.first_round * self.round_s

    def to_body(self) -> dict:
        """The signed JSON object; ``resume`` only when set (a first generation's hash is unchanged)."""
        body = self.model_dump(mode="json")
        for name in ("resume", "round_s_max"):
            if body.get(name) is None:
                body.pop(name, None)
        if body.get("delay_compensation") == 1.0:  # the default: manifests from before it keep their hash
            body.pop("delay_compensation")
        return body

    @field_validator("founders")
    @classmethod
    def _check_founders(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(v) > MAX_FOUNDERS:
            raise ValueError(f"at most {MAX_FOUNDERS} founders")
        if len(set(v)) != len(v) or not all(isinstance(k, str) and _KEY_RE.match(k) for k in v):
            raise ValueError("founders must be distinct 64-hex ed25519 public keys")
        return v


class PeerRecord(_Record):
    """A live peer: libp2p id, reachable multiaddrs, region, version, role, throughput, public key.

    Extra fields (metrics added by later versions) are kept and passed through.
    """

    model_config = ConfigDict(frozen=True, extra="allow", allow_inf_nan=False)
    TYPE: ClassVar[str] = "peer"
    run_id: str
    peer_id: str
    maddrs: tuple[str, ...]
    region: str
    version: str
    role: str = "trainer"
    throughput: float = Field(default=0.0, ge=0)
    public_key: str = Field(pattern=r"^[0-9a-f]{64}$")
    metrics: dict[str, Any] = Field(default_factory=dict)

    @field_validator("run_id")
    @classmethod
    def _check_run_id(cls, v: str) -> str:
        return validate_name(v, "run id")

    @field_validator("region")
    @classmethod
    def _check_region(cls, v: str) -> str:
        return validate_name(v, "region")

    @field_validator("peer_id")
    @classmethod
    def _check_peer_id(cls, v: str) -> str:
        return validate_peer_id(v)

    @field_validator("maddrs")
    @classmethod
    def _check_maddrs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(v) > 16:
            raise ValueError("at most 16 multiaddrs")
        return tuple(validate_maddr(m) for m in v)


class RegionMembership(_Record):
    """A peer's membership in a region of a run (one per peer, subkeyed by its public key)."""

    TYPE: ClassVar[str] = "region"
    run_id: str
    region: str
    peer_id: str
    median_rtt_s: float | None = Field(default=None, ge=0)

    @field_validator("run_id", "region")
    @classmethod
    def _check_names(cls, v: str) -> str:
        return validate_name(v)

    @field_validator("peer_id")
    @classmethod
    def _check_peer_id(cls, v: str) -> str:
        return validate_peer_id(v)


class RoundRecord(_Record):
    """A generic round-keyed record: update announcements, votes, verdicts, state and log heads.

    ``kind`` names the family (e.g. ``"update"``, ``"vote"``), ``round`` the round it belongs to,
    ``body`` the kind-specific content: for the protocol's kinds validated here against their
    schema (:mod:`.wire`), so that a malformed body is refused where the record is read.
    """

    TYPE: ClassVar[str] = "round"
    kind: str
    round: int = Field(ge=0)
    body: dict[str, Any]
    _wire: Any = PrivateAttr(default=None)

    @field_validator("kind")
    @classmethod
    def _check_kind(cls, v: str) -> str:
        return validate_name(v, "record kind")

    @model_validator(mode="after")
    def _check_body(self) -> "RoundRecord":
        try:  # a protocol kind's body must match its schema (dht/wire.py); other kinds pass as they are
            self._wire = parse_wire(self.kind, self.body)
        except MalformedRecord as e:
            raise ValueError(str(e)) from None
        return self

    @property
    def wire(self) -> Any:
        """The typed body (:mod:`.wire`) of a protocol record kind, else None."""
        return self._wire


RECORD_TYPES: dict[str, type[_Record]] = {
    cls.TYPE: cls for cls in (RunManifest, PeerRecord, RegionMembership, RoundRecord)
}


def parse_body(record_type: str, body: Any) -> _Record:
    """Build the typed record of ``record_type`` from an untrusted ``body``; raise MalformedRecord."""
    cls = RECORD_TYPES.get(record_type)
    if cls is None:
        raise MalformedRecord(f"unknown record type {record_type!r}")
    if not isinstance(body, dict):
        raise MalformedRecord(f"{record_type} record body is not a JSON object")
    try:
        return cls.model_validate(body)
    except (ValidationError, ConfigError) as e:
        raise MalformedRecord(f"{record_type} record does not match its schema: {e}") from e
