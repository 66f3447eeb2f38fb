"""Trajectories sampled from the trained model: ensemble forecasts and data assimilation.

- Forecasts: posterior samples given the initial state, imposed by hard data consistency on
  the first frame (:class:`~diffsci.core.posterior.DataConsistency` through
  :class:`~diffsci.domains.pde.operators.FrameMask`), with the encoded initial state as the
  network's condition.
- Data assimilation: the unconditional (null-condition) prior given sparse noisy sensors, by
  :func:`diffsci.core.posterior.reconstruct` (``assimilation.method``: ``pigdm``, DPS with the
  PiGDM variance, Song et al. 2023; or ``prox``, the proximal data step).

Every sampler run starts from ``randn * sigmas[0]`` drawn from the caller's generator, in the
order of the batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from diffsci.core.posterior import data_term, reconstruct
from diffsci.core.samplers import sample

from .models.codec import codec, decode, encode
from .models.denoiser import sampling_sigmas
from .operators import FrameMask, initial_frame_mask, observation_mask

__all__ = [
    "assimilate",
    "assimilation_ensemble",
    "forecast",
    "forecast_ensemble",
    "sensor_observations",
]


def forecast(
    model: nn.Module,
    u0: Tensor,
    nt: int,
    *,
    cfg: Mapping[str, Any],
    scale: float,
    members: int,
    generator: torch.Generator,
    progress: bool = False,
) -> Tensor:
    """Ensemble forecast ``(members, B, nt, nx)`` from initial states ``u0 (B, nx)``."""
    B, nx = u0.shape
    traj0 = u0.repeat(members, 1)[:, None].expand(-1, nt, -1)
    kw = codec(cfg)
    cond = encode(traj0, scale=scale, **kw)
    mask = initial_frame_mask(nt, nx, dtype=u0.dtype)
    den = data_term(model, FrameMask(mask, **kw), (traj0 * mask) / scale, method="hard_dc")
    out = sample(
        den,
        cond.shape,
        sampling_sigmas(cfg),
        sampler=cfg["sampling"]["sampler"],
        cond=cond,
        generator=generator,
        device=u0.device,
        dtype=cond.dtype,
        progress=progress,
    )
    return decode(out, scale=scale, **kw).reshape(members, B, nt, nx)


def forecast_ensemble(
    model: nn.Module,
    u: Tensor,
    *,
    cfg: Mapping[str, Any],
    scale: float,
    generator: torch.Generator,
    device: torch.device,
    progress: bool = False,
) -> np.ndarray:
    """Forecasts ``(members, N, nt, nx)`` from the first frames of trajectories ``u (N, nt,
    nx)``, ``sampling.batch`` initial states at a time."""
    s = cfg["sampling"]
    ens = []
    for i in range(0, len(u), s["batch"]):
        u0 = u[i : i + s["batch"], 0].to(device)
        with torch.no_grad():
            ens.append(
                forecast(
                    model,
                    u0,
                    u.shape[1],
                    cfg=cfg,
                    scale=scale,
                    members=s["members"],
                    generator=generator,
                    progress=progress,
                ).cpu()
            )
    return torch.cat(ens, 1).numpy()


def assimilate(
    model: nn.Module,
    y: Tensor,
    mask: Tensor,
    cond: Tensor,
    *,
    cfg: Mapping[str, Any],
    scale: float,
    noise_std: float,
    generator: torch.Generator,
) -> Tensor:
    """Data assimilation: trajectories consistent with sparse noisy observations ``y`` on
    ``mask`` (physical space, ``(B, nt, nx)``), one posterior sample per row.

    ``assimilation.method``: ``pigdm`` (DPS with the PiGDM variance: a VJP through the
    denoiser, so the data inform unobserved points) or ``prox`` (proximal data step, ``lam =
    1``; cheaper, but with sparse sensors it barely moves the unobserved points).
    """
    kw = codec(cfg)
    rec = reconstruct(
        model,
        FrameMask(mask, **kw),
        y / scale,
        sigmas=sampling_sigmas(cfg),
        shape=cond.shape,
        method=cfg["assimilation"]["method"],
        noise_std=noise_std / scale,
        sampler=cfg["sampling"]["sampler"],
        generator=generator,
        cond=cond,
        sigma_data=cfg["model"]["sigma_data"],
        lam=1.0,
    )
    return decode(rec.samples[0], scale=scale, **kw)


def sensor_observations(u: Tensor, cfg: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
    """Sparse noisy sensors of trajectories ``u (N, nt, nx)``: ``(y, mask)`` with ``y = mask *
    (u + noise)``, the noise ``N(0, assimilation.noise_std^2)`` from ``seed + 2``."""
    a = cfg["assimilation"]
    mask = observation_mask(
        u.shape[1], u.shape[2], sensor_every=a["sensor_every"], frame_every=a["frame_every"]
    )
    gobs = torch.Generator().manual_seed(int(cfg["seed"]) + 2)
    y = mask * (u + a["noise_std"] * torch.randn(u.shape, generator=gobs))
    return y, mask


def assimilation_ensemble(
    model: nn.Module,
    y: Tensor,
    mask: Tensor,
    *,
    cfg: Mapping[str, Any],
    scale: float,
    generator: torch.Generator,
    device: torch.device,
) -> np.ndarray:
    """``sampling.members`` assimilated trajectories ``(members, N, nt, nx)`` per observed
    trajectory of ``y (N, nt, nx)`` (sensors on ``mask``), from the null-condition prior."""
    s = cfg["sampling"]
    ens = []
    for i in range(0, len(y), s["batch"]):
        yb = y[i : i + s["batch"]].repeat(s["members"], 1, 1)
        cond = torch.zeros_like(encode(yb, scale=scale, **codec(cfg)))
        with torch.no_grad():
            out = assimilate(
                model,
                yb.to(device),
                mask.to(device),
                cond.to(device),
                cfg=cfg,
                scale=scale,
                noise_std=cfg["assimilation"]["noise_std"],
                generator=generator,
            )
        ens.append(out.cpu().reshape(s["members"], -1, *y.shape[1:]))
    return torch.cat(ens, 1).numpy()
