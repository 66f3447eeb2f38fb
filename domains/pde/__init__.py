"""diffsci.domains.pde: PDE trajectories (PDEBench HDF5 files) and reference solvers.

Submodules: :mod:`.simulators` (Burgers, advection, 2-D Navier-Stokes) and :mod:`.io`
(PDEBench reader/writer). Their public names are re-exported here lazily.
"""

from __future__ import annotations

from diffsci.core.lazy import lazy_getattr

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

__getattr__ = lazy_getattr(__name__, _EXPORTS)
