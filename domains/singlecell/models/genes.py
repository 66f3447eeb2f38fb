"""The lineage model's inputs on a user's genes: a PCA codec that knows its genes by name.

A lineage model trained on a user's files works in a principal-component latent of their
log-normalised expression (Jolliffe, "Principal Component Analysis", 2002; the first step of
most single-cell pipelines, e.g. scanpy's ``pp.pca``). :class:`GeneCodec` keeps the basis with
the gene names it was fitted on, so new cells are encoded by gene *name*: cells with the genes
in another order are reordered, cells with extra genes are reduced to the model's, cells
missing genes are refused naming them (:func:`diffsci.core.modelcard.require_names`). The
codec travels in the model card (``normalisation["lineage"]``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from anndata import AnnData

from diffsci.core.modelcard import require_names

from ..io import dense

__all__ = ["GeneCodec", "select_genes"]


def select_genes(adata: AnnData, genes: Sequence[str], *, what: str) -> AnnData:
    """``adata`` restricted to ``genes`` in that order; refused (``Incompatible``, naming the
    missing genes and the fix) unless it holds every one of them."""
    have = set(map(str, adata.var_names))
    if not all(g in have for g in genes):
        require_names(
            "genes",
            list(map(str, adata.var_names)),
            list(genes),
            source=what,
            fix=(
                "the model serves only the genes of its card (serves.lineage.genes): give cells "
                "measured on all of them (adata[:, genes]), or retrain on your data with "
                "source.kind: files"
            ),
        )
    return adata[:, list(genes)]


@dataclass
class GeneCodec:
    """PCA of log-normalised expression: ``z = (x - mean) @ components / scale``.

    Attributes
    ----------
    genes
        Gene names, the order of ``mean`` and of the rows of ``components``.
    mean
        ``(genes,)`` mean expression of the training cells.
    components
        ``(genes, k)`` orthonormal principal axes.
    scale
        One number: the latent's entries have this standard deviation divided out and are
        multiplied by ``target_sd`` (the lineage model's sigma_data).
    """

    genes: list[str]
    mean: np.ndarray
    components: np.ndarray
    scale: float

    @classmethod
    def fit(cls, adata: AnnData, n_comps: int, *, target_sd: float, what: str) -> GeneCodec:
        """Fit on the cells of ``adata`` (log-normalised ``X``) by a thin SVD.

        Raises
        ------
        ValueError
            If ``n_comps`` is not below both the number of cells and of genes.
        """
        x = dense(adata.X)
        if not n_comps < min(x.shape):
            raise ValueError(
                f"{what}: files.lineage_pcs = {n_comps} principal components need more than "
                f"that many cells and genes (it has {x.shape[0]} cells, {x.shape[1]} genes); "
                "lower files.lineage_pcs"
            )
        mean = x.mean(0)
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        comps = vt[:n_comps].T
        comps *= np.where(comps[np.abs(comps).argmax(0), np.arange(n_comps)] < 0, -1.0, 1.0)
        z = (x - mean) @ comps
        scale = float(z.std() / target_sd) or 1.0
        return cls(list(map(str, adata.var_names)), mean, comps, scale)

    @property
    def n_comps(self) -> int:
        return int(self.components.shape[1])

    def encode(self, adata: AnnData, *, what: str) -> np.ndarray:
        """``(cells, k)`` latent of ``adata``'s cells, genes selected by name
        (:func:`select_genes`)."""
        x = dense(select_genes(adata, self.genes, what=what).X)
        return ((x - self.mean) @ self.components / self.scale).astype(np.float32)

    def to_card(self) -> dict[str, Any]:
        """JSON-ready fields (the model card's ``normalisation["lineage"]``)."""
        return {
            "kind": "pca",
            "genes": list(self.genes),
            "mean": self.mean.tolist(),
            "components": self.components.tolist(),
            "scale": self.scale,
        }

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> GeneCodec | None:
        """The codec in a model card (the card itself or its ``normalisation["lineage"]``), or
        ``None`` when the model works on genes directly."""
        d = card.get("normalisation", {}).get("lineage", card)
        if d.get("kind") != "pca":
            return None
        return cls(
            list(d["genes"]),
            np.asarray(d["mean"], np.float64),
            np.asarray(d["components"], np.float64),
            float(d["scale"]),
        )
