"""The ``dai-swarm`` command line: one entry point, one module per sub-command.

Each sub-command module (``dai_swarm/cmd_*.py``) exposes ``add_parser(subparsers)`` and
``run(args) -> int``. Options come, from strongest to weakest, from the command line, then
``DAI_SWARM_<OPTION>`` environment variables (``--initial-peers`` → ``DAI_SWARM_INITIAL_PEERS``),
then the ``--config FILE`` TOML file (top-level keys, or a ``[peer]``-style table named after the
sub-command; keys in kebab- or snake-case), then built-in defaults.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from typing import Sequence

from ._version import __version__
from .errors import ConfigError, SwarmError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["build_parser", "main"]

COMMANDS = ("bootstrap", "peer", "export", "status", "ledger", "task", "demo")
ENV_PREFIX = "DAI_SWARM_"


def build_parser() -> argparse.ArgumentParser:
    """Build the full argument parser with every sub-command that is installed."""
    parser = argparse.ArgumentParser(
        prog="dai-swarm",
        description="Asynchronous, decentralized, verifiable training of PyTorch models by volunteers.",
        epilog="examples:\n  dai-swarm demo --peers 4\n  dai-swarm bootstrap --host-maddrs /ip4/0.0.0.0/tcp/31337\n"
        "  dai-swarm peer --run-id tinylm-42 --initial-peers /ip4/1.2.3.4/tcp/31337/p2p/Qm...\n\n"
        "Every option can also come from DAI_SWARM_<OPTION> or a --config TOML file.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dai-swarm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"dai_swarm.cmd_{name}")
        except ModuleNotFoundError as e:
            if e.name == f"dai_swarm.cmd_{name}":
                continue  # sub-command not built yet
            raise
        p = module.add_parser(sub)
        p.add_argument("--config", metavar="FILE", default=None, help="TOML file with option defaults")
        p.set_defaults(_run=module.run, _parser=p)
    return parser


def _load_config(path: str, command: str) -> dict:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path!r}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path!r} is not valid TOML: {e}") from e
    out = {k: v for k, v in data.items() if not isinstance(v, dict)}
    out.update(data.get(command, {}))
    return {k.replace("-", "_"): v for k, v in out.items()}


def _apply_defaults(sub_parser: argparse.ArgumentParser, config: dict) -> None:
    """Set sub-parser defaults from the config file, then from DAI_SWARM_* variables."""
    by_dest = {a.dest: a for a in sub_parser._actions if a.dest not in ("help", "config")}
    unknown = sorted(set(config) - set(by_dest))
    if unknown:
        raise ConfigError(f"unknown option(s) in config file: {', '.join(unknown)}")
    values = dict(config)
    for dest, action in by_dest.items():
        env = os.environ.get(ENV_PREFIX + dest.upper())
        if env is not None:
            values[dest] = env
    for dest, value in values.items():
        action = by_dest[dest]
        if action.nargs in ("+", "*") and isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if isinstance(value, list) and action.type is not None:
            value = [action.type(v) if isinstance(v, str) else v for v in value]
        elif isinstance(value, str) and action.type is not None:
            value = action.type(value)
        elif isinstance(value, str) and isinstance(action, argparse._StoreTrueAction):
            value = value.strip().lower() in ("1", "true", "yes", "on")
        sub_parser.set_defaults(**{dest: value})


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dai-swarm`` and ``python -m dai_swarm``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if signal.getsignal(signal.SIGINT) is signal.SIG_DFL:  # set while the package was imported (__init__)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if os.getcwd() not in sys.path and "" not in sys.path:  # `--task module:attr` from the working
        sys.path.append(os.getcwd())  # directory, as with `python -m dai_swarm` (appended: never shadows)
    try:
        config = _load_config(args.config, args.command) if args.config else {}
        _apply_defaults(args._parser, config)
        args = parser.parse_args(argv)
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SwarmError as e:
        print(f"dai-swarm {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
