"""``dai-swarm task check SPEC``: validate a task's contract before joining a run with it."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]

EPILOG = """examples:
  dai-swarm task check examples.my_task:LineTask
  dai-swarm task check mypkg.tasks:MyTask
  dai-swarm task check tinylm-small

exit status: 0 every check passed, 1 a check failed (the message names the piece and the fix).
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``task`` and its ``check`` action."""
    p = subparsers.add_parser(
        "task",
        help="check that a task keeps the contract a swarm relies on",
        description="Load a task (a built-in name or module:attr, as for 'peer --task') and check each piece "
        "of its contract: dataset, batch size, config, deterministic model initialisation, loss, inner "
        "optimiser and evaluation. Prints each check; stops at the first failure.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=("check",), help="what to do")
    p.add_argument("spec", metavar="SPEC", help="built-in task name or module:attr (modules in the current "
                   "directory are found)")
    return p


def run(args: argparse.Namespace) -> int:
    """Print each contract check of ``args.spec``; 0 if all pass, 1 at the first failure."""
    from .errors import TaskError
    from .tasks.contract import contract_checks
    from .tasks.registry import resolve_task

    print(f"checking task {args.spec}")
    try:
        task = resolve_task(args.spec)
        for check in contract_checks(task, args.spec):
            print(f"  ok    {check.name}: {check.detail}", flush=True)
    except TaskError as e:
        print(f"  FAIL  {e}", flush=True)
        return 1
    print(f"task {args.spec} keeps the contract (config hash {task.config_hash()[:12]})")
    return 0
