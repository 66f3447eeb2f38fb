"""The single-cell fields' own metrics.

Perturbation response
    :func:`e_distance`, the energy distance (Székely & Rizzo 2013) as scPerturb (Peidli et al.,
    Nat. Methods 2024) and pertpy's ``Distance("edistance")`` compute it (current pertpy;
    versions before 0.7 used squared euclidean distances, not used here), :func:`mmd` (the
    core's RBF MMD, Gretton et al., JMLR 2012),
    :func:`r2_means` (sklearn's coefficient of determination of per-gene means, as pertpy's
    ``r2_distance``), :func:`top_de_genes` (scanpy's ``rank_genes_groups``) and
    :func:`response_score` / :func:`population_coverage` for the hidden-factor coverage.
Lineage
    :func:`nmi` (sklearn), :func:`dendrogram_purity` (Heller & Ghahramani 2005),
    :func:`spearman` (scipy); on a user's lineage-tracing data :func:`clonal_coherence` (do the
    cells of one clone share a branch?) and :func:`clone_coupling` (clone-based fate coupling
    between branches, as CoSpar's ``pl.fate_coupling`` with ``source="X_clone"``; Wang et al.,
    Nat. Biotechnol. 2022).
Tables
    :func:`perturbation_tables` (one held-out (cell type, perturbation), every prediction),
    :func:`mean_table`, :func:`lineage_table` (krumsiek11), :func:`user_lineage_table` (a
    user's files: the truth they carry), with the row labels :data:`MODEL`,
    :data:`IDENTITY`, :data:`MEAN_SHIFT`, :data:`ORACLE` and the lineage rows; and
    :func:`acceptance_bars`, the single-cell benchmark's bars (:data:`BARS`) as evaluate reports
    them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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
    "perturbation_tables",
    "mean_table",
    "lineage_table",
    "user_lineage_table",
    "clonal_coherence",
    "clone_coupling",
    "acceptance_bars",
    "BARS",
    "MODEL",
    "IDENTITY",
    "MEAN_SHIFT",
    "ORACLE",
]

#: Row labels of the perturbation tables.
MODEL = "diffusion (population samples)"
IDENTITY = "identity (control)"
MEAN_SHIFT = "mean-shift"
#: the row of the perturbation tables that is the simulator's ground truth, not a method
ORACLE = "oracle: simulator on control cells (ground truth, not a method)"
#: Row labels of the lineage table.
LINEAGE_MODEL = "diffusion tree codebook"
DPT = "DPT (scanpy)"
PAGA = "PAGA (Leiden clusters, scanpy)"

#: The acceptance bars of the single-cell benchmark (``benchmarks/singlecell.py``), on the mean
#: over perturbations of the held-out cell type and on krumsiek11: the diffusion model's top-DE
#: R^2 at least ``top_de_r2`` and at least identity's plus ``top_de_r2_over_identity``, its
#: E-distance at most ``e_distance_vs_identity`` times identity's, its coverage at least
#: ``coverage``; the lineage model's NMI vs fate at least ``lineage_nmi`` and its pseudotime
#: Spearman at least DPT's.
BARS = {
    "top_de_r2": 0.9,
    "top_de_r2_over_identity": 0.3,
    "e_distance_vs_identity": 0.5,
    "coverage": 0.8,
    "lineage_nmi": 0.8,
}


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

    return float(
        core_mmd(
            torch.as_tensor(np.asarray(x, np.float64)), torch.as_tensor(np.asarray(y, np.float64))
        )
    )


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
def top_de_genes(
    truth: AnnData, control: AnnData, *, n: int = 50, method: str = "wilcoxon"
) -> list[str]:
    """The ``n`` most differentially expressed genes of ``truth`` vs ``control``.

    scanpy's ``rank_genes_groups`` (``method``, perturbed vs the control as reference) on the
    log-normalised ``X``; genes ranked by the absolute score, so up- and down-regulated genes
    both count.

    Parameters
    ----------
    truth, control
        Perturbed and control cells, the same genes in the same order.
    n
        Genes to return.
    method
        ``rank_genes_groups``'s test.
    """
    import anndata as ad
    import scanpy as sc

    if list(truth.var_names) != list(control.var_names):
        raise ValueError("truth and control must have the same genes in the same order")
    both = ad.concat(
        {
            "perturbed": AnnData(dense(truth.X), var=truth.var[[]]),
            "control": AnnData(dense(control.X), var=control.var[[]]),
        },
        label="group",
        index_unique="-",
    )
    both.obs["group"] = both.obs["group"].astype("category")
    sc.tl.rank_genes_groups(
        both, "group", groups=["perturbed"], reference="control", method=method, n_genes=both.n_vars
    )
    names = np.asarray(both.uns["rank_genes_groups"]["names"]["perturbed"]).astype(str)
    scores = np.asarray(both.uns["rank_genes_groups"]["scores"]["perturbed"], dtype=np.float64)
    order = np.argsort(-np.abs(scores), kind="stable")
    return list(names[order[:n]])


def response_score(x: np.ndarray, genes: Sequence[int], signs: Sequence[float]) -> float:
    """Population response along the DE genes: mean over cells of ``mean_g(sign_g x_g)``."""
    idx = np.asarray(genes, dtype=int)
    return float((dense(x)[:, idx] * np.asarray(signs, np.float64)[None]).mean())


def population_coverage(
    pred_scores: Sequence[float], true_scores: Sequence[float], *, level: float = 0.9
) -> float:
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

    return float(
        normalized_mutual_info_score(
            np.asarray(labels_true).astype(str), np.asarray(labels_pred).astype(str)
        )
    )


def dendrogram_purity(
    labels: Sequence, node_of_cell: Sequence[int], parent: Sequence[int]
) -> float:
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


def perturbation_tables(
    control: AnnData,
    truth: AnnData,
    preds: Mapping[str, AnnData],
    model_key: str,
    *,
    perturbation: str,
    cell_type: str,
    n_de: int,
    eval_pcs: int,
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Metrics of every prediction in ``preds`` for one held-out (cell type, perturbation).

    The truth is pooled over its hidden-factor draws (``obs["population"]``) and a prediction
    over its samples (``obs["sample"]``): both are the marginal over the hidden factor.
    E-distance and MMD are computed on a PCA (``eval_pcs`` components,
    :func:`~.models.latent.fit_latent`) fitted on ``cell_type``'s control cells and the true
    cells only, the predictions projected into it. R^2 of the per-gene means on all genes and
    on the ``n_de`` top DE genes (:func:`top_de_genes`). Coverage, for every prediction made of
    several populations (``obs["sample"]``): each true population's :func:`response_score`
    over the top DE genes, signed by the true direction, against the 5-95% quantile interval of
    the predicted populations' scores.

    Returns
    -------
    table
        ``{prediction: {metric: value}}``.
    extra
        ``de_genes``, ``coords`` (the first two eval PCs of the control, the truth and every
        prediction) and, for ``model_key``, ``true_scores`` and ``pred_scores``.
    """
    from .models.latent import encode, fit_latent

    ctrl = control[control.obs["cell_type"].astype(str).values == cell_type]
    de = top_de_genes(truth, ctrl, n=n_de)
    genes = list(map(str, truth.var_names))
    di = [genes.index(g) for g in de]
    x = np.concatenate([dense(ctrl.X), dense(truth.X)]).astype(np.float32)
    basis = AnnData(x, var=truth.var[[]])
    n_comps = min(eval_pcs, basis.n_obs - 1, basis.n_vars - 1)
    fit_latent(basis, n_comps=n_comps, key_added="eval")
    scale = float(basis.uns["eval"]["scale"])
    zt = encode(truth, basis, key="eval") * scale
    signs = np.sign(dense(truth.X)[:, di].mean(0) - dense(ctrl.X)[:, di].mean(0))
    table: dict[str, dict[str, float]] = {}
    extra: dict[str, Any] = {"de_genes": de}
    for name, p in preds.items():
        zp = encode(p, basis, key="eval") * scale
        row = {
            "E-distance (PCA)": e_distance(zp, zt),
            "MMD (PCA, rbf)": mmd(zp, zt),
            "R2 all genes": r2_means(truth.X, p[:, genes].X),
            f"R2 top-{n_de} DE": r2_means(truth.X, p[:, genes].X, di),
        }
        if "sample" in p.obs:
            ts, ps = _population_scores(truth, p[:, genes], di, signs)
            row["coverage 90% (hidden-factor draws)"] = population_coverage(ps, ts)
            if name == model_key:
                extra["true_scores"], extra["pred_scores"] = ts, ps
        table[name] = row
    extra["coords"] = {
        "control": encode(ctrl, basis, key="eval")[:, :2],
        "truth": zt[:, :2] / scale,
        **{k: encode(v, basis, key="eval")[:, :2] for k, v in preds.items()},
    }
    return table, extra


def _population_scores(
    truth: AnnData, pred: AnnData, genes: Sequence[int], signs: np.ndarray
) -> tuple[list[float], list[float]]:
    """:func:`response_score` of every true population (``obs["population"]``) and every
    predicted one (``obs["sample"]``)."""
    ts = [
        response_score(truth[truth.obs["population"] == k].X, genes, signs)
        for k in truth.obs["population"].unique()
    ]
    ps = [
        response_score(pred[pred.obs["sample"] == k].X, genes, signs)
        for k in pred.obs["sample"].unique()
    ]
    return ts, ps


def mean_table(
    tables: Mapping[str, Mapping[str, Mapping[str, float]]],
) -> dict[str, dict[str, float]]:
    """The mean over perturbations of per-perturbation tables ``{perturbation: {row: {metric:
    value}}}`` (rows and metrics of the first)."""
    first = next(iter(tables.values()))
    return {
        m: {k: float(np.mean([t[m][k] for t in tables.values()])) for k in first[m]} for m in first
    }


def lineage_table(adata: AnnData) -> dict[str, dict[str, float]]:
    """The lineage metrics of the model and the DPT / PAGA baselines on ``adata``.

    ``adata`` holds the truth (``obs["fate"]``, ``obs["true_time"]``), the model's assignment
    (``obs["lineage_branch"]``, ``obs["lineage_pseudotime"]``, ``uns["lineage"]``) and the
    baselines' (``obs["dpt_pseudotime"]``, ``obs["leiden"]``, ``uns["paga_parent"]``). NMI of
    the branches (clusters) vs fate, dendrogram purity of the tree over fates, Spearman of the
    pseudotime with the true time, and how many branches (clusters) are used.
    """
    fate, tt = adata.obs["fate"].astype(str).values, adata.obs["true_time"].values
    u = adata.uns["lineage"]
    leiden = adata.obs["leiden"]
    return {
        LINEAGE_MODEL: {
            "NMI vs fate": nmi(fate, adata.obs["lineage_branch"]),
            "dendrogram purity": dendrogram_purity(fate, u["node_of_cell"], u["parent"]),
            "pseudotime Spearman": spearman(adata.obs["lineage_pseudotime"], tt),
            "branches used": int(adata.obs["lineage_branch"].nunique()),
        },
        DPT: {"pseudotime Spearman": spearman(adata.obs["dpt_pseudotime"], tt)},
        PAGA: {
            "NMI vs fate": nmi(fate, leiden),
            "dendrogram purity": dendrogram_purity(
                fate, leiden.cat.codes.values, adata.uns["paga_parent"]
            ),
            "branches used": int(leiden.nunique()),
        },
    }


def clonal_coherence(clones: Any, labels: Sequence, *, shuffle_seed: int | None = None) -> float:
    """Mean over clones with at least two barcoded cells of the fraction of the clone's cells in
    its most common label (1: every clone within one branch).

    ``clones`` is cells x clones (0/1, scipy sparse or dense); ``labels`` one per cell. With
    ``shuffle_seed`` the labels are permuted first (the value expected without clonal
    structure, the reference a method's value is read against).
    """
    import scipy.sparse as sp

    lab = np.asarray(labels).astype(str)
    if shuffle_seed is not None:
        lab = np.random.default_rng(shuffle_seed).permutation(lab)
    m = sp.csc_matrix(clones)
    fracs = []
    for j in range(m.shape[1]):
        cells = m.indices[m.indptr[j] : m.indptr[j + 1]]
        if len(cells) >= 2:
            _, n = np.unique(lab[cells], return_counts=True)
            fracs.append(n.max() / len(cells))
    return float(np.mean(fracs)) if fracs else float("nan")


def clone_coupling(clones: Any, labels: Sequence) -> tuple[list[str], np.ndarray]:
    """Clone-based fate coupling between labels (branches, clusters): the Pearson correlation
    of the labels' clone profiles (barcoded cells of each label per clone, normalised per
    label), as CoSpar's ``fate_coupling`` reads ``X_clone``. Returns ``(labels, matrix)``."""
    import scipy.sparse as sp

    lab = np.asarray(labels).astype(str)
    cats = sorted(set(lab))
    m = sp.csr_matrix(clones)
    prof = np.stack([np.asarray(m[lab == c].sum(0)).ravel() for c in cats]).astype(np.float64)
    prof /= np.maximum(prof.sum(1, keepdims=True), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        coupling = np.nan_to_num(np.corrcoef(prof)) if len(cats) > 1 else np.ones((1, 1))
    return cats, np.atleast_2d(coupling)


def user_lineage_table(adata: AnnData) -> dict[str, dict[str, float]]:
    """The lineage metrics on a user's evaluation cells, from the truth they carry.

    ``adata`` as :func:`lineage_table` reads it, where ``obs["fate"]`` (files.fate_key),
    ``obs["time_point"]`` (files.time_key) and ``obsm["X_clone"]`` (clonal barcodes) are
    each optional: NMI of the branches vs fate, Spearman of the pseudotime with the time
    points, :func:`clonal_coherence` of the branches (and of label-shuffled branches, the
    chance level), branches used.
    """
    rows: dict[str, dict[str, float]] = {LINEAGE_MODEL: {}, DPT: {}, PAGA: {}}
    labels = {LINEAGE_MODEL: adata.obs["lineage_branch"]}
    if "leiden" in adata.obs:  # the baselines ran (DPT had a root)
        labels[PAGA] = adata.obs["leiden"]
    if "fate" in adata.obs:
        fate = adata.obs["fate"].astype(str).values
        for k, lab in labels.items():
            rows[k]["NMI vs fate"] = nmi(fate, lab)
    if "time_point" in adata.obs:
        t = adata.obs["time_point"].to_numpy(np.float64)
        rows[LINEAGE_MODEL]["pseudotime Spearman vs time points"] = spearman(
            adata.obs["lineage_pseudotime"], t
        )
        if "dpt_pseudotime" in adata.obs:
            rows[DPT]["pseudotime Spearman vs time points"] = spearman(
                adata.obs["dpt_pseudotime"], t
            )
    if "X_clone" in adata.obsm:
        for k, lab in labels.items():
            rows[k]["clonal coherence"] = clonal_coherence(adata.obsm["X_clone"], lab)
            rows[k]["clonal coherence (shuffled)"] = clonal_coherence(
                adata.obsm["X_clone"], lab, shuffle_seed=0
            )
    for k, lab in labels.items():
        rows[k]["branches used"] = int(lab.nunique())
    return {k: r for k, r in rows.items() if r}


def acceptance_bars(
    perturbation: Mapping[str, Mapping[str, float]],
    lineage: Mapping[str, Mapping[str, float]] | None,
    *,
    n_de: int,
) -> dict[str, bool]:
    """Whether each of :data:`BARS` is met: ``{"bar: <what>": bool}``.

    ``perturbation`` is the mean table over perturbations (:func:`mean_table`) and
    ``lineage`` the :func:`lineage_table` (``None``: no krumsiek11 bars, for a lineage model
    trained on a user's files); the top-DE R^2 is ``f"R2 top-{n_de} DE"``.
    """
    b = BARS
    de = f"R2 top-{n_de} DE"
    model, ident = perturbation[MODEL], perturbation[IDENTITY]
    e = "E-distance (PCA)"
    bars = {
        f"bar: top-DE R2 >= {b['top_de_r2']}": bool(model[de] >= b["top_de_r2"]),
        f"bar: top-DE R2 >= identity + {b['top_de_r2_over_identity']}": bool(
            model[de] >= ident[de] + b["top_de_r2_over_identity"]
        ),
        f"bar: E-distance <= {b['e_distance_vs_identity']} x identity": bool(
            model[e] <= b["e_distance_vs_identity"] * ident[e]
        ),
        f"bar: coverage >= {b['coverage']}": bool(
            model["coverage 90% (hidden-factor draws)"] >= b["coverage"]
        ),
    }
    if lineage is None:
        return bars
    lm, dpt = lineage[LINEAGE_MODEL], lineage[DPT]
    return {
        **bars,
        f"bar: krumsiek11 NMI >= {b['lineage_nmi']}": bool(lm["NMI vs fate"] >= b["lineage_nmi"]),
        "bar: pseudotime Spearman >= DPT": bool(
            lm["pseudotime Spearman"] >= dpt["pseudotime Spearman"]
        ),
    }
