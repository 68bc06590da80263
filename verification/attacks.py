"""The attack catalogue of SPEC §7, as Byzantine peer behaviours (tests and benchmarks only).

``make_attack(kind)`` returns an :class:`Attack`, an :class:`~dai_swarm.optim.strategy.UpdateStrategy`;
``dai-swarm peer --attack KIND`` and ``Swarm(attack=...)`` hand it to the round runtime in place of
the honest strategy, which calls

* ``tamper(delta, round) -> delta`` on the pseudo-gradient, ``tamper_blob(blob, round) -> bytes``
  on the encoded payload, ``claimed_steps(steps) -> int`` for the announcement,
* ``tamper_batch(batch) -> batch`` on every training batch (``Swarm.batches``),
* ``tamper_base(round, state) -> state`` on the base a candidate is computed from (``diverge@R``),
* ``bind(runtime)`` once, so that attacks that need the network (copy, verdict forgery) can use it.

Every method of the base class is the honest behaviour; each kind overrides what it attacks.
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping

import torch
import zstandard

from dai_swarm.errors import ConfigError
from dai_swarm.logging import get_logger
from dai_swarm.optim import codecs
from dai_swarm.optim.strategy import UpdateStrategy

__all__ = ["ATTACK_KINDS", "Attack", "make_attack"]

logger = get_logger(__name__)


class Attack(UpdateStrategy):
    """Honest behaviour; subclasses override one or more hooks. ``kind`` names the attack."""

    kind = "honest"

    def __init__(self) -> None:
        self.rt: Any = None
        self.gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
        self.rounds_attacked: list[int] = []

    def bind(self, runtime: Any) -> None:
        """Keep a reference to the round runtime (coordinator, DHT, verifier, store)."""
        self.rt = runtime

    # --- helpers for attacks that look at the others -----------------------------------------
    def _others_last(self) -> list[Mapping[str, torch.Tensor]]:
        """Other peers' decoded updates of the newest round this peer closed (via its verifier)."""
        held = getattr(getattr(self.rt, "verifier", None), "_held", None)
        if not held:
            return []
        me = self.rt.identity.public_key_hex
        last = held[max(held)]
        return [last["payloads"][d] for d, a in sorted(last["anns"].items()) if a.peer != me and d in last["payloads"]]


class _Scale(Attack):
    def __init__(self, factor: float, kind: str):
        super().__init__()
        self.factor, self.kind = factor, kind

    def tamper(self, delta: dict, round: int) -> dict:
        self.rounds_attacked.append(round)
        return {n: t * self.factor for n, t in delta.items()}


class _Gaussian(Attack):
    kind = "gaussian"

    def tamper(self, delta: dict, round: int) -> dict:
        self.rounds_attacked.append(round)
        return {n: t + t.abs().mean() * torch.randn(t.shape, generator=self.gen) * 3.0 for n, t in delta.items()}


class _ALIE(Attack):
    """"A little is enough": mean − z·std of the others' updates (own update as a fallback)."""

    kind = "alie"
    z = 1.0

    def tamper(self, delta: dict, round: int) -> dict:
        self.rounds_attacked.append(round)
        others = self._others_last()
        if len(others) >= 2:
            out = {}
            for n in delta:
                stack = torch.stack([o[n] for o in others] + [delta[n]])
                out[n] = stack.mean(0) - self.z * stack.std(0)
            return out
        return {n: t - self.z * t.abs() for n, t in delta.items()}


class _IPM(Attack):
    """Inner-product manipulation: −ε times the mean of the others' updates."""

    kind = "ipm"
    eps = 0.5

    def tamper(self, delta: dict, round: int) -> dict:
        self.rounds_attacked.append(round)
        others = self._others_last() or [delta]
        return {n: -self.eps * torch.stack([o[n] for o in others]).mean(0) for n in delta}


class _LabelFlip(Attack):
    kind = "label_flip"

    def tamper_batch(self, batch: Any) -> Any:
        if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], torch.Tensor):
            x, y = batch
            return (x, -y if y.is_floating_point() else y.flip(-1))
        return batch


class _Lazy(Attack):
    """Does half the inner steps it claims: its update is exactly what the honest loop gives after
    ``steps // 2`` steps (recomputed from the round's base), announced with the full step count."""

    kind = "lazy"

    def tamper(self, delta: dict, round: int) -> dict:
        from .recompute import recompute_update

        rt = self.rt
        steps = int(getattr(rt, "steps", 0))
        base = rt.bases.get(round) if rt is not None else None
        if base is None or steps < 2:
            return delta
        self.rounds_attacked.append(round)
        return recompute_update(rt.task, base.params, rt.run_id, rt.manifest.seed, rt.identity.public_key_hex,
                                round, steps // 2, raw=True)


class _Copy(Attack):
    """Announces another peer's payload of the same round as its own, else zeros: it never trains."""

    kind = "copy"
    wait_fraction = 0.25

    def tamper_blob(self, blob: bytes, round: int) -> bytes:
        from dai_swarm.optim.exchange import fetch_from_any

        rt = self.rt
        if rt is None:
            return blob
        me = rt.identity.public_key_hex
        deadline = time.time() + self.wait_fraction * rt.clock.round_s
        while time.time() < deadline:
            anns = [a for a in rt.coordinator._announcements(round) if a.peer != me]
            for a in sorted(anns, key=lambda a: a.digest):
                try:
                    got = rt.netloop.run(fetch_from_any(rt.p2p, rt.coordinator._providers_for(a.digest), rt.run_id,
                                                        a.digest, max_bytes=rt.max_payload_bytes, timeout_s=2.0,
                                                        traffic=rt.traffic), timeout_s=5.0)
                    self.rounds_attacked.append(round)
                    return got
                except Exception as e:
                    logger.debug("copy attack: fetch of %s failed: %s", a.digest[:12], e)
            time.sleep(0.1)
        zeros = {n: torch.zeros_like(t) for n, t in codecs.decode(blob).items()}  # no honest fallback
        return codecs.encode(zeros, rt.codec, **rt.codec_params)


class _FreeRide(Attack):
    """Free-rider: announces the last base step ``θ_{r-1} − θ_r`` (the previous aggregate) times
    ``factor`` as its round-``r`` work, with the full step count; before the base has moved, a
    rescaled copy of another peer's update of the newest round it closed, else zeros (no work)."""

    kind = "freeride"
    factor = 0.5

    def tamper(self, delta: dict, round: int) -> dict:
        rt = self.rt
        if rt is None:
            return delta
        base, prev = rt.bases.get(round), rt.bases.get(round - 1)
        if base is not None and prev is not None and any(
                not torch.equal(prev.params[n], base.params[n]) for n in base.params):
            self.rounds_attacked.append(round)
            return {n: torch.mul(torch.sub(prev.params[n], base.params[n]), self.factor).to(delta[n].dtype)
                    for n in delta}
        others = self._others_last()
        self.rounds_attacked.append(round)
        if others:
            return {n: torch.mul(others[0][n], self.factor).to(delta[n].dtype) for n in delta}
        return {n: torch.zeros_like(t) for n, t in delta.items()}


class _Replay(Attack):
    """Re-announces its own payload of two rounds ago as this round's (stale replay)."""

    kind = "replay"

    def __init__(self) -> None:
        super().__init__()
        self.blobs: dict[int, bytes] = {}

    def tamper_blob(self, blob: bytes, round: int) -> bytes:
        self.blobs[round] = blob
        old = [r for r in self.blobs if r <= round - 2]
        for r in [r for r in self.blobs if r < round - 4]:
            del self.blobs[r]
        if old:
            self.rounds_attacked.append(round)
            return self.blobs[max(old)]
        return blob


def _raw_frame(tensors: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple] | None = None) -> bytes:
    """A ``none``-codec frame built by hand (bypasses the encoder's own checks)."""
    from dai_swarm.optim.codecs.base import DTYPE_CODES
    from dai_swarm.optim.codecs.mutate import build_frame

    entries = []
    for n in sorted(tensors):
        t = tensors[n].detach().to(torch.float32).contiguous()
        raw = t.numpy().tobytes()
        entries.append((n, DTYPE_CODES[torch.float32], list((shapes or {}).get(n, t.shape)), len(raw),
                        zstandard.ZstdCompressor().compress(raw)))
    return build_frame(1, b"{}", entries)


class _NaN(Attack):
    kind = "nan"

    def tamper_blob(self, blob: bytes, round: int) -> bytes:
        self.rounds_attacked.append(round)
        tensors = codecs.decode(blob, max_bytes=codecs.MAX_BYTES)  # this peer's own frame: trusted
        bad = {n: t.clone() for n, t in tensors.items()}
        first = sorted(bad)[0]
        bad[first].view(-1)[0] = float("nan")
        bad[sorted(bad)[-1]].view(-1)[-1] = float("inf")
        return _raw_frame(bad)


class _WrongShape(Attack):
    kind = "wrong_shape"

    def tamper(self, delta: dict, round: int) -> dict:
        self.rounds_attacked.append(round)
        first = sorted(delta)[0]
        out = dict(delta)
        out[first] = torch.cat([delta[first].reshape(-1), torch.zeros(1)])
        return out


class _Oversized(Attack):
    """A decompression bomb: a 32 KiB frame that declares 1 GiB of float32 values."""

    kind = "oversized"

    def tamper_blob(self, blob: bytes, round: int) -> bytes:
        from dai_swarm.optim.codecs.base import DTYPE_CODES
        from dai_swarm.optim.codecs.mutate import build_frame, zstd_bomb

        self.rounds_attacked.append(round)
        size = 1 << 30
        return build_frame(1, b"{}", [("bomb", DTYPE_CODES[torch.float32], [size // 4], size, zstd_bomb(size))])


class _VerdictAttack(Attack):
    """Honest training; publishes bad verdicts every round (see the two kinds below)."""

    def tamper(self, delta: dict, round: int) -> dict:
        try:
            self.forge(round)
        except Exception as e:  # the attack must not stop the attacker's own training
            logger.debug("%s: %r", self.kind, e)
        return delta

    def _kind(self) -> str:
        return f"verdict.{self.rt.region}"

    def forge(self, round: int) -> None:
        """Publish this round's bad verdicts."""


class _ForgedVerdict(_VerdictAttack):
    """False accusations (signed fail verdicts against every other update it saw), verdicts that
    name another verifier, and a record stored under an honest peer's subkey without its key."""

    kind = "forged_verdict"

    def bind(self, runtime: Any) -> None:
        """Also silence this peer's own honest verdicts: its verdict record (one per signer and
        round in the DHT) must carry the lies, not be overwritten by honest checks."""
        super().bind(runtime)
        verifier = getattr(runtime, "verifier", None)
        if hasattr(verifier, "checks_per_update"):
            verifier.checks_per_update = 0.0
            verifier._scan = lambda round: None

    def forge(self, round: int) -> None:
        from dai_swarm.dht.keys import round_key

        from .verdicts import Verdict, record_body

        rt = self.rt
        held = getattr(rt.verifier, "_held", {})
        if not held:
            return
        t = max(held)
        me = rt.identity.public_key_hex
        lies = [Verdict(round=t, verifier=me, target=a.peer, digest=d, passed=False, distance=0.5,
                        recomputed="0" * 64, steps=a.steps) for d, a in sorted(held[t]["anns"].items()) if a.peer != me]
        body = record_body(lies)
        others = sorted({a.peer for a in held[t]["anns"].values() if a.peer != me})
        if others:  # a verdict naming an honest peer as its verifier, signed by us
            fake = dict(lies[0].body()) if lies else None
            if fake is not None:
                fake["verifier"] = others[0]
                fake["target"] = others[-1] if others[-1] != others[0] else me
                body["verdicts"].append(fake)
            rt.dht.store_raw(round_key(rt.run_id, self._kind(), t), others[0], b"forged-bytes-without-signature",
                             time.time() + 60)
        rt.dht.publish_round_record(rt.run_id, self._kind(), t, body, ttl_s=60.0)
        self.rounds_attacked.append(t)


class _ReplayedVerdict(_VerdictAttack):
    """Replays older verdicts into newer rounds: others' signed envelopes re-stored under a new
    round key, their bodies re-signed as its own, and its own old verdicts with a new round."""

    kind = "replayed_verdict"

    def forge(self, round: int) -> None:
        from dai_swarm.dht.keys import round_key

        rt = self.rt
        t_old, t_new = round - 3, round - 1
        if t_old < 0:
            return
        recs = rt.dht.get_round_records(rt.run_id, self._kind(), t_old)[:2]  # small messages: see design notes
        items = []
        for rec in recs:
            rt.dht.store_raw(round_key(rt.run_id, self._kind(), t_new), rec.subkey, rec.raw, rec.expiration)
            for item in rec.body.get("verdicts", [])[:2]:
                if isinstance(item, dict):
                    items.append(dict(item))  # names its real verifier: refused as not ours
                    moved = dict(item)
                    moved["round"], moved["verifier"] = t_new, rt.identity.public_key_hex
                    if moved.get("target") != moved["verifier"]:
                        items.append(moved)  # about an update round t_new never had: ignored
        if items:
            rt.dht.publish_round_record(rt.run_id, self._kind(), t_new, {"verdicts": items[:8]}, ttl_s=60.0)
            self.rounds_attacked.append(t_new)


_FACTORIES = {
    "sign_flip": lambda: _Scale(-1.0, "sign_flip"),
    "scale10": lambda: _Scale(10.0, "scale10"),
    "scale1000": lambda: _Scale(1000.0, "scale1000"),
    "gaussian": _Gaussian,
    "alie": _ALIE,
    "ipm": _IPM,
    "label_flip": _LabelFlip,
    "lazy": _Lazy,
    "copy": _Copy,
    "freeride": _FreeRide,
    "replay": _Replay,
    "nan": _NaN,
    "wrong_shape": _WrongShape,
    "oversized": _Oversized,
    "forged_verdict": _ForgedVerdict,
    "replayed_verdict": _ReplayedVerdict,
    "sybil": lambda: _own_module("sybil"),
    "forged_feedback": lambda: _own_module("forged_feedback"),  # sparse runs only
    "shifted_feedback": lambda: _own_module("shifted_feedback"),
}


def _own_module(kind: str) -> Attack:
    from .feedback_attacks import ForgedFeedback  # error feedback (sparse runs)
    from .sybil import SybilFlood  # one attacker speaking for many fresh keys

    return SybilFlood() if kind == "sybil" else ForgedFeedback(kind)

#: every attack kind ``make_attack`` knows, in catalogue order
ATTACK_KINDS = tuple(_FACTORIES)


def make_attack(kind: str) -> Attack:
    """A fresh :class:`Attack` of ``kind`` (one of :data:`ATTACK_KINDS`, or ``diverge@R``: perturb
    this peer's base at round R's close); ConfigError otherwise."""
    if kind.startswith("diverge@"):
        at = kind.split("@", 1)[1]
        if not at.isdigit():
            raise ConfigError(f"diverge@R needs a round number R, got {kind!r}")
        from .diverge import Diverge  # its own module (a replica fault, not a training attack)

        return Diverge(int(at))
    if kind not in _FACTORIES:
        raise ConfigError(f"unknown attack {kind!r}; known: {', '.join(ATTACK_KINDS)}, diverge@R")
    return _FACTORIES[kind]()

