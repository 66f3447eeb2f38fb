"""PDE metrics as PDEBench defines them (Takamoto et al. 2022), in torch.

Trajectories are ``(B, nt, nx)`` (1-D fields) or ``(B, nt, nx, ny)`` (2-D fields): samples,
frames, then space.

- :func:`nrmse`: ``||pred - true|| / ||true||`` per sample, averaged over samples; over the
  whole space-time field, or per frame. PDEBench's ``metric_func`` reports the *per-frame*
  ratio averaged over samples and frames, i.e. ``nrmse(pred, true, per_frame=True).mean()``
  (which, unlike the space-time ratio, weights every frame equally however small its norm).
- :func:`frmse_bands`: PDEBench's Fourier-space RMSE in low / mid / high wavenumber bands.
- :func:`ensemble_scores`: CRPS, adjusted spread-skill (from :mod:`diffsci.core.metrics`) and
  the nRMSE of the ensemble mean.
- :func:`forecast_table`, :func:`assimilation_table`, :func:`event_table`: the evaluate
  stage's metric tables (``{method: {metric: value}}``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffsci.core.metrics import crps_ensemble, nmse, spread_skill

__all__ = [
    "LOWER_IS_BETTER",
    "PDEBENCH_BANDS",
    "assimilation_table",
    "ensemble_scores",
    "event_table",
    "forecast_table",
    "frmse_bands",
    "nrmse",
]

#: PDEBench's bands of wavenumber index, half-open: ``iLow = 4``, ``iHigh = 12``.
PDEBENCH_BANDS: tuple[tuple[int, int | None], ...] = ((0, 4), (4, 12), (12, None))


def _field(x: Any, name: str) -> Tensor:
    t = torch.as_tensor(x)
    if t.ndim not in (3, 4):
        raise ValueError(
            f"{name} must be a trajectory batch (B, nt, nx) or (B, nt, nx, ny), got shape "
            f"{tuple(t.shape)}"
        )
    if min(t.shape) == 0:
        raise ValueError(f"{name} is empty: shape {tuple(t.shape)}")
    return t


def _pair(pred: Any, true: Any) -> tuple[Tensor, Tensor]:
    p, t = _field(pred, "pred"), _field(true, "true")
    if p.shape != t.shape:
        raise ValueError(
            f"pred and true must have the same shape, got {tuple(p.shape)} and {tuple(t.shape)}"
        )
    dt = torch.promote_types(p.dtype, t.dtype)
    if not dt.is_floating_point:
        dt = torch.get_default_dtype()
    p, t = p.to(dt), t.to(device=p.device, dtype=dt)
    for a, n in ((p, "pred"), (t, "true")):
        if not bool(torch.isfinite(a).all()):
            raise ValueError(f"{n} contains non-finite values (nan or inf)")
    return p, t


def nrmse(pred: Any, true: Any, *, per_frame: bool = False) -> Tensor:
    """Normalised RMSE ``||pred - true||_2 / ||true||_2`` per sample, averaged over samples.

    Parameters
    ----------
    pred, true
        Trajectories ``(B, nt, nx)`` or ``(B, nt, nx, ny)``.
    per_frame
        ``False``: norms over the whole space-time field of each sample, result a scalar.
        ``True``: norms over space for each frame, averaged over samples, result ``(nt,)``.

    Raises
    ------
    ValueError
        If ``||true||`` is zero for some sample (or some frame of a sample with
        ``per_frame=True``): the ratio is undefined there.
    """
    p, t = _pair(pred, true)
    dims = tuple(range(1 if not per_frame else 2, t.ndim))
    den = t.square().sum(dim=dims)
    if bool((den == 0).any()):
        where = torch.nonzero(den == 0).tolist()[:10]
        what = "(sample, frame)" if per_frame else "sample"
        raise ValueError(
            f"nRMSE is undefined where ||true|| = 0; zero-norm {what} indices: {where}"
        )
    return nmse(p, t, dim=dims, reduction="none").sqrt().mean(dim=0)


def _band_dict(
    bands: Sequence[tuple[int, int | None]] | Mapping[str, tuple[int, int | None]],
) -> dict[str, tuple[int, int | None]]:
    if isinstance(bands, Mapping):
        named = dict(bands)
    else:
        bands = list(bands)
        if len(bands) != 3:
            raise ValueError(
                f"bands must be three (lo, hi) pairs (low, mid, high) or a mapping name -> "
                f"(lo, hi), got {bands!r}"
            )
        named = dict(zip(("low", "mid", "high"), bands, strict=True))
    out = {}
    for name, band in named.items():
        try:
            lo, hi = band
        except (TypeError, ValueError):
            raise ValueError(f"band {name!r} must be a pair (lo, hi), got {band!r}") from None
        if isinstance(lo, bool) or int(lo) != lo or lo < 0:
            raise ValueError(f"band {name!r}: lo must be an integer >= 0, got {lo!r}")
        if hi is not None and (isinstance(hi, bool) or int(hi) != hi or hi <= lo):
            raise ValueError(f"band {name!r}: hi must be None or an integer > lo, got {hi!r}")
        out[str(name)] = (int(lo), None if hi is None else int(hi))
    return out


def _fourier_error(err: Tensor) -> Tensor:
    """PDEBench's per-wavenumber RMS error ``(nt, K + 1)`` (see :func:`frmse_bands`)."""
    if err.ndim == 3:  # (B, nt, nx)
        nx = err.shape[-1]
        power = torch.fft.rfft(err, dim=-1).abs().square()  # (B, nt, nx//2 + 1)
        return power.mean(dim=0).sqrt() / nx
    b, nt, nx, ny = err.shape
    power = torch.fft.fftn(err, dim=(-2, -1)).abs().square()
    kx = torch.fft.fftfreq(nx, d=1.0 / nx, device=err.device, dtype=torch.float64)
    ky = torch.fft.fftfreq(ny, d=1.0 / ny, device=err.device, dtype=torch.float64)
    shell = torch.sqrt(kx[:, None] ** 2 + ky[None, :] ** 2).floor().long().reshape(-1)
    kmax = min(nx, ny) // 2
    keep = shell <= kmax
    shells = power.new_zeros(b, nt, kmax + 1)
    shells.index_add_(2, shell[keep], power.reshape(b, nt, -1)[..., keep])
    return shells.mean(dim=0).sqrt() / (nx * ny)


def frmse_bands(
    pred: Any,
    true: Any,
    *,
    bands: Sequence[tuple[int, int | None]] | Mapping[str, tuple[int, int | None]] = PDEBENCH_BANDS,
) -> dict[str, Tensor]:
    """Fourier-space RMSE in wavenumber bands, PDEBench's ``metric_func`` (``err_F``).

    With ``E = FFT(pred - true)`` over space (unnormalised, numpy/torch convention), per frame
    ``t`` and wavenumber index ``k``:

    - 1-D, ``(B, nt, nx)``: ``e_k(t) = sqrt(mean_b |E_k|^2) / nx`` for the ``rfft`` indices
      ``k = 0..nx/2`` (each ``+-k`` pair counted once), exactly as PDEBench.
    - 2-D, ``(B, nt, nx, ny)``: shell sums ``S_k = sum |E_(kx,ky)|^2`` over the modes with
      ``floor(sqrt(kx^2 + ky^2)) = k`` (signed integer wavenumbers), ``k = 0..min(nx, ny)/2``;
      ``e_k(t) = sqrt(mean_b S_k) / (nx ny)``. PDEBench sums only the quadrant
      ``0 <= kx < nx/2, 0 <= ky < ny/2`` (missing every mode with ``kx ky < 0`` and the
      Nyquist shell); here the whole plane enters, so an error ``sin 2 pi (x - y)`` is seen.

    The domain length is 1 (PDEBench multiplies by ``Lx``). A band ``(lo, hi)`` is the
    half-open index range ``lo <= k < hi`` (``hi=None``: to the largest ``k``); its value is
    the mean of ``e_k(t)`` over the ``k`` in the band, then over the frames. The samples are
    averaged inside the square root (an RMS over samples), the frames outside, as in PDEBench.

    Parameters
    ----------
    pred, true
        Trajectories ``(B, nt, nx)`` or ``(B, nt, nx, ny)``.
    bands
        Three ``(lo, hi)`` pairs named ``"low"``, ``"mid"``, ``"high"`` (default PDEBench's
        ``iLow = 4``, ``iHigh = 12``: ``[0, 4), [4, 12), [12, end]``), or a mapping from names
        to pairs.

    Returns
    -------
    dict[str, Tensor]
        Scalar tensor per band; ``nan`` for a band that holds no wavenumber of this grid.
    """
    named = _band_dict(bands)
    p, t = _pair(pred, true)
    e = _fourier_error(p - t)  # (nt, K + 1)
    kmax = e.shape[-1] - 1
    out = {}
    for name, (lo, hi) in named.items():
        hi = kmax + 1 if hi is None else min(hi, kmax + 1)
        out[name] = e[:, lo:hi].mean(dim=1).mean() if lo < hi else e.new_tensor(math.nan)
    return out


def ensemble_scores(ensemble: Any, true: Any, *, fair: bool = False) -> dict[str, Tensor]:
    """Probabilistic scores of an ensemble of trajectories.

    Parameters
    ----------
    ensemble
        Members ``(M, B, nt, nx)`` or ``(M, B, nt, nx, ny)``.
    true
        Trajectories ``(B, nt, nx)`` or ``(B, nt, nx, ny)``.
    fair
        CRPS estimator: ``False`` the empirical-distribution CRPS (pair term over ``2 M^2``),
        ``True`` the fair one (over ``2 M (M - 1)``); see
        :func:`diffsci.core.metrics.crps_ensemble`.

    Returns
    -------
    dict[str, Tensor]
        ``"crps"``: CRPS per point averaged over every point (same units as the field);
        ``"spread_skill"``: adjusted spread-skill ratio ``sqrt((M+1)/M) spread / RMSE of the
        mean`` (1 is calibrated; ``nan`` for ``M = 1``);
        ``"nrmse_mean"``: :func:`nrmse` of the ensemble mean (space-time, per sample).
    """
    t = _field(true, "true")
    e = torch.as_tensor(ensemble)
    if e.ndim != t.ndim + 1 or e.shape[1:] != t.shape:
        raise ValueError(
            f"ensemble must be (M, *true.shape) = (M, {', '.join(map(str, t.shape))}), got "
            f"shape {tuple(e.shape)}"
        )
    m = e.shape[0]
    if m == 0 or (fair and m < 2):
        raise ValueError(f"ensemble needs at least {2 if fair else 1} members, got {m}")
    dt = torch.promote_types(e.dtype, t.dtype)
    if not dt.is_floating_point:
        dt = torch.get_default_dtype()
    e, t = e.to(dt), t.to(device=e.device, dtype=dt)
    crps = crps_ensemble(e, t, member_dim=0, fair=fair)
    ssr = spread_skill(e, t, member_dim=0, adjusted=True) if m >= 2 else crps.new_tensor(math.nan)
    return {"crps": crps, "spread_skill": ssr, "nrmse_mean": nrmse(e.mean(dim=0), t)}


# --------------------------------------------------------------------------------------------
# the evaluate stage's tables

#: Metrics of the tables below for which lower is better.
LOWER_IS_BETTER = ["nRMSE", "nRMSE last quarter", "fRMSE low", "fRMSE mid", "fRMSE high", "crps"]


def _floats(scores: Mapping[str, Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in scores.items()}


def forecast_table(
    preds: Mapping[str, Tensor], true: Tensor, *, ensembles: Mapping[str, Tensor] | None = None
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """Forecast scores of each method's trajectories against ``true`` ``(B, nt, nx)``.

    Returns the rows (:func:`nrmse` over frames ``1..`` and over the last quarter of frames,
    :func:`frmse_bands`; for a method with an ensemble ``(M, B, nt, nx)`` in ``ensembles``,
    its :func:`ensemble_scores` too) and each method's :func:`nrmse` per frame.
    """
    q = max(1, true.shape[1] // 4)
    rows: dict[str, dict[str, float]] = {}
    per_frame = {}
    for name, p in preds.items():
        rows[name] = {
            "nRMSE": float(nrmse(p[:, 1:], true[:, 1:])),
            "nRMSE last quarter": float(nrmse(p[:, -q:], true[:, -q:])),
            **{f"fRMSE {k}": float(v) for k, v in frmse_bands(p, true).items()},
        }
        per_frame[name] = nrmse(p, true, per_frame=True).numpy()
    for name, ens in (ensembles or {}).items():
        rows[name].update(_floats(ensemble_scores(ens, true)))
    return rows, per_frame


def assimilation_table(
    preds: Mapping[str, Tensor], ensembles: Mapping[str, Tensor], true: Tensor
) -> dict[str, dict[str, float]]:
    """:func:`nrmse` of each method's trajectories against ``true``, then of each ensemble's
    mean ``(M, B, nt, nx)`` with its :func:`ensemble_scores`."""
    rows = {name: {"nRMSE": float(nrmse(p, true))} for name, p in preds.items()}
    for name, ens in ensembles.items():
        rows[name] = {
            "nRMSE": float(nrmse(ens.mean(0), true)),
            **_floats(ensemble_scores(ens, true)),
        }
    return rows


def event_table(ev: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The event study's record (``events.json``) as a table of event probabilities."""
    table: dict[str, dict[str, Any]] = {
        "solver Monte Carlo": {"P(event)": ev["p_solver_monte_carlo"], "n": ev["n_solver"]},
        "solver, same initial states as the forecasts": {
            "P(event)": ev.get("p_solver_same_initial_states"),
            "n": ev.get("n_initial_states"),
        },
        "diffusion forecasts from sampled initial states": {
            "P(event)": ev.get("p_model_forecast"),
            "n": ev.get("n_initial_states"),
            "Brier score": ev.get("brier_score"),
            "Brier skill vs climatology": ev.get("brier_skill_score"),
        },
    }
    if "p_model_unconditional" in ev:  # not for a model without a prior (refiner)
        table["diffusion (null-condition prior)"] = {
            "P(event)": ev["p_model_unconditional"],
            "n": ev["n_model"],
        }
        table["diffusion (event-guided)"] = {"hit rate": ev["event_conditioned_hit_rate"]}
    return table
