"""``tinylm``: a byte-level transformer trained on the Python standard library's own sources.

Dataset item ``i`` is the window of ``seq_len + 1`` bytes starting at byte ``i * seq_len`` of the
training split (windows overlap by one byte, the next-byte target). A batch is ``(x, y)``: two
``(batch_size, seq_len)`` int64 tensors, ``y`` shifted by one. The loss is the mean next-byte
cross-entropy in nats; ``evaluate`` reports it on a fixed, evenly spaced set of validation
windows, with ``bits_per_byte`` alongside.

Two presets: ``default`` (about 1.9M parameters) and ``small`` (about 0.14M, for tests and demos:
its loss falls visibly within a few hundred steps on one core). Any field of
:class:`TinyLMConfig` can be overridden: ``TinyLMTask("small", lr=1e-3)``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F

from ..errors import TaskError
from .base import Task, apply_overrides, check_indices
from .corpus import DEFAULT_EXCLUDE, Corpus, load_corpus, unigram_entropy
from .gpt import GPT, GPTConfig

__all__ = ["PRESETS", "ByteWindows", "TinyLMConfig", "TinyLMTask"]

#: bump when a code change alters results for an unchanged config
TASK_VERSION = 1


@dataclass(frozen=True)
class TinyLMConfig:
    """Every hyper-parameter of tinylm that changes results (model, data, inner optimiser, eval)."""

    n_layer: int = 4
    n_head: int = 4
    d_model: int = 192
    seq_len: int = 128
    batch_size: int = 16
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    max_bytes: int = 16_000_000
    val_per_mille: int = 100
    exclude: tuple = DEFAULT_EXCLUDE
    eval_windows: int = 64
    eval_batch: int = 32


PRESETS: dict[str, TinyLMConfig] = {
    "default": TinyLMConfig(),
    "small": TinyLMConfig(n_layer=2, n_head=2, d_model=64, seq_len=64, batch_size=16, lr=3e-3,
                          max_bytes=2_000_000, eval_windows=32),
}


class ByteWindows(Sequence):
    """Read-only view of a byte string as overlapping windows of ``seq_len + 1`` bytes."""

    def __init__(self, data: bytes, seq_len: int):
        if len(data) < seq_len + 1:
            raise TaskError(f"{len(data)} bytes cannot hold one window of {seq_len + 1} bytes")
        self.data = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        self.seq_len = seq_len

    def __len__(self) -> int:
        return (len(self.data) - 1) // self.seq_len

    def __getitem__(self, i: int) -> torch.Tensor:  # type: ignore[override]
        """Window ``i`` as an int64 tensor of ``seq_len + 1`` byte values."""
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} out of range [0, {len(self)})")
        start = i * self.seq_len
        return self.data[start:start + self.seq_len + 1].long()

    def stack(self, indices: Sequence[int]) -> torch.Tensor:
        """Windows ``indices`` stacked into a ``(len(indices), seq_len + 1)`` int64 tensor."""
        return torch.stack([self[i] for i in indices])


class TinyLMTask(Task):
    """Next-byte prediction on standard-library source with a small GPT (see module docstring)."""

    name = "tinylm"

    def __init__(self, preset: str = "default", **overrides: Any):
        if preset not in PRESETS:
            raise TaskError(f"unknown tinylm preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
        cfg = apply_overrides(PRESETS[preset], overrides)
        for key in ("n_layer", "n_head", "d_model", "seq_len", "batch_size", "max_bytes", "eval_windows", "eval_batch"):
            if getattr(cfg, key) <= 0:
                raise TaskError(f"tinylm option {key} must be positive, got {getattr(cfg, key)}")
        if cfg.d_model % cfg.n_head:
            raise TaskError(f"tinylm d_model {cfg.d_model} must be divisible by n_head {cfg.n_head}")
        self.preset = preset
        self.cfg = cfg
        self.batch_size = cfg.batch_size
        self._train: ByteWindows | None = None
        self._val_batch: torch.Tensor | None = None

    # -- data -----------------------------------------------------------------------------------
    @property
    def corpus(self) -> Corpus:
        """The (process-cached) corpus this task reads."""
        return load_corpus(self.cfg.max_bytes, self.cfg.val_per_mille, tuple(self.cfg.exclude))

    @property
    def dataset(self) -> ByteWindows:
        """Training windows; built on first use from the cached corpus."""
        if self._train is None:
            self._train = ByteWindows(self.corpus.train, self.cfg.seq_len)
        return self._train

    def get_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``: inputs and next-byte targets, each ``(len(indices), seq_len)`` int64."""
        check_indices(indices, len(self.dataset))
        w = self.dataset.stack([int(i) for i in indices])
        return w[:, :-1], w[:, 1:]

    def val_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed held-out slice: ``eval_windows`` validation windows at evenly spaced offsets."""
        if self._val_batch is None:
            val = ByteWindows(self.corpus.val, self.cfg.seq_len)
            n = min(self.cfg.eval_windows, len(val))
            idx = [k * len(val) // n for k in range(n)]
            self._val_batch = val.stack(idx)
        return self._val_batch[:, :-1], self._val_batch[:, 1:]

    def unigram_entropy(self) -> float:
        """Byte entropy of the training split in nats per byte: a context-free model's loss."""
        return unigram_entropy(self.corpus.train)

    # -- model, loss, optimiser ----------------------------------------------------------------
    def gpt_config(self) -> GPTConfig:
        """The model shape implied by this task's config."""
        c = self.cfg
        return GPTConfig(vocab_size=256, seq_len=c.seq_len, n_layer=c.n_layer, n_head=c.n_head, d_model=c.d_model)

    def build_model(self, seed: int) -> GPT:
        """A fresh GPT whose weights depend only on ``seed`` and the config."""
        return GPT(self.gpt_config(), seed)

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Mean next-byte cross-entropy (nats) of ``model`` on ``batch``."""
        x, y = batch
        logits = model(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def inner_optimizer(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """AdamW with the config's lr, betas, eps and weight decay (decay on matrices only)."""
        params = [p for p in params if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.cfg.lr, betas=(self.cfg.beta1, self.cfg.beta2),
                                 eps=self.cfg.eps, foreach=False)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """``{"loss": nats/byte, "bits_per_byte": ...}`` on the fixed validation slice."""
        was_training = model.training
        model.eval()
        try:
            x, y = self.val_batch()
            total = 0.0
            for s in range(0, x.shape[0], self.cfg.eval_batch):
                logits = model(x[s:s + self.cfg.eval_batch])
                total += F.cross_entropy(logits.reshape(-1, 256), y[s:s + self.cfg.eval_batch].reshape(-1),
                                         reduction="sum").item()
        finally:
            model.train(was_training)
        loss = total / y.numel()
        return {"loss": loss, "bits_per_byte": loss / math.log(2)}

    def config(self) -> dict[str, Any]:
        """Hyper-parameters, the corpus digest and the task version (hashed into the manifest)."""
        cfg = dataclasses.asdict(self.cfg)
        cfg["exclude"] = sorted(cfg["exclude"])
        return {"task": self.name, "task_version": TASK_VERSION, "vocab_size": 256,
                "corpus_sha256": self.corpus.sha256, **cfg}
