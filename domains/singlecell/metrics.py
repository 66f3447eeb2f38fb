"""The single-cell fields' own metrics.

Perturbation response
    :func:`e_distance` as pertpy's ``Distance("edistance")`` (current pertpy; versions before
    0.7 used squared euclidean distances, not used here), :func:`mmd` (the core's RBF MMD),
    :func:`r2_means` (sklearn's coefficient of determination of per-gene means, as pertpy's
    ``r2_distance``), :func:`top_de_genes` (scanpy's ``rank_genes_groups``) and
    :func:`response_score` / :func:`population_coverage` for the hidden-factor coverage.
Lineage
    :func:`nmi` (sklearn), :func:`dendrogram_purity` (Heller & Ghahramani 2005),
    :func:`spearman` (scipy).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from anndata import AnnData

from .io import dense, keep_torch_threads

__all__ = [
    "e_distance",
    "mmd",
    "r2_means",
    "top_de_genes",
    "response_score",
    "population_coverage",
    "nmi",
    "dendrogram_purity",
    "spearman",
]


def e_distance(x: np.ndarray, y: np.ndarray) -> float:
    """E-distance as pertpy defines it: ``2 d(X, Y) - d(X, X) - d(Y, Y)``.

    ``d(A, B)`` is the mean of the euclidean distances over all ``|A| |B|`` pairs of cells,
    the zero self-distances included in ``d(X, X)`` and ``d(Y, Y)`` (pertpy's averaging, a
    V-statistic). pertpy computes it on ``obsm["X_pca"]``; pass PCA coordinates.
    """
    from sklearn.metrics import pairwise_distances

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"e_distance needs (n, d) and (m, d) arrays, got {x.shape}, {y.shape}")
    sxx = pairwise_distances(x, x, metric="euclidean").mean()
    syy = pairwise_distances(y, y, metric="euclidean").mean()
    sxy = pairwise_distances(x, y, metric="euclidean").mean()
    return float(2 * sxy - sxx - syy)


def mmd(x: np.ndarray, y: np.ndarray) -> float:
    """Squared MMD, Gaussian kernel with the median-heuristic bandwidth (unbiased U-statistic).

    The core's :func:`diffsci.core.metrics.mmd`; pass PCA coordinates.
    """
    import torch

    from diffsci.core.metrics import mmd as core_mmd

    return float(core_mmd(torch.as_tensor(np.asarray(x, np.float64)),
                          torch.as_tensor(np.asarray(y, np.float64))))  # fmt: skip


def r2_means(truth: np.ndarray, pred: np.ndarray, genes: Sequence[int] | None = None) -> float:
    """R^2 (sklearn ``r2_score``, not a squared correlation) of per-gene mean expression.

    ``truth`` and ``pred`` are cells x genes; the means over cells of the chosen ``genes``
    (all by default) are compared, the truth's means as ``y_true``.
    """
    from sklearn.metrics import r2_score

    mt, mp = dense(truth).mean(0), dense(pred).mean(0)
    if genes is not None:
        idx = np.asarray(genes, dtype=int)
        mt, mp = mt[idx], mp[idx]
    return float(r2_score(mt, mp))


@keep_torch_threads()
def top_de_genes(truth: AnnData, control: AnnData, *, n: int = 50,
                 method: str = "wilcoxon") -> list[str]:  # fmt: skip
    """The ``n`` most differentially expressed genes of ``truth`` vs ``control``.

    scanpy's ``rank_genes_groups`` (``method``, perturbed vs the control as reference) on the
    log-normalised ``X``; genes ranked by the absolute score, so up- and down-regulated genes
    both count.
    """
    import anndata as ad
    import scanpy as sc

    if list(truth.var_names) != list(control.var_names):
        raise ValueError("truth and control must have the same genes in the same order")
    both = ad.concat(
        {"perturbed": AnnData(dense(truth.X), var=truth.var[[]]),
         "control": AnnData(dense(control.X), var=control.var[[]])},
        label="group", index_unique="-",
    )  # fmt: skip
    both.obs["group"] = both.obs["group"].astype("category")
    sc.tl.rank_genes_groups(both, "group", groups=["perturbed"], reference="control",
                            method=method, n_genes=both.n_vars)  # fmt: skip
    names = np.asarray(both.uns["rank_genes_groups"]["names"]["perturbed"]).astype(str)
    scores = np.asarray(both.uns["rank_genes_groups"]["scores"]["perturbed"], dtype=np.float64)
    order = np.argsort(-np.abs(scores), kind="stable")
    return list(names[order[:n]])


def response_score(x: np.ndarray, genes: Sequence[int], signs: Sequence[float]) -> float:
    """Population response along the DE genes: mean over cells of ``mean_g(sign_g x_g)``."""
    idx = np.asarray(genes, dtype=int)
    return float((dense(x)[:, idx] * np.asarray(signs, np.float64)[None]).mean())


def population_coverage(pred_scores: Sequence[float], true_scores: Sequence[float], *,
                        level: float = 0.9) -> float:  # fmt: skip
    """Fraction of true populations whose score lies in the central ``level`` interval of the
    predicted populations' scores (numpy's linear quantiles, via the core's
    :func:`~diffsci.core.metrics.interval_coverage`)."""
    import torch

    from diffsci.core.metrics import interval_coverage

    p = torch.as_tensor(np.asarray(pred_scores, np.float64))
    t = torch.as_tensor(np.asarray(true_scores, np.float64))
    return float(interval_coverage(p[:, None].expand(-1, len(t)), t, level=level))


def nmi(labels_true: Sequence, labels_pred: Sequence) -> float:
    """Normalised mutual information (sklearn, arithmetic normalisation)."""
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(np.asarray(labels_true).astype(str),
                                              np.asarray(labels_pred).astype(str)))  # fmt: skip


def dendrogram_purity(labels: Sequence, node_of_cell: Sequence[int],
                      parent: Sequence[int]) -> float:  # fmt: skip
    """Dendrogram purity (Heller & Ghahramani 2005) of a tree whose leaves are the cells.

    The tree has nodes ``0..K-1`` with ``parent[k]`` (-1 for the root) and each cell belongs to
    node ``node_of_cell[i]``. As a dendrogram with the cells as leaves, the cells of node ``v``
    form one cluster hanging from ``v`` (next to ``v``'s child subtrees). For every pair of
    distinct cells of the same class, take the smallest subtree holding both (that cluster if
    both belong to ``v``, else the subtree of the lowest common ancestor of their nodes) and
    the fraction of its cells that have that class; the purity is the mean over all such
    pairs. A flat clustering is a root with one child per cluster.

    Computed by counting: pairs inside ``v``'s own cluster, and pairs whose LCA is ``v`` (inside
    ``v``'s subtree but neither in one child's subtree nor in ``v``'s own cluster).
    """
    labels = np.asarray(labels).astype(str)
    node = np.asarray(node_of_cell, dtype=int)
    parent = np.asarray(parent, dtype=int)
    k = len(parent)
    classes, y = np.unique(labels, return_inverse=True)
    own = np.zeros((k, len(classes)))
    np.add.at(own, (node, y), 1)
    # subtree counts: add each node's counts to all its ancestors
    sub = own.copy()
    for v in range(k):
        a = parent[v]
        while a >= 0:
            sub[a] += own[v]
            a = parent[a]

    def pairs(c):
        return c * (c - 1) / 2

    num = den = 0.0
    for v in range(k):
        kids = np.flatnonzero(parent == v)
        within = pairs(own[v])
        across = pairs(sub[v]) - pairs(sub[kids]).sum(0) - within
        if own[v].sum() > 0:
            num += float((within * own[v] / own[v].sum()).sum())
        if sub[v].sum() > 0:
            num += float((across * sub[v] / sub[v].sum()).sum())
        den += float(within.sum() + across.sum())
    if den == 0:
        raise ValueError("dendrogram purity needs at least one pair of cells of the same class")
    return num / den


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (scipy)."""
    from scipy.stats import spearmanr

    return float(spearmanr(np.asarray(a, np.float64), np.asarray(b, np.float64)).statistic)
