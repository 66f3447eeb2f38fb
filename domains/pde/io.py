"""PDEBench HDF5 files: read and write trajectories.

Layout (PDEBench's single-tensor files, e.g. ``1D_Burgers_Sols_Nu0.1.hdf5``,
``1D_Advection_Sols_beta0.1.hdf5``, ``2D_DarcyFlow_*.hdf5``)::

    tensor         (N, nt, nx) or (N, nt, nx, ny)   float32
    x-coordinate   (nx,)
    y-coordinate   (ny,)                            2-D only
    t-coordinate   (nt,) or (nt + 1,)

PDEBench's 1-D generators store ``nt + 1`` times with ``nt`` frames (its own loaders use
``t[:nt]``); :func:`read_pdebench` accepts both and keeps the first ``nt``, while
:func:`write_pdebench` writes exactly ``nt``. Scalar parameters (``nu``, ``beta``, ...) are file
attributes. PDEBench's other layouts (one group per seed with ``data`` and ``grid/x``, or the
CFD files with ``density``/``Vx``/``pressure``) are not read: :func:`read_pdebench` says so.

The user's own trajectories (:func:`read_trajectories`) may also come as MATLAB ``.mat`` (v5
through SciPy, v7.3 through h5py) or NumPy ``.npz`` files with named variables.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from diffsci.core.datasource import FLOAT32_SAFE_MAX, require_finite
from diffsci.core.fileio import atomic_path, open_hdf5

__all__ = [
    "PDEData",
    "read_assimilation",
    "read_ensemble",
    "read_pdebench",
    "read_scale",
    "read_trajectories",
    "file_format",
    "split_files",
    "write_assimilation",
    "write_ensemble",
    "write_pdebench",
    "write_scale",
]

TENSOR, X, Y, T = "tensor", "x-coordinate", "y-coordinate", "t-coordinate"


@dataclass
class PDEData:
    """Trajectories and their grid, as read from a PDEBench file.

    Attributes
    ----------
    u
        ``(N, nt, nx)`` or ``(N, nt, nx, ny)`` float32.
    x, t, y
        Coordinates (``y`` is ``None`` for 1-D data; ``t`` has ``nt`` entries).
    attrs
        File attributes (PDE parameters such as ``nu`` or ``beta``).
    """

    u: np.ndarray
    x: np.ndarray
    t: np.ndarray
    y: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def spatial_dims(self) -> int:
        """1 or 2."""
        return self.u.ndim - 2


def _coordinate(name: str, value: Any, n: int, *, allow_extra: bool = False) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    ok = (n, n + 1) if allow_extra else (n,)
    if len(arr) not in ok:
        raise ValueError(f"{name} has {len(arr)} entries, the tensor needs {n}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} has non-finite values")
    return arr


def _nonfinite_samples(u: np.ndarray) -> np.ndarray:
    return np.flatnonzero(~np.isfinite(u.reshape(u.shape[0], -1)).all(axis=1))


def write_pdebench(
    path: str | os.PathLike,
    u: np.ndarray,
    *,
    x: np.ndarray,
    t: np.ndarray,
    y: np.ndarray | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write trajectories in PDEBench's HDF5 layout, atomically.

    The file is written to a temporary file in the target's directory and moved into place with
    ``os.replace``, so a failed write leaves neither a partial file nor a changed target.

    Parameters
    ----------
    path
        Target ``.h5``/``.hdf5`` file.
    u
        ``(N, nt, nx)`` or ``(N, nt, nx, ny)``; stored as float32 in ``tensor``.
    x, t, y
        Coordinates of lengths ``nx``, ``nt`` and ``ny`` (``y`` for 2-D data only).
    attrs
        Scalar/string/array parameters stored as file attributes.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    arr = np.asarray(u)
    if arr.ndim not in (3, 4):
        raise ValueError(f"u must have shape (N, nt, nx) or (N, nt, nx, ny), got {arr.shape}")
    if 0 in arr.shape:
        raise ValueError(f"u is empty, shape {arr.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        arr = arr.astype(np.float32)
    bad = _nonfinite_samples(arr)
    if bad.size:
        raise ValueError(f"u has non-finite values in float32 (samples {bad[:10].tolist()})")
    coords = {X: _coordinate("x", x, arr.shape[2]), T: _coordinate("t", t, arr.shape[1])}
    if arr.ndim == 4:
        if y is None:
            raise ValueError("y is required for 2-D data u (N, nt, nx, ny)")
        coords[Y] = _coordinate("y", y, arr.shape[3])
    elif y is not None:
        raise ValueError("y given for 1-D data u (N, nt, nx)")
    attrs = dict(attrs or {})
    for key, value in attrs.items():
        if value is None or isinstance(value, Mapping):
            raise ValueError(f"attrs[{key!r}] = {value!r} cannot be stored as an HDF5 attribute")

    with atomic_path(path, suffix=".tmp") as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset(TENSOR, data=arr, chunks=(1, *arr.shape[1:]))
        for key, value in coords.items():
            f.create_dataset(key, data=value)
        for key, value in attrs.items():
            try:
                f.attrs[key] = value
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"attrs[{key!r}] = {value!r} cannot be stored as an HDF5 attribute"
                ) from err
    return path


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_pdebench(path: str | os.PathLike, *, max_samples: int | None = None) -> PDEData:
    """Read a PDEBench single-tensor HDF5 file.

    Parameters
    ----------
    path
        File written by PDEBench or :func:`write_pdebench`.
    max_samples
        Read only the first ``max_samples`` trajectories (the rest is never loaded).

    Returns
    -------
    PDEData
        ``u`` as float32; ``t`` trimmed to ``nt`` entries when the file stores ``nt + 1``.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        Not an HDF5 file, no ``tensor``, wrong rank, coordinates missing or of the wrong
        length, or non-finite trajectories; the message names the file, key and samples.
    """
    path = Path(path)
    if max_samples is not None and (int(max_samples) != max_samples or max_samples < 1):
        raise ValueError(f"max_samples must be a positive integer, got {max_samples}")
    with open_hdf5(path, what="PDEBench file") as f:
        keys = sorted(f.keys())
        if TENSOR not in f or not isinstance(f[TENSOR], h5py.Dataset):
            hint = ""
            if any(k in f for k in ("density", "Vx", "velocity")):
                hint = " (PDEBench's CFD/NS multi-field layout is not supported)"
            elif keys and isinstance(f[keys[0]], h5py.Group):
                hint = " (PDEBench's one-group-per-seed layout is not supported)"
            raise ValueError(f"{path}: no dataset {TENSOR!r}; keys are {keys}{hint}")
        dset = f[TENSOR]
        if dset.ndim not in (3, 4):
            raise ValueError(
                f"{path}: {TENSOR!r} must be (N, nt, nx) or (N, nt, nx, ny), got shape {dset.shape}"
            )
        n = dset.shape[0] if max_samples is None else min(int(max_samples), dset.shape[0])
        nt = dset.shape[1]
        coords: dict[str, np.ndarray | None] = {Y: None}
        needed = [(X, dset.shape[2]), (T, nt)] + ([(Y, dset.shape[3])] if dset.ndim == 4 else [])
        for key, size in needed:
            if key not in f:
                raise ValueError(f"{path}: missing dataset {key!r} (keys are {keys})")
            try:
                c = _coordinate(key, f[key][()], size, allow_extra=key == T)
            except ValueError as err:
                raise ValueError(f"{path}: {err}") from err
            coords[key] = c[:size]
        u = _checked_values(np.asarray(dset[:n]), source=str(path), variable=repr(TENSOR))
        attrs = {k: _attr(v) for k, v in f.attrs.items()}
    return PDEData(u=u, x=coords[X], t=coords[T], y=coords[Y], attrs=attrs)


def _checked_values(raw: np.ndarray, *, source: str, variable: str) -> np.ndarray:
    """``raw`` as float32 after refusing NaN/inf (naming the samples) and magnitudes that
    overflow float32 arithmetic (checked before the cast, so a 1e39 is not reported as inf)."""
    raw = raw if raw.dtype.kind in "fc" else raw.astype(np.float64)
    bad = _nonfinite_samples(raw) if raw.size else np.array([], dtype=int)
    fix = "remove these trajectories or fill the gaps (nothing is masked silently)"
    if bad.size:
        more = f" and {bad.size - 10} more" if bad.size > 10 else ""
        require_finite(
            raw,
            source=source,
            variable=f"{variable} (NaN/inf values in samples {bad[:10].tolist()}{more})",
            fix=fix,
        )
    require_finite(raw, source=source, variable=variable, max_abs=FLOAT32_SAFE_MAX)
    return raw.astype(np.float32)


# --------------------------------------------------------------------------------------------
# the work folder's layout: data/{train,test}_nx<N>.h5 + normalisation.json, predictions with
# an "ensemble" dataset beside PDEBench's "tensor" (the ensemble mean)

SCALE_FILE = "normalisation.json"


def split_files(data_dir: str | os.PathLike, split: str) -> dict[int, Path]:
    """The ``<split>_nx<N>.h5`` files of a prepared data folder, by grid size ``N``."""
    data_dir = Path(data_dir)
    found = {int(p.stem.split("_nx")[-1]): p for p in sorted(data_dir.glob(f"{split}_nx*.h5"))}
    if not found:
        raise FileNotFoundError(f"no {split}_nx*.h5 files in {data_dir} (run the prepare stage)")
    for nx, path in found.items():
        _check_named_grid(path, nx)
    return found


#: How to remake a prepared data folder's files.
RERUN_PREPARE = "rerun the prepare stage (`diffsci prepare` or `snakemake --forcerun prepare`)"


def _check_named_grid(path: Path, nx: int) -> None:
    """Refuse a prepared file whose grid (its ``tensor``'s last axis and ``x-coordinate``) is
    not the ``nx`` its name ``<split>_nx<N>.h5`` gives: the stages pick files by that name, so
    a model would train or be scored on another grid than the one every record says."""
    with open_hdf5(path, what="PDEBench file") as f:
        sizes = {k: f[k].shape[-1] for k in (TENSOR, X) if k in f and f[k].ndim}
    wrong = {k: n for k, n in sizes.items() if n != nx}
    if wrong:
        found = ", ".join(f"{k!r} has {n}" for k, n in wrong.items())
        raise ValueError(
            f"{path}: the file's grid is not the nx={nx} its name says ({found} points); "
            f"the stages choose files by that name: {RERUN_PREPARE}, or rename the file to "
            f"the grid it holds"
        )


def write_scale(data_dir: str | os.PathLike, scale: float) -> None:
    """Store the global normalisation scale (std of the training trajectories)."""
    (Path(data_dir) / SCALE_FILE).write_text(json.dumps({"scale": scale}))


def read_scale(data_dir: str | os.PathLike) -> float:
    """The normalisation scale written by :func:`write_scale`.

    Raises
    ------
    FileNotFoundError, ValueError
        The file is missing, not JSON, lacks ``scale`` or holds no positive finite number; the
        message names the file and says how to remake it.
    """
    path = Path(data_dir) / SCALE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: missing; it is written by the prepare stage: {RERUN_PREPARE}"
        )
    try:
        scale = float(json.loads(path.read_text())["scale"])
    except (ValueError, KeyError, TypeError) as err:
        what = f"{type(err).__name__}: {err}"
        raise ValueError(
            f"{path}: not a readable normalisation file ({what}); it is written by the prepare "
            f"stage: {RERUN_PREPARE}"
        ) from err
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"{path}: scale is {scale}, not a positive finite number; {RERUN_PREPARE}")
    return scale


def write_ensemble(
    path: str | os.PathLike,
    ensemble: np.ndarray,
    *,
    x: np.ndarray,
    t: np.ndarray,
    attrs: Mapping[str, Any],
) -> Path:
    """An ensemble ``(M, N, nt, nx)`` as a PDEBench file of its mean, plus ``ensemble``
    (float32, gzip) for the probabilistic scores."""
    path = write_pdebench(path, ensemble.mean(0), x=x, t=t, attrs=attrs)
    with h5py.File(path, "a") as f:
        f.create_dataset("ensemble", data=ensemble.astype(np.float32), compression="gzip")
    return path


def read_ensemble(path: str | os.PathLike) -> np.ndarray:
    """The ``ensemble`` dataset ``(M, N, nt, nx)`` of a file written by :func:`write_ensemble`."""
    with h5py.File(path) as f:
        return f["ensemble"][()]


def write_assimilation(
    path: str | os.PathLike,
    ensemble: np.ndarray,
    observations: np.ndarray,
    mask: np.ndarray,
    *,
    x: np.ndarray,
    t: np.ndarray,
    attrs: Mapping[str, Any],
) -> Path:
    """:func:`write_ensemble` plus the ``observations`` ``(N, nt, nx)`` (zero off the sensors)
    and the 0/1 sensor ``mask`` ``(1, nt, nx)`` (uint8)."""
    path = write_ensemble(path, ensemble, x=x, t=t, attrs=attrs)
    with h5py.File(path, "a") as f:
        f.create_dataset("observations", data=observations)
        f.create_dataset("mask", data=mask.astype(np.uint8))
    return path


def read_assimilation(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ensemble, observations, mask)`` of a file written by :func:`write_assimilation`."""
    with h5py.File(path) as f:
        return f["ensemble"][()], f["observations"][()], f["mask"][()]


# --------------------------------------------------------------------------------------------
# the user's trajectories: PDEBench HDF5 under other dataset names, MATLAB .mat, NumPy .npz

#: Default variable names per format: PDEBench's datasets, and ``u``/``x``/``t`` in the
#: .mat/.npz files that PDE-FIND, FNO and many papers ship.
DEFAULT_KEYS = {
    "hdf5": {"u": TENSOR, "x": X, "t": T},
    "mat": {"u": "u", "x": "x", "t": "t"},
    "npz": {"u": "u", "x": "x", "t": "t"},
}
SUFFIXES = {".h5": "hdf5", ".hdf5": "hdf5", ".mat": "mat", ".npz": "npz"}


def file_format(path: str | os.PathLike) -> str:
    """``hdf5``, ``mat`` or ``npz`` from the file's suffix.

    Raises
    ------
    ValueError
        Another suffix; the message lists the formats read.
    """
    fmt = SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(
            f"{path}: unknown trajectory format {Path(path).suffix!r}; PDE files are PDEBench "
            "HDF5 (.h5/.hdf5), MATLAB .mat or NumPy .npz with named variables"
        )
    return fmt


def _scalar_attrs(variables: Mapping[str, Any], skip: set[str]) -> dict[str, Any]:
    """Scalars and strings among a .mat/.npz file's variables (``nu``, ``equation``...)."""
    out: dict[str, Any] = {}
    for k, v in variables.items():
        if k in skip or k.startswith("__"):
            continue
        a = np.asarray(v)
        if a.dtype.kind in "US":
            out[k] = str(a.reshape(-1)[0]) if a.size else ""
        elif a.size == 1 and a.dtype.kind in "fiub":
            out[k] = a.reshape(-1)[0].item()
    return out


def _read_variables(path: Path, fmt: str, names: list[str]) -> tuple[dict[str, Any], dict]:
    """``({name: array}, attrs)`` of an HDF5 / .mat (v5 or v7.3) / .npz file."""
    if fmt == "npz":
        with np.load(path, allow_pickle=False) as z:
            variables = {k: z[k] for k in z.files}
        return variables, _scalar_attrs(variables, set(names))
    if fmt == "mat":
        import scipy.io

        try:
            variables = scipy.io.loadmat(path, squeeze_me=True)
        except NotImplementedError:  # MATLAB v7.3 files are HDF5 (arrays stored transposed)
            with open_hdf5(path, what="MATLAB v7.3 file") as f:
                variables = {k: np.asarray(f[k][()]).T for k in f if isinstance(f[k], h5py.Dataset)}
        return variables, _scalar_attrs(variables, set(names))
    with open_hdf5(path, what="HDF5 trajectory file") as f:
        variables = {k: f[k][()] for k in names if k in f and isinstance(f[k], h5py.Dataset)}
        variables["__keys__"] = sorted(f.keys())
        return variables, {k: _attr(v) for k, v in f.attrs.items()}


def _axes_order(shape: tuple[int, ...], nt: int, nx: int, path: Path) -> tuple[int, ...]:
    """The permutation putting ``shape`` into ``(N, nt, nx)`` order, found from the lengths
    of the coordinates (``t`` may have ``nt + 1`` entries, as PDEBench stores them)."""
    import itertools

    if len(shape) not in (2, 3):
        raise ValueError(f"{path}: trajectories must be 2-D (t, x) or 3-D (N, t, x), got {shape}")
    fits = []
    for perm in itertools.permutations(range(len(shape))):
        s = [shape[i] for i in perm][-2:]
        if s[1] == nx and s[0] in (nt, nt - 1):
            fits.append(perm)
    if not fits:
        raise ValueError(
            f"{path}: no axes of the trajectories {shape} match the coordinates (t has {nt}, x "
            f"{nx} entries); check files.keys (which variables hold u, x and t)"
        )
    if len(fits) > 1 and len({tuple(shape[i] for i in p) for p in fits}) > 1:
        fits.sort(key=lambda p: p != tuple(range(len(shape))))  # the stored order if it fits
    return fits[0]


def read_trajectories(
    path: str | os.PathLike,
    *,
    keys: Mapping[str, str | None] | None = None,
    max_samples: int | None = None,
) -> PDEData:
    """Read 1-D trajectories from PDEBench HDF5, MATLAB .mat or NumPy .npz files.

    PDEBench HDF5 files with the standard names go through :func:`read_pdebench`. Otherwise the
    variables named by ``keys`` (``{"u": ..., "x": ..., "t": ...}``; ``None`` = the format's
    default, :data:`DEFAULT_KEYS`) are read and put into ``(N, nt, nx)`` order by matching the
    coordinates' lengths, so PDE-FIND's ``usol`` ``(nx, nt)`` and FNO-style ``(N, nt, nx)``
    arrays both read; a 2-D array is one trajectory. MATLAB v5 files are read with
    ``scipy.io.loadmat`` and v7.3 files (HDF5, column-major) with h5py. Scalars and strings
    among a .mat/.npz file's variables (``nu``, ``equation``) become ``attrs``, as HDF5 file
    attributes do. ``max_samples`` keeps the first trajectories only (a PDEBench file's others
    are never loaded).

    Raises
    ------
    ValueError
        Unknown suffix, a variable missing (the message lists the file's variables and the
        config key ``files.keys`` to set), axes that match no coordinate, non-finite values.

    References
    ----------
    Takamoto et al., "PDEBench: An Extensive Benchmark for Scientific Machine Learning",
    NeurIPS 2022 Datasets and Benchmarks (the HDF5 layout above). MathWorks, "MAT-File Format"
    (Level 5) and "MAT-File Versions" (v7.3 is HDF5 with a 512-byte header, arrays stored
    column-major). NumPy Enhancement Proposal 1, "A Simple File Format for NumPy Arrays" (the
    ``.npy`` members of an ``.npz`` zip archive).
    """
    path = Path(path)
    fmt = file_format(path)
    names = {**DEFAULT_KEYS[fmt], **{k: v for k, v in (keys or {}).items() if v}}
    if fmt == "hdf5" and names == DEFAULT_KEYS["hdf5"]:
        return read_pdebench(path, max_samples=max_samples)
    variables, attrs = _read_variables(path, fmt, list(names.values()))
    found = variables.pop("__keys__", sorted(k for k in variables if not k.startswith("__")))
    for role, name in names.items():
        if name not in variables:
            raise ValueError(
                f"{path}: no variable {name!r} for {role} (the file holds {found}); set "
                f"files.keys.{role} in the config to the name your file uses"
            )
    x = np.asarray(variables[names["x"]], dtype=np.float64).reshape(-1)
    t = np.asarray(variables[names["t"]], dtype=np.float64).reshape(-1)
    u = np.asarray(variables[names["u"]])
    perm = _axes_order(u.shape, len(t), len(x), path)
    u = np.transpose(u, perm)
    u = u[None] if u.ndim == 2 else u[:max_samples]
    u = _checked_values(u, source=str(path), variable=repr(names["u"]))
    for name, c in (("x", x), ("t", t)):
        if not np.isfinite(c).all():
            raise ValueError(f"{path}: coordinate {names[name]!r} has non-finite values")
    return PDEData(u=u, x=x, t=t[: u.shape[1]], attrs=attrs)
