"""Figures: radially averaged PSD, rank histogram, example fields. Each takes and returns
matplotlib Axes; :func:`save` writes a figure."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

__all__ = ["plot_psd", "plot_rank_histogram", "plot_fields", "save"]


def plot_psd(ax: Axes, curves: Mapping[str, tuple[np.ndarray, np.ndarray]], *,
             coarse_k: float | None = None) -> Axes:  # fmt: skip
    """Log-log radially averaged PSD per method (``{name: (k, psd)}``); ``truth`` in black,
    the coarse grid's Nyquist wavenumber dashed."""
    for name, (k, p) in curves.items():
        style = {"color": "k", "lw": 2} if name == "truth" else {"lw": 1.2}
        ax.loglog(k, p, label=name, **style)
    if coarse_k:
        ax.axvline(coarse_k, ls="--", color="grey", lw=0.8, label="coarse Nyquist")
    ax.set_xlabel("wavenumber (cycles per pixel)")
    ax.set_ylabel("PSD (mm$^2$ h$^{-2}$)")
    ax.legend(fontsize=7)
    return ax


def plot_rank_histogram(ax: Axes, counts: np.ndarray, *, title: str = "rank histogram") -> Axes:
    """Relative frequency of the truth's rank among the members; flat line = calibrated."""
    counts = np.asarray(counts, dtype=float)
    freq = counts / counts.sum()
    ax.bar(np.arange(len(freq)), freq, color="tab:blue")
    ax.axhline(1 / len(freq), color="k", ls="--", lw=0.8)
    ax.set_xlabel("rank of the truth among members")
    ax.set_ylabel("frequency")
    ax.set_title(title, fontsize=9)
    return ax


def plot_fields(axes, fields: Mapping[str, np.ndarray], *, vmax: float | None = None):
    """One panel per field (``{title: (H, W)}``, mm h-1) on a shared log colour scale."""
    axes = np.atleast_1d(axes).ravel()
    vmax = vmax or max(float(np.max(f)) for f in fields.values())
    norm = LogNorm(vmin=0.05, vmax=max(vmax, 0.1))
    im = None
    for ax, (name, f) in zip(axes, fields.items(), strict=False):
        im = ax.imshow(np.where(f > 0.05, f, np.nan), norm=norm, cmap="viridis",
                       interpolation="nearest")  # fmt: skip
        ax.set_facecolor("0.92")
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    if im is not None:
        axes[0].figure.colorbar(im, ax=list(axes), fraction=0.02, label="mm h$^{-1}$")
    return axes


def save(fig, path: str | Path) -> str:
    """Save and close ``fig``; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return str(path)
