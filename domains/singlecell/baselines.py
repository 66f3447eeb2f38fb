"""The baselines every single-cell result is reported against.

Perturbation response
    :func:`identity_baseline` (the control cells as the prediction) and
    :func:`mean_shift_baseline` (the control cells plus the average perturbation shift of the
    other cell types): a prediction must beat both to show it learnt more than "no change" or
    "the average change".
Lineage
    :func:`lineage_baselines`: scanpy's diffusion pseudotime (DPT; Haghverdi et al., Nat.
    Methods 2016) and PAGA (Wolf et al., Genome Biol. 2019) over Leiden clusters (Traag et
    al., Sci. Rep. 2019).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from .io import dense, keep_torch_threads, require_obs_value

__all__ = ["identity_baseline", "mean_shift_baseline", "lineage_baselines", "find_root"]


def identity_baseline(
    adata: AnnData, *, cell_type: str, perturbation: str, cell_type_key: str = "cell_type"
) -> AnnData:
    """The control cells of ``cell_type`` as the prediction of the perturbed population.

    Returns a copy with ``obs`` ``condition="identity"``, ``cell_type``, ``perturbation``.
    """
    require_obs_value(adata, cell_type_key, cell_type, what="control adata")
    out = adata[adata.obs[cell_type_key].astype(str).values == str(cell_type)].copy()
    out.obs = pd.DataFrame(
        {"condition": "identity", "cell_type": str(cell_type), "perturbation": perturbation},
        index=out.obs_names,
    )
    return out


def mean_shift_baseline(
    adata: AnnData,
    perturbed: AnnData,
    *,
    cell_type: str,
    perturbation: str,
    cell_type_key: str = "cell_type",
    perturbation_key: str = "perturbation",
) -> AnnData:
    """Control cells of ``cell_type`` plus the mean perturbation shift of the other cell types.

    The shift of a cell type is ``mean(perturbed) - mean(control)`` per gene; the baseline adds
    the unweighted average of the shifts of every cell type in ``perturbed`` (other than
    ``cell_type``) that has both control and perturbed cells.

    Parameters
    ----------
    adata, perturbed
        Control and perturbed cells (same genes), cell types in ``obs[cell_type_key]``.
    cell_type, perturbation
        What to predict; ``perturbation`` is looked up in ``perturbed.obs[perturbation_key]``.

    Returns
    -------
    AnnData
        As :func:`identity_baseline`, with ``obs["condition"] = "mean-shift"``.
    """
    require_obs_value(perturbed, perturbation_key, perturbation, what="perturbed adata")
    if list(adata.var_names) != list(perturbed.var_names):
        raise ValueError("control and perturbed adata must have the same genes")
    pt = perturbed[perturbed.obs[perturbation_key].astype(str).values == perturbation]
    ctype = adata.obs[cell_type_key].astype(str).values
    shifts = []
    for t in sorted(set(pt.obs[cell_type_key].astype(str)) - {str(cell_type)}):
        if (ctype == t).any():
            xp = dense(pt[pt.obs[cell_type_key].astype(str).values == t].X).mean(0)
            shifts.append(xp - dense(adata.X[ctype == t]).mean(0))
    if not shifts:
        raise ValueError(f"no other cell type has control and {perturbation!r} cells")
    out = identity_baseline(
        adata, cell_type=cell_type, perturbation=perturbation, cell_type_key=cell_type_key
    )
    out.X = (dense(out.X) + np.mean(shifts, 0)).astype(np.float32)
    out.obs["condition"] = "mean-shift"
    return out


@keep_torch_threads()
def lineage_baselines(
    adata: AnnData, *, n_neighbors: int = 10, resolution: float = 0.5, seed: int = 0
) -> None:
    """scanpy's DPT and PAGA over Leiden clusters, written into ``adata``.

    Parameters
    ----------
    adata
        Cells (expression in ``X``) with the root cell in ``uns["iroot"]`` (set it with
        :func:`find_root`; without it DPT has no start and is refused).
    n_neighbors
        Neighbours of the kNN graph (on ``X``) both baselines use.
    resolution
        Leiden resolution.
    seed
        ``random_state`` of the graph, the diffusion map and Leiden.

    Notes
    -----
    Writes ``obs["dpt_pseudotime"]``, ``obs["leiden"]``, ``uns["paga"]`` and
    ``uns["paga_parent"]``: PAGA's spanning tree rooted at the root cell's cluster, as a parent
    array over clusters (-1 at the root).
    """
    import scanpy as sc

    if "iroot" not in adata.uns:
        raise ValueError(
            "DPT needs a root cell and adata.uns['iroot'] is not set: give files.root (a cell "
            "name), files.root_key (a boolean obs column marking root cells) or files.time_key "
            "(the earliest time point's cells), or set adata.uns['iroot'] with find_root"
        )
    sc.pp.neighbors(adata, n_neighbors=n_neighbors, use_rep="X", random_state=seed)
    sc.tl.diffmap(adata, random_state=seed)
    sc.tl.dpt(adata, n_branchings=0)
    sc.tl.leiden(adata, resolution=resolution, flavor="igraph", n_iterations=2, random_state=seed)
    sc.tl.paga(adata, groups="leiden")
    root = int(adata.obs["leiden"].cat.codes.iloc[int(adata.uns["iroot"])])
    adata.uns["paga_parent"] = _tree_parents(adata.uns["paga"]["connectivities_tree"], root)


def _tree_parents(tree, root: int) -> np.ndarray:
    """Parent array of the (sparse, one-directional) spanning tree ``tree`` rooted at ``root``,
    by breadth-first search; nodes the tree leaves disconnected hang off the root."""
    tree = (tree + tree.T).tocsr()
    parent = np.full(tree.shape[0], -2, dtype=int)
    parent[root] = -1
    queue = [root]
    while queue:
        v = queue.pop(0)
        for u in tree[v].indices:
            if parent[u] == -2:
                parent[u] = v
                queue.append(u)
    parent[parent == -2] = root
    return parent


def find_root(
    adata: AnnData,
    *,
    root: str | None = None,
    root_key: str | None = None,
    time: np.ndarray | None = None,
    what: str = "adata",
) -> int:
    """The index of DPT's root cell (scanpy's ``uns["iroot"]``; Haghverdi et al. 2016 start
    the diffusion pseudotime from a chosen stem cell).

    Tried in order: the cell named ``root`` (if ``adata`` holds it), the medoid (cell nearest
    the mean in ``X``) of the cells marked true in the boolean obs column ``root_key``, the
    medoid of the cells at the earliest of the time points ``time`` (one per cell).

    Raises
    ------
    ValueError
        Naming what was given and how to give a root, when none of them applies.
    """
    x = dense(adata.X)
    if root is not None and root in adata.obs_names:
        return int(adata.obs_names.get_loc(root))
    if root_key is not None:
        if root_key not in adata.obs:
            raise KeyError(f"{what}: no obs column {root_key!r} (files.root_key)")
        marked = np.flatnonzero(adata.obs[root_key].astype(bool).to_numpy())
        if len(marked):
            return _medoid(x, marked)
    if time is not None:
        return _medoid(x, np.flatnonzero(time == np.min(time)))
    given = f"root cell {root!r} is not among its cells" if root is not None else "no root"
    raise ValueError(
        f"{what}: {given}; DPT needs one: set files.root (a cell name), files.root_key (a "
        "boolean obs column marking root cells) or files.time_key (an obs column of time "
        "points: the earliest time point's medoid is the root)"
    )


def _medoid(x: np.ndarray, idx: np.ndarray) -> int:
    d = ((x[idx] - x[idx].mean(0)) ** 2).sum(1)
    return int(idx[int(np.argmin(d))])
