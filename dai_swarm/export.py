"""Exported models: the files ``dai-swarm export`` and ``Swarm.export`` write, and their checks.

An export is a folder of three files:

* ``model.safetensors``: the model's weights only (its ``state_dict()``, parameters set to the
  agreed state), loadable with ``safetensors.torch.load_file`` and the task's ``build_model``;
* ``state.safetensors``: the whole replicated state of that round (parameters, outer momentum,
  cross-region anchor, replicated metadata as UTF-8 JSON bytes): what a resume starts from. Its
  tensors are named as in the state hash, so the hash is recomputed from this file alone;
* ``provenance.json``: canonical JSON naming the run (its manifest and manifest hash), the round
  closed, the state hash and its parent, the chain of earlier state hashes and the contributors
  behind them (from the reward log, when one is given), each file's SHA-256 and size, library
  versions, and the exporter's public key and ed25519 signature over all of it.

The weights files are deterministic functions of the state: two peers that export the same round
write byte-identical ``model.safetensors`` and ``state.safetensors`` (I1). Nothing is unpickled:
files are checked (size, SHA-256, signature) before safetensors parses them, and a loaded state
must hash to the recorded state hash (:func:`load_export`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import torch

from ._version import __version__
from .canonical import canonical_json
from .dht.address_file import write_atomic
from .errors import ExportCorrupt, ExportMismatch
from .identity import Identity, verify_signature

__all__ = ["FORMAT", "MODEL_FILE", "PROVENANCE_FILE", "STATE_FILE", "Export", "Provenance", "load_export",
           "model_bytes", "read_provenance", "write_export"]

FORMAT = "dai-swarm-export/1"
MODEL_FILE, STATE_FILE, PROVENANCE_FILE = "model.safetensors", "state.safetensors", "provenance.json"
MAX_PROVENANCE_BYTES = 16 << 20
_SIGNED = b"dai-swarm-export\x00"


@dataclass(frozen=True)
class Provenance:
    """What ``provenance.json`` says (see the module docstring). ``round`` is the round whose
    close produced the state (the state is the base of round ``base_round`` = ``round + 2``);
    ``chain`` lists ``{"round", "state_hash", "parent_hash"}`` of earlier rounds, oldest first."""

    run_id: str
    manifest: dict
    manifest_hash: str
    round: int
    base_round: int
    state_hash: str
    parent_hash: str | None
    files: dict
    versions: dict
    exporter: str
    val_loss: float | None = None
    chain: tuple = ()
    round_chain_head: str | None = None
    contributors: tuple = ()
    reward_units: int = 0
    format: str = FORMAT
    signature: str = field(default="", compare=False)

    def body(self) -> dict:
        """The JSON object written to ``provenance.json`` (signature included)."""
        out = asdict(self)
        out["chain"], out["contributors"] = list(self.chain), list(self.contributors)
        return out

    def message(self) -> bytes:
        """The bytes the exporter signs: the canonical body without the signature."""
        return _SIGNED + canonical_json({k: v for k, v in self.body().items() if k != "signature"})

    @classmethod
    def from_body(cls, body: Any) -> "Provenance":
        """Parse ``provenance.json``'s object; :class:`ExportCorrupt` if a field is missing or ill-typed."""
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise ExportCorrupt(f"{PROVENANCE_FILE} is not a {FORMAT} provenance record")
        names = set(cls.__dataclass_fields__)
        if set(body) != names:
            raise ExportCorrupt(f"{PROVENANCE_FILE} fields differ: missing {sorted(names - set(body))}, "
                                f"unknown {sorted(set(body) - names)}")
        try:
            prov = cls(**{**body, "chain": tuple(body["chain"]), "contributors": tuple(body["contributors"])})
            ok = (isinstance(prov.run_id, str) and isinstance(prov.manifest, dict) and type(prov.round) is int
                  and prov.base_round == prov.round + 2 and _hex64(prov.state_hash) and _hex64(prov.exporter)
                  and _hex64(prov.manifest_hash) and isinstance(prov.files, dict) and isinstance(prov.signature, str)
                  and all(isinstance(c, dict) for c in prov.chain))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ExportCorrupt(f"{PROVENANCE_FILE} has ill-typed fields")
        return prov


@dataclass(frozen=True)
class Export:
    """A checked export: its folder, provenance and the replicated state it holds."""

    path: str
    provenance: Provenance
    state: Any  # optim.states.BaseState, labelled as the base of provenance.base_round


def _hex64(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def _versions() -> dict:
    import safetensors

    from .swarm import manifest_versions
    return {"dai_swarm": __version__, "safetensors": safetensors.__version__, **manifest_versions()}


def model_bytes(task: Any, seed: int, params: Mapping[str, torch.Tensor]) -> bytes:
    """``model.safetensors``: the task's model built from ``seed``, its parameters set to ``params``,
    saved as its ``state_dict()`` (buffers included; every tensor its own contiguous copy)."""
    from safetensors.torch import save
    model = task.build_model(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(params[name].to(p.dtype))
    return save({k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()})


def write_export(out_dir: str, state: Any, *, task: Any, manifest: Any, manifest_hash: str, round: int,
                 identity: Identity, parent_hash: str | None = None, val_loss: float | None = None,
                 ledger: Mapping | None = None) -> Provenance:
    """Write the three files of an export of ``state`` (the base of ``round + 2``) to ``out_dir``.

    ``manifest`` is the run's :class:`~dai_swarm.dht.records.RunManifest`; ``ledger`` the chain
    summary from :func:`dai_swarm.rewards.provenance.log_provenance` (or None). Each file is
    written atomically (temporary file, fsync, rename); ``provenance.json`` last.
    """
    from safetensors.torch import save
    os.makedirs(out_dir, exist_ok=True)
    model = model_bytes(task, manifest.seed, state.params)
    blob = save({k: v.contiguous().clone() for k, v in state._named(state.params, state.momentum, state.extra,
                                                            state.anchor).items()})
    files = {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
             for name, data in ((MODEL_FILE, model), (STATE_FILE, blob))}
    led = dict(ledger or {})
    prov = Provenance(run_id=manifest.run_id, manifest=manifest.to_body(), manifest_hash=manifest_hash, round=round,
                      base_round=round + 2, state_hash=state.hash, parent_hash=parent_hash, files=files,
                      versions=_versions(), exporter=identity.public_key_hex, val_loss=val_loss,
                      chain=tuple(led.get("chain", ())), round_chain_head=led.get("round_chain_head"),
                      contributors=tuple(led.get("contributors", ())), reward_units=int(led.get("reward_units", 0)))
    prov = Provenance(**{**prov.body(), "chain": prov.chain, "contributors": prov.contributors,
                         "signature": identity.sign(prov.message()).hex()})
    write_atomic(os.path.join(out_dir, MODEL_FILE), model)
    write_atomic(os.path.join(out_dir, STATE_FILE), blob)
    write_atomic(os.path.join(out_dir, PROVENANCE_FILE), canonical_json(prov.body()) + b"\n")
    return prov


def _read_checked(path: str, name: str, expect: Mapping) -> bytes:
    """The bytes of ``name``, refused unless its size and SHA-256 are the recorded ones."""
    full = os.path.join(path, name)
    size = int(expect.get("bytes", -1)) if isinstance(expect, Mapping) else -1
    try:
        actual = os.path.getsize(full)
    except OSError:
        raise ExportCorrupt(f"export {path}: {name} is missing") from None
    if actual != size:
        raise ExportCorrupt(f"export {path}: {name} has {actual} bytes, provenance records {size} "
                            f"({'truncated' if actual < size else 'altered'})")
    with open(full, "rb") as f:
        data = f.read(size + 1)
    if hashlib.sha256(data).hexdigest() != expect.get("sha256"):
        raise ExportCorrupt(f"export {path}: {name} does not match the SHA-256 in {PROVENANCE_FILE} (altered)")
    return data


def read_provenance(path: str) -> Provenance:
    """Parse and signature-check ``path/provenance.json`` (:class:`ExportCorrupt` otherwise)."""
    full = os.path.join(path, PROVENANCE_FILE)
    try:
        with open(full, "rb") as f:
            raw = f.read(MAX_PROVENANCE_BYTES + 1)
    except OSError as e:
        raise ExportCorrupt(f"export {path}: cannot read {PROVENANCE_FILE}: {e.strerror}") from None
    if len(raw) > MAX_PROVENANCE_BYTES:
        raise ExportCorrupt(f"export {path}: {PROVENANCE_FILE} exceeds {MAX_PROVENANCE_BYTES} bytes")
    try:
        body = json.loads(raw)
    except ValueError:
        raise ExportCorrupt(f"export {path}: {PROVENANCE_FILE} is not JSON (truncated?)") from None
    try:
        prov = Provenance.from_body(body)
    except ExportCorrupt as e:
        raise ExportCorrupt(f"export {path}: {e}") from None
    try:
        sig = bytes.fromhex(prov.signature)
    except ValueError:
        sig = b""
    if not verify_signature(bytes.fromhex(prov.exporter), sig, prov.message()):
        raise ExportCorrupt(f"export {path}: the exporter's signature over {PROVENANCE_FILE} is invalid (altered)")
    return prov


def load_export(path: str, *, run_id: str | None = None, task: Any = None) -> Export:
    """Check an export folder and return it with its state (see the module docstring).

    Raises :class:`ExportCorrupt` for a missing, truncated or altered file, a bad signature, or a
    state that does not hash to the recorded state hash; :class:`ExportMismatch` when ``run_id``
    or ``task`` (its config hash) differ from the export's run.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    from .dht.manifest import manifest_hash
    from .dht.records import RunManifest
    from .optim.states import BaseState

    prov = read_provenance(path)
    try:
        manifest = RunManifest(**prov.manifest)
    except Exception as e:
        raise ExportCorrupt(f"export {path}: the run manifest in {PROVENANCE_FILE} is invalid: {e}") from None
    if manifest_hash(manifest) != prov.manifest_hash or manifest.run_id != prov.run_id:
        raise ExportCorrupt(f"export {path}: the manifest does not hash to the recorded manifest hash")
    if run_id is not None and prov.run_id != run_id:
        raise ExportMismatch(f"export {path} is from run {prov.run_id!r}, not {run_id!r}")
    if task is not None and task.config_hash() != manifest.task_config_hash:
        raise ExportMismatch(f"export {path} trains task {manifest.task!r} with config hash "
                             f"{manifest.task_config_hash[:12]}; this task's is {task.config_hash()[:12]}")
    blobs = {name: _read_checked(path, name, prov.files.get(name, {})) for name in (MODEL_FILE, STATE_FILE)}
    try:
        tensors = load(blobs[STATE_FILE])
        weights = load(blobs[MODEL_FILE])
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise ExportCorrupt(f"export {path}: a safetensors file does not parse: {e}") from None
    extra_t = tensors.pop("x/extra", None)
    try:
        extra = json.loads(bytes(extra_t.numpy().tobytes())) if extra_t is not None else {}
    except ValueError:
        extra = None
    if not isinstance(extra, dict) or any(not k[:2] in ("p/", "m/", "a/") for k in tensors):
        raise ExportCorrupt(f"export {path}: {STATE_FILE} holds unexpected tensors or metadata")
    part = {pre: {k[2:]: v for k, v in tensors.items() if k.startswith(pre)} for pre in ("p/", "m/", "a/")}
    state = BaseState.make(prov.base_round, part["p/"], part["m/"], extra, part["a/"])
    if state.hash != prov.state_hash:
        raise ExportCorrupt(f"export {path}: {STATE_FILE} hashes to {state.hash[:12]}, provenance records "
                            f"{prov.state_hash[:12]}")
    if any(n not in weights or not torch.equal(weights[n], t) for n, t in state.params.items()):
        raise ExportCorrupt(f"export {path}: {MODEL_FILE} holds other weights than {STATE_FILE}")
    return Export(path, prov, state)
