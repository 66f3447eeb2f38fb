"""Figures of the hyperspectral task: Axes in, Axes out (no ``matplotlib.use`` at import)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["band_psnr_curves", "band_panels", "false_colour"]


def band_psnr_curves(
    ax, wavelength: np.ndarray, curves: Mapping[str, np.ndarray], *, title: str = ""
):
    """Per-band PSNR (dB) against wavelength (nm), one line per method."""
    for name, c in curves.items():
        ax.plot(wavelength, c, label=name, lw=1.2)
    ax.set_xlabel("wavelength (nm)")
    ax.set_ylabel("PSNR (dB, data range 1)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6)
    return ax


def false_colour(
    cube: np.ndarray, wavelength: np.ndarray, rgb_nm=(640.0, 550.0, 460.0)
) -> np.ndarray:
    """An ``(H, W, 3)`` image of the bands nearest ``rgb_nm``, clipped to [0, 1]."""
    idx = [int(np.argmin(np.abs(np.asarray(wavelength) - w))) for w in rgb_nm]
    img = np.stack([cube[i] for i in idx], -1)
    return np.clip(img / max(float(np.percentile(img, 99.5)), 1e-6), 0, 1)


def band_panels(axes, panels: Mapping[str, np.ndarray], wavelength: np.ndarray):
    """False-colour panels of several cubes (truth, noisy, estimates) on ``axes``."""
    for ax, (name, cube) in zip(axes, panels.items(), strict=False):
        ax.imshow(false_colour(cube, wavelength))
        ax.set_title(name, fontsize=7)
        ax.axis("off")
    return axes
