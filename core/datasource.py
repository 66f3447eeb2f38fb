"""Where a domain's data come from: ``source.kind: simulate`` (the demo and benchmarks) or the
user's own ``files``, split into train / validation / test in the config.

The config block (``$defs/source`` of ``core/config.schema.yaml``)::

    source:
      kind: files
      train: [data/raw/train/*.h5]      # paths or globs, relative to the working directory
      validation: [data/raw/val.h5]     # optional
      test: [data/raw/test/*.h5]

The domain's ``prepare`` reads those files with its ``io`` readers and writes the pipeline's own
layout into the data folder, so the later stages do not care where the data came from.
:func:`fingerprint` identifies the exact bytes a model was trained on (model card, checkpoint);
:func:`require_finite` is the one place where a reader refuses NaN, inf or overflowing values,
naming the file and the variable.
"""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FileSplits",
    "FLOAT32_SAFE_MAX",
    "SPLITS",
    "resolve_source",
    "fingerprint",
    "expand_paths",
    "require_finite",
]

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class FileSplits:
    """The user's files of each split (sorted, existing, no file in two splits)."""

    train: tuple[Path, ...]
    validation: tuple[Path, ...]
    test: tuple[Path, ...]

    def items(self) -> Iterable[tuple[str, tuple[Path, ...]]]:
        return ((s, getattr(self, s)) for s in SPLITS)


def expand_paths(patterns: Iterable[str], *, key: str) -> tuple[Path, ...]:
    """Paths and globs -> existing files or folders (a zarr store, a DICOM series folder),
    sorted within each pattern, the order of the patterns kept.

    Raises
    ------
    FileNotFoundError
        Naming the config key and the pattern that matched nothing.
    """
    out: list[Path] = []
    for pat in patterns:
        hits = sorted(glob.glob(str(pat), recursive=True)) if glob.has_magic(str(pat)) else [pat]
        files = [Path(h) for h in hits if Path(h).exists()]
        if not files:
            raise FileNotFoundError(
                f"config {key}: {pat!r} matches no file or folder (paths are relative to the working "
                f"directory {Path.cwd()})"
            )
        out += [f for f in files if f not in out]
    return tuple(out)


def resolve_source(cfg: Mapping[str, Any]) -> FileSplits | None:
    """The user's files of ``cfg["source"]``, or ``None`` for ``kind: simulate``."""
    src = cfg.get("source") or {"kind": "simulate"}
    if src.get("kind", "simulate") == "simulate":
        return None
    for need in ("train", "test"):
        if not src.get(need):
            raise ValueError(f"config source.{need}: needed with source.kind files (a file list)")
    splits = {s: expand_paths(src.get(s) or [], key=f"source.{s}") for s in SPLITS}
    seen: dict[Path, str] = {}
    for s, files in splits.items():
        for f in files:
            if f.resolve() in seen:
                raise ValueError(
                    f"{f}: listed in both source.{seen[f.resolve()]} and source.{s}; a file "
                    "belongs to one split (held-out data must not be trained on)"
                )
            seen[f.resolve()] = s
    return FileSplits(**splits)


#: Files left out of a folder's fingerprint: records of how it was made, not data.
_NOT_DATA = ("provenance.json",)


def fingerprint(paths: Iterable[str | Path], *, chunk: int = 1 << 20) -> str:
    """SHA-256 over the names, sizes and bytes of ``paths`` (files, or folders walked in sorted
    order, without their ``provenance.json``): the identity of a dataset."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(q for q in p.rglob("*") if q.is_file() and q.name not in _NOT_DATA)
        else:
            files.append(p)
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + str(f.stat().st_size).encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()


#: Largest magnitude a reader lets through by default: the square of anything larger overflows
#: float32 (``sqrt(3.4e38) ~ 1.8e19``), so a standard deviation or a squared-error loss of such
#: data is inf and training stops with a non-finite loss far from the file that caused it.
#: Fill values such as ``1e30`` or ``9.97e36`` (netCDF's default) are the usual source.
FLOAT32_SAFE_MAX = 1e18

_FIX_NONFINITE = "fill or mask these values in the file first (nothing is masked silently)"
_FIX_TOO_LARGE = (
    "mask fill values (such as 1e30 for missing data) and check the file's units and scaling"
)


def _as_numpy(values: Any) -> np.ndarray:
    """A NumPy view of an array, a torch tensor (copied to the CPU) or a sequence."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _index(arr: np.ndarray, mask: np.ndarray) -> str:
    """The index of the first ``True`` of ``mask`` in ``arr``'s shape, as ``[i, j, ...]``."""
    first = np.unravel_index(int(np.flatnonzero(mask)[0]), arr.shape)
    return "[" + ", ".join(str(int(i)) for i in first) + "]"


def _nonfinite_counts(arr: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The mask of non-finite values and the counts by kind (``3 NaN``, ``1 +inf``...)."""
    nan = np.isnan(arr)
    if arr.dtype.kind == "c":
        kinds = {"NaN": nan, "inf": np.isinf(arr) & ~nan}
    else:
        kinds = {"NaN": nan, "+inf": np.isposinf(arr), "-inf": np.isneginf(arr)}
    counts = [f"{int(m.sum())} {k}" for k, m in kinds.items() if m.any()]
    return ~np.isfinite(arr), counts


def require_finite(
    values: Any,
    *,
    source: str,
    variable: str,
    fix: str | None = None,
    max_abs: float | None = None,
) -> None:
    """Refuse NaN / inf values (and, with ``max_abs``, magnitudes above it) where data enter.

    Parameters
    ----------
    values
        A NumPy array, torch tensor or sequence (integer and boolean data are always finite).
    source
        The file (or folder) the values were read from.
    variable
        The dataset, key or variable within ``source``.
    fix
        The way forward for the user; a generic one when ``None``.
    max_abs
        Refuse magnitudes above this, such as :data:`FLOAT32_SAFE_MAX`: values that are
        finite in the file but overflow float32 arithmetic later.

    Raises
    ------
    ValueError
        ``"<source>: <variable> has 2 NaN, 1 +inf of 640 values (first at index [0, 3]);
        <fix>"``, or the count of values above ``max_abs`` with the largest one.
    """
    arr = _as_numpy(values)
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():  # the details only on failure
        bad, counts = _nonfinite_counts(arr)
        raise ValueError(
            f"{source}: {variable} has {', '.join(counts)} of {arr.size} values (first at "
            f"index {_index(arr, bad)}); {fix or _FIX_NONFINITE}"
        )
    if max_abs is None or arr.size == 0 or arr.dtype.kind not in "fciu":
        return
    if arr.dtype.kind != "c" and max(abs(float(arr.max())), abs(float(arr.min()))) <= max_abs:
        return  # no copy of a large array when every value is in range
    mag = np.abs(arr)
    big = mag > max_abs
    if big.any():
        raise ValueError(
            f"{source}: {variable} has {int(big.sum())} of {arr.size} values of magnitude above "
            f"{max_abs:.3g} (largest {float(mag.max()):.3g}, first at index {_index(arr, big)}), "
            f"which overflow float32 arithmetic (a standard deviation, the training loss); "
            f"{fix or _FIX_TOO_LARGE}"
        )


def data_record(
    cfg: Mapping[str, Any], data_dir: str | Path, *, digest: str | None = None
) -> dict[str, Any]:
    """The ``data`` part of a model card: where the data came from (``simulate`` or the
    user's files per split) and the :func:`fingerprint` of the prepared ``data_dir``
    (``digest`` when the caller has computed it already)."""
    files = resolve_source(cfg)
    return {
        "source": "simulate" if files is None else "files",
        "fingerprint": digest or fingerprint([Path(data_dir)]),
        "files": {} if files is None else {s: list(map(str, f)) for s, f in files.items()},
    }
