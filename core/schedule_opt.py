"""Schedule optimisation: the sigma schedule that minimises a solver's error for a given NFE.

In the spirit of Align Your Steps (Sabour et al. 2024), but with a direct objective: the
mean squared distance between the solver's output on an ``n``-step schedule and a fine
reference solution of the probability-flow ODE from the same starting points (the global
error the schedule leaves, which the local truncation errors of its steps add up to). The
free parameters are the log-sigma gaps below ``sigma_max`` (their total, i.e. the last
non-zero level, included); the step to 0 stays ``x = D(x)``. Nelder-Mead from the default
Karras schedule; results are cached per denoiser object and, with ``cache_dir``, on disk per
network weights (a JSON file named by a hash of the weights and the request), so a trained
model pays for its schedule once.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from .fileio import atomic_path
from .schedules import default_sigmas, denoiser_sigma_info, karras, start_std

__all__ = ["optimize_sigmas", "schedule_from_params", "clear_cache", "weights_digest"]

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
    cache_dir: str | Path | None = None,
) -> Tensor:
    """An ``n``-step schedule for ``sampler`` on ``denoiser``, optimised for ODE accuracy.

    Parameters
    ----------
    denoiser
        ``D(x, sigma, cond)``; its ``sigma_data`` and training range set the start schedule
        (:func:`~diffsci.core.schedules.default_sigmas`, log-linear: ``table=False``) unless
        ``sigmas`` is given.
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
    cache_dir
        Also keep the result on disk there, named by a hash of the denoiser's weights
        (``torch.nn.Module`` state) and of this request, and reuse it when the same weights
        ask again (in another process). Unconditional requests of ``nn.Module`` denoisers
        only; others are optimised every time.

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
    if isinstance(denoiser, torch.nn.Module):  # weights changed in place: another schedule
        key += (weights_digest(denoiser),)
    cached = _cache_get(denoiser, key) if use_cache and cond is None else None
    disk = _disk_path(denoiser, key, sigmas, max_evals, cache_dir) if cond is None else None
    if cached is None and disk is not None and disk.is_file():
        cached = _read_schedule(disk, n)
        if cached is not None and use_cache:
            _cache_put(denoiser, key, cached)
    if cached is not None:
        return cached.clone()
    fn = get_sampler(sampler)
    # the log-linear start, not a DEFAULT_TABLE row: a row is already near an optimum for its fit
    # problems, and from it a few hundred starting points were enough to overfit them (in the
    # test of the 8-D mixture: 1.3x the row's error on other starting points)
    start = (
        default_sigmas(denoiser, n, table=False)
        if sigmas is None
        else torch.as_tensor(sigmas).double()
    )
    sig_max, sig_last = float(start[0]), float(start[-2])
    sd = denoiser_sigma_info(denoiser)["sigma_data"] or 0.0
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n_samples, *shape), generator=g, dtype=dtype) * start_std(start, sd)
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
    if disk is not None:
        record = {"request": list(map(str, key)), "sigmas": out.tolist()}
        with atomic_path(disk) as tmp:
            tmp.write_text(json.dumps(record, indent=1))
    return out.clone()


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's class and state (names, dtypes, shapes and values)."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _disk_path(
    denoiser: Any, key: tuple, sigmas: Tensor | None, max_evals: int | None, cache_dir: Any
) -> Path | None:
    if cache_dir is None or not isinstance(denoiser, torch.nn.Module):
        return None
    start = None if sigmas is None else torch.as_tensor(sigmas).double().tolist()
    request = json.dumps([list(map(str, key)), start, max_evals])  # key holds the weights' hash
    return Path(cache_dir) / f"{hashlib.sha256(request.encode()).hexdigest()[:32]}.json"


def _read_schedule(path: Path, n: int) -> Tensor | None:
    """The cached schedule in ``path``; None (optimise again, then overwrite) when the file is
    not one this module wrote for ``n`` steps, with a warning naming it."""
    try:
        sig = torch.tensor(json.loads(path.read_text())["sigmas"], dtype=torch.float64)
        if sig.shape != (n + 1,) or not bool((sig[1:] < sig[:-1]).all()) or sig[-1] != 0:
            raise ValueError(f"not a descending {n}-step schedule ending in 0")
    except (OSError, ValueError, KeyError, TypeError) as e:
        warnings.warn(f"{path}: unreadable cached schedule ({e}); optimising again", stacklevel=3)
        return None
    return sig


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
