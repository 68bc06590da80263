"""Docs are executed: every ``bash``/``python`` block in docs/*.md runs, the two-terminal walk-through
runs as written, and docs/cli.md matches the commands' ``--help``."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dai_swarm import testing

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
ILLUSTRATIVE = {"text", "console"}
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.S | re.M)


def blocks() -> list[tuple[str, str, str, str]]:
    """(file, language, attributes, code) of every fenced block in docs/*.md."""
    out = []
    for path in sorted(DOCS.glob("*.md")):
        for m in FENCE.finditer(path.read_text()):
            lang, _, attrs = m.group(1).strip().partition(" ")
            out.append((path.name, lang, attrs.strip(), m.group(2)))
    return out


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}")


def test_every_block_is_executed_or_marked_illustrative():
    found = blocks()
    assert len(found) >= 8
    for name, lang, attrs, _ in found:
        assert lang in ILLUSTRATIVE | {"python", "bash"}, f"{name}: block ```{lang} is neither run nor marked text/console"
        assert not attrs or (lang == "bash" and attrs in ("terminal-1", "terminal-2")), f"{name}: ```{lang} {attrs}"


def test_cli_reference_is_up_to_date():
    mod = runpy.run_path(str(DOCS / "make_cli_reference.py"))
    assert (DOCS / "cli.md").read_text() == mod["render"](), "run: python docs/make_cli_reference.py"


RUNNABLE = [(n, lang, code) for n, lang, attrs, code in blocks() if lang in ("python", "bash") and not attrs]


@pytest.mark.integration
@pytest.mark.parametrize("name,lang,code", RUNNABLE, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(RUNNABLE)])
def test_doc_block_runs(name, lang, code, tmp_path):
    argv = [sys.executable, "-c", code] if lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
    with testing.SocketGuard():
        out = subprocess.run(argv, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, f"{name}:\n{code}\n--- output:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"


def _terminal(n: int) -> str:
    (code,) = [c for name, lang, attrs, c in blocks() if name == "volunteer.md" and attrs == f"terminal-{n}"]
    return code.strip()


def _hashes(text: str) -> dict[int, str]:
    return {int(r): h for r, h in re.findall(r"│\s*(\d+)\s*│\s*\d+\s*│\s*([0-9a-f]{12})\s*│", text)}


@pytest.mark.integration
def test_two_terminal_walkthrough_as_written(tmp_path):
    first_cmd, second_cmd = _terminal(1), _terminal(2)
    assert "/ip4/127.0.0.1/tcp/PORT/p2p/PEER_ID" in second_cmd and "--manifest MANIFEST_HASH" in second_cmd
    with testing.SocketGuard():
        one = subprocess.Popen(["bash", "-c", first_cmd], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                               stderr=open(tmp_path / "one.err", "w"), text=True, start_new_session=True)
        try:
            line = ""
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not line.startswith("--run-id "):
                line = one.stdout.readline()
                assert line or one.poll() is None, (tmp_path / "one.err").read_text()[-3000:]
            words = line.split()
            addr, pin = words[words.index("--initial-peers") + 1], words[words.index("--manifest") + 1]
            second = second_cmd.replace("/ip4/127.0.0.1/tcp/PORT/p2p/PEER_ID", addr).replace("MANIFEST_HASH", pin)
            two = subprocess.run(["bash", "-c", second], cwd=ROOT, env=_env(), capture_output=True, text=True,
                                 timeout=240)
            one_out = one.stdout.read()
            one.wait(120)
        finally:
            if one.poll() is None:
                os.killpg(one.pid, 15)
                one.wait(30)
    one_err = (tmp_path / "one.err").read_text()
    assert two.returncode == 0, two.stderr[-3000:]
    assert one.returncode == 0, one_err[-3000:]
    assert "dashboard and metrics: http://127.0.0.1:" in one_out
    shared = set(_hashes(one_err)) & set(_hashes(two.stderr))
    assert shared, f"the two peers report at least one common round:\n{one_err[-1500:]}\n{two.stderr[-1500:]}"
    assert all(_hashes(one_err)[r] == _hashes(two.stderr)[r] for r in shared), "same state hash for shared rounds"
