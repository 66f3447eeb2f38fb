"""Tools, scanpy's ``tl`` namespace: AnnData in, AnnData out, keyword-only options,
``key_added``, ``copy``.

- :func:`fit_latent` / :func:`encode` / :func:`decode`: the PCA latent the population model
  works in (:mod:`.models.latent`).
- :func:`predict_perturbation`: sampled perturbed populations of one (cell type,
  perturbation) from that cell type's control cells (:mod:`.models.population`).
- :func:`identity_baseline`, :func:`mean_shift_baseline`: the baselines always reported
  (:mod:`.baselines`).
- :func:`lineage`: branch, pseudotime and hierarchy of every cell from the tree-codebook
  diffusion model (:mod:`.models.tree`).
"""

from __future__ import annotations

from .baselines import identity_baseline, mean_shift_baseline
from .models.latent import decode, encode, fit_latent
from .models.population import predict_perturbation
from .models.tree import lineage

__all__ = [
    "fit_latent",
    "encode",
    "decode",
    "predict_perturbation",
    "identity_baseline",
    "mean_shift_baseline",
    "lineage",
]
