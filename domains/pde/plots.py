"""Figures for PDE forecasts: space-time panels and error growth. Functions take data and a
path (or Axes) and return what they drew."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from torch import Tensor  # noqa: E402

__all__ = ["plot_forecast", "plot_nrmse_per_frame"]


def plot_forecast(path: Path, true: Tensor, ensemble: Tensor, fno: Tensor | None = None) -> Path:
    """Truth, ensemble mean, ensemble std (and FNO) of one trajectory as (t, x) images."""
    panels = [("truth", true), ("diffusion ens. mean", ensemble.mean(0)),
              ("diffusion ens. std", ensemble.std(0))]  # fmt: skip
    if fno is not None:
        panels.append(("FNO", fno[0]))
    fig, ax = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    vmin, vmax = float(true.min()), float(true.max())
    for a, (title, img) in zip(ax, panels, strict=True):
        std = "std" in title
        im = a.imshow(np.asarray(img), aspect="auto", origin="lower", cmap="magma" if std else "RdBu_r",
                      vmin=None if std else vmin, vmax=None if std else vmax)  # fmt: skip
        a.set_title(title)
        a.set_xlabel("x index")
        a.set_ylabel("t index")
        fig.colorbar(im, ax=a)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_nrmse_per_frame(path: Path, curves: Mapping[str, np.ndarray]) -> Path:
    """nRMSE per frame for each method (error growth over the rollout)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, c in curves.items():
        ax.plot(np.arange(len(c)), c, label=name)
    ax.set_xlabel("frame")
    ax.set_ylabel("nRMSE")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("error growth over the rollout")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
