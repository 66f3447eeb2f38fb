"""The domain's diffusion models and the PCA latent they work in.

- :mod:`.latent`: the PCA codec of log-normalised expression (``fit_latent``, ``encode``,
  ``decode``).
- :mod:`.population`: population diffusion (PerturbDiff-style) of perturbation responses,
  its training items and :func:`~.population.predict_perturbation`.
- :mod:`.tree`: tree-codebook lineage diffusion (HDTree-style), its training items and the
  E-step :func:`~.tree.lineage`.
- :mod:`.joint`: both in one module for the core's training loop.
- :mod:`.genes`: the PCA codec (by gene name) of a lineage model trained on a user's files.
"""

from __future__ import annotations

from .genes import GeneCodec, select_genes
from .joint import SingleCellModel, TensorItems, joint_loss
from .latent import LATENT_KEY, decode, encode, fit_latent, fit_shared_latent
from .population import (
    PopulationDenoiser,
    PopulationNet,
    anchor_index,
    ot_pairing,
    population_items,
    predict_perturbation,
)
from .tree import LineageDiffusion, TreeCodebook, lineage, lineage_items, tree_init

__all__ = [
    "LATENT_KEY",
    "fit_latent",
    "fit_shared_latent",
    "encode",
    "decode",
    "PopulationNet",
    "PopulationDenoiser",
    "ot_pairing",
    "anchor_index",
    "population_items",
    "predict_perturbation",
    "TreeCodebook",
    "LineageDiffusion",
    "tree_init",
    "lineage_items",
    "lineage",
    "SingleCellModel",
    "TensorItems",
    "joint_loss",
    "GeneCodec",
    "select_genes",
]
