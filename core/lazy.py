"""Lazy re-exports for domain packages: ``import diffsci.domains.x`` stays cheap (no torch,
MONAI or scanpy import) until a re-exported name is first used."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_getattr", "lazy_exports"]


def lazy_getattr(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving ``exports`` (name -> submodule of ``package``)."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(f".{exports[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[list[str], Callable[[str], Any]]:
    """``__all__, __getattr__ = lazy_exports(__name__, EXPORTS)`` in a package ``__init__``."""
    return sorted(exports), lazy_getattr(package, exports)
