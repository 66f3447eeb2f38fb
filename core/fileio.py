"""Atomic file writes shared by every domain's writers.

A writer produces its file under a temporary name in the target's folder and the file is
renamed into place only when the writer finished: a failed or interrupted write never leaves
a partial file that looks complete, and never damages an existing target.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "open_hdf5"]


@contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    ``suffix`` keeps the extension libraries dispatch on (e.g. ``".nii.gz"`` for nibabel).
    On any exception the temporary file is removed and the exception propagates.

    Examples
    --------
    >>> with atomic_path("out.h5", suffix=".h5") as tmp:  # doctest: +SKIP
    ...     with h5py.File(tmp, "w") as f:
    ...         f["x"] = 1
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def open_hdf5(path: str | os.PathLike, *, what: str = "HDF5 file"):
    """Open ``path`` read-only with h5py; a missing or non-HDF5 file is an error naming it.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If it is not a readable HDF5 file.
    """
    import h5py

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such {what}")
    try:
        return h5py.File(p, "r")
    except OSError as e:
        raise ValueError(f"{p}: not a readable HDF5 file ({e})") from e
