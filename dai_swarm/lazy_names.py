"""Public names of a package imported on first use (PEP 562 module ``__getattr__``), so that importing
the package, or a light module inside it, does not pull torch or hivemind in with it."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

__all__ = ["lazy_names"]


def lazy_names(package: str, homes: Mapping[str, str], namespace: dict) -> tuple[Callable[[str], Any],
                                                                                 Callable[[], list[str]]]:
    """The ``(__getattr__, __dir__)`` pair for ``package``: ``homes`` maps each lazy public name to the
    (relative) module that defines it; a name is imported once, then cached in ``namespace`` (the
    package's ``globals()``)."""

    def __getattr__(name: str) -> Any:
        if name in homes:
            value = getattr(importlib.import_module(homes[name], package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(homes))

    return __getattr__, __dir__
