"""Plots: each takes data and a matplotlib ``Axes`` (``ax=None``: a new figure) and returns it.

:func:`populations`, :func:`de_scatter`, :func:`pseudotime_scatter` and :func:`branches` draw
one panel; :func:`perturbation_panels` and :func:`lineage_panels` draw the evaluate stage's
figures into given Axes (:func:`user_lineage_panels` on a user's files). Public as :mod:`.pl` (scanpy's namespace).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from anndata import AnnData

from .io import dense

__all__ = [
    "populations",
    "de_scatter",
    "pseudotime_scatter",
    "branches",
    "perturbation_panels",
    "lineage_panels",
    "user_lineage_panels",
]


def _ax(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(5, 4))
    return ax


def populations(
    coords: Mapping[str, np.ndarray],
    *,
    ax=None,
    title: str = "",
    max_points: int = 400,
    seed: int = 0,
):
    """Scatter of the first two coordinates of several populations (e.g. PCA of control,
    truth, model, baselines); ``coords`` maps a label to ``(n, >=2)``."""
    ax = _ax(ax)
    rng = np.random.default_rng(seed)
    for label, z in coords.items():
        z = np.asarray(z)
        if len(z) > max_points:
            z = z[rng.choice(len(z), max_points, replace=False)]
        ax.scatter(z[:, 0], z[:, 1], s=6, alpha=0.5, label=label)
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    ax.legend(fontsize=7, markerscale=2)
    ax.set_title(title, fontsize=9)
    return ax


def de_scatter(
    truth: AnnData, preds: Mapping[str, AnnData], genes: Sequence[str], *, ax=None, title: str = ""
):
    """Per-gene mean expression, truth (x) vs each prediction (y), over ``genes``."""
    ax = _ax(ax)
    idx = [list(truth.var_names).index(g) for g in genes]
    mt = dense(truth.X)[:, idx].mean(0)
    for label, p in preds.items():
        pidx = [list(p.var_names).index(g) for g in genes]
        ax.scatter(mt, dense(p.X)[:, pidx].mean(0), s=10, alpha=0.7, label=label)
    lo, hi = float(mt.min()), float(mt.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("true mean (log-norm)")
    ax.set_ylabel("predicted mean")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return ax


def pseudotime_scatter(
    truth: np.ndarray, pseudotimes: Mapping[str, np.ndarray], *, ax=None, title: str = ""
):
    """Each method's pseudotime against the true position in the trajectory."""
    ax = _ax(ax)
    for label, pt in pseudotimes.items():
        ax.scatter(truth, pt, s=5, alpha=0.5, label=label)
    ax.set_xlabel("true time")
    ax.set_ylabel("pseudotime")
    ax.legend(fontsize=7, markerscale=2)
    ax.set_title(title, fontsize=9)
    return ax


def branches(coords: np.ndarray, labels: Sequence, *, ax=None, title: str = ""):
    """Cells in 2-D coloured by a categorical label (branch or fate)."""
    ax = _ax(ax)
    labels = np.asarray(labels).astype(str)
    for lab in sorted(set(labels)):
        m = labels == lab
        ax.scatter(coords[m, 0], coords[m, 1], s=6, alpha=0.7, label=lab)
    ax.legend(fontsize=7, markerscale=2)
    ax.set_title(title, fontsize=9)
    return ax


def perturbation_panels(
    axes: Sequence,
    truth: AnnData,
    preds: Mapping[str, AnnData],
    extra: Mapping[str, Any],
    *,
    perturbation: str,
    n_de: int,
) -> Sequence:
    """Two panels of one perturbation: the populations in the eval PCA (``extra["coords"]``)
    and the top-DE gene means (``extra["de_genes"]``), as
    :func:`~.metrics.perturbation_tables` returns them; ``axes`` holds two Axes."""
    populations(extra["coords"], ax=axes[0], title=f"{perturbation}: eval PCA")
    de_scatter(truth, preds, extra["de_genes"], ax=axes[1], title=f"{perturbation}: top-{n_de} DE")
    return axes


def lineage_panels(axes: Sequence, adata: AnnData) -> Sequence:
    """Three panels of krumsiek11: the model's and DPT's pseudotime against the true time, and
    the diffusion map (components 1, 2) coloured by the model's branches and by the true fates;
    ``adata`` as :func:`~.metrics.lineage_table` reads it, plus ``obsm["X_diffmap"]``."""
    tt = adata.obs["true_time"].values
    pts = {
        "diffusion": adata.obs["lineage_pseudotime"].values,
        "DPT": adata.obs["dpt_pseudotime"].values,
    }
    pseudotime_scatter(tt, pts, ax=axes[0], title="pseudotime vs truth")
    xy = adata.obsm["X_diffmap"][:, 1:3]
    branches(xy, adata.obs["lineage_branch"], ax=axes[1], title="model branches (diffmap)")
    fate = adata.obs["fate"].astype(str).values
    branches(xy, fate, ax=axes[2], title="true fates (diffmap)")
    return axes


def user_lineage_panels(axes: Sequence, adata: AnnData) -> Sequence:
    """Three panels of a user's evaluation cells: the model's and DPT's pseudotime against
    the time points (``obs["time_point"]``; against DPT's pseudotime if there are none), and
    the diffusion map coloured by the model's branches and by the fate (``obs["fate"]``; the
    Leiden clusters if there is none)."""
    has_time = "time_point" in adata.obs
    tt = adata.obs["time_point" if has_time else "dpt_pseudotime"].to_numpy(np.float64)
    pts = {"diffusion": adata.obs["lineage_pseudotime"].values}
    if has_time:
        pts["DPT"] = adata.obs["dpt_pseudotime"].values
    pseudotime_scatter(
        tt, pts, ax=axes[0], title="pseudotime vs " + ("time points" if has_time else "DPT")
    )
    xy = adata.obsm["X_diffmap"][:, 1:3]
    branches(xy, adata.obs["lineage_branch"], ax=axes[1], title="model branches (diffmap)")
    key = "fate" if "fate" in adata.obs else "leiden"
    branches(xy, adata.obs[key].astype(str).values, ax=axes[2], title=f"{key} (diffmap)")
    return axes
