"""Figures: radially averaged PSD, rank histogram, example fields.

The ``plot_*`` functions take and return matplotlib Axes; :func:`write_figures` lays out and
saves the evaluate stage's three figures. Figures are made without ``pyplot`` (no backend is
selected or needed).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

__all__ = [
    "plot_psd",
    "plot_rank_histogram",
    "plot_fields",
    "example_fields",
    "new_figure",
    "save",
    "write_figures",
]


def plot_psd(
    ax: Axes,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    coarse_k: float | None = None,
    title: str | None = None,
) -> Axes:
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
    if title:
        ax.set_title(title, fontsize=9)
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
        im = ax.imshow(
            np.where(f > 0.05, f, np.nan), norm=norm, cmap="viridis", interpolation="nearest"
        )
        ax.set_facecolor("0.92")
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    if im is not None:
        axes[0].figure.colorbar(im, ax=list(axes), fraction=0.02, label="mm h$^{-1}$")
    return axes


def example_fields(
    truth: np.ndarray,
    coarse_input: np.ndarray,
    ens: np.ndarray,
    baselines: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """The panels of the example figure, for the case with the wettest pixel: the coarse
    input, the truth, two members, the ensemble mean and the regression and bicubic
    baselines (those present)."""
    i = int(np.argmax(truth.reshape(len(truth), -1).max(1)))
    fields = {
        "coarse input": coarse_input[i],
        "truth": truth[i],
        "member 1": ens[0, i],
        "member 2": ens[min(1, len(ens) - 1), i],
        "ensemble mean": ens[:, i].mean(0),
    }
    for var in ("regression", "bicubic"):
        if var in baselines:
            fields[var] = baselines[var][i]
    return fields


def new_figure(ncols: int = 1, *, figsize: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    """A figure with one row of ``ncols`` Axes (a single Axes when ``ncols == 1``)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(1, ncols)


def save(fig: Figure, path: str | Path) -> str:
    """Save ``fig`` (PNG by the suffix); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return str(path)


def write_figures(
    fig_dir: str | Path,
    *,
    psd: Mapping[str, tuple[np.ndarray, np.ndarray]],
    rank_histogram: np.ndarray,
    fields: Mapping[str, np.ndarray],
    factor: int,
) -> list[str]:
    """``psd.png``, ``rank_histogram.png`` and ``example_fields.png`` in ``fig_dir``; the
    fields share the colour scale of their ``truth`` panel. Returns the paths."""
    fig_dir = Path(fig_dir)
    fig, ax = new_figure(figsize=(5, 3.6))
    plot_psd(ax, psd, coarse_k=1 / (2 * factor), title="radially averaged PSD (held-out cases)")
    paths = [save(fig, fig_dir / "psd.png")]
    fig, ax = new_figure(figsize=(5, 3.2))
    plot_rank_histogram(ax, rank_histogram)
    paths.append(save(fig, fig_dir / "rank_histogram.png"))
    fig, axes = new_figure(len(fields), figsize=(2.1 * len(fields), 2.4))
    plot_fields(axes, fields, vmax=float(np.max(fields["truth"])))
    paths.append(save(fig, fig_dir / "example_fields.png"))
    return paths
