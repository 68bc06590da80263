"""Ledger report metrics and the ``dai-swarm ledger`` command."""

from __future__ import annotations

import json
import math

import pytest

from dai_swarm.canonical import sha256_hex
from dai_swarm.cli import main
from dai_swarm.identity import Identity
from dai_swarm.rewards import Contributor, RewardLog, compute_round_record, ledger_report
from dai_swarm.rewards.report import gini, hill_number

from ledger_helpers import read_lines, write_lines


def _write_run(path, ident, *, doctor_round=None):
    with RewardLog(path, ident, batch_size=8) as log:
        log.append("join", {"peer": "a", "region": "eu", "round": 0})
        log.append("join", {"peer": "b", "region": "us", "round": 0})
        for r in range(4):
            samples_b = 999 if r == doctor_round else 100
            body = compute_round_record(r, [Contributor("a", 100, 1.0, "eu"), Contributor("b", samples_b, 1.0, "us")],
                                        {}, [], sha256_hex(b"%d" % r), emission=1000)
            log.append_round(body)
            log.append("verdict", {"round": r, "issued_round": r + 1, "subject": "a", "verifier": "b", "passed": True})
        log.append("leave", {"peer": "b", "round": 4})


def test_metric_helpers():
    assert hill_number([5, 5, 5, 5]) == pytest.approx(4.0)
    assert hill_number([1, 0, 0]) == pytest.approx(1.0)
    assert gini([1, 1, 1, 1]) == pytest.approx(0.0)
    assert gini([0, 0, 0, 10]) == pytest.approx(0.75)


def test_report_metrics(tmp_path):
    path = str(tmp_path / "a.log")
    _write_run(path, Identity.generate())
    rep = ledger_report(path)
    assert rep["rounds"] == 4 and rep["units_emitted"] == 4000
    assert rep["contributors"]["a"]["total"] == rep["contributors"]["b"]["total"] == 2000
    assert rep["effective_contributors"] == pytest.approx(2.0) and rep["inverse_simpson"] == pytest.approx(2.0)
    assert rep["effective_regions"] == pytest.approx(2.0) and rep["regions"] == ["eu", "us"]
    assert rep["gini"] == pytest.approx(0.0)
    assert rep["churn_rate"] == pytest.approx(3 / 4 / 2)
    assert rep["slashing_frequency"] == 0.0
    assert rep["verification_latency"] == {"unit": "rounds", "count": 4, "mean": 1.0, "p50": 1.0, "p95": 1.0}
    assert rep["provenance_depth"]["rounds"] == 4 and rep["provenance_depth"]["contributors"] == 2
    assert rep["provenance_depth"]["state_hash"] == sha256_hex(b"3")


def test_cli_verify_ok_and_bad(tmp_path, capsys):
    path = str(tmp_path / "a.log")
    ident = Identity.generate()
    _write_run(path, ident)
    assert main(["ledger", "verify", path]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["ledger", "verify", path, "--json", "--trusted-keys", ident.public_key_hex]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    lines = read_lines(path)
    lines[4] = lines[4].replace(b'"a"', b'"z"', 1)
    write_lines(path, lines)
    assert main(["ledger", "verify", path, "--json"]) == 1
    res = json.loads(capsys.readouterr().out)
    assert res["first_bad"] == 4 and res["reason"] == "bad CRC"
    assert main(["ledger", "verify", path]) == 1
    assert "BAD" in capsys.readouterr().out


def test_cli_report_and_png(tmp_path, capsys):
    path, png = str(tmp_path / "a.log"), str(tmp_path / "r.png")
    _write_run(path, Identity.generate())
    assert main(["ledger", "report", path, "--json", "--png", png]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["rounds"] == 4 and math.isclose(rep["gini"], 0.0, abs_tol=1e-12)
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert main(["ledger", "report", path]) == 0
    assert "Gini" in capsys.readouterr().out


def test_cli_diff(tmp_path, capsys):
    a, b, c = (str(tmp_path / f"{n}.log") for n in "abc")
    _write_run(a, Identity.generate())
    _write_run(b, Identity.generate())
    _write_run(c, Identity.generate(), doctor_round=2)
    assert main(["ledger", "diff", a, b]) == 0
    assert "agree" in capsys.readouterr().out
    assert main(["ledger", "diff", a, c, "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == {"agree": False, "first_disagreeing_round": 2}
    assert main(["ledger", "report", a, c, "--json"]) == 1  # merged report flags the disagreement
    assert json.loads(capsys.readouterr().out)["round_disagreements"] == [2]


def test_cli_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        main(["ledger", "--help"])
    assert "examples:" in capsys.readouterr().out
