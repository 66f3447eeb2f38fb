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

Inputs are ``(slices, H, W)`` or ``(H, W)`` arrays/tensors (``(B, 1, H, W)`` works too: the
leading axes are slices). All return 0-d float tensors.
"""

from __future__ import annotations

from typing import Any

import torch

from diffsci.core import metrics as _m

__all__ = ["psnr", "ssim_fastmri", "ssim_gaussian", "nmse"]


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
