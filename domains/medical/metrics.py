"""fastMRI-style image metrics: thin wrappers over :mod:`diffsci.core.metrics`.

- :func:`psnr`: ``10 log10(max(target)^2 / MSE)`` over the whole volume (fastMRI's
  ``evaluate.psnr``: ``data_range = target.max()``).
- :func:`ssim_fastmri`: skimage's ``structural_similarity`` with a 7x7 uniform window, sample
  covariance, ``data_range = target.max()`` of the volume, averaged over slices (fastMRI's
  ``evaluate.ssim``).
- :func:`ssim_gaussian`: MONAI ``SSIMMetric``'s default (11x11 Gaussian window, sigma 1.5,
  population covariance), ``data_range = target.max()`` unless given. Results of the two SSIMs
  differ; label which one is reported.
- :func:`nmse`: ``|pred - target|^2 / |target|^2`` over the volume.
- :func:`slice_metrics` and :func:`reconstruction_table`: the evaluation's rows (PSNR per
  slice, both SSIMs, NMSE; seconds, 90% interval coverage of the posterior samples);
  :func:`kspace_residual` and :func:`sinogram_residual`: how well samples fit the data.

Inputs are ``(slices, H, W)`` or ``(H, W)`` arrays/tensors (``(B, 1, H, W)`` works too: the
leading axes are slices). All return 0-d float tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from diffsci.core import metrics as _m

from .operators import ParallelBeamRadon, RealImageMRI

__all__ = [
    "psnr",
    "ssim_fastmri",
    "ssim_gaussian",
    "nmse",
    "slice_metrics",
    "reconstruction_table",
    "kspace_residual",
    "sinogram_residual",
]

#: The row of the diffusion model's posterior mean in :func:`reconstruction_table`.
POSTERIOR_MEAN = "diffusion (posterior mean)"


def _max(target: Any) -> torch.Tensor:
    return torch.as_tensor(target).max()


def psnr(pred: Any, target: Any, *, data_range: float | None = None) -> torch.Tensor:
    """fastMRI PSNR in dB: ``data_range`` defaults to the maximum of the target volume."""
    return _m.psnr(pred, target, data_range=data_range)


def ssim_fastmri(pred: Any, target: Any, *, data_range: float | None = None) -> torch.Tensor:
    """fastMRI SSIM: 7x7 uniform window, ``data_range = target.max()``, mean over slices."""
    dr = _max(target) if data_range is None else data_range
    return _m.ssim(pred, target, data_range=dr, window="uniform", win_size=7)


def ssim_gaussian(pred: Any, target: Any, *, data_range: float | None = None) -> torch.Tensor:
    """MONAI-style SSIM: 11x11 Gaussian window (sigma 1.5), ``data_range = target.max()``."""
    dr = _max(target) if data_range is None else data_range
    return _m.ssim(pred, target, data_range=dr, window="gaussian", win_size=11)


def nmse(pred: Any, target: Any) -> torch.Tensor:
    """fastMRI NMSE ``|pred - target|^2 / |target|^2`` over the whole volume."""
    return _m.nmse(pred, target)


def slice_metrics(pred: Tensor, truth: Tensor) -> dict[str, float]:
    """fastMRI's metrics over a stack of slices ``(Z, H, W)``.

    PSNR with ``data_range`` = the volume max (median and mean over slices), NMSE of the
    volume, SSIM with fastMRI's 7x7 uniform window and with MONAI's 11x11 Gaussian window
    (means over slices).
    """
    pred, truth = pred.double(), truth.double()
    peak = float(truth.max())
    per = _m.psnr(pred, truth, data_range=peak, dim=(-2, -1), reduction="none")
    return {
        "PSNR median (dB)": float(per.median()),
        "PSNR mean (dB)": float(per.mean()),
        "NMSE": float(_m.nmse(pred, truth)),
        "SSIM (fastMRI 7x7 uniform)": float(_m.ssim(pred, truth, data_range=peak)),
        "SSIM (MONAI 11x11 gaussian)": float(
            _m.ssim(pred, truth, data_range=peak, window="gaussian")
        ),
    }


def reconstruction_table(
    preds: Mapping[str, Tensor],
    truth: Tensor,
    *,
    samples: Tensor,
    seconds: Mapping[str, float],
    extra: Mapping[str, float],
) -> dict[str, dict[str, float]]:
    """``{method: {metric: value}}`` of every reconstruction of ``truth`` ``(Z, H, W)``.

    Each row holds :func:`slice_metrics` and ``seconds per slice`` (``seconds`` is keyed by
    method, ``"diffusion"`` for the rows starting with it; NaN if absent). The row
    :data:`POSTERIOR_MEAN` also gets the coverage of the central 90% interval of ``samples``
    ``(S, Z, H, W)`` and the ``extra`` values (data residuals).
    """
    rows = {}
    for method, p in preds.items():
        row = slice_metrics(p, truth)
        key = "diffusion" if method.startswith("diffusion") else method
        row["seconds per slice"] = seconds.get(key, float("nan"))
        rows[method] = row
    rows[POSTERIOR_MEAN]["coverage 90%"] = float(_m.interval_coverage(samples, truth, level=0.9))
    rows[POSTERIOR_MEAN].update(extra)
    return rows


def kspace_residual(op: RealImageMRI, samples: Tensor, kspace: Tensor) -> float:
    """Largest :meth:`~.operators.RealImageMRI.measured_residual` of samples
    ``(S, n, 1, H, W)`` against the full k-space ``(n, H, W)`` (measured lines only)."""
    k = kspace[:, None].repeat(samples.shape[0], 1, 1, 1)
    return float(op.measured_residual(samples.flatten(0, 1), k).max())


def sinogram_residual(op: ParallelBeamRadon, samples: Tensor, y: Tensor) -> float:
    """Largest relative residual ``|A x - y| / |y|`` of samples ``(S, n, 1, N, N)`` against
    sinograms ``y`` ``(n, 1, n_angles, n_det)``."""
    ys = y.repeat(samples.shape[0], 1, 1, 1)
    resid = op.forward(samples.flatten(0, 1)) - ys
    rel = resid.flatten(1).norm(dim=1) / ys.flatten(1).norm(dim=1)
    return float(rel.max())
