"""Readers and writers: ``.h5ad``, 10x ``.h5`` and 10x ``mtx`` directories, through scanpy.

Every reader names the file in its error when the input is missing or not what it claims to
be; :func:`write_h5ad` replaces its target atomically (a failed write leaves nothing that looks
complete, and never touches an existing file until the new one is whole).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from diffsci.core.fileio import atomic_path

__all__ = [
    "read",
    "write_h5ad",
    "check_finite",
    "require_raw",
    "require_obs_value",
    "dense",
    "keep_torch_threads",
]


@contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Restore torch's intra-op thread count on exit (also usable as a decorator).

    Some scanpy calls (``pp.neighbors``, ``tl.rank_genes_groups``) reset it to the number of
    cores, so a one-thread benchmark ran its training and inference on two OpenMP threads,
    spinning against another process on a shared 2-core machine (many times slower per step).
    """
    import torch

    n = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def read(path: str | os.PathLike) -> AnnData:
    """Read ``.h5ad``, a 10x ``.h5`` or a 10x ``mtx`` directory with scanpy's readers.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file cannot be read as the format its name says (e.g. an HDF5 file that is not
        AnnData), or the suffix is none of the supported ones.
    """
    import anndata as ad
    import scanpy as sc

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    try:
        if p.is_dir():
            if not any(p.glob("matrix.mtx*")):
                raise ValueError("no matrix.mtx[.gz] inside (not a 10x mtx directory)")
            return sc.read_10x_mtx(p)
        if p.suffix == ".h5ad":
            adata = ad.read_h5ad(p)
        elif p.suffix == ".h5":
            adata = sc.read_10x_h5(p)
        else:
            raise ValueError("unsupported suffix (expected .h5ad, 10x .h5 or an mtx directory)")
    except (OSError, KeyError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{p}: cannot read as AnnData ({type(e).__name__}: {e})") from e
    if not isinstance(adata, AnnData):  # defensive: readers return AnnData or raise
        raise ValueError(f"{p}: not an AnnData object")
    return adata


def write_h5ad(adata: AnnData, path: str | os.PathLike) -> Path:
    """Write ``adata`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    with atomic_path(path, suffix=".h5ad") as tmp:
        adata.write_h5ad(tmp)
    return path


def dense(x) -> np.ndarray:
    """``x`` (numpy or scipy sparse) as a dense float64 array."""
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)


def check_finite(adata: AnnData, *, what: str = "adata", use_raw: bool = False) -> None:
    """Raise ``ValueError`` naming ``what`` if the expression matrix has NaN or inf."""
    x = adata.raw.X if use_raw else adata.X
    data = x.data if sp.issparse(x) else np.asarray(x)
    bad = ~np.isfinite(data)
    if bad.any():
        where = ".raw.X" if use_raw else ".X"
        raise ValueError(f"{what}{where} has {int(bad.sum())} non-finite values (NaN or inf)")


def require_raw(adata: AnnData, *, what: str = "adata") -> AnnData:
    """``adata.raw`` as an AnnData (log-normalised expression), or a ``ValueError``."""
    if adata.raw is None:
        raise ValueError(
            f"{what} has no .raw (the log-normalised expression of all genes is expected there,"
            " as in scanpy's pbmc68k_reduced)"
        )
    return adata.raw.to_adata()


def require_obs_value(adata: AnnData, key: str, value: str, *, what: str = "adata") -> None:
    """Raise ``KeyError`` unless ``adata.obs[key]`` exists and contains ``value``."""
    if key not in adata.obs:
        raise KeyError(f"{what}: no obs column {key!r} (columns: {', '.join(adata.obs)})")
    present = set(map(str, adata.obs[key].unique()))
    if str(value) not in present:
        raise KeyError(f"{what}: unknown {key} {value!r}; present: {', '.join(sorted(present))}")
