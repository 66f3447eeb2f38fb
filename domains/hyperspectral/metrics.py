"""Hyperspectral restoration metrics, each labelled as defined in its source.

Cubes are ``(bands, rows, columns)`` arrays in reflectance units where the data range is 1.

- MPSNR: the mean over bands of the per-band PSNR ``10 log10(1 / MSE_b)`` (data range 1), as
  QRNN3D's ``cal_bwpsnr = Bandwise(partial(compare_psnr, data_range=1))`` (Zeqiang-Lai/QRNN3D
  ``utility/indexes.py``) and HSDT/SERT after it.
- MSSIM: the mean over bands of SSIM (Wang et al., IEEE TIP 2004) with a 7x7 uniform window,
  ``K1 = 0.01``, ``K2 = 0.03``, sample covariances, borders cropped, data range 1 (scikit-image's
  ``structural_similarity`` defaults). **MSSIM (legacy ICVL)**: the same with data range 2:
  QRNN3D's ``cal_bwssim = Bandwise(compare_ssim)`` passes no data range, and scikit-image
  versions of that time took the dtype range of float images, ``[-1, 1]``, i.e. 2; the ICVL
  tables of QRNN3D, SST, SERT and HSDT inherit that value, which is higher than the data-range-1
  SSIM of the same cube.
- SAM: the mean over pixels of the spectral angle ``arccos(<x, y> / (|x| |y|))`` (Kruse et al.
  1993), in radians (QRNN3D's ``cal_sam``, with its ``eps = 1e-8`` guards) and in degrees.
- ERGAS (Wald, "Quality of high resolution synthesised images", 2002):
  ``100 (h/l) sqrt(mean_b (RMSE_b / mu_b)^2)`` with ``mu_b`` the reference band's mean; for
  denoising and completion the resolution ratio ``h/l`` is 1 (stated with the value).
- per-band PSNR curve (``band_psnr``).
- stripe residual: on the striped bands, the mean absolute difference of the column means of
  the estimate and of the truth, ``mean_{b, c} |mean_r xhat(b, r, c) - mean_r x(b, r, c)|``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.ndimage import uniform_filter

__all__ = [
    "band_psnr",
    "mpsnr",
    "ssim_band",
    "mssim",
    "mssim_legacy",
    "sam",
    "ergas",
    "stripe_residual",
    "score",
    "LOWER_IS_BETTER",
    "EPS",
]

#: QRNN3D's ``eps`` in ``cal_sam``.
EPS = 1e-8
ERGAS_RATIO = 1.0
LOWER_IS_BETTER = ("SAM (rad)", "SAM (deg)", "ERGAS (h/l=1)", "stripe residual", "seconds")


def _pair(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 3:
        raise ValueError(
            f"cubes must be (bands, rows, columns) of one shape: {x.shape} vs {y.shape}"
        )
    return x, y


def band_psnr(x: Any, ref: Any, data_range: float = 1.0) -> np.ndarray:
    """PSNR of every band (dB), ``10 log10(data_range^2 / MSE_b)``."""
    x, ref = _pair(x, ref)
    mse = ((x - ref) ** 2).mean(axis=(1, 2))
    return 10 * np.log10(data_range**2 / np.maximum(mse, 1e-20))


def mpsnr(x: Any, ref: Any) -> float:
    """MPSNR: per-band PSNR with data range 1, averaged over bands (QRNN3D ``cal_bwpsnr``)."""
    return float(band_psnr(x, ref, 1.0).mean())


def ssim_band(x: np.ndarray, ref: np.ndarray, *, data_range: float = 1.0, win: int = 7) -> float:
    """SSIM of one band: ``win x win`` uniform window, K1 0.01, K2 0.03, sample covariance,
    ``(win-1)/2`` border cropped (scikit-image ``structural_similarity`` defaults)."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    npix = win * win
    cov_norm = npix / (npix - 1)
    ux, uy = uniform_filter(x, win), uniform_filter(ref, win)
    uxx, uyy, uxy = (
        uniform_filter(x * x, win),
        uniform_filter(ref * ref, win),
        uniform_filter(x * ref, win),
    )
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean())


def mssim(x: Any, ref: Any, *, data_range: float = 1.0) -> float:
    """MSSIM: per-band SSIM (7x7 uniform window, data range 1 by default), averaged."""
    x, ref = _pair(x, ref)
    return float(
        np.mean([ssim_band(a, b, data_range=data_range) for a, b in zip(x, ref, strict=True)])
    )


def mssim_legacy(x: Any, ref: Any) -> float:
    """The MSSIM the ICVL papers report: as :func:`mssim` with data range 2 (see module)."""
    return mssim(x, ref, data_range=2.0)


def sam(x: Any, ref: Any, *, degrees: bool = False) -> float:
    """Mean spectral angle over pixels (QRNN3D ``cal_sam``: ``eps`` added to the dot product and
    each norm); radians, or degrees with ``degrees=True``."""
    x, ref = _pair(x, ref)
    num = (x * ref).sum(0) + EPS
    den = (np.sqrt((x**2).sum(0)) + EPS) * (np.sqrt((ref**2).sum(0)) + EPS)
    ang = np.arccos(np.clip(num / den, -1.0, 1.0)).mean()
    return float(np.degrees(ang) if degrees else ang)


def ergas(x: Any, ref: Any, *, ratio: float = ERGAS_RATIO) -> float:
    """ERGAS ``100 ratio sqrt(mean_b (RMSE_b / mean(ref_b))^2)`` (Wald 2002); ``ratio = h/l``."""
    x, ref = _pair(x, ref)
    rmse = np.sqrt(((x - ref) ** 2).mean(axis=(1, 2)))
    mu = np.maximum(np.abs(ref.mean(axis=(1, 2))), 1e-12)
    return float(100 * ratio * np.sqrt(np.mean((rmse / mu) ** 2)))


def stripe_residual(x: Any, ref: Any, bands: Sequence[int]) -> float:
    """Mean absolute column-mean error over the striped ``bands`` (NaN if there are none)."""
    x, ref = _pair(x, ref)
    bands = np.asarray(bands, dtype=int)
    if bands.size == 0:
        return float("nan")
    return float(np.abs(x[bands].mean(1) - ref[bands].mean(1)).mean())


def score(x: Any, ref: Any, *, stripe_bands: Sequence[int] = ()) -> dict[str, float]:
    """Every metric of one restored cube against its truth (the keys of the result table)."""
    out = {
        "MPSNR": mpsnr(x, ref),
        "MSSIM": mssim(x, ref),
        "MSSIM (legacy ICVL, data range 2)": mssim_legacy(x, ref),
        "SAM (rad)": sam(x, ref),
        "SAM (deg)": sam(x, ref, degrees=True),
        "ERGAS (h/l=1)": ergas(x, ref),
    }
    if len(stripe_bands):
        out["stripe residual"] = stripe_residual(x, ref, stripe_bands)
    return out


def mean_scores(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The mean of each metric over cubes (metrics absent from a row are skipped there)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return {k: float(np.nanmean([r[k] for r in rows if k in r])) for k in keys}
