"""Numbers for people: what the CLI prints (progress lines, tables, summaries) is rounded here.

Machine-readable output (``--json``, ``summary.json``, history files) keeps full precision; only
text meant to be read goes through these helpers.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["megabytes", "num", "rounded"]

DIGITS = 4


def num(x: Any, digits: int = DIGITS) -> str:
    """``x`` with ``digits`` significant digits (``0.01348``, ``2.186``, ``1.235e+05``); ``-`` for None.

    Integers print whole; anything that is not a number prints as ``str(x)``.
    """
    if x is None:
        return "-"
    if isinstance(x, bool) or isinstance(x, int):
        return str(x)
    try:
        value = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def megabytes(n_bytes: Any) -> str:
    """A byte count as megabytes with two decimals (``12.35``); ``-`` for None."""
    if n_bytes is None:
        return "-"
    return f"{float(n_bytes) / 1e6:.2f}"


def rounded(obj: Any, digits: int = DIGITS) -> Any:
    """A copy of ``obj`` (dicts, lists, tuples nested) with every float rounded to ``digits`` significant
    digits, for printing structured values (e.g. a peer's metrics) to people."""
    if isinstance(obj, float):
        return float(num(obj, digits)) if math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(rounded(v, digits) for v in obj)
    return obj
