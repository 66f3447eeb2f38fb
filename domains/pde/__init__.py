"""diffsci.domains.pde: PDE trajectories (PDEBench HDF5 files) and reference solvers.

Submodules: :mod:`.simulators` (Burgers, advection, 2-D Navier-Stokes) and :mod:`.io`
(PDEBench reader/writer). Their public names are re-exported here lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "advection_1d": "simulators",
    "burgers_1d": "simulators",
    "grf_2d": "simulators",
    "navier_stokes_2d": "simulators",
    "periodic_grid": "simulators",
    "random_initial_conditions": "simulators",
    "PDEData": "io",
    "read_pdebench": "io",
    "write_pdebench": "io",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
