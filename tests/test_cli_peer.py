"""`dai-swarm peer`: help text and clear errors for bad input (real subprocesses)."""

from __future__ import annotations

import subprocess
import sys

from swarm_run import REPO


def _run(*args: str, timeout: float = 120):
    return subprocess.run([sys.executable, "-m", "dai_swarm", "peer", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_help_has_examples_and_marks_attacks():
    out = _run("--help")
    assert out.returncode == 0
    assert "examples:" in out.stdout and "dai-swarm peer --run-id" in out.stdout
    assert "FOR TESTS AND BENCHMARKS ONLY" in out.stdout.replace("\n", " ").replace("  ", " ")


def test_unknown_task_is_a_clear_error():
    out = _run("--run-id", "x", "--task", "no_such_module_xyz:Task", "--quiet")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "no_such_module_xyz" in out.stderr


def test_malformed_initial_peer_is_a_clear_error():
    out = _run("--run-id", "x", "--task", "regression", "--initial-peers", "not-a-multiaddr", "--quiet")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "not-a-multiaddr" in out.stderr
