"""The dashboard end to end: real ``dai-swarm peer`` processes, curl, and headless Chromium.

Chromium is Debian's ``chromium`` package (``.ci/setup`` installs it). Without it the browser
test is skipped locally and fails under CI (``CI`` set), so CI cannot pass without it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

import pytest

from dai_swarm import testing
from dai_swarm.cmd_demo import URL_RE
from dai_swarm.demo_report import chromium_binary, run_chromium
from test_metrics import parse_prometheus

pytestmark = pytest.mark.integration


def _need_chromium() -> None:
    if chromium_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing under CI: .ci/setup must install it")
        pytest.skip("chromium is not installed (bash .ci/setup installs it)")


def _peer(tmp_path, name: str, t0: float, region: str, initial: list[str]) -> subprocess.Popen:
    argv = [sys.executable, "-m", "dai_swarm", "peer", "--run-id", f"dash-{os.getpid()}", "--task", "regression",
            "--round-s", "3", "--t0", str(t0), "--region", region, "--metrics-port", "0", "--threads", "1", "--quiet",
            "--max-inner-steps", "5", "--host-maddrs", "/ip4/127.0.0.1/tcp/0",
            "--address-file", str(tmp_path / f"{name}.addr")]
    if initial:
        argv += ["--initial-peers", *initial]
    log = open(tmp_path / f"{name}.log", "wb")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def _url(tmp_path, name: str) -> str | None:
    m = URL_RE.search((tmp_path / f"{name}.log").read_text(errors="replace"))
    return m.group(1) if m else None


def _status(url: str) -> dict:
    with urllib.request.urlopen(url + "status.json", timeout=3) as r:
        return json.loads(r.read())


def _dom(url: str) -> str:
    out = run_chromium(url, "--virtual-time-budget=4000", "--dump-dom", timeout_s=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_dashboard_loads_updates_and_shows_a_joining_peer(tmp_path):
    _need_chromium()
    procs = []
    with testing.SocketGuard():
        try:
            procs.append(_peer(tmp_path, "a", time.time() + 15, "eu", []))
            url = testing.wait_until(lambda: _url(tmp_path, "a"), 90, what="peer a's dashboard URL")
            seeds = (tmp_path / "a.addr").read_text().split()
            # curl: the metrics endpoint is valid Prometheus text exposition
            curl = subprocess.run(["curl", "-sf", url + "metrics"], capture_output=True, text=True, timeout=30)
            assert curl.returncode == 0
            assert "dai_swarm_round" in parse_prometheus(curl.stdout)
            testing.wait_until(lambda: len(_status(url)["history"]) >= 2, 90, what="two closed rounds")
            doc = _status(url)
            dom = _dom(url)
            assert f'data-peer-id="{doc["peer_id"]}"' in dom
            updates = int(re.search(r'data-updates="(\d+)"', dom).group(1))
            assert updates >= 2, "the page polls /status.json and redraws"
            shown_round = int(re.search(r'id="round">(\d+)<', dom).group(1))
            assert shown_round >= doc["round"]
            assert 'id="live" class="ok"' in dom
            assert "<polyline" in dom, "the loss curve is drawn"

            procs.append(_peer(tmp_path, "b", time.time() + 20, "eu", seeds))
            testing.wait_until(lambda: len(_status(url)["peers"]) == 2, 120, what="peer b listed by peer a")
            b_id = next(p["peer_id"] for p in _status(url)["peers"] if not p["self"])
            dom = _dom(url)
            assert f'data-peer-id="{b_id}"' in dom, "the joining peer appears on the page"
            assert re.search(r'id="peer-count">2<', dom)
            shot = tmp_path / "dashboard.png"
            run_chromium(url, "--virtual-time-budget=3000", "--window-size=1200,900", f"--screenshot={shot}")
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            codes = [p.wait(30) for p in procs]
    assert codes == [0, 0], [(tmp_path / f"{n}.log").read_text()[-1500:] for n in ("a", "b")]
