"""Schedule optimisation: the sigma schedule that minimises a solver's error for a given NFE.

In the spirit of Align Your Steps (Sabour et al. 2024), but with a direct objective: the
mean squared distance between the solver's output on an ``n``-step schedule and a fine
reference solution of the probability-flow ODE from the same starting points (the global
error the schedule leaves, which the local truncation errors of its steps add up to). The
free parameters are the log-sigma gaps below ``sigma_max`` (their total, i.e. the last
non-zero level, included); the step to 0 stays ``x = D(x)``. Nelder-Mead from the default
Karras schedule; results are cached per denoiser object.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from .schedules import default_sigmas, denoiser_sigma_info, karras

__all__ = ["optimize_sigmas", "schedule_from_params", "clear_cache"]

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def clear_cache() -> None:
    """Forget every cached optimised schedule."""
    _CACHE.clear()


def schedule_from_params(theta: np.ndarray, sigma_max: float) -> Tensor:
    """``n = len(theta)`` levels from ``sigma_max``, then 0: ``theta[0]`` is the log of the
    total log-sigma span below ``sigma_max`` and ``softmax(theta[1:])`` its split into gaps."""
    theta = np.asarray(theta, dtype=np.float64)
    if len(theta) == 1:
        return torch.tensor([sigma_max, 0.0], dtype=torch.float64)
    span = math.exp(float(theta[0]))
    w = np.exp(theta[1:] - theta[1:].max())
    gaps = span * w / w.sum()
    logs = math.log(sigma_max) - np.concatenate([[0.0], np.cumsum(gaps)])
    return torch.cat([torch.from_numpy(np.exp(logs)), torch.zeros(1, dtype=torch.float64)])


def _params_from_schedule(sig: Tensor) -> np.ndarray:
    logs = sig[:-1].log().numpy()
    gaps = -np.diff(logs)
    if len(gaps) == 0:
        return np.zeros(1)
    return np.concatenate([[math.log(gaps.sum())], np.log(gaps / gaps.sum())])


def optimize_sigmas(
    denoiser: Any,
    n: int,
    shape: tuple[int, ...],
    *,
    sampler: str = "unipc",
    sigmas: Tensor | None = None,
    n_samples: int = 256,
    ref_steps: int = 200,
    max_evals: int | None = None,
    cond: Any = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    use_cache: bool = True,
) -> Tensor:
    """An ``n``-step schedule for ``sampler`` on ``denoiser``, optimised for ODE accuracy.

    Parameters
    ----------
    denoiser
        ``D(x, sigma, cond)``; its ``sigma_data`` and training range set the start schedule
        (:func:`~diffsci.core.schedules.default_sigmas`) unless ``sigmas`` is given.
    n
        Number of steps (the NFE of one-evaluation samplers).
    shape
        Shape of one sample (without the batch dimension).
    sampler
        Name in :data:`~diffsci.core.samplers.SAMPLERS` (deterministic ones).
    sigmas
        Start schedule; its first level (``sigma_max``) is kept.
    n_samples, ref_steps
        Starting points ``randn * sqrt(sigma_max^2 + sigma_data^2)`` (fixed ``seed``) and
        the steps of the reference solution (the same sampler on a Karras schedule down to a
        tenth of the start schedule's last level).
    max_evals
        Objective evaluations of Nelder-Mead (default ``60 n``), ``n`` NFE each.

    Returns
    -------
    Tensor
        Descending float64 sigmas ending in 0, ``n + 1`` values.

    References
    ----------
    A. Sabour, S. Fidler, K. Kreis, "Align Your Steps: Optimizing Sampling Schedules in
    Diffusion Models", ICML 2024, arXiv:2404.14507.
    """
    from .samplers import get_sampler

    key = (n, tuple(shape), sampler, n_samples, ref_steps, seed)
    cached = _cache_get(denoiser, key) if use_cache and cond is None else None
    if cached is not None:
        return cached.clone()
    fn = get_sampler(sampler)
    start = default_sigmas(denoiser, n) if sigmas is None else torch.as_tensor(sigmas).double()
    sig_max, sig_last = float(start[0]), float(start[-2])
    sd = denoiser_sigma_info(denoiser)["sigma_data"] or 0.0
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n_samples, *shape), generator=g, dtype=dtype) * math.hypot(sig_max, sd)
    x = x.to(device) if device is not None else x
    ref = fn(denoiser, x, karras(ref_steps, sig_last / 10, sig_max), cond=cond)
    norm = float((ref**2).mean()) + 1e-30

    def loss(theta: np.ndarray) -> float:
        sig = schedule_from_params(theta, sig_max)
        if not bool(torch.isfinite(sig).all()) or float(sig[-2]) <= 0:
            return math.inf
        out = fn(denoiser, x, sig, cond=cond)
        val = float(((out - ref) ** 2).mean()) / norm
        return val if math.isfinite(val) else math.inf

    theta0 = _params_from_schedule(start)
    if n > 1:
        res = minimize(
            loss,
            theta0,
            method="Nelder-Mead",
            options={"maxfev": max_evals or 60 * n, "xatol": 1e-3, "fatol": 1e-9},
        )
        theta = res.x if res.fun <= loss(theta0) else theta0
    else:
        theta = theta0
    out = schedule_from_params(theta, sig_max)
    if use_cache and cond is None:
        _cache_put(denoiser, key, out)
    return out.clone()


def _cache_get(denoiser: Any, key: tuple) -> Tensor | None:
    try:
        return _CACHE.get(denoiser, {}).get(key)
    except TypeError:  # not weak-referenceable
        return None


def _cache_put(denoiser: Any, key: tuple, sig: Tensor) -> None:
    try:
        _CACHE.setdefault(denoiser, {})[key] = sig
    except TypeError:
        pass
