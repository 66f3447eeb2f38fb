"""Plots: each takes data and a matplotlib ``Axes`` (``ax=None``: a new figure) and returns it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from anndata import AnnData

from .io import dense

__all__ = ["populations", "de_scatter", "pseudotime_scatter", "branches"]


def _ax(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(5, 4))
    return ax


def populations(coords: Mapping[str, np.ndarray], *, ax=None, title: str = "",
                max_points: int = 400, seed: int = 0):  # fmt: skip
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


def de_scatter(truth: AnnData, preds: Mapping[str, AnnData], genes: Sequence[str], *, ax=None,
               title: str = ""):  # fmt: skip
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


def pseudotime_scatter(truth: np.ndarray, pseudotimes: Mapping[str, np.ndarray], *, ax=None,
                       title: str = ""):  # fmt: skip
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
