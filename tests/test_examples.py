"""The examples run as written: a user task by module:attr, the library loop, accelerate on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dai_swarm import testing
from dai_swarm.tasks import load_task

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


def _run(argv: list[str], timeout_s: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    with testing.SocketGuard():
        out = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=timeout_s)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


def test_user_task_is_a_valid_task_and_is_short():
    task = load_task("examples.my_task:LineTask")
    model = task.build_model(0)
    assert task.evaluate(model)["loss"] >= 0 and len(task.dataset) == 4096
    assert len((ROOT / "examples" / "my_task.py").read_text().splitlines()) <= 45


def test_user_task_trains_through_the_cli():
    out = _run(["-m", "dai_swarm", "peer", "--run-id", f"line-{os.getpid()}", "--task", "examples.my_task:LineTask",
                "--round-s", "3", "--rounds", "2", "--max-inner-steps", "20", "--threads", "1", "--quiet",
                "--host-maddrs", "/ip4/127.0.0.1/tcp/0"])
    assert "--initial-peers /ip4/127.0.0.1" in out.stdout


def test_train_tinylm_example():
    out = _run(["examples/train_tinylm.py", "--run-id", f"tiny-{os.getpid()}", "--rounds", "2", "--round-s", "5"])
    assert "val loss" in out.stdout and "others join with: --initial-peers" in out.stdout


def test_train_with_accelerate_example_on_cpu():
    out = _run(["examples/train_with_accelerate.py", "--run-id", f"acc-{os.getpid()}", "--rounds", "2"])
    assert "device cpu" in out.stdout and "val loss" in out.stdout
