"""dai_swarm: asynchronous, decentralized, verifiable training of PyTorch models by volunteers.

The public surface is what ``__all__`` lists; everything else is internal.
"""

from ._version import __version__
from .errors import (
    BootstrapError,
    CodecError,
    ConfigError,
    DHTClosed,
    DHTTimeout,
    DigestMismatch,
    ExpiredRecord,
    ForgedRecord,
    IdentityError,
    LedgerCorrupt,
    LedgerError,
    MalformedRecord,
    ManifestMismatch,
    ManifestPinMismatch,
    NetworkError,
    NonFiniteValues,
    PayloadCorrupt,
    PayloadNotFound,
    PayloadTooLarge,
    PeerUnreachable,
    ProtocolError,
    RecordRejected,
    ShapeMismatch,
    StaleRound,
    SwarmError,
    TaskError,
    UnknownCodec,
    VerificationFailed,
    WrongBase,
)
from .identity import Identity
from .optim.optimizer import SwarmOptimizer
from .swarm import Swarm
from .tasks import Task, load_task

__all__ = [
    "BootstrapError",
    "CodecError",
    "ConfigError",
    "DHTClosed",
    "DHTTimeout",
    "DigestMismatch",
    "ExpiredRecord",
    "ForgedRecord",
    "Identity",
    "IdentityError",
    "LedgerCorrupt",
    "LedgerError",
    "MalformedRecord",
    "ManifestMismatch",
    "ManifestPinMismatch",
    "NetworkError",
    "NonFiniteValues",
    "PayloadCorrupt",
    "PayloadNotFound",
    "PayloadTooLarge",
    "PeerUnreachable",
    "ProtocolError",
    "RecordRejected",
    "ShapeMismatch",
    "StaleRound",
    "Swarm",
    "SwarmError",
    "SwarmOptimizer",
    "Task",
    "TaskError",
    "UnknownCodec",
    "VerificationFailed",
    "WrongBase",
    "__version__",
    "load_task",
]
