"""Spectral subspace, noise-level estimation and sparse-corruption handling of one cube.

The restoration model (:mod:`.models`) and the subspace baselines (:mod:`.baselines`) share
this front end. A noisy cube ``y (B, H, W)`` is modelled as ``y = E z + s + n``: ``E (B, k)``
an orthonormal spectral basis, ``z (k, H, W)`` the coefficient images, ``n`` Gaussian noise of
per-band std ``sigma_b`` and ``s`` sparse corruptions (column stripes, dead columns
(deadlines), impulse, dead pixels, dropped bands), as in low-rank + sparse HSI restoration
(Zhang et al., "Hyperspectral image restoration using low-rank matrix recovery", IEEE TGRS 2014;
He et al., LRTV, IEEE TGRS 2016).

- :func:`estimate_sigma`: per-band noise std from the median absolute finest-scale diagonal
  Haar wavelet coefficient, ``median(|HH|) / 0.6745`` (Donoho & Johnstone, Biometrika 1994);
  the diagonal detail cancels column-constant stripes, and masked pixels are left out.
- :func:`invalid_mask`: values that carry no information: NaN, bands marked bad, dead columns
  (a column that is exactly 0 in a band, QRNN3D's deadline) and dead pixels (0 in every band).
- :func:`fill_levels`: in floating-point data, a value that recurs exactly in many of a band's
  pixels is a fill, clip or dropout level, not a measurement (sensor saturation, zero
  dropouts, salt-and-pepper impulse, which QRNN3D's protocol sets to exactly 0 and 1): a
  measurement with continuous noise never repeats. A level whose pixels the other bands
  (a plain fit without any level) predict to be dark (bright) is clipping (a censored
  pixel, saturation) and stays in the fit with the outlier test; any other level
  (impulse, fill values) is masked. This matters most where impulse covers most of a band:
  its robust noise estimate is then inflated by the impulse itself, so the residual test
  below cannot find it, and the band's basis row is fitted to the impulse.
- :func:`robust_subspace`: an iteratively reweighted fit in the noise-whitened space: SVD of
  the whitened, filled cube gives the basis; per-pixel least squares on the valid bands gives
  ``z``; residuals beyond ``outlier`` standard deviations are masked (impulse), and columns
  whose residual median is significant in a band that is striped as a whole are masked
  (stripes; the subspace fills them from the other bands). The result's
  ``basis`` spans the signal subspace, expressed on its maximum-noise-fraction axes (unit,
  uncorrelated coefficient noise, decreasing SNR; the principal axes of the signal for i.i.d.
  noise), and ``coef_std`` is the per-pixel std of each
  coefficient from the weighted least squares (``diag (E^T W E)^{-1}``, ``W = mask / sigma^2``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import median_filter

__all__ = [
    "Subspace",
    "estimate_sigma",
    "fill_levels",
    "invalid_mask",
    "robust_subspace",
    "weighted_coefficients",
]

_MAD = 0.6745
#: std of pixels no band observes (dead pixels): effectively "unknown" to the data term
UNOBSERVED_STD = 1e3


def _fill(y: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``y`` with invalid entries filled: along the spectrum, linearly between the pixel's
    nearest valid bands (reflectance spectra are smooth; a band lost everywhere has no other
    source), and by the band's median where a pixel has no valid band at all."""
    out = np.array(y, dtype=np.float64)
    b = out.shape[0]
    flat, ok = out.reshape(b, -1), valid.reshape(b, -1)
    idx = np.arange(b)
    for p in np.flatnonzero(~ok.all(0) & ok.any(0)):
        v = ok[:, p]
        flat[~v, p] = np.interp(idx[~v], idx[v], flat[v, p])
    dead = ~ok.any(0)
    if dead.any():
        for i in range(b):
            med = float(np.median(flat[i][ok[i]])) if ok[i].any() else 0.0
            flat[i, dead] = med
    return flat.reshape(out.shape)


def estimate_sigma(y: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Per-band noise std: the smaller of two robust estimates.

    - spectral (HySime's noise estimation, Bioucas-Dias & Nascimento, IEEE TGRS 2008): the
      residual of each band regressed on all the other bands (the signal is nearly low-rank,
      so the residual is mostly that band's noise), its std taken as ``1.4826 MAD``;
    - spatial: ``median |HH| / 0.6745`` of the finest diagonal Haar detail (``HH = (a - b - c
      + d) / 2`` on 2x2 blocks; Donoho & Johnstone, Biometrika 1994), which cancels
      column-constant stripes; blocks with an invalid pixel are skipped.

    Each is biased upwards (signal texture in HH; other bands' noise in the regression), so
    the smaller is kept.
    """
    y = np.asarray(y, dtype=np.float64)
    valid = np.isfinite(y) if valid is None else valid
    spatial = _haar_sigma(y, valid)
    return np.fmin(spatial, _regression_sigma(y, valid))


def _haar_sigma(y: np.ndarray, valid: np.ndarray) -> np.ndarray:
    h, w = (y.shape[1] // 2) * 2, (y.shape[2] // 2) * 2
    a, b = y[:, 0:h:2, 0:w:2], y[:, 0:h:2, 1:w:2]
    c, d = y[:, 1:h:2, 0:w:2], y[:, 1:h:2, 1:w:2]
    hh = np.abs(a - b - c + d) / 2
    ok = (
        valid[:, 0:h:2, 0:w:2]
        & valid[:, 0:h:2, 1:w:2]
        & valid[:, 1:h:2, 0:w:2]
        & valid[:, 1:h:2, 1:w:2]
    )
    out = np.empty(y.shape[0])
    for i in range(y.shape[0]):
        vals = hh[i][ok[i]]
        out[i] = np.median(vals) / _MAD if vals.size else np.nan
    return out


def _regression_sigma(y: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``1.4826 MAD`` of each band's residual regressed (with intercept) on all the other
    good bands, over the pixels valid in every band. All regressions at once: with ``P`` the
    inverse Gram matrix of the centred bands, band ``i``'s residual is ``(P y)_i / P_ii``
    (partitioned inverse), O(B^2 N) instead of B separate least-squares fits."""
    b = y.shape[0]
    out = np.full(b, np.nan)
    if b < 3:
        return out
    ok = valid.all(0).reshape(-1)
    if ok.sum() < 4 * b:
        return out
    good = valid.reshape(b, -1)[:, ok].all(1)
    yf = y.reshape(b, -1)[:, ok][good]
    yc = yf - yf.mean(1, keepdims=True)
    p = np.linalg.pinv(yc @ yc.T)
    r = (p @ yc) / np.diag(p)[:, None]
    mad = np.median(np.abs(r - np.median(r, axis=1, keepdims=True)), axis=1)
    out[np.flatnonzero(good)] = 1.4826 * mad
    return out


def invalid_mask(y: np.ndarray, good_band: np.ndarray | None = None) -> np.ndarray:
    """Boolean ``(B, H, W)``: True where a value is missing or dead (see module docstring)."""
    y = np.asarray(y)
    bad = ~np.isfinite(y)
    zero = y == 0
    bad |= zero.all(axis=1, keepdims=True)  # dead columns (deadlines), per band
    bad |= zero.all(axis=0, keepdims=True)  # dead pixels, every band 0
    bad |= (zero | bad).all(axis=(1, 2), keepdims=True)  # dropped bands
    if good_band is not None:
        bad |= ~np.asarray(good_band, bool)[:, None, None]
    return bad


def fill_levels(
    y: np.ndarray, valid: np.ndarray, *, min_fraction: float = 0.005, ratio: float = 20.0
) -> np.ndarray:
    """Boolean ``(B, H, W)``: valid entries at a band's fill/clip levels (module docstring).

    A level is a value held exactly by at least ``min_fraction`` of the band's valid pixels
    (and at least 3), and by ``ratio`` times as many pixels as each of its neighbouring
    distinct values: an isolated spike of the band's histogram. Continuous (noisy float)
    data have no ties at all, and quantised data (digital numbers stored as float) have
    neighbouring levels of comparable counts, so both keep all their values.
    """
    y = np.asarray(y)
    out = np.zeros(y.shape, dtype=bool)
    if not np.issubdtype(y.dtype, np.floating):
        return out  # integer data: ties are the rule, and saturation is flagged upstream
    for b in range(y.shape[0]):
        vals = y[b][valid[b]]
        if vals.size < 3:
            continue
        uniq, counts = np.unique(vals, return_counts=True)
        padded = np.concatenate([[0], counts, [0]])
        neighbours = np.maximum(padded[:-2], padded[2:])
        spike = (counts >= max(3.0, min_fraction * vals.size)) & (counts >= ratio * neighbours)
        if spike.any():
            out[b] = valid[b] & np.isin(y[b], uniq[spike])
    return out


def _impulse_levels(
    y: np.ndarray, base: np.ndarray, k: int, good_band: np.ndarray | None, *, z: float = 4.0
) -> np.ndarray:
    """The entries at fill levels that are impulse or fill values, not clipping.

    A clip level (a censored dark or bright pixel, saturation) holds pixels that the other
    bands, through a plain fit made without any level, predict dark (or bright): the mean
    percentile rank of its ``n`` pixels among the band's predictions lies more than ``z``
    standard errors (``sqrt(1/12 n)``, a uniform rank's) below 1/2 (above, for a level above
    the band's median). Impulse hits pixels at random, so its mean rank is 1/2 within the
    error. Clip levels stay in the fit, with the outlier test: masking every censored value
    would bias the band towards its unclipped pixels.
    """
    spikes = fill_levels(y, base)
    if not spikes.any():
        return spikes
    fit = robust_subspace(np.where(spikes, np.nan, y), k, good_band=good_band, robust=False).cube()
    out = spikes.copy()
    for b in np.flatnonzero(spikes.any(axis=(1, 2))):
        pred = np.sort(fit[b][base[b]])
        mid = float(np.median(y[b][base[b]]))
        for level in np.unique(y[b][spikes[b]]):
            at = spikes[b] & (y[b] == level)
            rank = float(np.mean(np.searchsorted(pred, fit[b][at]))) / max(pred.size, 1)
            shift = z * np.sqrt(1.0 / (12.0 * at.sum()))
            if (level <= mid and rank < 0.5 - shift) or (level >= mid and rank > 0.5 + shift):
                out[b] &= ~at
    return out


@dataclass
class Subspace:
    """The result of :func:`robust_subspace` (see the module docstring)."""

    basis: np.ndarray  # (B, k), MNF axes of the subspace (coefficients with unit noise)
    coef: np.ndarray  # (k, H, W) least-squares coefficients
    coef_std: np.ndarray  # (k, H, W) their noise std
    sigma: np.ndarray  # (B,) noise std per band
    valid: np.ndarray  # (B, H, W) entries used
    stripes: np.ndarray  # (B, W) offsets of the striped columns (masked in the fit)

    def cube(self, coef: np.ndarray | None = None) -> np.ndarray:
        """``E z`` as a cube ``(B, H, W)``."""
        z = self.coef if coef is None else coef
        return np.einsum("bk,khw->bhw", self.basis, z)


def weighted_coefficients(
    y: np.ndarray, basis: np.ndarray, weight: np.ndarray, *, ridge: float = 1e-8
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel weighted least squares ``z = (E^T W E)^{-1} E^T W y`` and ``sqrt diag`` of
    ``(E^T W E)^{-1}``; ``weight (B, H, W)`` is ``1/sigma^2`` where valid, 0 elsewhere."""
    b, h, w = y.shape
    k = basis.shape[1]
    yw = np.nan_to_num(y).reshape(b, -1) * weight.reshape(b, -1)
    wf = weight.reshape(b, -1)
    gram = np.einsum("bk,bp,bl->pkl", basis, wf, basis)
    scale = np.maximum(np.trace(gram, axis1=1, axis2=2) / k, 1e-30)
    gram = gram + (ridge * scale + 1.0 / UNOBSERVED_STD**2)[:, None, None] * np.eye(k)
    rhs = np.einsum("bk,bp->pk", basis, yw)
    z = np.linalg.solve(gram, rhs[..., None])[..., 0]
    std = np.sqrt(np.clip(np.diagonal(np.linalg.inv(gram), axis1=1, axis2=2), 0, None))
    return z.T.reshape(k, h, w), std.T.reshape(k, h, w)


def _whitened_basis(yf: np.ndarray, sigma: np.ndarray, k: int) -> np.ndarray:
    b = yf.shape[0]
    u, _, _ = np.linalg.svd((yf / sigma[:, None, None]).reshape(b, -1), full_matrices=False)
    return u[:, :k]


def _stripes(res: np.ndarray, valid: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Column offsets of the striped columns ``(B, W)`` (0 elsewhere).

    Per band, the column medians ``m_c`` of the residual and their z-scores ``t_c = m_c /
    sd_c`` (``sd_c = 1.2533 sigma / sqrt(n_c)``, the std of a median of ``n_c`` Gaussian
    values), after subtracting from each median the median of its 5 neighbouring columns (a
    stripe is one column off its neighbours; the residual of a truncated subspace varies
    smoothly). A band counts as striped when ``mean_c t_c^2`` exceeds 1.5 (the high-pass
    raises the no-stripe value above 1) by four standard deviations of a chi-square mean,
    ``4 sqrt(2 / W)``; in a striped band the columns with ``|t_c| > 3`` are its stripes. The caller masks those columns (the subspace
    fills them from the other bands) rather than subtracting the noisy medians, whose std at
    high noise is as large as the stripes themselves.
    """
    r = np.where(valid, res, np.nan)
    n = np.maximum(valid.sum(1), 1)  # (B, W)
    with warnings.catch_warnings():  # all-masked columns: no stripe estimate (0)
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nan_to_num(np.nanmedian(r, axis=1))
    # high-pass across columns: the residual of a truncated subspace varies smoothly from
    # column to column, a stripe is one column off its neighbours
    med = med - median_filter(med, size=(1, 5), mode="reflect")
    t = med / (1.2533 * sigma[:, None] / np.sqrt(n))
    striped = (t**2).mean(1) > 1.5 + 4 * np.sqrt(2 / res.shape[2])
    return np.where(striped[:, None] & (np.abs(t) > 3), med, 0.0)


def _noise_fraction_axes(basis: np.ndarray, z: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The basis re-expressed on the maximum-noise-fraction axes of the subspace (MNF; Green
    et al., IEEE TGRS 1988): ``V`` solves ``M v = lambda C v`` with ``M = E[z z^T]`` (uncentred)
    and ``C = (E^T diag(w) E)^{-1}`` the coefficient noise covariance of a fully observed pixel
    (``w`` the median weight ``1/sigma_b^2`` of each band), normalised so ``V^T C V = I``. The
    coefficients ``V^T z`` then have unit, uncorrelated noise and are ordered by decreasing
    signal-to-noise ratio; the basis becomes ``E V^{-T}`` (the cube ``E z`` is unchanged). For
    i.i.d. noise these are the principal axes of the signal. Signs: each column's
    largest-magnitude spectral entry positive."""
    from scipy.linalg import eigh

    k = z.shape[0]
    zf = z.reshape(k, -1)
    m = zf @ zf.T / zf.shape[1]
    w = np.median(weight.reshape(weight.shape[0], -1), axis=1)
    gram = basis.T @ (w[:, None] * basis) + 1e-12 * np.eye(k)
    cov = np.linalg.inv(gram)
    vals, v = eigh(m, cov)
    v = v[:, np.argsort(vals)[::-1]]
    e = basis @ np.linalg.inv(v).T
    sign = np.sign(e[np.abs(e).argmax(0), np.arange(k)])
    sign[sign == 0] = 1
    return e * sign


def robust_subspace(
    y: np.ndarray,
    k: int,
    *,
    good_band: np.ndarray | None = None,
    sigma: np.ndarray | None = None,
    iters: int = 3,
    outlier: float = 4.0,
    robust: bool = True,
) -> Subspace:
    """Fit ``y = E z + stripes + n`` with impulse/dead entries masked (see module docstring).

    Parameters
    ----------
    y
        Noisy cube ``(B, H, W)``.
    k
        Subspace dimension.
    sigma
        Known per-band noise std (else estimated by :func:`estimate_sigma`).
    robust
        ``False``: one plain (Gaussian) fit, no outlier masking or destriping.
    """
    y = np.asarray(y)
    if not 1 <= k <= y.shape[0]:
        raise ValueError(f"subspace dimension k={k} must be in [1, bands={y.shape[0]}]")
    base = ~invalid_mask(y, good_band)
    if not base.any():
        raise ValueError("the cube has no valid value (all NaN, zero or bad bands)")
    if robust:
        base &= ~_impulse_levels(y, base, k, good_band)
    valid = base.copy()
    y = np.asarray(y, dtype=np.float64)
    est = estimate_sigma(y, valid) if sigma is None else np.asarray(sigma, np.float64)
    floor = max(float(np.nanmedian(est)) * 1e-2, 1e-6)
    est = np.where(
        np.isfinite(est), np.maximum(est, floor), np.nanmax(est) if np.isfinite(est).any() else 1.0
    )
    stripes = np.zeros((y.shape[0], y.shape[2]))
    fit = _fill(y, valid)
    for _ in range(iters if robust else 1):
        basis_w = _whitened_basis(np.where(valid, y, fit), est, k)  # EM-style imputation
        basis, _ = np.linalg.qr(est[:, None] * basis_w)
        z, std = weighted_coefficients(y, basis, valid / est[:, None, None] ** 2)
        fit = np.einsum("bk,khw->bhw", basis, z)
        if not robust:
            break
        res = y - fit
        inlier = np.abs(res) < outlier * est[:, None, None]
        stripes = _stripes(res, base & inlier, est)
        # striped columns and impulse outliers (judged after the stripe) leave the fit
        valid = (
            base
            & (stripes == 0)[:, None, :]
            & (np.abs(res - stripes[:, None, :]) < outlier * est[:, None, None])
        )
    weight = valid / est[:, None, None] ** 2
    z, std = weighted_coefficients(y, basis, weight)
    basis = _noise_fraction_axes(basis, z, weight)
    z, std = weighted_coefficients(y, basis, weight)
    return Subspace(basis, z, std, est, valid, stripes)
