"""B-mode figures for the ultrasound task.

:func:`plot_bmode` draws one B-mode image (dB, fixed dynamic range, metric axes) into an
Axes and returns it; :func:`save_bmode_grid` makes a grid of them on a new
:class:`matplotlib.figure.Figure` (no pyplot, no backend switch) and writes a PNG.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["plot_bmode", "save_bmode_grid"]


def plot_bmode(
    ax,
    img_db: np.ndarray,
    x: np.ndarray,
    z: np.ndarray,
    *,
    dynamic_range: float = 60.0,
    title: str = "",
):
    """Show ``img_db`` ``(nz, nx)`` in dB over ``[-dynamic_range, 0]``, axes in mm."""
    ext = [x[0] * 1e3, x[-1] * 1e3, z[-1] * 1e3, z[0] * 1e3]
    ax.imshow(
        np.asarray(img_db), cmap="gray", vmin=-dynamic_range, vmax=0, extent=ext, aspect="equal"
    )
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("x (mm)", fontsize=7)
    ax.set_ylabel("z (mm)", fontsize=7)
    ax.tick_params(labelsize=6)
    return ax


def save_bmode_grid(
    path: str | Path,
    rows: Mapping[str, Mapping[str, np.ndarray]],
    x: np.ndarray,
    z: np.ndarray,
    *,
    dynamic_range: float = 60.0,
) -> str:
    """One row per entry of ``rows`` (``{row label: {column title: B-mode dB}}``); returns the
    written path."""
    from matplotlib.figure import Figure

    n_r = len(rows)
    n_c = max(len(r) for r in rows.values())
    fig = Figure(figsize=(2.2 * n_c, 2.3 * n_r), layout="constrained")
    axes = np.atleast_2d(fig.subplots(n_r, n_c, squeeze=False))
    for i, (label, cols) in enumerate(rows.items()):
        for j, (title, img) in enumerate(cols.items()):
            plot_bmode(
                axes[i, j], img, x, z, dynamic_range=dynamic_range, title=f"{label}: {title}"
            )
        for j in range(len(cols), n_c):
            axes[i, j].axis("off")
    fig.savefig(path, dpi=110)
    return str(path)
