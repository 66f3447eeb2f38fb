"""The PCA latent the population model works in: a linear codec of log-normalised expression.

:func:`fit_latent` fits it with scanpy's ``pp.pca`` (basis in ``.varm``, mean, scale, genes and
the perturbation vocabulary in ``.uns``); :func:`encode` / :func:`decode` map cells to scaled
latent coordinates and back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from anndata import AnnData

from ..io import check_finite, dense

__all__ = [
    "LATENT_KEY",
    "fit_latent",
    "fit_shared_latent",
    "encode",
    "decode",
    "latent_info",
    "basis",
    "genes_of",
]

#: Where the population model's latent lives (``.uns[LATENT_KEY]``, ``.varm[LATENT_KEY_PCs]``).
LATENT_KEY = "perturbation_latent"


def latent_info(adata: AnnData, key: str) -> dict[str, Any]:
    """``adata.uns[key]`` of a fitted latent; ``KeyError`` if there is none."""
    if key not in adata.uns or f"{key}_PCs" not in adata.varm:
        raise KeyError(
            f"adata has no latent {key!r} (.uns[{key!r}] and .varm['{key}_PCs']): "
            "run tl.fit_latent first"
        )
    return adata.uns[key]


def fit_latent(
    adata: AnnData,
    *,
    n_comps: int = 30,
    key_added: str = LATENT_KEY,
    perturbations: list[str] | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Fit the PCA latent on ``adata.X`` (log-normalised) with ``scanpy.pp.pca``.

    Parameters
    ----------
    adata
        The cells to fit on.
    n_comps
        Latent size.
    key_added
        Writes ``.varm[f"{key_added}_PCs"]`` (genes x n_comps), ``.obsm[f"X_{key_added}"]``
        (scaled coordinates) and ``.uns[key_added]`` = ``{"mean", "scale", "genes",
        "perturbations"}``; ``scale`` is the root mean variance of the PCA coordinates.
    perturbations
        The perturbation vocabulary stored with the latent.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    AnnData or None
        The copy if ``copy``, else ``None``.
    """
    import scanpy as sc

    check_finite(adata)
    adata = adata.copy() if copy else adata
    tmp = AnnData(dense(adata.X).astype(np.float32))
    sc.pp.pca(tmp, n_comps=n_comps, zero_center=True, random_state=0)
    pcs = np.asarray(tmp.varm["PCs"], np.float64)
    mean = dense(adata.X).mean(0)
    z = (dense(adata.X) - mean) @ pcs
    scale = float(np.sqrt((z**2).mean()))
    adata.varm[f"{key_added}_PCs"] = pcs
    adata.obsm[f"X_{key_added}"] = z / scale
    adata.uns[key_added] = {
        "mean": mean,
        "scale": scale,
        "genes": np.asarray(adata.var_names, dtype=str),
        "perturbations": np.asarray(perturbations or [], dtype=str),
    }
    return adata if copy else None


def fit_shared_latent(
    reference: AnnData,
    others: Sequence[AnnData],
    *,
    n_comps: int,
    key_added: str = LATENT_KEY,
    perturbations: list[str] | None = None,
) -> None:
    """Fit the latent on the cells of ``reference`` and ``others`` together (as float32) and
    store its basis on ``reference`` (``.varm`` and ``.uns`` as :func:`fit_latent`; no
    ``.obsm``). The genes are ``reference``'s; ``others`` must have the same."""
    x = np.concatenate([dense(reference.X), *(dense(o.X) for o in others)])
    fit = AnnData(x.astype(np.float32), var=reference.var[[]])
    fit_latent(fit, n_comps=n_comps, key_added=key_added, perturbations=perturbations)
    reference.varm[f"{key_added}_PCs"] = fit.varm[f"{key_added}_PCs"]
    reference.uns[key_added] = fit.uns[key_added]


def basis(reference: AnnData, key: str) -> tuple[np.ndarray, np.ndarray, float, list[str]]:
    """``(PCs (genes, k), mean (genes,), scale, genes)`` of ``reference``'s latent ``key``."""
    info = latent_info(reference, key)
    return (
        np.asarray(reference.varm[f"{key}_PCs"], np.float64),
        np.asarray(info["mean"], np.float64),
        float(info["scale"]),
        list(map(str, info["genes"])),
    )


def genes_of(adata: AnnData, genes: list[str], what: str) -> np.ndarray:
    """``adata.X`` restricted to ``genes`` in that order; ``KeyError`` naming absent genes."""
    have = {g: i for i, g in enumerate(map(str, adata.var_names))}
    missing = [g for g in genes if g not in have]
    if missing:
        raise KeyError(
            f"{what}: {len(missing)} genes of the model absent, e.g. {', '.join(missing[:5])}"
        )
    return dense(adata.X)[:, [have[g] for g in genes]]


def encode(
    adata: AnnData, reference: AnnData, *, key: str = LATENT_KEY, what: str = "adata"
) -> np.ndarray:
    """Scaled latent coordinates of ``adata``'s cells in ``reference``'s latent basis."""
    pcs, mean, scale, genes = basis(reference, key)
    check_finite(adata, what=what)
    return (genes_of(adata, genes, what) - mean) @ pcs / scale


def decode(
    z: np.ndarray,
    reference: AnnData,
    *,
    key: str = LATENT_KEY,
    residual: np.ndarray | None = None,
) -> np.ndarray:
    """Gene expression from scaled latent coordinates (plus a per-gene ``residual``)."""
    pcs, mean, scale, _ = basis(reference, key)
    x = np.asarray(z, np.float64) * scale @ pcs.T + mean
    return x + residual if residual is not None else x
