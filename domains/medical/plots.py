"""Figures for the medical task: reconstructions side by side, with the posterior std map.

:func:`plot_reconstructions` draws into a grid of Axes and returns it;
:func:`save_reconstructions` makes that grid on a new :class:`matplotlib.figure.Figure`
(no pyplot, no backend switch) and writes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

__all__ = ["example_slices", "plot_reconstructions", "save_reconstructions"]


def example_slices(n: int, slices: int = 2) -> list[int]:
    """The slices shown: the first and the last of ``n`` (at most ``slices``)."""
    return sorted({0, n - 1})[:slices]


def plot_reconstructions(
    axes: np.ndarray,
    truth: Tensor,
    preds: Mapping[str, Tensor],
    std: Tensor,
    *,
    idx: Sequence[int],
) -> np.ndarray:
    """Rows: slices ``idx``; columns: truth, each method (with its PSNR in the title, data
    range = the truth's max), posterior std (with a colour bar).

    Parameters
    ----------
    axes
        ``(len(idx), 2 + len(preds))`` array of Axes.
    truth
        Ground-truth slices ``(Z, H, W)``.
    preds
        Reconstructions by method, ``(Z, H, W)`` each.
    std
        Posterior std ``(Z, [1,] H, W)``.
    idx
        The slices drawn.

    Returns
    -------
    numpy.ndarray
        ``axes``.
    """
    from diffsci.core.metrics import psnr

    vmax = float(truth.max())
    for r, i in enumerate(idx):
        axes[r, 0].imshow(truth[i], cmap="gray", vmin=0, vmax=vmax)
        axes[r, 0].set_title("ground truth", fontsize=8)
        for c, (name, p) in enumerate(preds.items(), start=1):
            axes[r, c].imshow(p[i], cmap="gray", vmin=0, vmax=vmax)
            val = float(psnr(p[i : i + 1], truth[i : i + 1], data_range=vmax))
            axes[r, c].set_title(f"{name}\n{val:.1f} dB", fontsize=8)
        im = axes[r, -1].imshow(std[i].squeeze(), cmap="magma")
        axes[r, -1].set_title("posterior std", fontsize=8)
        axes[r, -1].figure.colorbar(im, ax=axes[r, -1], fraction=0.046)
    for ax in axes.flat:
        ax.set_axis_off()
    return axes


def save_reconstructions(
    path: str | Path,
    truth: Tensor,
    preds: Mapping[str, Tensor],
    std: Tensor,
    *,
    title: str = "",
    slices: int = 2,
) -> str:
    """:func:`plot_reconstructions` of :func:`example_slices` on a new figure, saved as
    ``path`` (PNG, 110 dpi). Returns the path written."""
    from matplotlib.figure import Figure

    idx = example_slices(truth.shape[0], slices)
    cols = 2 + len(preds)
    fig = Figure(figsize=(2.2 * cols, 2.3 * len(idx)))
    axes = fig.subplots(len(idx), cols, squeeze=False)
    plot_reconstructions(axes, truth, preds, std, idx=idx)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return str(path)
