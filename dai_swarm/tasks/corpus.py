"""The tinylm corpus: the Python standard library's own ``.py`` files, as raw bytes.

Real text that every peer already has, no download. Files are found under
``sysconfig.get_paths()["stdlib"]``, walked in sorted order, with test suites, installed packages
and generated data skipped. Each file goes to the validation split when the SHA-256 of its
relative path falls in the ``val_per_mille`` bucket, else to training, until ``max_bytes`` have
been read. The result is cached once per process. Different Python versions ship different
sources, so the corpus digest belongs in the task config (and thus in the run manifest).
"""

from __future__ import annotations

import functools
import hashlib
import os
import sysconfig
from dataclasses import dataclass

import numpy as np

from ..errors import TaskError

__all__ = ["DEFAULT_EXCLUDE", "Corpus", "load_corpus", "unigram_entropy"]

#: directory names never read: test suites, installed packages, caches, and generated data
#: (codec charmap tables, the pydoc topic strings) that would make the text unnaturally easy.
DEFAULT_EXCLUDE = ("__pycache__", "dist-packages", "encodings", "idle_test", "pydoc_data", "site-packages", "test", "tests")


@dataclass(frozen=True)
class Corpus:
    """Training and validation bytes, the files they came from, and a digest of both."""

    train: bytes
    val: bytes
    train_files: tuple[str, ...]
    val_files: tuple[str, ...]
    sha256: str
    root: str


def _in_val(relpath: str, val_per_mille: int) -> bool:
    h = int.from_bytes(hashlib.sha256(relpath.encode()).digest()[:8], "big")
    return h % 1000 < val_per_mille


def _walk(root: str, exclude: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in exclude)
        for fname in sorted(filenames):
            if fname.endswith(".py"):
                out.append(os.path.relpath(os.path.join(dirpath, fname), root).replace(os.sep, "/"))
    return sorted(out)


@functools.lru_cache(maxsize=4)
def load_corpus(max_bytes: int = 16_000_000, val_per_mille: int = 100,
                exclude: tuple[str, ...] = DEFAULT_EXCLUDE, root: str | None = None) -> Corpus:
    """Read (once per process) up to ``max_bytes`` of standard-library source, split train/val.

    Raises :class:`TaskError` if the directory holds no usable source or either split is empty.
    """
    if max_bytes <= 0 or not 0 < val_per_mille < 1000:
        raise TaskError(f"need max_bytes > 0 and 0 < val_per_mille < 1000, got {max_bytes}, {val_per_mille}")
    root = root or sysconfig.get_paths()["stdlib"]
    if not os.path.isdir(root):
        raise TaskError(f"standard library directory {root!r} not found; pass a corpus root that exists")
    train, val = bytearray(), bytearray()
    train_files, val_files = [], []
    for rel in _walk(root, tuple(exclude)):
        if len(train) + len(val) >= max_bytes:
            break
        try:
            with open(os.path.join(root, rel), "rb") as f:
                data = f.read()
        except OSError:
            continue  # unreadable file: skipped the same way on every peer with this install
        data = data[: max_bytes - len(train) - len(val)]
        if _in_val(rel, val_per_mille):
            val += data
            val_files.append(rel)
        else:
            train += data
            train_files.append(rel)
    if not train or not val:
        raise TaskError(f"corpus under {root!r} gave {len(train)} training and {len(val)} validation bytes; "
                        "raise max_bytes or check the directory")
    digest = hashlib.sha256()
    for part in (bytes(train), bytes(val)):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return Corpus(bytes(train), bytes(val), tuple(train_files), tuple(val_files), digest.hexdigest(), root)


def unigram_entropy(data: bytes) -> float:
    """Entropy of the byte distribution of ``data`` in nats per byte.

    This is the loss of the best model that ignores context; divide by ln 2 for bits per byte.
    """
    if not data:
        raise TaskError("unigram entropy of an empty byte string is undefined")
    counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)
    p = counts[counts > 0] / len(data)
    return float(-(p * np.log(p)).sum())
