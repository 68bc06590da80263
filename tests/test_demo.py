"""``dai-swarm demo`` end to end (short settings): churn, summary, plot; Ctrl+C leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from dai_swarm import testing
from dai_swarm.demo_report import swarm_curve

PY = [sys.executable, "-m", "dai_swarm", "demo"]
pytestmark = pytest.mark.integration


def _ours(run_marker: str) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if run_marker.encode() in f.read():
                        pids.append(int(pid))
            except OSError:
                pass
    return pids


def test_swarm_curve_accumulates_samples():
    hist = [{"round": 0, "samples": 10, "val_loss": 3.0}, {"round": 1, "samples": 5}, {"round": 2, "samples": 5,
                                                                                     "val_loss": 2.0}]
    assert swarm_curve(hist) == ([10, 20], [3.0, 2.0])


def test_demo_trains_with_churn_and_writes_its_outputs(tmp_path):
    out_dir = tmp_path / "demo"
    proc = subprocess.run([*PY, "--peers", "3", "--task", "regression", "--minutes", "0.5", "--round-s", "4",
                           "--startup-s", "25", "--reference-samples", "3000", "--json", "--out", str(out_dir)],
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["final_hashes_agree"] and summary["interrupted"] is False
    kinds = [e["event"] for e in summary["events"]]
    assert "kill" in kinds and "join" in kinds
    fates = {p["peer"]: p["fate"] for p in summary["peer_processes"]}
    assert fates["peer1"].startswith("SIGKILL") and "peer3" in fates
    assert summary["swarm"]["samples"] > 0 and summary["centralized"]["val_loss"] > 0
    assert summary["sync_dp"]["workers"] == 3 and summary["sync_dp"]["val_loss"] > 0
    assert "synchronous data-parallel, 3 workers: val loss" in proc.stderr
    assert (out_dir / "loss_vs_samples.png").read_bytes()[:4] == b"\x89PNG"
    assert (out_dir / "summary.json").exists() and (out_dir / "peers" / "peer0.log").exists()
    assert "all 3 peers visible after" in proc.stderr and "dai-swarm demo: summary" in proc.stderr
    assert not _ours(str(out_dir)), "no peer or bootstrap process is left"


def test_ctrl_c_stops_every_process(tmp_path):
    with testing.SocketGuard() as guard:
        proc = subprocess.Popen([*PY, "--peers", "2", "--task", "regression", "--minutes", "5", "--json",
                                 "--no-reference", "--out", str(tmp_path / "demo")], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            line = ""
            while time.monotonic() < deadline and "peers visible after" not in line:
                line = proc.stderr.readline()
                if not line:
                    break
            assert "all 2 peers visible after" in line
            # the sockets the demo's own processes hold (another test's, beside this one, are not its to remove)
            tree = testing._proc.descendants(proc.pid)
            own = {s for pid in tree for s in testing._proc.daemon_sockets(pid)} | set(testing._proc.owned_sockets(tree))
            assert own
            os.killpg(proc.pid, signal.SIGINT)
            out, err = proc.communicate(timeout=90)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    summary = json.loads(out.strip().splitlines()[-1])
    assert proc.returncode == 0 and summary["interrupted"] is True
    assert summary["exit_codes"] == [0, 0, 0], err[-3000:]  # bootstrap and both peers exit cleanly
    # each peer saw the other, and the two peers are in the demo's two regions (round-robin)
    assert summary["visible_at_end"] == 2 and summary["regions"] == {"eu": 1, "us": 1}, summary
    assert not _ours(str(tmp_path / "demo"))
    assert not [s for s in own if s in guard.removed or os.path.exists(s)], "the demo removed its own sockets"
