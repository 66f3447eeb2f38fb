"""diffsci.domains.singlecell: perturbation response and lineage inference, scverse-native.

Layered as scanpy: :mod:`.tl` (tools: ``predict_perturbation``, baselines, ``lineage``,
the PCA latent), :mod:`.pl` (plots, Axes in and out), :mod:`.io` (``.h5ad``, 10x ``.h5`` and
mtx readers, atomic ``.h5ad`` writes), :mod:`.simulate` (the perturbation simulator on
pbmc68k_reduced, krumsiek11 with ground truth), :mod:`.metrics` (pertpy's E-distance, MMD,
R^2, DE genes, NMI, dendrogram purity, Spearman) and :mod:`.models` (the population and the
tree-codebook diffusion models). ``tl``, ``pl``, ``io`` and the models are loaded lazily.
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
_MODULES = ("tl", "pl", "io", "simulate", "metrics", "models")

__all__ = sorted(_EXPORTS) + list(_MODULES)

_names = lazy_getattr(__name__, _EXPORTS)


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    return _names(name)
