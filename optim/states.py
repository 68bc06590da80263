"""Canonical base states: what every honest peer of a region holds at the start of a round.

A :class:`BaseState` is the model parameters plus the outer optimiser's momentum, both float32 on
the CPU, named and hashed with :func:`dai_swarm.canonical.state_hash`. Its snapshot blob (the
deterministic ``none``-codec frame of all tensors) is content-addressed like any payload, so a
joiner can fetch it in ranges from several donors and check it twice: the digest of the bytes, then
the state hash of the decoded tensors against the region's majority (I6).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Mapping

import torch

from dai_swarm.canonical import canonical_json, sha256_hex, state_hash
from dai_swarm.errors import DigestMismatch, ShapeMismatch

from . import codecs

__all__ = ["BaseState", "BaseStore"]


@dataclass(frozen=True)
class BaseState:
    """The canonical state at the start of round ``round``: params, momentum and their hash."""

    round: int
    params: Mapping[str, torch.Tensor]
    momentum: Mapping[str, torch.Tensor]
    hash: str = ""
    extra: Mapping = field(default_factory=dict)
    anchor: Mapping[str, torch.Tensor] = field(default_factory=dict)
    _blob: list = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def make(cls, round: int, params: Mapping[str, torch.Tensor], momentum: Mapping[str, torch.Tensor],
             extra: Mapping | None = None, anchor: Mapping[str, torch.Tensor] | None = None) -> "BaseState":
        """Build a state (tensors detached, float32, CPU, contiguous) and compute its hash.

        ``extra`` is JSON-able replicated state beside the tensors (reputation table, reward-log
        head); it is part of the hash and of the snapshot, so a re-sync restores it too. ``anchor``
        holds the parameters of the last cross-region merge (region deltas are measured against it).
        """
        p = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in params.items()}
        m = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in momentum.items()}
        extra = dict(extra or {})
        a = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in (anchor or {}).items()}
        return cls(round, p, m, state_hash(cls._named(p, m, extra, a)), extra, a)

    @classmethod
    def initial(cls, model: torch.nn.Module) -> "BaseState":
        """Round-0 state from a freshly built model: its parameters and zero momentum."""
        params = {k: v.detach().clone() for k, v in model.named_parameters()}
        return cls.make(0, params, {k: torch.zeros_like(v) for k, v in params.items()}, anchor=params)

    @staticmethod
    def _named(p: Mapping[str, torch.Tensor], m: Mapping[str, torch.Tensor], extra: Mapping | None = None,
               anchor: Mapping[str, torch.Tensor] | None = None) -> dict:
        out = {"p/" + k: v for k, v in p.items()}
        out.update({"m/" + k: v for k, v in m.items()})
        out.update({"a/" + k: v for k, v in (anchor or {}).items()})
        if extra:
            out["x/extra"] = torch.frombuffer(bytearray(canonical_json(dict(extra))), dtype=torch.uint8)
        return out

    def at_round(self, round: int) -> "BaseState":
        """The same tensors labelled as the base of another round (rounds 0 and 1 share θ0)."""
        return BaseState(round, self.params, self.momentum, self.hash, self.extra, self.anchor, self._blob)

    def blob(self) -> bytes:
        """Deterministic snapshot bytes (cached)."""
        if not self._blob:
            self._blob.append(codecs.encode(self._named(self.params, self.momentum, self.extra, self.anchor), "none"))
        return self._blob[0]

    @property
    def blob_digest(self) -> str:
        """SHA-256 of :meth:`blob`."""
        return sha256_hex(self.blob())

    @classmethod
    def from_blob(cls, round: int, blob: bytes, expected_hash: str, like: "BaseState") -> "BaseState":
        """Decode a downloaded snapshot; refuse it unless it has ``like``'s shapes and hashes to
        ``expected_hash`` (raises :class:`ShapeMismatch` / :class:`DigestMismatch`)."""
        expect = {n: (tuple(t.shape), t.dtype)
                  for n, t in cls._named(like.params, like.momentum, None, like.anchor).items()}
        tensors = codecs.decode(blob, max_bytes=len(blob) * 4 + (1 << 20))
        extra_t = tensors.pop("x/extra", None)
        if set(tensors) != set(expect) or any(tuple(tensors[n].shape) != s or tensors[n].dtype != d
                                              for n, (s, d) in expect.items()):
            raise ShapeMismatch("snapshot holds other tensors than the model")
        extra = {}
        if extra_t is not None:
            try:
                extra = json.loads(bytes(extra_t.numpy().tobytes()))
            except ValueError as e:
                raise ShapeMismatch(f"snapshot's replicated metadata is not JSON: {e}") from e
            if not isinstance(extra, dict):
                raise ShapeMismatch("snapshot's replicated metadata is not a JSON object")
        p = {k[2:]: v for k, v in tensors.items() if k.startswith("p/")}
        m = {k[2:]: v for k, v in tensors.items() if k.startswith("m/")}
        a = {k[2:]: v for k, v in tensors.items() if k.startswith("a/")}
        state = cls.make(round, p, m, extra, a)
        if state.hash != expected_hash:
            raise DigestMismatch(f"downloaded state hashes to {state.hash[:12]}, majority says {expected_hash[:12]}")
        return state


class BaseStore:
    """Base states by round, shared between the training thread and the coordinator."""

    def __init__(self, keep: int = 4):
        self.keep = keep
        self._states: dict[int, BaseState] = {}
        self._cond = threading.Condition()

    def put(self, state: BaseState) -> None:
        """Store (or replace) the base of ``state.round`` and wake waiters."""
        with self._cond:
            self._states[state.round] = state
            for r in sorted(self._states)[:-self.keep]:
                del self._states[r]
            self._cond.notify_all()

    def discard(self, round: int) -> None:
        """Stop holding the base of ``round`` (a state its region never confirmed; see
        :meth:`~.machine.RoundMachine.keeps_unconfirmed`)."""
        with self._cond:
            self._states.pop(round, None)

    def get(self, round: int) -> BaseState | None:
        """The base of ``round`` if held."""
        with self._cond:
            return self._states.get(round)

    def wait(self, round: int, timeout_s: float) -> BaseState | None:
        """Wait up to ``timeout_s`` for the base of ``round``."""
        with self._cond:
            self._cond.wait_for(lambda: round in self._states, timeout=timeout_s)
            return self._states.get(round)

    def latest(self) -> BaseState | None:
        """The newest base held."""
        with self._cond:
            return self._states[max(self._states)] if self._states else None

    def rounds(self) -> list[int]:
        """Rounds whose base is held, ascending."""
        with self._cond:
            return sorted(self._states)
