"""Crash safety with real processes: a writer SIGKILLed at random moments loses no acknowledged record."""

from __future__ import annotations

import sys

import pytest

from dai_swarm.rewards.crashtest import run_crash_campaign


@pytest.mark.integration
@pytest.mark.skipif(sys.platform == "win32", reason="needs os.fork and SIGKILL")
def test_sigkill_during_appends_loses_no_acknowledged_record(tmp_path):
    stats = run_crash_campaign(str(tmp_path), kills=50, seed=1234, max_delay_s=0.06)
    assert stats["kills"] == 50
    assert stats["acknowledged"] > 500, stats  # the children did get work acknowledged between kills
    assert stats["child_errors"] == 0, stats["errors"]
    assert stats["lost"] == 0, stats
    assert stats["corrupt_accepted"] == 0, stats
