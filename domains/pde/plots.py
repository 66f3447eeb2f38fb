"""Figures of PDE forecasts: space-time panels and error growth.

The drawing functions take Axes and return them; :func:`save_forecast` and
:func:`save_nrmse_per_frame` draw the evaluate stage's figure files on a
:class:`matplotlib.figure.Figure` (no pyplot, so no backend is chosen at import).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

__all__ = ["forecast_panels", "nrmse_per_frame", "save_forecast", "save_nrmse_per_frame"]


def _panels(true: Tensor, ensemble: Tensor, fno: Tensor | None) -> list[tuple[str, Tensor]]:
    panels = [
        ("truth", true),
        ("diffusion ens. mean", ensemble.mean(0)),
        ("diffusion ens. std", ensemble.std(0)),
    ]
    if fno is not None:
        panels.append(("FNO", fno[0]))
    return panels


def forecast_panels(
    axes: Sequence[Axes], true: Tensor, ensemble: Tensor, fno: Tensor | None = None
) -> Sequence[Axes]:
    """Truth ``(nt, nx)``, ensemble mean and std of the ensemble ``(M, nt, nx)`` (and the FNO's
    first trajectory) as (t, x) images, one per Axes (3, or 4 with ``fno``), with colour bars."""
    vmin, vmax = float(true.min()), float(true.max())
    for a, (title, img) in zip(axes, _panels(true, ensemble, fno), strict=True):
        std = "std" in title
        im = a.imshow(
            np.asarray(img),
            aspect="auto",
            origin="lower",
            cmap="magma" if std else "RdBu_r",
            vmin=None if std else vmin,
            vmax=None if std else vmax,
        )
        a.set_title(title)
        a.set_xlabel("x index")
        a.set_ylabel("t index")
        a.figure.colorbar(im, ax=a)
    return axes


def nrmse_per_frame(ax: Axes, curves: Mapping[str, np.ndarray]) -> Axes:
    """nRMSE per frame for each method (error growth over the rollout), log scale."""
    for name, c in curves.items():
        ax.plot(np.arange(len(c)), c, label=name)
    ax.set_xlabel("frame")
    ax.set_ylabel("nRMSE")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("error growth over the rollout")
    return ax


def save_forecast(path: Path, true: Tensor, ensemble: Tensor, fno: Tensor | None = None) -> Path:
    """:func:`forecast_panels` in one row, saved to ``path``."""
    n = 3 if fno is None else 4
    fig = Figure(figsize=(4 * n, 3.4))
    forecast_panels(fig.subplots(1, n), true, ensemble, fno)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def save_nrmse_per_frame(path: Path, curves: Mapping[str, np.ndarray]) -> Path:
    """:func:`nrmse_per_frame` saved to ``path``."""
    fig = Figure(figsize=(6, 4))
    nrmse_per_frame(fig.subplots(), curves)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)
