"""Training loss: CorrDiff's regression MSE + the EDM loss of the residual diffusion model +
WassDiff's sliced-Wasserstein regulariser on the denoised estimate (Mardani et al. 2025,
CorrDiff; Liu et al. 2024, WassDiff; Karras et al. 2022, EDM).

The regulariser compares, per image, the distribution of the denoised estimate
``x0_hat = mean + D(x, sigma)`` with the distribution of the target, as sets of points: the
pixel values (``patch = 1``: it targets the intensity distribution, hence the extremes) or the
``patch x patch`` neighbourhoods as vectors (``patch > 1``: local structure too). ``SW_p``
(``p = 2`` or ``1``) comes from :func:`diffsci.core.metrics.sliced_wasserstein`
(differentiable; exact 1-D ``W_p`` between sorted projections); with ``patch = 1`` the points
are scalars, every projection is the same and one is used, so the term is exactly the 1-D
``W_p`` between the two pixel-value distributions, computed by sorting.

Noise levels: the regulariser acts on samples with ``sigma <= sigma_max`` only. At noise
level ``sigma`` the optimal ``x0_hat`` is a conditional *mean*, smoother than any sample (for
a Gaussian of variance ``sigma_data^2`` its variance shrinks by
``sigma_data^2 / (sigma^2 + sigma_data^2)``: 0.2 at ``sigma = 1``, 0.86 at 0.2, with
``sigma_data = 0.5``); forcing its pixel distribution onto the target's makes the denoiser
over-disperse. In the benchmark, a gate at ``sigma_max = 1`` fixed the 99.9th percentile but
added a wet bias and raised the pixel EMD; ``sigma_max = 0.2`` (the noise levels of the
sampler's last steps, where ``D`` is close to a sample) removed the bias.

``p``: ``W_2`` (unsquared) has a gradient proportional to each sorted-pixel mismatch, so the
largest mismatches, in the tail, dominate it; ``W_1`` (WassDiff's choice) pushes every
mismatched quantile equally, which suits the bulk of the distribution too, and is the
distance of the pixel-EMD metric. In the benchmark's pilots ``W_1`` gave the lower EMD and
99.9th-percentile error; the numbers of every pilot are recorded in
``benchmarks/configs/precipitation.yaml``.

Dry level (``sw_floor``, the config's ``loss.sw_clamp_dry``): the target has a point mass at
the model-space value of 0 mm/h (``z_0 = -mean/std`` of ``log1p``,
:attr:`.models.Normaliser.dry_level`), and decoding clamps everything below ``z_0`` to 0 mm/h. The sampler ends at
``sigma = 0`` with the denoised estimate, so no noise is left, but the denoiser does not return
dry pixels exactly to ``z_0``: a small error above it decodes to light rain, and errors are
symmetric, so about half of the dry pixels it touches turn wet. Unclamped, the regulariser
pays equally for dry pixels pushed below ``z_0`` (harmless: they decode to 0) and above it, so
it does not remove that light rain. With ``sw_floor = z_0`` the denoised estimate is clamped
at the dry level before the comparison: the regulariser compares the fields as they decode,
values below ``z_0`` cost nothing and only the rain on dry ground is pushed down (the
benchmark's effect on the dry fraction and the EMD is recorded in its config).

How this differs from WassDiff's code (``get_smld_loss_fn`` in its ``ncsn_utils/losses.py``):
there the SWD is ``W_1`` (mean ``|sorted difference|``) over 100 random projections of the
*batch* of flattened images (each image one point in ``R^(H W)``), at every noise level, and
the total is ``(1 - w) score loss + w SWD``; its commented-out alternative pools the batch's
pixel values (the 1-D case). Here: ``W_p`` per image on pixel values (the reading that acts
on the intensity distribution), on low noise levels only, added as ``+ w SW`` (the mean over
the images that pass the noise-level gate) to the per-pixel-mean EDM loss, so ``w`` is not on
WassDiff's scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from diffsci.core.metrics import sliced_wasserstein

__all__ = ["sw_regulariser", "downscaling_loss", "training_loss"]


def _points(x: Tensor, patch: int) -> Tensor:
    """``(C, H, W)`` -> points ``(n, C * patch^2)`` (non-overlapping patches)."""
    if patch == 1:
        return x.flatten(1).T
    return F.unfold(x[None], patch, stride=patch)[0].T


def sw_regulariser(
    x0_hat: Tensor,
    target: Tensor,
    *,
    n_projections: int = 100,
    patch: int = 1,
    p: float = 2,
    rng=None,
    points: str = "pixels",
) -> Tensor:
    """Mean over images of ``SW_p`` between the point sets of ``x0_hat`` and ``target``
    (``points="pixels"``), or ``SW_p`` between the batch's images as points of
    ``R^(C H W)`` (``points="images"``: WassDiff's code, where the batch of denoised images and
    the batch of targets are the two point sets, compared over ``n_projections`` random
    directions).

    Parameters
    ----------
    x0_hat, target
        ``(B, C, H, W)``.
    n_projections
        Random directions (ignored when the points are scalars).
    patch
        Side of the non-overlapping patches that form the points (1: pixel values).
    p
        Order of the distance (2: ``SW_2``; 1: ``SW_1``, WassDiff's).
    rng
        A :class:`~diffsci.core.rng.ShardedRNG` or a ``torch.Generator`` for the directions.
    """
    if x0_hat.shape != target.shape or x0_hat.dim() != 4:
        raise ValueError(
            f"x0_hat and target must be (B, C, H, W) of equal shape, got "
            f"{tuple(x0_hat.shape)} and {tuple(target.shape)}"
        )
    if points == "images":
        a, b = x0_hat.flatten(1), target.flatten(1)
        d = a.shape[1]
        if hasattr(rng, "randn") and not isinstance(rng, torch.Generator):
            proj = rng.randn((n_projections, d), device=a.device, dtype=a.dtype)
        else:
            proj = torch.randn(n_projections, d, generator=rng, dtype=a.dtype).to(a.device)
        return sliced_wasserstein(a, b, p=p, projections=proj)
    if points != "pixels":
        raise ValueError(f"points must be 'pixels' or 'images', got {points!r}")
    if patch < 1 or x0_hat.shape[-1] % patch or x0_hat.shape[-2] % patch:
        raise ValueError(f"patch={patch} must be >= 1 and divide the image size")
    d = x0_hat.shape[1] * patch * patch
    vals = []
    for a, b in zip(x0_hat, target, strict=True):
        if d == 1:
            proj = torch.ones(1, 1, dtype=a.dtype, device=a.device)
        elif hasattr(rng, "randn") and not isinstance(rng, torch.Generator):
            proj = rng.randn((n_projections, d), device=a.device, dtype=a.dtype)
        else:
            proj = torch.randn(n_projections, d, generator=rng, dtype=a.dtype).to(a.device)
        vals.append(sliced_wasserstein(_points(a, patch), _points(b, patch), p=p, projections=proj))
    return torch.stack(vals).mean()


def downscaling_loss(
    model,
    target: Tensor,
    cond: Tensor,
    rng,
    *,
    sw_weight: float = 0.0,
    sw_projections: int = 100,
    sw_patch: int = 1,
    sw_sigma_max: float = 1.0,
    sw_p: float = 2,
    sw_floor: float | None = None,
    sw_points: str = "pixels",
) -> dict[str, Any]:
    """One batch: ``{"loss", "regression_mse", "edm", "sw"}`` (the core loop logs the extras).

    The EDM term is written out here rather than calling :func:`diffsci.core.denoisers.edm_loss`
    because the regulariser needs the denoised estimate that loss computes internally.

    Parameters
    ----------
    model
        :class:`.models.DownscalingModel`.
    target, cond
        Standardised target ``(B, 1, H, W)`` and conditioning ``(B, C, H, W)``.
    rng
        The loop's :class:`~diffsci.core.rng.ShardedRNG`.
    sw_points
        ``"pixels"`` (per image, its pixel values or patches) or ``"images"`` (WassDiff's
        code: the batch's images as points); :func:`sw_regulariser`.
    sw_floor
        If given, the denoised estimate is clamped from below at this model-space value (the
        dry level, 0 mm/h) before the regulariser compares it with the target: decoding maps
        everything below it to 0 mm/h, so the comparison is between the fields as decoded.
    """
    mean, full = model.condition(cond)
    reg = F.mse_loss(mean, target) if model.residual else target.new_zeros(())
    x0 = target - mean.detach()
    den = model.denoiser
    sigma = den.train_sigma(x0.shape[0], rng, device=x0.device).to(x0.dtype)
    noise = rng.randn(x0.shape, device=x0.device, dtype=x0.dtype)
    d = den(x0 + sigma.reshape(-1, 1, 1, 1) * noise, sigma, full)
    edm = (den.loss_weight(sigma) * ((d - x0) ** 2).flatten(1).mean(1)).mean()
    sw = target.new_zeros(())
    if sw_weight > 0:
        keep = sigma <= sw_sigma_max
        if bool(keep.any()):
            x0_hat = d[keep] + mean.detach()[keep]
            if sw_floor is not None:
                x0_hat = x0_hat.clamp_min(sw_floor)
            sw = sw_regulariser(
                x0_hat,
                target[keep],
                n_projections=sw_projections,
                patch=sw_patch,
                p=sw_p,
                rng=rng,
                points=sw_points,
            )
    total = reg + edm + sw_weight * sw
    return {"loss": total, "regression_mse": reg.detach(), "edm": edm.detach(), "sw": sw.detach()}


def training_loss(options: Mapping[str, Any], *, dry_level: float | None = None):
    """The loss the training loop calls, ``loss(model, (target, cond), rng)``.

    Parameters
    ----------
    options
        The config's ``loss`` section: keyword arguments of :func:`downscaling_loss` and
        ``sw_clamp_dry`` (clamp at ``dry_level``, passed on as ``sw_floor``).
    dry_level
        The model-space value of 0 mm/h (:attr:`.models.Normaliser.dry_level`); needed
        with ``sw_clamp_dry``.
    """
    opts = dict(options)
    if opts.pop("sw_clamp_dry", False):
        if dry_level is None:
            raise RuntimeError(
                "loss.sw_clamp_dry needs the dry level (the model-space value of 0 mm/h, "
                "from the training statistics)"
            )
        opts["sw_floor"] = dry_level

    def loss(model, batch: Any, rng) -> dict[str, Any]:
        target, cond = batch
        # random flips/transposes would break the fixed orography-rain link: none here
        return downscaling_loss(model, target, cond, rng, **opts)

    return loss
