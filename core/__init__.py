"""diffsci.core: the field-agnostic diffusion core.

The names of the domain contract (:mod:`diffsci.core.task`) are importable from here; lazily,
so ``import diffsci.core`` stays cheap until one is used.
"""

from __future__ import annotations

from .lazy import lazy_exports

_CONTRACT = ("Card", "Config", "DomainTask", "EvalResult", "Files", "LossFn", "Runtime", "Task")
_EXPORTS = {name: "task" for name in (*_CONTRACT, "TaskPaths")}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
