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

__all__ = ["atomic_path"]


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
