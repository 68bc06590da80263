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


def test_start_time_options():
    import time

    import pytest

    from dai_swarm.errors import ConfigError
    from dai_swarm.swarm import _start_time

    assert _start_time(1234.5, None) == 1234.5
    now = time.time()
    assert now + 29 <= _start_time(None, 30.0) <= now + 32
    assert now + 1 <= _start_time(None, None) <= now + 4
    for bad in ((1.0, 2.0), (None, -1.0), (None, float("nan"))):
        with pytest.raises(ConfigError):
            _start_time(*bad)
    out = _run("--run-id", "x", "--t0", "5", "--start-in", "5")
    assert out.returncode == 2 and "not allowed with argument" in out.stderr


def test_wait_for_run_takes_seconds_and_refuses_nonsense(capsys):
    import argparse

    import pytest

    from dai_swarm.cmd_peer import add_parser

    sub = argparse.ArgumentParser().add_subparsers()
    parser = add_parser(sub)
    assert parser.parse_args(["--run-id", "x", "--wait-for-run", "150"]).wait_for_run == 150.0
    assert parser.parse_args(["--run-id", "x"]).wait_for_run is None  # the library's default (3 s, 10 s without a task)
    for bad in ("-1", "abc", "1e9"):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(["--run-id", "x", "--wait-for-run", bad])
        assert e.value.code == 2
    assert "--wait-for-run" in capsys.readouterr().err


def test_shared_memory_manager_starts_while_a_signal_still_ends_the_process():
    """hivemind's first shared-memory future starts torch_shm_manager and waits for it in C code
    that never runs Python's signal handlers (a peer signalled there hung until SIGKILLed). A CLI
    peer starts the manager while importing, when SIGINT and SIGTERM still end the process at
    once: even a command line that argparse refuses (exit 2, before anything runs) starts it."""
    import time

    proc = subprocess.Popen([sys.executable, "-m", "dai_swarm", "peer", "--run-id", "x", "--t0", "5", "--start-in", "5"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = set()
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                children = f.read().split()
        except OSError:
            break
        for child in children:
            try:
                with open(f"/proc/{child}/comm") as f:
                    seen.add(f.read().strip())
            except OSError:
                pass
        time.sleep(0.005)
    proc.wait(30)
    assert proc.returncode == 2
    assert any(name.startswith("torch_shm") for name in seen), seen
