"""Shutdown under signals: ``python -m benchmarks.signals --quick`` on real peer processes, plus the guard's rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_exit_guard_needs_ordered_deadlines():
    from dai_swarm.exit_guard import ExitGuard

    with pytest.raises(ValueError):
        ExitGuard(grace_s=5.0, hard_s=4.0)
    guard = ExitGuard(grace_s=1.0, hard_s=2.0)
    assert not guard.stop.is_set() and guard.signalled_at is None


def test_a_signal_during_start_up_unwinds_it():
    from dai_swarm.exit_guard import ExitGuard

    guard = ExitGuard()
    guard.stop.set()  # a signal came before the start-up began
    with pytest.raises(KeyboardInterrupt):
        with guard.starting():
            pass


@pytest.mark.integration
@pytest.mark.timeout(420)
def test_quick_signal_campaign_exits_in_time_and_leaves_nothing(tmp_path):
    """6 signals at random moments, each way of signalling once. Every exit after start-up is within 10 s and nothing is left
    behind. Known gap (open): a signal during start-up, before the peer has printed anything, can
    still leave it hanging until the campaign kills it (1 of 101 in the full run, 1 of 11 in a
    loaded CI run); those exits are reported, not asserted in time, and must leave nothing behind."""
    r = subprocess.run([sys.executable, "-m", "benchmarks.signals", "--quick", "--out", str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True, timeout=400)
    assert (tmp_path / "signals.json").exists(), r.stdout[-4000:] + r.stderr[-3000:]
    report = json.loads((tmp_path / "signals.json").read_text())
    assert report["signals"] == 6 and report["exits"] == 7
    late = [x for x in report["results"] if not x["in_time"]]
    print("late exits:", late)
    assert all(x["phase"] == "start-up" for x in late), late
    assert all(x["exit_s"] <= 10.0 for x in report["results"] if x["phase"] != "start-up")
    assert report["leftover_processes"] == 0 and report["leftover_sockets"] == 0
    assert report["ledgers_failed"] == 0 and report["ledgers_verified"] >= 1
    assert {r["mode"] for r in report["results"]} == {"int-main", "term-main", "int-group", "term-group", "term-all",
                                                      "twice"}
    assert "| term-all |" in (tmp_path / "signals.md").read_text()


def test_sample_systemd_unit_and_its_config():
    from dai_swarm.cli import _apply_defaults, _load_config, build_parser

    unit = open(os.path.join(REPO, "contrib", "dai-swarm-peer.service")).read()
    assert "KillSignal=SIGTERM" in unit and "TimeoutStopSec=" in unit
    assert "dai-swarm peer --config /etc/dai-swarm/peer.toml" in unit
    parser = build_parser()
    args = parser.parse_args(["peer", "--run-id", "x"])
    config = _load_config(os.path.join(REPO, "contrib", "peer.toml"), "peer")
    _apply_defaults(args._parser, config)  # every key is an option of `dai-swarm peer`
    args = parser.parse_args(["peer", "--run-id", "x"])
    assert args.quiet is True and args.ledger == "/var/lib/dai-swarm/rewards.log"
