"""Figures for the medical task: reconstructions side by side, with the posterior std map."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch import Tensor  # noqa: E402

__all__ = ["plot_reconstructions"]


def plot_reconstructions(path: str | Path, truth: Tensor, preds: dict[str, Tensor], std: Tensor,
                         *, title: str = "", slices: int = 2) -> str:  # fmt: skip
    """Rows: ``slices`` held-out slices (first and last); columns: truth, each method (with its
    PSNR in the title), posterior std. Returns the path written."""
    from diffsci.core.metrics import psnr

    idx = sorted({0, truth.shape[0] - 1})[:slices]
    cols = 2 + len(preds)
    fig, axes = plt.subplots(len(idx), cols, figsize=(2.2 * cols, 2.3 * len(idx)), squeeze=False)
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
        fig.colorbar(im, ax=axes[r, -1], fraction=0.046)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
