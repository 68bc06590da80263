"""dai_swarm: asynchronous, decentralized, verifiable training of PyTorch models by volunteers.

The public surface is what ``__all__`` lists; everything else is internal.
"""

import os as _os
import signal as _signal
import sys as _sys


def _launched_as_cli() -> bool:
    """True while ``dai-swarm ...`` or ``python -m dai_swarm ...`` is starting (not for library users)."""
    argv = getattr(_sys, "orig_argv", [])
    return argv[1:3] == ["-m", "dai_swarm"] or (len(argv) > 1 and _os.path.basename(argv[1]) == "dai-swarm")


if _launched_as_cli():
    # the imports below take seconds; a Ctrl+C among them could be swallowed as KeyboardInterrupt by
    # the code it lands in, so until the CLI is up SIGINT ends the process at once, like SIGTERM
    # (nothing has been started or written yet); cli.main restores Python's handler
    _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
    # `kill -USR1 PID` writes every thread's Python stack to stderr (a hung peer says where it is);
    # it runs in C, so it answers even when the main thread never returns to the interpreter
    import faulthandler as _faulthandler

    _faulthandler.register(_signal.SIGUSR1, all_threads=True)

from ._version import __version__  # noqa: E402
from .lazy_names import lazy_names as _lazy_names  # noqa: E402
from .errors import (
    BootstrapError,
    CodecError,
    ConfigError,
    DHTClosed,
    DHTTimeout,
    DigestMismatch,
    ExpiredRecord,
    ExportCorrupt,
    ExportError,
    ExportMismatch,
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
    Unprovable,
    VerificationFailed,
    WrongBase,
)
#: public names that need torch or hivemind, imported on first use (PEP 562): ``dai-swarm ledger``,
#: ``--help`` and the error types start without the ~2.3 s that importing torch and hivemind takes
_LAZY = {"Identity": ".identity", "SwarmOptimizer": ".optim.optimizer", "Swarm": ".swarm", "Task": ".tasks",
         "load_task": ".tasks"}


__getattr__, __dir__ = _lazy_names(__name__, _LAZY, globals())

#: sub-commands that start a hivemind DHT (and with it torch's shared-memory manager)
_DHT_COMMANDS = ("peer", "bootstrap", "export", "status", "demo")


def _start_shared_memory_manager() -> None:
    """Start torch's shared-memory manager now, while a signal still ends the process at once.

    hivemind shares each DHT request future's status through torch shared memory (the
    ``file_system`` strategy it sets on import); the process's first share starts
    ``torch_shm_manager`` and waits for its handshake in C code that retries on EINTR and never
    returns to Python. A SIGINT or SIGTERM landing there (to the process group during start-up,
    the manager included) was never handled: the peer hung until SIGKILLed (``benchmarks.signals``:
    4 of 202 signals, every stack in ``SwarmDHT`` start -> ``MPFuture`` -> ``share_memory_``).
    Here, under the default handlers, such a signal ends the process at once.

    The manager is started with its standard output and error on ``/dev/null``: it outlives the
    command by about 2 s, and holding the command's pipe it made ``dai-swarm status --json | jq``
    (or any caller reading the output to its end) wait for it."""
    import torch

    saved = (_os.dup(1), _os.dup(2))
    devnull = _os.open(_os.devnull, _os.O_WRONLY)
    try:
        _sys.stdout.flush()
        _sys.stderr.flush()
        _os.dup2(devnull, 1)
        _os.dup2(devnull, 2)
        torch.empty(1, dtype=torch.uint8).share_memory_()
    finally:
        _os.dup2(saved[0], 1)
        _os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            _os.close(fd)


if _launched_as_cli() and _sys.argv[1:2] and _sys.argv[1] in _DHT_COMMANDS and not (
        {"-h", "--help"} & set(_sys.argv[2:])):
    # torch and hivemind first, while a signal still ends the process at once (a KeyboardInterrupt
    # inside a library's import could be swallowed by its ``except:``); hivemind's import also sets
    # the ``file_system`` sharing strategy under which the manager below exists
    from .swarm import Swarm  # noqa: E402,F401

    _start_shared_memory_manager()

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
    "Unprovable",
    "VerificationFailed",
    "WrongBase",
    "__version__",
    "load_task",
]
