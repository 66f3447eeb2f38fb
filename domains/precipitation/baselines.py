"""Baselines: bilinear and bicubic interpolation of the coarse precipitation, and the
regression UNet (CorrDiff's deterministic mean).

Interpolation uses :func:`torch.nn.functional.interpolate` (``align_corners=False``: coarse
cell centres map to block centres) from the coarse grid (the block means of the ``tp``
input) to the fine grid; bicubic overshoots below zero near dry areas, so both are clamped at
0 mm h-1. Neither conserves the block means exactly.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from .models import DownscalingModel, Normaliser
from .operators import block_mean

__all__ = ["coarse_precipitation", "interpolate", "regression_mean", "predict"]


def coarse_precipitation(inputs_tp: np.ndarray, factor: int) -> np.ndarray:
    """Coarse grid ``(N, H/f, W/f)`` from the block-constant ``tp`` input ``(N, H, W)``."""
    return block_mean(np.asarray(inputs_tp, dtype=np.float64), factor).astype(np.float32)


def interpolate(coarse: np.ndarray, factor: int, *, mode: str = "bicubic") -> np.ndarray:
    """Upsample ``(N, h, w)`` by ``factor`` with ``mode`` ("bilinear" or "bicubic"), >= 0."""
    if mode not in ("bilinear", "bicubic"):
        raise ValueError(f"mode must be 'bilinear' or 'bicubic', got {mode!r}")
    x = torch.from_numpy(np.array(coarse, dtype=np.float32))[:, None]
    y = F.interpolate(x, scale_factor=factor, mode=mode, align_corners=False)
    return y[:, 0].clamp_min(0).numpy()


@torch.no_grad()
def regression_mean(
    model: DownscalingModel,
    norm: Normaliser,
    inputs: np.ndarray,
    invariant: np.ndarray | None,
    *,
    batch: int = 16,
) -> np.ndarray:
    """The regression UNet's prediction in mm h-1, ``(N, H, W)``."""
    if model.regression is None:
        raise ValueError("the model has no regression UNet (model.residual is false)")
    out = []
    inv = None if invariant is None else torch.from_numpy(np.asarray(invariant, np.float32))
    for i in range(0, len(inputs), batch):
        cond = norm.encode_condition(
            torch.from_numpy(np.asarray(inputs[i : i + batch], np.float32)), inv
        )
        out.append(norm.decode_target(model.regression(cond))[:, 0].numpy())
    return np.concatenate(out)


def predict(
    model: DownscalingModel,
    norm: Normaliser,
    inputs: np.ndarray,
    invariant: np.ndarray | None,
    *,
    factor: int,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Every baseline on the cases ``inputs (N, C, H, W)``: bilinear, bicubic and (when the
    model has one) the regression UNet, run on the CPU.

    Returns
    -------
    (predictions, seconds)
        ``{name: (N, H, W)}`` in mm h-1 and ``{name: wall-clock seconds per case}``.
    """
    coarse = coarse_precipitation(inputs[:, norm.input_variables.index("tp")], factor)
    base: dict[str, np.ndarray] = {}
    sec: dict[str, float] = {}
    for mode in ("bilinear", "bicubic"):
        t0 = time.perf_counter()
        base[mode] = interpolate(coarse, factor, mode=mode)
        sec[mode] = (time.perf_counter() - t0) / len(inputs)
    if model.regression is not None:
        t0 = time.perf_counter()
        base["regression"] = regression_mean(model.cpu(), norm, inputs, invariant)
        sec["regression"] = (time.perf_counter() - t0) / len(inputs)
    return base, sec
