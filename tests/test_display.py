"""What the CLI prints for people: rounded numbers, no torch warning per progress line, and only the
known-noisy library messages filtered (each matched precisely)."""

from __future__ import annotations

import asyncio
import logging
import sys
import warnings

import torch

from dai_swarm.cmd_peer import _progress_line
from dai_swarm.display import megabytes, num, rounded
from dai_swarm.logging import quiet_known_noise


def test_numbers_have_four_significant_digits():
    assert num(0.01348285935819149) == "0.01348"
    assert num(2.186432361602783) == "2.186"
    assert num(123456.789) == "1.235e+05"
    assert num(None) == "-" and num(12) == "12" and num(float("nan")) == "nan"
    assert num(torch.tensor(0.5)) == "0.5"
    assert megabytes(1_234_567) == "1.23"
    assert rounded({"val_loss": 0.01348285935819149, "n": [1, 2.0000001]}) == {"val_loss": 0.01348, "n": [1, 2.0]}


def test_progress_line_is_rounded_and_warning_free():
    w = torch.ones(2, requires_grad=True)
    loss = (w * 1.23456789).sum()  # requires grad, as a training loss does
    metrics = {"round": 3, "steps": 40, "val_loss": 0.01348285935819149, "state_hash": "ab" * 32,
               "traffic": {"sent": {"intra": 1_000_000, "cross": 500_000}, "received": {"intra": 2_000_000}}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        line = _progress_line(metrics, loss)
    assert line == "round 3 step 40 loss 2.469 val 0.01348 state abababababab sent 1.50 MB recv 2.00 MB"
    assert "val -" in _progress_line(dict(metrics, val_loss=None, state_hash=None), loss)


def _record(logger: str, msg: str, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.getLogger(logger).makeRecord(logger, logging.ERROR, __file__, 1, msg, (), exc_info)


def _raised_from(path: str, exc_source: str) -> BaseException:
    try:
        exec(compile(exc_source, path, "exec"), {"asyncio": asyncio})
    except BaseException as e:  # noqa: BLE001 - the point is to keep it
        return e
    raise AssertionError("did not raise")


def test_only_known_noise_is_filtered():
    quiet_known_noise()
    quiet_known_noise()  # idempotent
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    assert len(bnb.filters) == 1
    assert not bnb.filter(_record(bnb.name, "Failed to load CPU gemm_4bit_forward from kernels-community: x"))
    assert bnb.filter(_record(bnb.name, "some other bitsandbytes warning"))
    aio = logging.getLogger("asyncio")
    p2p_eof = _raised_from("/site-packages/hivemind/p2p/p2p_daemon_bindings/utils.py",
                           "raise asyncio.IncompleteReadError(b'', 1)")
    assert not aio.filter(_record("asyncio", "Unhandled exception in client_connected_cb\ntransport: t", p2p_eof))
    elsewhere = _raised_from("/somewhere/else.py", "raise asyncio.IncompleteReadError(b'', 1)")
    assert aio.filter(_record("asyncio", "Unhandled exception in client_connected_cb", elsewhere))
    other = _raised_from("/site-packages/hivemind/p2p/p2p_daemon_bindings/utils.py", "raise ValueError('x')")
    assert aio.filter(_record("asyncio", "Unhandled exception in client_connected_cb", other))
    assert aio.filter(_record("asyncio", "Task exception was never retrieved", p2p_eof))
    assert sys.modules["dai_swarm.logging"].KNOWN_NOISE
