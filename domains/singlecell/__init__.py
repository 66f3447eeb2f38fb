"""diffsci.domains.singlecell: perturbation response and lineage inference, scverse-native.

The domain's modules of fixed roles: :mod:`.io` (``.h5ad``, 10x ``.h5`` and mtx readers,
atomic ``.h5ad`` writes), :mod:`.simulate` (the perturbation simulator on pbmc68k_reduced, the
benchmark's data and oracle, krumsiek11 with ground truth), :mod:`.models` (the PCA latent, the
population and the tree-codebook diffusion models), :mod:`.baselines` (identity, mean-shift,
DPT, PAGA), :mod:`.metrics` (pertpy's E-distance, MMD, R^2, DE genes, NMI, dendrogram purity,
Spearman; the result tables and the acceptance bars), :mod:`.plots` (Axes in, Axes out) and
:mod:`.task` (glue). On top of them, scanpy's public namespaces: :mod:`.tl` (tools, AnnData in
and out) and :mod:`.pl` (plots). All are loaded lazily.
"""

from __future__ import annotations

import importlib

from diffsci.core.lazy import lazy_getattr

_EXPORTS = {
    "PerturbationSimulator": "simulate",
    "load_pbmc": "simulate",
    "load_krumsiek11": "simulate",
    "e_distance": "metrics",
    "dendrogram_purity": "metrics",
    "PopulationNet": "models",
    "LineageDiffusion": "models",
    "SingleCellModel": "models",
    "read": "io",
    "write_h5ad": "io",
}
_MODULES = ("tl", "pl", "io", "simulate", "models", "baselines", "metrics", "plots")

__all__ = sorted(_EXPORTS) + list(_MODULES)

_names = lazy_getattr(__name__, _EXPORTS)


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    return _names(name)
