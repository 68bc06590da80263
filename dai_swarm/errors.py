"""The one exception tree of dai_swarm.

Every error the library raises on purpose derives from :class:`SwarmError`, so a training script
can catch the whole family with one ``except``. Errors about *untrusted input* (records, payloads,
verdicts, log files) are typed precisely so that callers can count and drop them without guessing.

Tree::

    SwarmError
    ├── ConfigError                 bad flag, config file, manifest mismatch, unknown task
    │   └── ManifestMismatch        local task/codec does not match the run's signed manifest
    │       └── ManifestPinMismatch no manifest of the run has the pinned hash (--manifest)
    ├── IdentityError               unreadable, corrupt or foreign key file
    ├── NetworkError                transport-level trouble
    │   ├── BootstrapError          no initial peer reachable within the timeout
    │   ├── DHTClosed               the DHT node is shutting down: its requests fail at once
    │   ├── DHTTimeout              a DHT request got no answer within its deadline
    │   └── PeerUnreachable         one peer did not answer in time
    │       └── Unprovable          a sparse update's author, for its buffer proofs: no verdict
    ├── ProtocolError               a peer sent something that breaks the protocol
    │   ├── RecordRejected          a DHT record failed validation
    │   │   ├── ForgedRecord        bad or missing signature, wrong key
    │   │   ├── ExpiredRecord       past its expiration, or replayed from the past
    │   │   └── MalformedRecord     does not parse or does not match its schema
    │   ├── StaleRound              refers to a round that is closed or too far ahead
    │   ├── WrongBase               built on a base-state hash that is not canonical
    │   ├── DigestMismatch          payload bytes do not hash to the announced digest
    │   └── PayloadNotFound         the asked peer does not hold that payload (yet)
    ├── CodecError                  a payload frame could not be encoded or decoded
    │   ├── PayloadTooLarge         a declared or actual size exceeds a hard cap
    │   ├── PayloadCorrupt          truncated frame, bad magic, bad CRC, bad zstd stream
    │   ├── UnknownCodec            unknown codec id or frame version
    │   ├── NonFiniteValues         NaN or Inf in a tensor
    │   └── ShapeMismatch           names, shapes or dtypes differ from what was expected
    ├── VerificationFailed          a recomputation disagrees with the claimed update
    ├── TaskError                   a task could not be loaded or misbehaved
    ├── ExportError                 an exported model folder cannot be used
    │   ├── ExportCorrupt           missing, truncated or tampered file, bad signature
    │   └── ExportMismatch          another run or task, or a state hash the ledger does not record
    └── LedgerError                 reward-log trouble
        └── LedgerCorrupt           a record fails its CRC, hash chain or signature
"""

from __future__ import annotations

__all__ = [
    "BootstrapError",
    "CodecError",
    "ConfigError",
    "DHTClosed",
    "DHTTimeout",
    "DigestMismatch",
    "ExpiredRecord",
    "ExportCorrupt",
    "ExportError",
    "ExportMismatch",
    "ForgedRecord",
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
    "SwarmError",
    "TaskError",
    "UnknownCodec",
    "Unprovable",
    "VerificationFailed",
    "WrongBase",
]


class SwarmError(Exception):
    """Base class of every error raised on purpose by dai_swarm."""


class ConfigError(SwarmError, ValueError):
    """A flag, config file, environment override or manifest field is invalid."""


class ManifestMismatch(ConfigError):
    """The local task, codec or library versions do not match the run's signed manifest."""


class ManifestPinMismatch(ManifestMismatch):
    """No valid manifest of the run has the pinned hash (``--manifest`` / ``manifest_hash=``).

    ``expected`` is the pinned hash (prefix), ``found`` the hashes of the manifests that were seen
    (each with why it does not match or was refused).
    """

    def __init__(self, message: str, *, expected: str = "", found: tuple[str, ...] = ()):
        super().__init__(message)
        self.expected = expected
        self.found = tuple(found)


class IdentityError(SwarmError):
    """An identity key file is unreadable, corrupt, of the wrong type, or too widely readable."""


class NetworkError(SwarmError):
    """Transport-level trouble: the DHT or a P2P stream failed."""


class BootstrapError(NetworkError):
    """None of the initial peers could be reached within the start-up timeout."""


class DHTClosed(NetworkError):
    """The DHT node is shutting down or shut down: a request waiting on it, or sent to it, fails at once."""


class DHTTimeout(NetworkError, TimeoutError):
    """A request to the DHT process got no answer within its deadline (``timeout_s``)."""


class PeerUnreachable(NetworkError):
    """A specific peer did not answer within its deadline."""


class Unprovable(PeerUnreachable):
    """A sparse update's author could not be reached for its buffer chunks: no verdict either way."""


class ProtocolError(SwarmError):
    """A peer sent something that violates the protocol; it is dropped and counted."""


class RecordRejected(ProtocolError):
    """A DHT record failed validation."""


class ForgedRecord(RecordRejected):
    """A record's signature is missing, invalid, or made with a key that may not write it."""


class ExpiredRecord(RecordRejected):
    """A record is past its expiration time, or is an older record replayed."""


class MalformedRecord(RecordRejected):
    """A record does not parse, exceeds its size cap, or does not match its schema."""


class StaleRound(ProtocolError):
    """A message refers to a round that is already closed or implausibly far ahead."""


class WrongBase(ProtocolError):
    """An update was computed from a base-state hash that is not the canonical one."""


class DigestMismatch(ProtocolError):
    """Payload bytes do not hash to the digest that was announced for them."""


class PayloadNotFound(ProtocolError):
    """The asked peer does not hold the payload (it may get it later; ask again or elsewhere)."""


class CodecError(SwarmError, ValueError):
    """A payload frame could not be encoded or decoded."""


class PayloadTooLarge(CodecError):
    """A declared or actual size exceeds a hard cap (checked before allocating)."""


class PayloadCorrupt(CodecError):
    """A frame is truncated, has a bad magic number or CRC, or its compressed stream is broken."""


class UnknownCodec(CodecError):
    """The frame names a codec id or format version that this build does not know."""


class NonFiniteValues(CodecError):
    """A tensor holds NaN or Inf values."""


class ShapeMismatch(CodecError):
    """Tensor names, shapes or dtypes differ from what was expected."""


class VerificationFailed(SwarmError):
    """A spot-check recomputation disagrees with the claimed update beyond the tolerance."""


class TaskError(SwarmError):
    """A task could not be loaded (bad ``module:attr``) or broke its contract."""


class ExportError(SwarmError):
    """An exported model folder (``dai-swarm export``, ``Swarm.export``) cannot be used."""


class ExportCorrupt(ExportError):
    """A file of an export is missing, truncated or altered, or its provenance signature is invalid."""


class ExportMismatch(ExportError):
    """An intact export that does not fit: another run or task, or a state hash (or provenance
    chain) that the reward log does not record for its round."""


class LedgerError(SwarmError):
    """Reward-log trouble that is not corruption (e.g. the file cannot be opened)."""


class LedgerCorrupt(LedgerError):
    """A reward-log record fails its CRC, hash chain, sequence or signature check.

    ``index`` is the 0-based index of the first bad record, ``reason`` says why.
    """

    def __init__(self, message: str, *, index: int | None = None, reason: str | None = None):
        super().__init__(message)
        self.index = index
        self.reason = reason or message
