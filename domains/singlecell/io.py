"""Readers and writers: ``.h5ad``, 10x ``.h5`` and 10x ``mtx`` directories, through scanpy.

Every reader names the file in its error when the input is missing or not what it claims to
be; :func:`write_h5ad` replaces its target atomically (a failed write leaves nothing that looks
complete, and never touches an existing file until the new one is whole).

A user's files (``source.kind: files``) go through :func:`read_expression`: the expression of
``.raw`` (when present and asked for) or ``.X``, refused or normalised explicitly when it holds
integer counts rather than log-normalised values; :func:`clone_matrix` and :func:`time_points`
check the lineage-tracing annotations (clonal barcodes in ``.obsm``, as CoSpar's and
``cospar.datasets`` AnnData ship them, Wang et al., Nat. Biotechnol. 2022; time points in
``.obs``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from diffsci.core.datasource import FLOAT32_SAFE_MAX, require_finite
from diffsci.core.fileio import atomic_path

__all__ = [
    "read",
    "write_h5ad",
    "check_finite",
    "require_raw",
    "require_obs_value",
    "dense",
    "keep_torch_threads",
    "is_counts",
    "unlogged_max",
    "LOG_MAX",
    "read_expression",
    "clone_matrix",
    "time_points",
    "read_cells",
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

    A 10x mtx directory may be named by its ``matrix.mtx[.gz]`` file (file lists hold files).

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
    if p.name.startswith("matrix.mtx"):  # a 10x mtx folder named by its matrix file
        p = p.parent
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


#: The largest value log-normalised expression reaches: ``log1p`` of counts scaled even to
#: 1e6 per cell (CPM) is at most ``log1p(1e6) ~ 13.8``. Non-negative values above this are
#: counts, or counts scaled per cell that were never ``log1p``-ed.
LOG_MAX = 50.0


def _stored(x) -> np.ndarray:
    """The stored values of ``x`` (numpy or scipy sparse), flat."""
    return np.asarray(x.data if sp.issparse(x) else x).ravel()


def is_counts(x, *, sample: int = 100_000) -> bool:
    """Whether ``x`` (numpy or scipy sparse) looks like raw counts: non-negative, integer
    valued and not all zero, on up to ``sample`` stored values spread over the whole matrix
    (not only its first cells). Log-normalised expression (``log1p`` of scaled counts) is
    almost never integer valued."""
    data = _stored(x)
    data = data[:: max(1, -(-data.size // sample))]  # at most ``sample``, spread evenly
    data = data[np.isfinite(data)]
    if data.size == 0 or not (data > 0).any():
        return False
    return bool((data >= 0).all() and np.all(data == np.round(data)))


def unlogged_max(x) -> float | None:
    """The largest value of ``x`` when the values are non-negative and exceed
    :data:`LOG_MAX` (so not log-normalised: counts with a few non-integer values, or counts
    scaled per cell without ``log1p``), else ``None``. Scaled (z-scored) data have negative
    values and are not flagged."""
    data = _stored(x)
    data = data[np.isfinite(data)]
    if data.size == 0 or float(data.min()) < 0:
        return None
    top = float(data.max())
    return top if top > LOG_MAX else None


def read_expression(
    adata: AnnData,
    *,
    what: str,
    use_raw: bool = True,
    counts: str = "refuse",
    target_sum: float = 1e4,
) -> AnnData:
    """The log-normalised expression of ``adata`` (cells x genes) as a new AnnData.

    Parameters
    ----------
    adata
        As read by :func:`read`.
    what
        Names the file in errors.
    use_raw
        Take ``.raw`` when it exists (scanpy keeps all genes there), else ``.X``.
    counts
        What to do with integer counts (:func:`is_counts`): ``"refuse"`` (a ``ValueError``
        naming the file, the matrix and the fix) or ``"normalise"`` (scanpy's
        ``pp.normalize_total`` to ``target_sum`` per cell, then ``pp.log1p``).
    target_sum
        Counts per cell after normalisation.

    Returns
    -------
    AnnData
        ``X`` float32 (dense or sparse as read), ``obs``/``obsm``/``uns`` of ``adata``, gene
        names unique; ``uns["expression"]`` says where it came from and how it was normalised.
    """
    import scanpy as sc

    raw = use_raw and adata.raw is not None
    where = ".raw.X" if raw else ".X"
    x = adata.raw.X if raw else adata.X
    var_names = (adata.raw.var_names if raw else adata.var_names).astype(str)
    _check_values(x, what=what, where=where, cells=adata.obs_names.astype(str), genes=var_names)
    out = AnnData(
        X=x.astype(np.float32),
        obs=adata.obs.copy(),
        var=(adata.raw.var if raw else adata.var).copy(),
        obsm=dict(adata.obsm),
        uns=dict(adata.uns),
    )
    check_finite(out, what=f"{what} ({where})")
    if out.var_names.has_duplicates:
        out.var_names_make_unique()
    norm = "log-normalised as read"
    found = _not_log_normalised(out.X)
    if found is not None:
        if counts != "normalise":
            raise ValueError(
                f"{what}: {where} holds {found}, not log-normalised expression; set "
                f"files.counts: normalise in the config (normalise_total to {target_sum:g} per "
                "cell, then log1p), or store log-normalised values there (sc.pp.normalize_total"
                " + sc.pp.log1p)"
            )
        sc.pp.normalize_total(out, target_sum=target_sum)
        sc.pp.log1p(out)
        norm = f"{found.split(' (')[0]} normalised to {target_sum:g} per cell, log1p"
    out.uns["expression"] = {"matrix": where, "normalisation": norm}
    return out


def _check_values(x, *, what: str, where: str, cells, genes) -> None:
    """Refuse NaN/inf and magnitudes that overflow float32 (core ``require_finite``, before
    the float32 cast), naming the file, the matrix and the first bad cell and gene."""
    csr = x.tocsr() if sp.issparse(x) else None
    values = csr.data if csr is not None else np.asarray(x)
    variable = f"{where} (stored values of the sparse matrix)" if csr is not None else where
    try:
        require_finite(values, source=what, variable=variable, max_abs=FLOAT32_SAFE_MAX)
    except ValueError as e:
        flat = values.ravel()
        k = int(np.flatnonzero(~np.isfinite(flat) | (np.abs(flat) > FLOAT32_SAFE_MAX))[0])
        if csr is not None:
            row, col = int(np.searchsorted(csr.indptr, k, side="right") - 1), csr.indices[k]
        else:
            row, col = divmod(k, values.shape[1])
        raise ValueError(f"{e}; the first is cell {cells[row]!r}, gene {genes[col]!r}") from None


def _not_log_normalised(x) -> str | None:
    """What ``x`` holds when it is not log-normalised expression (``"integer counts"``, or
    values above :data:`LOG_MAX`), else ``None``."""
    if is_counts(x):
        return "integer counts"
    top = unlogged_max(x)
    if top is None:
        return None
    return (
        f"values up to {top:.4g} (counts or per-cell scaled counts without log1p: "
        f"log-normalised expression stays below {LOG_MAX:g})"
    )


def clone_matrix(adata: AnnData, key: str, *, what: str):
    """Clonal barcodes ``adata.obsm[key]`` (cells x clones, 0/1 or counts; CoSpar's
    ``X_clone``) as a CSR matrix of 0/1, or ``None`` when ``adata`` has none.

    Raises
    ------
    ValueError
        Naming the file and the key, if the matrix is not cells x clones with non-negative
        finite values, or no cell carries a barcode.
    """
    if key not in adata.obsm:
        return None
    m = adata.obsm[key]
    m = sp.csr_matrix(m.values if hasattr(m, "values") else m)
    data = m.data
    if m.shape[0] != adata.n_obs:
        raise ValueError(f"{what}: obsm[{key!r}] has {m.shape[0]} rows, not one per cell")
    if not np.isfinite(data).all() or (data < 0).any():
        raise ValueError(
            f"{what}: obsm[{key!r}] must hold non-negative barcode counts (cells x clones)"
        )
    if m.nnz == 0:
        raise ValueError(f"{what}: obsm[{key!r}] is empty (no cell carries a clonal barcode)")
    m.data = np.ones_like(data, dtype=np.float32)
    m.eliminate_zeros()
    return m


def time_points(adata: AnnData, key: str, *, what: str) -> np.ndarray:
    """``adata.obs[key]`` as numbers: numeric values, an ordered categorical (its category
    rank), or labels ending in a number (``"d2"``, ``"day 4"``).

    Raises
    ------
    KeyError
        If ``key`` is not an obs column (listing the columns).
    ValueError
        If the values cannot be ordered as time points.
    """
    import pandas as pd

    if key not in adata.obs:
        raise KeyError(
            f"{what}: no obs column {key!r} with time points (files.time_key; columns: "
            f"{', '.join(map(str, adata.obs.columns))})"
        )
    col = adata.obs[key]
    if isinstance(col.dtype, pd.CategoricalDtype) and col.cat.ordered:
        return col.cat.codes.to_numpy().astype(np.float64)
    num = pd.to_numeric(col, errors="coerce")
    if num.isna().any():
        num = pd.to_numeric(col.astype(str).str.extract(r"(-?\d+\.?\d*)\s*$")[0], errors="coerce")
    if num.isna().any():
        bad = sorted(set(map(str, col[num.isna()])))[:5]
        raise ValueError(
            f"{what}: obs[{key!r}] has values that are not time points ({', '.join(bad)}); "
            "use numbers, labels ending in a number (d2, day4) or an ordered categorical"
        )
    return num.to_numpy(np.float64)


def _has_key(cells: AnnData, opts: dict, name: str, what: str) -> bool:
    """Whether the obs column the config names as ``files.<name>`` is to be read: ``False`` if
    none is named; a missing column is a ``KeyError`` (naming file, column and config key), or
    with ``opts["optional_keys"]`` a warning and ``False``."""
    import warnings

    key = opts.get(name)
    if not key:
        return False
    if key in cells.obs:
        return True
    msg = (
        f"{what}: no obs column {key!r} (files.{name}; columns: "
        f"{', '.join(map(str, cells.obs.columns)) or 'none'})"
    )
    if not opts.get("optional_keys"):
        raise KeyError(msg)
    warnings.warn(msg + "; not used for this file", stacklevel=3)
    return False


def _annotated(path: Path, opts: dict) -> AnnData:
    """One user file as :func:`read_cells` returns its cells."""
    import pandas as pd

    what = str(path)
    cells = read_expression(
        read(path),
        what=what,
        use_raw=opts.get("use_raw", True),
        counts=opts.get("counts", "refuse"),
        target_sum=opts.get("target_sum", 1e4),
    )
    obs = pd.DataFrame(index=cells.obs_names.astype(str))
    obs["source_file"] = what
    if _has_key(cells, opts, "time_key", what):
        obs["time_point"] = time_points(cells, opts["time_key"], what=what)
    if _has_key(cells, opts, "fate_key", what):
        obs["fate"] = cells.obs[opts["fate_key"]].astype(str).values
    if _has_key(cells, opts, "root_key", what):
        obs["is_root"] = cells.obs[opts["root_key"]].astype(bool).values
    out = AnnData(X=cells.X, obs=obs, var=pd.DataFrame(index=cells.var_names.astype(str)))
    clones = clone_matrix(cells, opts.get("clone_key") or "X_clone", what=what)
    if clones is not None:
        out.obsm["X_clone"] = clones
    out.uns["expression"] = cells.uns["expression"]
    if "iroot" in cells.uns:
        out.uns["iroot"] = int(cells.uns["iroot"])
    return out


def read_cells(paths: list[Path] | tuple[Path, ...], **opts) -> AnnData:
    """The cells of a user's files (``.h5ad``, 10x ``.h5``, 10x mtx directories) as one
    AnnData, in the pipeline's own layout.

    Parameters
    ----------
    paths
        Files of one split; each must have the same genes (names and order).
    **opts
        The config's ``files`` block: ``use_raw``, ``counts``, ``target_sum``
        (:func:`read_expression`), ``time_key``, ``fate_key``, ``root_key``, ``clone_key``;
        ``optional_keys=True`` reads files without those obs columns (a warning each).

    Returns
    -------
    AnnData
        ``X`` log-normalised expression (float32); ``obs``: ``source_file`` and, where the
        config names them, ``time_point`` (:func:`time_points`), ``fate`` (str) and
        ``is_root`` (bool); ``obsm["X_clone"]`` (:func:`clone_matrix`, CSR 0/1) when every
        file has clonal barcodes. Cell names are made unique across files.

    Raises
    ------
    ValueError
        Naming the file: genes differing between files, clonal barcodes in some files only or
        with different clone counts, and every error of the readers above.
    """
    import anndata as ad

    parts = [_annotated(Path(p), opts) for p in paths]
    first = parts[0]
    for p, a in zip(paths[1:], parts[1:], strict=True):
        if list(a.var_names) != list(first.var_names):
            raise ValueError(
                f"{p}: genes differ from {paths[0]}'s ({a.n_vars} vs {first.n_vars}); files of "
                "one run must share their genes (subset them to the common genes first)"
            )
    with_clones = ["X_clone" in a.obsm for a in parts]
    if any(with_clones) and not all(with_clones):
        raise ValueError(
            f"{paths[with_clones.index(False)]}: no obsm[{opts.get('clone_key')!r}] while other "
            "files have clonal barcodes; give them to every file or to none"
        )
    if all(with_clones) and len({a.obsm["X_clone"].shape[1] for a in parts}) > 1:
        raise ValueError(f"{', '.join(map(str, paths))}: different numbers of clones per file")
    cells = ad.concat(parts, merge="first") if len(parts) > 1 else first
    cells.var = first.var.copy()
    cells.uns["expression"] = first.uns["expression"]
    if len(parts) > 1:
        cells.uns.pop("iroot", None)  # a root index of one file, not of the concatenation
    if cells.obs_names.has_duplicates:
        cells.obs_names_make_unique()
    return cells
