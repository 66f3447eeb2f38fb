"""Precipitation downscaling metrics, each as the field defines it.

Arrays are numpy or torch; fields are ``(N, H, W)`` (cases) and ensembles ``(M, N, H, W)``.

- CRPS: the ensemble CRPS ``mean|x_i - y| - 1/(2 M^2) sum |x_i - x_j|`` (not the fair
  variant), per pixel, averaged (:func:`diffsci.core.metrics.crps_ensemble`).
- MAE / RMSE / bias of the ensemble mean (bias = mean(pred - obs)).
- CSI at a threshold: ``hits / (hits + misses + false alarms)`` with events ``>= threshold``
  over all pixels; for an ensemble, the mean over members.
- FSS (Roberts & Lean 2008): fractions of pixels ``>= threshold`` in ``n x n`` neighbourhoods
  of each 2-D field (zero outside the domain); over several cases the numerator
  ``sum (Pf - Po)^2`` and the reference ``sum Pf^2 + sum Po^2`` are each summed over all cases
  before the ratio (pysteps' ``fss_accum``/``fss_compute`` aggregate), not per-case FSS
  averaged; for an ensemble, the mean over members of that aggregate.
- pixel EMD: 1-D Wasserstein-1 distance between the pooled pixel values of prediction (all
  members) and truth (``scipy.stats.wasserstein_distance``).
- 99.9th-percentile error: ``|q99.9(pred) - q99.9(obs)|`` over all pooled pixels (members
  pooled), numpy's linear quantile.
- radially averaged PSD: ``|FFT|^2 / (H W)`` averaged over annuli of ``|k|`` in cycles per
  pixel (both axes' frequencies, so non-square grids bin correctly), annulus width
  ``1 / min(H, W)``, mean over cases/members; the high-wavenumber error is the max
  ``|log10 PSD_pred - log10 PSD_obs|`` (dex) over ``k > 1 / (2 factor)`` cycles per pixel
  (scales finer than the coarse grid resolves; for a square ``n x n`` grid this is
  ``k > n / (2 factor)`` cycles per domain).
- adjusted spread-skill ``sqrt((M+1)/M) * spread / RMSE`` (the core's): ``spread`` is the
  square root of the mean unbiased ensemble variance, the form for which a calibrated ensemble
  scores 1 (Fortin et al. 2014). The literal "mean ensemble std" form (WassDiff-style wording)
  is reported beside it, labelled "mean-std form": by Jensen it is lower wherever the spread
  varies from pixel to pixel, so it reads a calibrated ensemble as under-dispersed.
- rank histogram from the core.
- case bootstrap (:func:`case_bootstrap`): the pixel EMD and 99.9th-percentile error of two
  ensembles scored on the same cases, recomputed on resamples of whole cases (the same
  resampled cases for both, so their difference is paired); each resample pools the pixels of
  the drawn cases (a case drawn twice counts twice) exactly as :func:`pixel_emd` and
  :func:`percentile_error` pool them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from scipy.stats import wasserstein_distance

from diffsci.core import metrics as cm

from .operators import block_mean

__all__ = [
    "crps",
    "mae",
    "rmse",
    "bias",
    "csi",
    "fss",
    "pixel_emd",
    "percentile_error",
    "radial_psd",
    "psd_dex_error",
    "spread_skill",
    "rank_histogram",
    "evaluate_fields",
    "METHODS",
    "MASS_ERROR",
    "LOWER_IS_BETTER",
    "ensemble_label",
    "table_title",
    "mass_error",
    "score_table",
    "psd_curves",
    "summary",
    "case_bootstrap",
]

#: Prediction variables of the baselines -> their names in the metric table, in table order.
METHODS = {"regression": "regression UNet", "bicubic": "bicubic", "bilinear": "bilinear"}
MASS_ERROR = "mass error (max |block mean - coarse|)"
#: The table's metrics for which lower is better.
LOWER_IS_BETTER = [
    "CRPS",
    "MAE",
    "RMSE",
    "EMD",
    "p99.9 error",
    "PSD high-k max |dex|",
    "seconds per case",
    MASS_ERROR,
]


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def crps(ens, obs) -> float:
    """Mean ensemble CRPS (members on axis 0)."""
    return float(
        cm.crps_ensemble(
            torch.as_tensor(_np(ens), dtype=torch.float64),
            torch.as_tensor(_np(obs), dtype=torch.float64),
        )
    )


def mae(pred, obs) -> float:
    return float(np.abs(_np(pred).astype(np.float64) - _np(obs)).mean())


def rmse(pred, obs) -> float:
    return float(np.sqrt(((_np(pred).astype(np.float64) - _np(obs)) ** 2).mean()))


def bias(pred, obs) -> float:
    return float((_np(pred).astype(np.float64) - _np(obs)).mean())


def _csi_one(pred: np.ndarray, obs: np.ndarray, thr: float) -> float:
    f, o = pred >= thr, obs >= thr
    hits = np.sum(f & o)
    denom = hits + np.sum(~f & o) + np.sum(f & ~o)
    return float(hits / denom) if denom else float("nan")


def csi(pred, obs, threshold: float, *, ensemble: bool = False) -> float:
    """Critical success index; with ``ensemble=True`` the mean over members (axis 0)."""
    p, o = _np(pred), _np(obs)
    if ensemble:
        return float(np.nanmean([_csi_one(m, o, threshold) for m in p]))
    return _csi_one(p, o, threshold)


def _fractions(binary: np.ndarray, n: int) -> np.ndarray:
    # uniform_filter over the two spatial (last) axes only, zero padding outside the domain
    size = (1,) * (binary.ndim - 2) + (n, n)
    return ndimage.uniform_filter(binary.astype(np.float64), size=size, mode="constant")


def _fss_one(pred: np.ndarray, obs: np.ndarray, thr: float, n: int) -> float:
    pf, po = _fractions(pred >= thr, n), _fractions(obs >= thr, n)
    ref = np.sum(pf**2) + np.sum(po**2)
    return float(1 - np.sum((pf - po) ** 2) / ref) if ref > 0 else float("nan")


def fss(pred, obs, threshold: float, scale: int, *, ensemble: bool = False) -> float:
    """Fractions skill score at ``threshold`` and window ``scale``, aggregated over cases.

    ``obs`` is one field ``(H, W)`` or cases ``(N, H, W)``; ``pred`` has the same shape, with
    a leading member axis when ``ensemble``. Over cases, the numerator and the reference are
    summed before the ratio (pysteps' ``fss_accum`` + ``fss_compute``), so this is not the
    mean of per-case FSS; an ensemble scores the mean of its members' aggregate FSS.
    """
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    p, o = _np(pred), _np(obs)
    if o.ndim not in (2, 3) or p.shape != (p.shape[:1] if ensemble else ()) + o.shape:
        raise ValueError(
            f"fss: pred {p.shape} and obs {o.shape} do not match "
            f"({'(M, ' if ensemble else '('}[N,] H, W) expected)"
        )
    if ensemble:
        return float(np.nanmean([_fss_one(m, o, threshold, scale) for m in p]))
    return _fss_one(p, o, threshold, scale)


def pixel_emd(pred, obs) -> float:
    """Wasserstein-1 distance between the pooled pixel values of ``pred`` and ``obs``."""
    return float(wasserstein_distance(_np(pred).ravel(), _np(obs).ravel()))


def percentile_error(pred, obs, q: float = 99.9) -> float:
    """``|percentile_q(pred) - percentile_q(obs)|`` over pooled pixels."""
    return float(abs(np.percentile(_np(pred), q) - np.percentile(_np(obs), q)))


def radial_psd(fields) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectral density of ``(..., H, W)`` fields (mean over leading
    axes).

    Every Fourier mode sits at ``|k| = sqrt(ky^2 + kx^2)`` with each axis' frequency in cycles
    per pixel (``numpy.fft.fftfreq``), so a non-square grid's two axes share one physical
    wavenumber scale. Annuli have the width ``1 / min(H, W)`` (the coarser axis' frequency
    step, so every annulus holds modes of both axes): ``|k|`` is binned to the nearest
    ``j / min(H, W)``, ``j = 1 .. min(H, W) // 2``.

    Returns
    -------
    (k, psd)
        ``k`` in cycles per pixel (``j / min(H, W)``, up to the Nyquist 0.5) and the mean of
        ``|FFT|^2 / (H W)`` over each annulus.
    """
    f = _np(fields).astype(np.float64)
    h, w = f.shape[-2:]
    f = f.reshape(-1, h, w)
    power = (np.abs(np.fft.fft2(f)) ** 2 / (h * w)).mean(axis=0)
    n = min(h, w)
    kabs = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :])
    kr = np.rint(kabs * n).astype(int)
    kmax = n // 2
    sums = np.bincount(kr.ravel(), weights=power.ravel(), minlength=kmax + 1)
    counts = np.bincount(kr.ravel(), minlength=kmax + 1)
    j = np.arange(1, kmax + 1)
    return j / n, sums[1 : kmax + 1] / counts[1 : kmax + 1]


def psd_dex_error(pred, obs, *, factor: int) -> dict[str, float]:
    """Max, mean and signed mean of ``log10 PSD_pred - log10 PSD_obs`` over the wavenumbers
    finer than the coarse grid resolves: ``k > 1 / (2 factor)`` cycles per (fine) pixel."""
    k, pp = radial_psd(pred)
    _, po = radial_psd(obs)
    band = k > 1 / (2 * factor) + 1e-12
    d = np.log10(np.maximum(pp[band], 1e-30)) - np.log10(np.maximum(po[band], 1e-30))
    return {
        "max": float(np.abs(d).max()),
        "mean": float(np.abs(d).mean()),
        "signed_mean": float(d.mean()),
    }


def spread_skill(ens, obs, *, spread: str = "rms") -> float:
    """Adjusted spread-skill ratio ``sqrt((M+1)/M) spread / RMSE`` (1 = calibrated).

    ``spread="rms"``: ``sqrt(mean ensemble variance)`` (calibrated = 1); ``"mean_std"``: the
    mean of the per-pixel ensemble standard deviations (:func:`diffsci.core.metrics.spread_skill`).
    """
    return float(
        cm.spread_skill(
            torch.as_tensor(_np(ens), dtype=torch.float64),
            torch.as_tensor(_np(obs), dtype=torch.float64),
            adjusted=True,
            spread=spread,
        )
    )


def rank_histogram(ens, obs, *, seed: int = 0) -> np.ndarray:
    """Rank histogram counts ``(M + 1,)`` (ties broken at random, seeded)."""
    g = torch.Generator().manual_seed(seed)
    return cm.rank_histogram(
        torch.as_tensor(_np(ens)), torch.as_tensor(_np(obs)), generator=g
    ).numpy()


def evaluate_fields(
    pred,
    obs,
    *,
    factor: int,
    thresholds: Sequence[float],
    fss_scales: Sequence[int],
    ensemble: bool,
) -> dict[str, Any]:
    """All scores of one method on ``(N, H, W)`` truth; ``pred`` is ``(M, N, H, W)`` when
    ``ensemble`` (CRPS, spread-skill and member-averaged CSI/FSS) else ``(N, H, W)``."""
    p, o = _np(pred).astype(np.float32), _np(obs).astype(np.float32)
    det = p.mean(0) if ensemble else p
    row: dict[str, Any] = {}
    row["CRPS"] = crps(p, o) if ensemble else mae(p, o)  # CRPS of a point forecast = MAE
    row["MAE"] = mae(det, o)
    row["RMSE"] = rmse(det, o)
    row["bias"] = bias(det, o)
    for t in thresholds:
        row[f"CSI@{t:g}"] = csi(p, o, t, ensemble=ensemble)
        for n in fss_scales:
            row[f"FSS@{t:g},{n}px"] = fss(p, o, t, n, ensemble=ensemble)
    row["EMD"] = pixel_emd(p, o)
    row["p99.9 error"] = percentile_error(p, o, 99.9)
    dex = psd_dex_error(p, o, factor=factor)
    row["PSD high-k max |dex|"] = dex["max"]
    row["PSD high-k mean dex"] = dex["signed_mean"]
    if ensemble and p.shape[0] >= 2:
        row["spread-skill (adj.)"] = spread_skill(p, o)
        row["spread-skill (adj., mean-std form)"] = spread_skill(p, o, spread="mean_std")
    return row


def ensemble_label(members: int) -> str:
    """The diffusion ensemble's row name in the metric table."""
    return f"diffusion ensemble ({members} members)"


def table_title(factor: int) -> str:
    return f"x{factor} downscaling, held-out synthetic cases (mm/h)"


def mass_error(pred, coarse: np.ndarray, factor: int) -> float:
    """``max |block_mean(pred) - coarse|`` over every coarse cell (and member): how far a
    prediction is from conserving the coarse input's precipitation."""
    return float(np.abs(block_mean(_np(pred), factor) - coarse).max())


def score_table(
    ens: np.ndarray,
    baselines: Mapping[str, np.ndarray],
    truth: np.ndarray,
    coarse: np.ndarray,
    *,
    factor: int,
    thresholds: Sequence[float],
    fss_scales: Sequence[int],
    seconds: Mapping[str, float],
) -> dict[str, dict[str, Any]]:
    """The metric table ``{method: {metric: value}}``: the ensemble ``(M, N, H, W)`` and each
    baseline of :data:`METHODS` present in ``baselines`` against ``truth (N, H, W)``, with
    :func:`evaluate_fields`, the inference time per case (``seconds``, keyed by prediction
    variable, ``"diffusion"`` for the ensemble) and the :func:`mass_error` against the coarse
    precipitation ``coarse (N, H/f, W/f)``."""
    kw = {"factor": factor, "thresholds": thresholds, "fss_scales": fss_scales}
    runs = [(ensemble_label(ens.shape[0]), "diffusion", ens, True)]
    runs += [(name, v, baselines[v], False) for v, name in METHODS.items() if v in baselines]
    rows: dict[str, dict[str, Any]] = {}
    for name, var, pred, ensemble in runs:
        rows[name] = evaluate_fields(pred, truth, ensemble=ensemble, **kw)
        rows[name]["seconds per case"] = seconds.get(var, float("nan"))
        rows[name][MASS_ERROR] = mass_error(pred, coarse, factor)
    return rows


def psd_curves(
    truth: np.ndarray, ens: np.ndarray, baselines: Mapping[str, np.ndarray]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Radially averaged PSD (:func:`radial_psd`) of the truth, the members and each baseline
    of :data:`METHODS` present, ``{name: (k, psd)}``."""
    curves = {"truth": radial_psd(truth), "diffusion members": radial_psd(ens)}
    for var in METHODS:
        if var in baselines:
            curves[var] = radial_psd(baselines[var])
    return curves


def summary(
    rows: Mapping[str, Mapping[str, Any]],
    truth: np.ndarray,
    ens: np.ndarray,
    hist: np.ndarray,
    *,
    factor: int,
    sw_weight: float,
    mass_consistency: bool,
) -> dict[str, Any]:
    """Headline numbers of a run: size of the evaluation, the ensemble CRPS over the bicubic
    MAE, the settings that shape the ensemble and its rank histogram."""
    bic = rows["bicubic"]["MAE"]
    crps_ens = rows[ensemble_label(ens.shape[0])]["CRPS"]
    return {
        "held-out cases": int(truth.shape[0]),
        "grid": f"{truth.shape[1]}x{truth.shape[2]} fine, x{factor} coarse",
        "members": int(ens.shape[0]),
        "CRPS / bicubic MAE": crps_ens / bic if bic > 0 else float("nan"),
        "SW regulariser weight": sw_weight,
        "mass consistency": bool(mass_consistency),
        "rank histogram": [int(v) for v in hist],
    }


class _Pooled:
    """The pixels of a prediction ``(M, N, H, W)`` and its truth ``(N, H, W)`` merged and
    sorted once, with each pixel's case, so a resample of cases is a weighting of them."""

    def __init__(self, pred: np.ndarray, obs: np.ndarray) -> None:
        n = obs.shape[0]
        pv = pred.reshape(pred.shape[0], n, -1)
        u = np.concatenate([pv.ravel(), obs.reshape(n, -1).ravel()]).astype(np.float64)
        case_p = np.broadcast_to(np.arange(n)[None, :, None], pv.shape).ravel()
        case_o = np.repeat(np.arange(n), obs[0].size)
        order = np.argsort(u, kind="stable")
        self.u = u[order]
        self.deltas = np.diff(self.u)
        case = np.concatenate([case_p, case_o])[order]
        is_pred = np.concatenate([np.ones(case_p.size, bool), np.zeros(case_o.size, bool)])
        is_pred = is_pred[order]
        # case index of every pixel, offset by n for the truth's: one gather gives the weights
        self.key = np.where(is_pred, case, case + n).astype(np.intp)
        self.n = n

    def scores(self, counts: np.ndarray, q: float) -> tuple[float, float, float, float]:
        """``(EMD, |q(pred) - q(obs)|, q(pred), q(obs))`` with case ``i`` counted
        ``counts[i]`` times (all ones: the scores of the cases as they are)."""
        n = self.n
        w = np.concatenate([counts, np.zeros(n, counts.dtype)])[self.key]
        cp = np.cumsum(w)
        w = np.concatenate([np.zeros(n, counts.dtype), counts])[self.key]
        co = np.cumsum(w)
        n_p, n_o = cp[-1], co[-1]
        # scipy.stats.wasserstein_distance: the CDFs' gap times the step to the next value
        emd = float(np.abs(cp[:-1] / n_p - co[:-1] / n_o) @ self.deltas)
        qp, qo = self._quantile(cp, n_p, q), self._quantile(co, n_o, q)
        return emd, abs(qp - qo), qp, qo

    def _quantile(self, cum: np.ndarray, total: int, q: float) -> float:
        # numpy's linear percentile of the pooled values: the sorted value at position
        # (n - 1) q / 100, interpolated between its two neighbours
        h = (total - 1) * q / 100
        lo = int(np.floor(h))
        idx = np.searchsorted(cum, [lo, min(lo + 1, total - 1)], side="right")
        a, b = self.u[idx[0]], self.u[idx[1]]
        return float(a + (h - lo) * (b - a))


def case_bootstrap(
    pred_a, pred_b, obs, *, n_boot: int = 1000, seed: int = 0, q: float = 99.9
) -> dict[str, np.ndarray]:
    """Paired bootstrap over cases of the pixel EMD and the ``q``-th percentile error of two
    ensembles ``(M, N, H, W)`` (members may differ) against the same truth ``(N, H, W)``.

    Each of the ``n_boot`` resamples draws ``N`` cases with replacement (``numpy`` generator
    of ``seed``), the same cases for ``a`` and ``b``, and recomputes both metrics on the pooled
    pixels of the drawn cases, as :func:`pixel_emd` and :func:`percentile_error` define them.

    Returns
    -------
    dict
        ``emd_a``, ``emd_b``, ``pq_a``, ``pq_b`` (percentile errors): arrays ``(n_boot,)``.
    """
    pa, pb, o = (_np(x).astype(np.float32) for x in (pred_a, pred_b, obs))
    if pa.shape[1:] != o.shape or pb.shape[1:] != o.shape or o.ndim != 3:
        raise ValueError(
            f"case_bootstrap: predictions {pa.shape}, {pb.shape} and truth {o.shape} do not "
            "match ((M, N, H, W) and (N, H, W) expected)"
        )
    a, b = _Pooled(pa, o), _Pooled(pb, o)
    rng = np.random.default_rng(seed)
    n = o.shape[0]
    out = {k: np.empty(n_boot) for k in ("emd_a", "emd_b", "pq_a", "pq_b")}
    for i in range(n_boot):
        counts = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.int64)
        out["emd_a"][i], out["pq_a"][i], *_ = a.scores(counts, q)
        out["emd_b"][i], out["pq_b"][i], *_ = b.scores(counts, q)
    return out
