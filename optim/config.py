"""What the round protocol reads of its run and of the world around it: one frozen config, typed ports.

:class:`RunConfig` is built once when a peer starts (from the signed manifest, the task's batch
size and the caps derived from the model) and never changes: the driver, the merger and the
state sync read their settings here instead of reaching into the runtime. The clock is not in it:
with adaptive rounds it changes (:mod:`.schedule`), and the round machine follows it.

The ports are what the protocol needs from the outside, as :class:`typing.Protocol` types: a
:class:`RecordBoard` (the hivemind DHT in a peer; an in-memory board in unit tests; the
simulator's DHT model) and a :class:`Verifier` (spot checks; :class:`~.rules.NullVerifier` when
verification is off). Payloads travel over hivemind P2P streams (:mod:`.exchange`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable

from dai_swarm.errors import ConfigError

__all__ = ["RecordBoard", "RoundContext", "RunConfig", "Verifier"]


@dataclass(frozen=True)
class RunConfig:
    """A run's protocol settings as one peer holds them (see the module docstring).

    ``max_payload_bytes`` caps one update or region delta on the wire, ``max_decoded_bytes`` its
    decoded tensors, ``max_state_bytes`` a state snapshot; all three follow from the model and the
    codec (:func:`~.limits.derive_limits`).
    """

    run_id: str
    region: str
    codec: str
    batch_size: int
    max_inner_steps: int
    max_payload_bytes: int
    max_decoded_bytes: int
    max_state_bytes: int
    cross_region_period: int
    outer_lr: float
    outer_momentum: float
    codec_params: Mapping[str, Any] = field(default_factory=dict)
    delay_compensation: float = 1.0  # fraction of θ_{q+1} − θ_q added to the pseudo-gradient (rules.py)

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_inner_steps", "max_payload_bytes", "max_decoded_bytes", "max_state_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.cross_region_period, bool) or not isinstance(self.cross_region_period, int) \
                or self.cross_region_period < 0:
            raise ConfigError(f"cross_region_period must be an int >= 0, got {self.cross_region_period!r}")
        object.__setattr__(self, "codec_params", dict(self.codec_params))
        dc = self.delay_compensation
        if not isinstance(dc, (int, float)) or not 0.0 <= float(dc) <= 1.0:  # True/False mean 1/0
            raise ConfigError(f"delay_compensation must be in [0, 1], got {dc!r}")
        object.__setattr__(self, "delay_compensation", float(dc))

    @classmethod
    def from_manifest(cls, manifest: Any, region: str, batch_size: int, limits: Any,
                      max_payload_bytes: int | None = None) -> "RunConfig":
        """The config of a peer of ``region`` in the run ``manifest`` describes; ``limits`` from
        :func:`~.limits.derive_limits`; ``max_payload_bytes`` may only lower the derived cap."""
        payload = min(limits.max_payload_bytes, max_payload_bytes or limits.max_payload_bytes)
        return cls(run_id=manifest.run_id, region=region, codec=manifest.codec, batch_size=int(batch_size),
                   max_inner_steps=manifest.max_inner_steps, max_payload_bytes=payload,
                   max_decoded_bytes=limits.max_decoded_bytes, max_state_bytes=limits.max_state_bytes,
                   cross_region_period=manifest.cross_region_period, outer_lr=manifest.outer_lr,
                   outer_momentum=manifest.outer_momentum, codec_params=dict(manifest.codec_params),
                   delay_compensation=getattr(manifest, "delay_compensation", 1.0))


@runtime_checkable
class RecordBoard(Protocol):
    """Signed round records, one per signer and (kind, round): the DHT as the protocol sees it."""

    def publish_round_record(self, run_id: str, kind: str, round: int, body: dict, ttl_s: float = ...) -> bool:
        """Sign and store this peer's ``kind`` record of ``round``."""

    def get_round_records(self, run_id: str, kind: str, round: int, signers: Iterable[str] | None = None) -> Sequence[Any]:
        """The verified records (``.signer``, ``.body``, typed ``.wire``) of ``kind`` and ``round``
        (of ``signers`` only: required for kinds stored under one key per signer, e.g. votes)."""


@runtime_checkable
class Verifier(Protocol):
    """Spot checks as the round protocol drives them (:mod:`dai_swarm.verification.spotcheck`)."""

    def vote_verdicts(self, round: int) -> Iterable[str]:
        """Verdict ids to carry in this peer's vote of ``round``."""

    def on_close(self, round: int, book: Any, payloads: Mapping[str, Any], base: Any,
                 weights: Mapping[str, float] | None = None) -> None:
        """Round ``round`` closed here: schedule checks of some included updates (``weights``: their
        weights in this peer's aggregate)."""

    def vote_weights(self, extra: Mapping | None = None) -> Mapping[str, float]:
        """Standing weights from a state's replicated metadata (votes, verdict sets, state majorities)."""


class RoundContext(Protocol):
    """Everything the round driver (:class:`~.coordinator.Coordinator` and its mixins, the merger)
    reads of the peer it runs in; :class:`dai_swarm.runtime.RoundRuntime` provides it, unit tests a
    namespace with the parts they use. Fixed settings are in ``config``; the rest is live state."""

    config: RunConfig
    clock: Any  # the current RoundClock (replaced when the round schedule changes)
    identity: Any  # this peer's signing identity (``public_key_hex``)
    dht: RecordBoard
    verifier: Verifier
    strategy: Any  # the UpdateStrategy (optim/strategy.py)
    p2p: Any  # hivemind P2P replica for payload streams
    p2p_id: str
    netloop: Any  # the event loop thread that runs stream coroutines
    store: Any  # PayloadStore
    traffic: Any  # Traffic counters by link class
    like: Any  # a BaseState with the model's shapes
    lateness: Any  # how long this peer needs per round (adaptive rounds)
    counters: dict

    def vote_weights(self, extra: Mapping | None = None) -> Mapping[str, float]:
        """Standing weights from ``extra`` (default: the newest base's)."""

    def announcer(self, public_key: str) -> str | None:
        """The libp2p id of ``public_key``'s live peer record in this region, or None."""

    def refresh_peers(self) -> None:
        """Read the signed peer records again."""

    def region_mates(self) -> list[str]:
        """libp2p ids of this region's live peers."""

    def link_of_p2p(self, p2p_id: str) -> str:
        """``"intra"`` or ``"cross"``: the link class to a peer."""

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the status counter ``name``."""
