"""The 2-D diffusion prior of the medical task, its training loss and its wrappers.

- :func:`build_prior`: an unconditional MONAI UNet with Karras preconditioning (Karras et al.
  2022); :func:`flip_edm_loss` is its EDM loss with random left-right flips.
- :class:`AffineData`: the prior lives in ``z = 2 x - 1`` (images in ``[0, 1]``); data
  ``y = A x`` becomes ``A z = 2 y - A 1``.
- :class:`ClampDenoised`: the denoised estimate clipped to the images' known range before the
  data step (guided-diffusion's ``clip_denoised``; Dhariwal & Nichol 2021); the sample
  returned is still the data projection, so data consistency is unchanged.
- :class:`SliceTV` (with :func:`tv1d_prox`): a 3-D prior from the 2-D one (DiffusionMBIR;
  Chung et al., CVPR 2023): slices are denoised as a batch and the estimate gets a
  total-variation proximal step along the slice axis.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from diffsci.core.denoisers import KarrasDenoiser, edm_loss
from diffsci.core.networks import UNet
from diffsci.core.operators import LinearOperator

__all__ = [
    "build_prior",
    "flip_edm_loss",
    "AffineData",
    "ClampDenoised",
    "SliceTV",
    "tv1d_prox",
]


def build_prior(model_cfg: Mapping[str, Any]) -> KarrasDenoiser:
    """The untrained prior ``D(x, sigma)``: a 2-D, one-channel UNet, Karras-preconditioned.

    Parameters
    ----------
    model_cfg
        The config's ``model`` section: ``channels``, ``attention_levels``,
        ``num_res_blocks``, ``sigma_data``.
    """
    net = UNet(
        2,
        1,
        1,
        channels=tuple(model_cfg["channels"]),
        attention_levels=tuple(model_cfg["attention_levels"]),
        num_res_blocks=model_cfg["num_res_blocks"],
    )
    return KarrasDenoiser(net, sigma_data=model_cfg["sigma_data"])


def flip_edm_loss(model: nn.Module, batch: Any, rng: Any) -> Tensor:
    """EDM loss (Karras et al. 2022) of images flipped left-right with probability 1/2 each.

    The flip is an augmentation (anatomy is near-symmetric); both the flips and the loss's
    noise are drawn from ``rng`` (a :class:`~diffsci.core.rng.ShardedRNG`).
    """
    x0 = batch[0] if isinstance(batch, list | tuple) else batch
    flip = (rng.rand((x0.shape[0],)) < 0.5).to(x0.device).reshape(-1, 1, 1, 1)
    x0 = torch.where(flip, x0.flip(-1), x0)
    return edm_loss(model, x0, rng)


class AffineData:
    """The prior's variable is ``z = 2 x - 1`` (images in [0, 1] -> [-1, 1])."""

    @staticmethod
    def to_model(x: Tensor) -> Tensor:
        return 2 * x - 1

    @staticmethod
    def to_image(z: Tensor) -> Tensor:
        return (z + 1) / 2

    @staticmethod
    def data(op: LinearOperator, y: Tensor, shape: tuple[int, ...]) -> Tensor:
        """``A x = y``  ->  ``A z = 2 y - A 1``."""
        ones = torch.ones(shape, dtype=torch.float32, device=y.device)
        return 2 * y - op.forward(ones)


def tv1d_prox(u: Tensor, weight: float, *, dim: int = 0, iters: int = 30) -> Tensor:
    """``argmin_v |v - u|^2 / 2 + weight * sum |v_{i+1} - v_i|`` along ``dim`` (dual projected
    gradient, Chambolle 2004, step 1/4)."""
    if weight <= 0 or u.shape[dim] < 2:
        return u
    u = u.movedim(dim, 0)
    p = torch.zeros_like(u[1:])

    def div(p: Tensor) -> Tensor:  # -D^T p
        z = torch.zeros_like(u[:1])
        return torch.cat([p, z]) - torch.cat([z, p])

    for _ in range(iters):
        v = u + div(p)
        p = (p + 0.25 * (v[1:] - v[:-1])).clamp(-weight, weight)
    return (u + div(p)).movedim(0, dim)


class SliceTV(nn.Module):
    """A 3-D prior from a 2-D one (DiffusionMBIR): denoise the slices of one volume as a batch,
    then a TV proximal step of fixed ``weight`` along the slice axis (the batch dimension).

    DiffusionMBIR solves the z-TV step by ADMM inside each reverse step; a proximal step on
    the denoised estimate (then the data projection, when wrapped by
    :class:`~diffsci.core.posterior.DataConsistency`) is the same idea at one inner iteration.
    """

    def __init__(self, denoiser: nn.Module, weight: float, *, iters: int = 30) -> None:
        super().__init__()
        self.denoiser, self.weight, self.iters = denoiser, float(weight), int(iters)

    def forward(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        d = self.denoiser(x, sigma, cond)
        return tv1d_prox(d, self.weight, dim=0, iters=self.iters)


class ClampDenoised(nn.Module):
    """``D(x, sigma).clamp(lo, hi)``: the denoised estimate kept in the prior's data range
    (images in ``[0, 1]`` are ``[-1, 1]`` for the prior, :class:`AffineData`)."""

    def __init__(self, denoiser: nn.Module, lo: float = -1.0, hi: float = 1.0) -> None:
        super().__init__()
        if not lo < hi:
            raise ValueError(f"need lo < hi, got {lo}, {hi}")
        self.denoiser, self.lo, self.hi = denoiser, float(lo), float(hi)

    def forward(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        return self.denoiser(x, sigma, cond).clamp(self.lo, self.hi)
