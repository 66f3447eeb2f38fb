"""Ultrasound image-quality metrics, each labelled with the convention it follows.

- :func:`gcnr`: generalized contrast-to-noise ratio (Rodriguez-Molares et al., "The
  Generalized Contrast-to-Noise Ratio: A Formal Definition for Lesion Detectability", IEEE
  TUFFC 2020), computed as zea (``zea.metrics.gcnr``) and the DehazingEcho2025 challenge do:
  one 256-bin histogram over the union of both ROIs' values, each ROI's normalised
  histogram, ``1 - sum(min(f, g))``.
- CNR in the three conventions in use, never mixed up:

  - :func:`cnr_db_picmus`: PICMUS / zea, ``20 log10(|mu1 - mu2| / sqrt((s1^2 + s2^2) / 2))``
    in dB (Liebgott et al., IUS 2016);
  - :func:`cnr_challenge`: DehazingEcho2025, linear and signed,
    ``(mu1 - mu2) / sqrt(s1^2 + s2^2)``;
  - :func:`cnr_textbook`: ``|mu_s - mu_b| / s_b`` (background std only).
- :func:`contrast_ratio_db`: ``20 log10(mu1 / mu2)`` of the envelope means.
- :func:`ks_statistic`: two-sample Kolmogorov-Smirnov statistic (scipy ``ks_2samp``): on
  synthetic data dehazed vs clean per ROI; the challenge's hazy vs dehazed per ROI (low in
  tissue, high in the haze/cavity region) via :func:`ks_challenge`.
- :func:`bmode_psnr`: PSNR of B-mode images in dB with the dynamic range stated (both images
  clipped to ``[-DR, 0]`` dB, data range ``DR``).
- :func:`fwhm`: -6 dB full width at half maximum of a point target (axial and lateral), by
  linear interpolation of the two crossings of the profile through the peak.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

__all__ = [
    "gcnr",
    "cnr_db_picmus",
    "cnr_challenge",
    "cnr_textbook",
    "contrast_ratio_db",
    "ks_statistic",
    "ks_challenge",
    "bmode_psnr",
    "fwhm",
    "point_fwhm",
    "GCNR_BINS",
]

#: Histogram bins of gCNR (zea and DehazingEcho2025).
GCNR_BINS = 256


def _flat(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError("empty region of interest")
    return a


def gcnr(inside, outside, bins: int = GCNR_BINS) -> float:
    """gCNR ``1 - sum_k min(f_k, g_k)`` with ``f, g`` the two ROIs' normalised histograms on
    one shared set of ``bins`` bins spanning both (zea ``metrics.gcnr``)."""
    x, y = _flat(inside), _flat(outside)
    edges = np.histogram_bin_edges(np.concatenate([x, y]), bins=bins)
    f, _ = np.histogram(x, bins=edges)
    g, _ = np.histogram(y, bins=edges)
    f = f / f.sum()
    g = g / g.sum()
    return float(1.0 - np.minimum(f, g).sum())


def _stats(a, b) -> tuple[float, float, float, float]:
    x, y = _flat(a), _flat(b)
    return float(x.mean()), float(y.mean()), float(x.var()), float(y.var())


def cnr_db_picmus(roi1, roi2) -> float:
    """PICMUS/zea CNR in dB: ``20 log10(|mu1 - mu2| / sqrt((s1^2 + s2^2) / 2))``."""
    m1, m2, v1, v2 = _stats(roi1, roi2)
    return float(20 * math.log10(abs(m1 - m2) / math.sqrt((v1 + v2) / 2)))


def cnr_challenge(roi1, roi2) -> float:
    """DehazingEcho2025 CNR (linear, signed): ``(mu1 - mu2) / sqrt(s1^2 + s2^2)``."""
    m1, m2, v1, v2 = _stats(roi1, roi2)
    return float((m1 - m2) / math.sqrt(v1 + v2))


def cnr_textbook(signal, background) -> float:
    """Textbook CNR ``|mu_s - mu_b| / s_b`` (background standard deviation only)."""
    m1, m2, _, v2 = _stats(signal, background)
    return float(abs(m1 - m2) / math.sqrt(v2))


def contrast_ratio_db(roi1, roi2) -> float:
    """Contrast ratio ``20 log10(mu1 / mu2)`` (dB) of envelope means."""
    m1, m2, _, _ = _stats(roi1, roi2)
    return float(20 * math.log10(m1 / m2))


def ks_statistic(a, b) -> float:
    """Two-sample KS statistic ``sup |F_a - F_b|`` (scipy ``ks_2samp``)."""
    return float(stats.ks_2samp(_flat(a), _flat(b)).statistic)


def ks_challenge(hazy_roi, dehazed_roi) -> dict[str, float]:
    """The challenge's KS of hazy vs dehazed in one ROI: statistic and the signed direction
    (``+1`` when, at the largest gap, the dehazed CDF lies above the hazy one: the dehazed
    values are darker, as dehazing should make the haze region; scipy's ``statistic_sign``
    of ``ks_2samp(hazy, dehazed)`` is the opposite sign)."""
    r = stats.ks_2samp(_flat(hazy_roi), _flat(dehazed_roi))
    return {"statistic": float(r.statistic), "direction": -float(r.statistic_sign)}


def bmode_psnr(test_db, ref_db, dynamic_range: float = 60.0) -> float:
    """PSNR of two B-mode images in dB, both clipped to ``[-dynamic_range, 0]``:
    ``10 log10(DR^2 / MSE)`` (data range = the stated dynamic range)."""
    a = np.clip(np.asarray(test_db, np.float64), -dynamic_range, 0)
    b = np.clip(np.asarray(ref_db, np.float64), -dynamic_range, 0)
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else float(10 * math.log10(dynamic_range**2 / mse))


def fwhm(profile, spacing: float, level_db: float = -6.0) -> float:
    """Width (in units of ``spacing``) where the envelope ``profile`` crosses ``level_db`` below
    its peak, each crossing linearly interpolated between the samples around it.

    Raises
    ------
    ValueError
        If the profile does not fall below the level on both sides of its peak.
    """
    p = _flat(profile)
    k = int(p.argmax())
    thr = p[k] * 10 ** (level_db / 20)
    left = np.nonzero(p[:k] < thr)[0]
    right = np.nonzero(p[k:] < thr)[0]
    if left.size == 0 or right.size == 0:
        raise ValueError("profile does not drop below the level on both sides of the peak")
    i = left[-1]  # p[i] < thr <= p[i + 1]
    xl = i + (thr - p[i]) / (p[i + 1] - p[i])
    j = k + right[0]  # p[j - 1] >= thr > p[j]
    xr = j - 1 + (p[j - 1] - thr) / (p[j - 1] - p[j])
    return float((xr - xl) * spacing)


def point_fwhm(
    env, dz: float, dx: float, near: tuple[int, int] | None = None, radius: int = 6
) -> dict[str, float]:
    """Axial and lateral -6 dB FWHM (metres) of the point target at the envelope maximum
    (within ``radius`` pixels of ``near`` if given), through the peak's row and column."""
    e = np.asarray(env, np.float64)
    if near is not None:
        r0, c0 = max(near[0] - radius, 0), max(near[1] - radius, 0)
        sub = e[r0 : near[0] + radius + 1, c0 : near[1] + radius + 1]
        i, j = np.unravel_index(sub.argmax(), sub.shape)
        i, j = i + r0, j + c0
    else:
        i, j = np.unravel_index(e.argmax(), e.shape)
    return {"axial": fwhm(e[:, j], dz), "lateral": fwhm(e[i, :], dx)}


# ----------------------------------------------------------------------------- ROIs
def roi_masks(
    cysts: list[dict], points: list[list[float]], x: np.ndarray, z: np.ndarray
) -> dict[str, np.ndarray]:
    """Pixel masks of one frame's regions (all ``(nz, nx)`` bool).

    ``anechoic_in`` / ``hyperechoic_in``: inside 0.8 r of each such cyst; ``*_out``: the ring
    1.2 r .. 1.8 r around it (outside every cyst's 1.2 r); ``tissue``: farther than 1.2 r from
    every cyst and 1 mm from every point target (the speckle background).
    """
    zz, xx = np.meshgrid(z, x, indexing="ij")
    far = np.ones(zz.shape, bool)
    for c in cysts:
        far &= np.hypot(xx - c["x"], zz - c["z"]) > 1.2 * c["radius"]
    tissue = far.copy()
    for px, pz in points:
        tissue &= np.hypot(xx - px, zz - pz) > 1e-3
    out: dict[str, np.ndarray] = {"tissue": tissue}
    for kind in ("anechoic", "hyperechoic"):
        inside = np.zeros(zz.shape, bool)
        ring = np.zeros(zz.shape, bool)
        for c in (c for c in cysts if c["kind"] == kind):
            d = np.hypot(xx - c["x"], zz - c["z"])
            inside |= d < 0.8 * c["radius"]
            ring |= (d > 1.2 * c["radius"]) & (d < 1.8 * c["radius"])
        if inside.any() and (ring & far).any():
            out[f"{kind}_in"], out[f"{kind}_out"] = inside, ring & far
    return out


def frame_metrics(
    env: np.ndarray,
    clean_env: np.ndarray,
    hazy_env: np.ndarray,
    masks: dict[str, np.ndarray],
    dynamic_range: float,
) -> dict[str, float]:
    """All labelled metrics of one frame's envelope ``env`` (``clean_env``: the truth;
    ``hazy_env``: the input). Contrast metrics are on the B-mode image (dB, own maximum,
    clipped to the dynamic range) except the contrast ratio (envelope means)."""
    db = _bmode(env, dynamic_range)
    out: dict[str, float] = {}
    if "anechoic_in" in masks:
        a, b = db[masks["anechoic_in"]], db[masks["anechoic_out"]]
        out["gCNR anechoic"] = gcnr(a, b)
        out["CNR PICMUS/zea (dB)"] = cnr_db_picmus(a, b)
        out["CNR DehazingEcho2025 (linear, signed)"] = cnr_challenge(a, b)
        out["CNR |mu_s-mu_b|/sigma_b"] = cnr_textbook(a, b)
        kc = ks_challenge(_bmode(hazy_env, dynamic_range)[masks["anechoic_in"]], a)
        out["KS hazy vs dehazed (anechoic cyst)"] = kc["statistic"]
        out["KS direction (anechoic cyst; +1 = dehazed darker)"] = kc["direction"]
        out["contrast ratio (dB, envelope)"] = contrast_ratio_db(
            env[masks["anechoic_in"]], env[masks["anechoic_out"]]
        )
    if "hyperechoic_in" in masks:
        out["gCNR hyperechoic"] = gcnr(db[masks["hyperechoic_in"]], db[masks["hyperechoic_out"]])
    t = masks["tissue"]
    out["KS vs clean (tissue)"] = ks_statistic(db[t], _bmode(clean_env, dynamic_range)[t])
    ks = ks_challenge(_bmode(hazy_env, dynamic_range)[t], db[t])
    out["KS hazy vs dehazed (tissue)"] = ks["statistic"]
    out[f"B-mode PSNR (dB, DR {dynamic_range:g} dB)"] = bmode_psnr(
        db, _bmode(clean_env, dynamic_range), dynamic_range
    )
    return out


def _bmode(env: np.ndarray, dynamic_range: float) -> np.ndarray:
    e = np.asarray(env, np.float64)
    return np.clip(20 * np.log10(np.maximum(e, 1e-30) / e.max()), -dynamic_range, 0)
