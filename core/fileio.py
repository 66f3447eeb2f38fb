"""Atomic file writes shared by every domain's writers.

A writer produces its file under a temporary name in the target's folder and the file is
renamed into place only when the writer finished: a failed or interrupted write never leaves
a partial file that looks complete, and never damages an existing target.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_dir", "open_hdf5", "refuse_pickle_codecs"]


def _umask() -> int:
    """The process umask (``os.umask`` can only be read by setting it)."""
    old = os.umask(0o022)
    os.umask(old)
    return old


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
        # mkstemp makes the file 0600; give it the mode a plain open() would (0666 & ~umask), so
        # a group can read results as it can read any other file the user writes
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike, *, create: bool = True) -> Iterator[Path]:
    """Yield a temporary folder ``.<name>.partial`` beside ``path``; on success it replaces
    ``path``, on any exception it is removed and ``path`` (if any) is left as it was.

    ``create=False`` yields the path without creating it, for writers that create their own
    folder (e.g. a zarr store). The old target is moved aside before the new one is renamed
    in, then deleted, so there is never a moment with half of each.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if create:
        tmp.mkdir()
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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


_METADATA = (".zarray", "zarr.json")


def refuse_pickle_codecs(store: str | os.PathLike) -> None:
    """Refuse a zarr store whose arrays decode through the ``pickle`` codec.

    zarr v2 stores object arrays with numcodecs' ``Pickle`` filter, and reading one unpickles
    its chunks, so a crafted store could run code when opened (zarr-python 2 does so; 3 refuses
    the dtype). No diffsci reader needs object arrays, so the store's JSON metadata is checked
    before any library opens it.

    Raises
    ------
    ValueError
        Naming the array and the codec.
    """
    root = Path(store)
    if not root.is_dir():
        return
    for meta in (m for name in _METADATA for m in root.rglob(name)):
        text = meta.read_text(errors="replace")
        if '"pickle"' in text.replace(" ", "").lower().replace("'", '"'):
            raise ValueError(
                f"{meta.parent}: refused: this zarr array decodes through the 'pickle' codec, "
                "which could run code when read; save the data as numeric arrays "
                "(e.g. ds.astype(float).to_zarr(...))"
            )
