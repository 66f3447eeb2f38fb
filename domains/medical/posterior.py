"""Posterior sampling of MRI and CT slices with the 2-D diffusion prior.

:func:`posterior_reconstruct` is the domain's call into
:func:`diffsci.core.posterior.reconstruct`; what it adds is medical: images in ``[0, 1]`` are
``z = 2 x - 1`` for the prior (:class:`~.models.AffineData`: the data and their noise std are
mapped accordingly), the prior may be wrapped (:class:`~.models.SliceTV`) and its estimate
clamped (:class:`~.models.ClampDenoised`), and the config's ``eta`` reaches only the samplers
that take it. :func:`sample_slices` runs it over a stack of slices in chunks;
:func:`volume_samples` compares slice-wise and slice-axis-TV sampling of one volume.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffsci.core.operators import LinearOperator
from diffsci.core.posterior import reconstruct
from diffsci.core.schedules import karras

from .models import AffineData, ClampDenoised, SliceTV

__all__ = ["METHODS", "posterior_reconstruct", "sample_slices", "volume_samples"]

#: The config's data steps -> :func:`diffsci.core.posterior.reconstruct`'s methods ("dps" is
#: DPS with the PiGDM variance of ``x0 | x_sigma``, i.e. the core's "pigdm").
METHODS = {"hard_dc": "hard_dc", "dps": "pigdm", "prox": "prox"}
#: Samplers that take the ``eta`` option.
ETA_SAMPLERS = ("ddim", "euler_ancestral")


@torch.no_grad()
def posterior_reconstruct(
    prior: nn.Module,
    op: LinearOperator,
    y: Tensor,
    shape: tuple[int, ...],
    *,
    samples: int,
    sampler: str = "ddim",
    steps: int = 50,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    eta: float = 0.85,
    generator: torch.Generator,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    method: str = "hard_dc",
    noise_std: float = 0.0,
    sigma_data: float = 0.5,
    clip_denoised: bool = False,
    init: Tensor | None = None,
    start_sigma: float | None = None,
) -> Tensor:
    """Posterior samples ``(samples, *shape)`` in image space for ``y = A x + n``.

    Parameters
    ----------
    prior
        Denoiser of the prior variable ``z = 2 x - 1``.
    op
        Forward model ``A`` of images ``x``; ``y`` is batched like ``shape`` (one observation
        per item).
    y
        Observations.
    shape
        Shape of the images, ``(B, 1, H, W)``.
    samples
        Posterior samples per item.
    sampler, steps, sigma_min, sigma_max, eta
        Core sampler over ``karras(steps, sigma_min, sigma_max)``; ``eta`` goes only to
        ``ddim`` and ``euler_ancestral``.
    generator
        Source of every sample's initial noise and of the sampler's noise.
    wrap
        Modifies the prior before the data step (e.g. :class:`~.models.SliceTV`).
    method
        ``"hard_dc"`` (noiseless data): every reverse step projects the prior's denoised
        estimate onto the data (DDS-style), so each sample fits the data to solver precision;
        ``"dps"``: likelihood gradient through the denoiser with the PiGDM variance (Song et
        al. 2023) for noisy data of std ``noise_std`` (image units); ``"prox"``: proximal
        data step on the denoised estimate (DiffPIR-like).
    noise_std
        Observation noise std in image units (doubled for ``z = 2 x - 1``).
    sigma_data
        The prior's data std (PiGDM variance).
    clip_denoised
        Clamp the (wrapped) prior's estimate to the image range (:class:`~.models.ClampDenoised`)
        before the data step.
    init, start_sigma
        CCDF warm start (Chung, Sim & Ye, CVPR 2022): each sample starts from ``init`` (image
        space, ``shape``, clamped to ``[0, 1]``) noised to ``start_sigma`` in the prior's units
        and runs only the reverse steps below it, e.g. from a TV reconstruction.

    Returns
    -------
    Tensor
        ``(samples, *shape)`` images.
    """
    if method not in METHODS:
        raise ValueError(f"method must be 'hard_dc', 'dps' or 'prox', got {method!r}")
    if method != "hard_dc" and noise_std <= 0:
        raise ValueError(f"method {method!r} needs noise_std > 0 (noiseless data: 'hard_dc')")
    den = prior if wrap is None else wrap(prior)
    if clip_denoised:
        den = ClampDenoised(den)
    z0 = None if init is None else AffineData.to_model(init.clamp(0, 1).to(y.device, torch.float32))
    options = {"eta": eta} if sampler in ETA_SAMPLERS else {}
    rec = reconstruct(
        den,
        op,
        AffineData.data(op, y, shape),
        sigmas=karras(steps, sigma_min, sigma_max),
        shape=shape,
        method=METHODS[method],
        noise_std=0.0 if method == "hard_dc" else 2 * noise_std,  # z = 2 x - 1 doubles it
        sampler=sampler,
        n_samples=samples,
        generator=generator,
        init=z0,
        start_sigma=start_sigma,
        sigma_data=sigma_data,
        **options,
    )
    return AffineData.to_image(rec.samples)


def sample_slices(
    prior: nn.Module,
    op: LinearOperator,
    y: Tensor,
    shape: tuple[int, ...],
    *,
    batch: int,
    generator: torch.Generator,
    device: torch.device | str,
    init: Tensor | None = None,
    start_sigma: float | None = None,
    progress: bool = False,
    desc: str = "posterior",
    **options: Any,
) -> tuple[Tensor, float]:
    """:func:`posterior_reconstruct` over slices ``(n, 1, H, W)`` in chunks of ``batch``.

    ``init`` is sliced like ``y`` and used only with ``start_sigma``; ``options`` go to
    :func:`posterior_reconstruct`. Returns the samples ``(samples, n, 1, H, W)`` on the CPU and
    the wall-clock seconds per slice.
    """
    chunks, t0 = [], time.perf_counter()
    for i in tqdm(range(0, shape[0], batch), disable=not progress, desc=desc):
        yb = y[i : i + batch].to(device)
        ib = None if start_sigma is None else init[i : i + batch].to(device)
        rec = posterior_reconstruct(
            prior,
            op,
            yb,
            (len(yb), *shape[1:]),
            generator=generator,
            init=ib,
            start_sigma=start_sigma,
            **options,
        )
        chunks.append(rec.cpu())
    return torch.cat(chunks, 1), (time.perf_counter() - t0) / shape[0]


def volume_samples(
    prior: nn.Module,
    op: LinearOperator,
    y: Tensor,
    shape: tuple[int, ...],
    *,
    z_tv_weight: float,
    generator: torch.Generator,
    **options: Any,
) -> tuple[Tensor, Tensor]:
    """A volume's slices ``(Z, 1, H, W)`` sampled slice-wise and with slice-axis TV.

    Both runs draw the same noise (the generator is rewound in between), so the comparison
    isolates the prior: the second wraps it in :class:`~.models.SliceTV` of ``z_tv_weight``
    (DiffusionMBIR-style). ``options`` go to :func:`posterior_reconstruct`.

    Returns
    -------
    (slicewise, slice_tv)
        Samples ``(samples, Z, 1, H, W)`` of each.
    """
    state = generator.get_state()
    flat = posterior_reconstruct(prior, op, y, shape, generator=generator, **options)
    generator.set_state(state)
    ztv = posterior_reconstruct(
        prior,
        op,
        y,
        shape,
        generator=generator,
        wrap=lambda d: SliceTV(d, z_tv_weight),
        **options,
    )
    return flat, ztv
