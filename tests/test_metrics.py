"""Metrics: Prometheus text exposition (checked by a strict parser), /status.json, the HTTP server."""

from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.request

import pytest
import torch

from dai_swarm.errors import ConfigError, NetworkError
from dai_swarm.metrics import MetricsServer, render_prometheus, swarm_collector

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"'
SAMPLE = re.compile(rf"^({NAME})(?:\{{((?:{LABEL})(?:,{LABEL})*)?\}})? (\S+)(?: (-?\d+))?$")


def parse_prometheus(text: str) -> dict[str, dict]:
    """Strict parser for text format 0.0.4; returns {family: {"type", "help", "samples": {labels: value}}}.

    Rejects: missing final newline, unknown comment kinds, TYPE after samples, a second TYPE or
    HELP, interleaved families, bad names, bad label syntax or escapes, duplicate series,
    unparseable values, counters that are negative or have no TYPE.
    """
    assert text.endswith("\n"), "exposition must end with a newline"
    families: dict[str, dict] = {}
    finished: set[str] = set()
    current = None
    for n, line in enumerate(text[:-1].split("\n"), 1):
        assert line.strip() == line and line, f"line {n}: blank or padded line {line!r}"
        if line.startswith("#"):
            m = re.match(rf"^# (HELP|TYPE) ({NAME}) (.*)$", line)
            assert m, f"line {n}: malformed comment {line!r}"
            kind, name, rest = m.groups()
            assert name not in finished, f"line {n}: family {name} reopened"
            fam = families.setdefault(name, {"type": None, "help": None, "samples": {}})
            assert not fam["samples"], f"line {n}: {kind} after samples of {name}"
            if kind == "TYPE":
                assert fam["type"] is None and rest in ("counter", "gauge", "histogram", "summary", "untyped"), line
                fam["type"] = rest
            else:
                assert fam["help"] is None, f"line {n}: second HELP for {name}"
                fam["help"] = rest
            if current is not None and current != name:
                finished.add(current)
            current = name
            continue
        m = SAMPLE.match(line)
        assert m, f"line {n}: malformed sample {line!r}"
        name, labels_text, value_text = m.group(1), m.group(2), m.group(7)
        assert name not in finished, f"line {n}: samples of {name} are not contiguous"
        if current is not None and current != name:
            finished.add(current)
        current = name
        labels = tuple(re.findall(LABEL, labels_text or ""))
        assert len({k for k, _ in labels}) == len(labels), f"line {n}: repeated label name"
        value = float(value_text)  # accepts NaN, +Inf, -Inf, exponents; raises on garbage
        fam = families.setdefault(name, {"type": None, "help": None, "samples": {}})
        assert labels not in fam["samples"], f"line {n}: duplicate series {line!r}"
        if fam["type"] == "counter":
            assert value >= 0 or math.isnan(value), f"line {n}: negative counter"
        fam["samples"][labels] = value
    for name, fam in families.items():
        assert fam["type"] is not None, f"{name} has no TYPE"
    return families


DOC = {
    "run_id": "r1", "peer_id": "12D3KooWAbc", "region": 'e"u\\x\n', "task": "tinylm", "round": 7, "steps": 3,
    "samples": 1234, "samples_per_s": 56.5, "val_loss": 2.5, "rounds_trained": 5, "resyncs": 1,
    "traffic": {"sent": {"intra": 10, "cross": 2}, "received": {"intra": 30, "cross": 0}},
    "regions": {"eu": 2, "us": 1}, "agreement": {"round": 5, "state_hash": "ab", "agree": 2, "total": 3},
    "history": [{"round": 5, "updates": 3}], "dropped_records": {"forged": 2, "accepted": 9},
}


def test_render_parses_strictly_and_carries_the_figures():
    fams = parse_prometheus(render_prometheus(DOC))
    assert fams["dai_swarm_round"]["samples"][()] == 7
    assert fams["dai_swarm_round"]["type"] == "gauge"
    assert fams["dai_swarm_samples_total"]["type"] == "counter"
    assert fams["dai_swarm_bytes_total"]["samples"][(("direction", "received"), ("link", "intra"))] == 30
    assert fams["dai_swarm_peers"]["samples"][(("region", "us"),)] == 1
    assert fams["dai_swarm_state_agreement_ratio"]["samples"][()] == pytest.approx(2 / 3)
    assert fams["dai_swarm_dropped_records_total"]["samples"] == {(("reason", "forged"),): 2}
    info = dict(next(iter(fams["dai_swarm_info"]["samples"])))
    assert info["region"] == 'e\\"u\\\\x\\n', "label values are escaped"


def test_metrics_that_are_not_reported_are_omitted_not_invented():
    fams = parse_prometheus(render_prometheus(DOC))
    for absent in ("dai_swarm_reputation", "dai_swarm_rewards_total", "dai_swarm_verification_latency_seconds",
                   "dai_swarm_slashed_peers", "dai_swarm_spot_checks_total"):
        assert absent not in fams
    fams = parse_prometheus(render_prometheus({**DOC, "val_loss": None, "samples_per_s": float("nan")}))
    assert "dai_swarm_val_loss" not in fams and "dai_swarm_samples_per_second" not in fams
    doc = {**DOC, "reputation": 0.75, "rewards": {"train": 3.0, "verify": 1.5}, "verification_latency_s": 1.25,
           "slashes": ["k1", "k2"], "verification": {"checks": 4, "rechecks": 1, "fails": 0}}
    fams = parse_prometheus(render_prometheus(doc))
    assert fams["dai_swarm_reputation"]["samples"][()] == 0.75
    assert fams["dai_swarm_rewards_total"]["samples"][(("kind", "verify"),)] == 1.5
    assert fams["dai_swarm_verification_latency_seconds"]["samples"][()] == 1.25
    assert fams["dai_swarm_slashed_peers"]["samples"][()] == 2
    assert fams["dai_swarm_spot_checks_total"]["samples"][(("kind", "checks"),)] == 4


@pytest.mark.parametrize("bad", [
    "x 1",                                   # no newline
    "# TYPE x gauge\nx 1\n# TYPE x gauge\n",  # second TYPE
    "x{a=\"1\"} 1\nx{a=\"1\"} 2\n",          # duplicate series (and no TYPE)
    "# TYPE x gauge\nx{a=\"\\q\"} 1\n",        # bad escape
    "# TYPE x gauge\nx one\n",               # bad value
    "# TYPE x counter\nx -1\n",              # negative counter
    "# TYPE x gauge\n# TYPE y gauge\nx 1\ny 1\nx 2\n",  # interleaved families
])
def test_the_strict_parser_rejects_malformed_expositions(bad):
    with pytest.raises((AssertionError, ValueError)):
        parse_prometheus(bad)


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def test_server_routes_content_types_and_cached_document():
    calls = []

    def collect():
        calls.append(time.time())
        return {**DOC, "round": len(calls), "val_loss": float("inf")}

    with MetricsServer(collect, refresh_s=0.05) as srv:
        status, ctype, body = _get(srv.url + "metrics")
        assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
        parse_prometheus(body.decode())
        status, ctype, body = _get(srv.url + "status.json")
        doc = json.loads(body)
        assert status == 200 and ctype == "application/json" and doc["val_loss"] is None  # inf is not JSON
        assert _get(srv.url)[2].startswith(b"<!doctype html>")
        assert _get(srv.url + "static/dashboard.js")[1].startswith("text/javascript")
        for path in ("nope", "static/../metrics.py", "static/index.htm"):
            assert _get(srv.url + path)[0] == 404
        time.sleep(0.3)
        assert json.loads(_get(srv.url + "status.json")[2])["round"] > doc["round"], "the collector refreshes"
    with pytest.raises(ConfigError):
        MetricsServer(collect, port=70000)
    with MetricsServer(collect) as srv, pytest.raises(NetworkError, match="--metrics-port"):
        MetricsServer(collect, port=srv.port)


def test_a_failing_collector_keeps_the_last_document():
    state = {"fail": False}

    def collect():
        if state["fail"]:
            raise RuntimeError("DHT gone")
        return dict(DOC)

    srv = MetricsServer(collect, refresh_s=60).start()
    try:
        state["fail"] = True
        assert srv.refresh()["round"] == 7
        assert json.loads(srv.status_bytes())["round"] == 7
    finally:
        srv.stop()
        srv.stop()  # idempotent


@pytest.mark.integration
def test_a_real_swarm_exposes_round_loss_bytes_and_peers():
    from dai_swarm import Swarm, testing

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with testing.SocketGuard(), Swarm("regression", "metrics-test", region="eu", round_s=2.5, max_inner_steps=5,
                                          t0=time.time() + 6) as swarm:
            with MetricsServer(swarm_collector(swarm), refresh_s=0.5) as srv:
                opt = swarm.optimizer()
                for batch in swarm.batches():
                    swarm.task.loss(swarm.model, batch).backward()
                    opt.step()
                    opt.zero_grad()
                    if swarm.runtime.history and swarm.runtime.history[-1].get("val_loss") is not None \
                            and len(swarm.runtime.history) >= 2:
                        break
                srv.refresh()
                fams = parse_prometheus(_get(srv.url + "metrics")[2].decode())
                doc = json.loads(_get(srv.url + "status.json")[2])
    finally:
        torch.set_num_threads(threads)
    assert fams["dai_swarm_round"]["samples"][()] >= 2
    assert fams["dai_swarm_val_loss"]["samples"][()] == pytest.approx(doc["val_loss"])
    assert fams["dai_swarm_peers"]["samples"] == {(("region", "eu"),): 1}
    assert fams["dai_swarm_samples_total"]["samples"][()] >= 10 * swarm.task.batch_size
    assert len(fams["dai_swarm_bytes_total"]["samples"]) == 4
    assert doc["peers"][0]["self"] and doc["peers"][0]["peer_id"] == swarm.dht.peer_id
    assert doc["agreement"]["agree"] == doc["agreement"]["total"] == 1
    assert [h["round"] for h in doc["history"]] == sorted(h["round"] for h in doc["history"])
