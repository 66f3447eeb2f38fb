"""diffsci.domains.pde: PDE trajectories (PDEBench HDF5 files), reference solvers and a
wavelet-domain diffusion model of Burgers trajectories.

Modules: :mod:`.io` (PDEBench reader/writer, the work folder's files), :mod:`.simulate`
(Burgers, advection, 2-D Navier-Stokes), :mod:`.wavelets` (the orthogonal 2-D DWT),
:mod:`.operators` (masks observed through the wavelet codec), :mod:`.models` (codec, denoiser,
FNO), :mod:`.sampling` (forecasts, assimilation), :mod:`.events` (event study),
:mod:`.baselines`, :mod:`.metrics`, :mod:`.plots` and :mod:`.task`. The public names of
:mod:`.simulate` and :mod:`.io` are re-exported here lazily.
"""

from __future__ import annotations

from diffsci.core.lazy import lazy_exports

_EXPORTS = {
    "advection_1d": "simulate",
    "burgers_1d": "simulate",
    "grf_2d": "simulate",
    "navier_stokes_2d": "simulate",
    "periodic_grid": "simulate",
    "random_initial_conditions": "simulate",
    "PDEData": "io",
    "read_pdebench": "io",
    "write_pdebench": "io",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
