"""Networks: CorrDiff's regression UNet (the conditional mean) and the conditional diffusion
model of the residual, both built on the core's MONAI UNet; ensemble sampling.

Conditioning is image-like: the standardised coarse predictors and invariants
(:class:`.transforms.Normaliser`), concatenated to the noisy state; with ``residual=True`` the
regression mean is an extra conditioning channel and the diffusion model generates
``target - mean`` (CorrDiff). All fields live in the standardised ``log1p`` space.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from diffsci.core.denoisers import KarrasDenoiser
from diffsci.core.networks import UNet
from diffsci.core.samplers import get_sampler
from diffsci.core.schedules import LogNormalSigma, karras

__all__ = ["RegressionUNet", "DownscalingModel", "build_model", "sample_ensemble"]


class RegressionUNet(nn.Module):
    """Deterministic downscaler ``mean = f(cond)``: a UNet on the conditioning channels (noise
    level fixed at 0, so it is a plain UNet), trained with MSE (CorrDiff's regression step)."""

    def __init__(self, cond_channels: int, *, channels: Sequence[int],
                 attention_levels: Sequence[bool], num_res_blocks: int = 1) -> None:  # fmt: skip
        super().__init__()
        self.net = UNet(2, cond_channels, 1, channels=tuple(channels),
                        attention_levels=tuple(attention_levels),
                        num_res_blocks=num_res_blocks)  # fmt: skip

    def forward(self, cond: Tensor) -> Tensor:
        zero = torch.zeros(cond.shape[0], device=cond.device, dtype=cond.dtype)
        return self.net(cond, zero)


class DownscalingModel(nn.Module):
    """Regression mean (optional) plus a Karras-preconditioned conditional denoiser.

    ``forward(x, sigma, cond)`` is the denoiser ``D`` of the residual (or of the target when
    ``residual=False``); ``cond`` is the *full* conditioning from :meth:`condition`.
    """

    def __init__(self, cond_channels: int, *, residual: bool, channels: Sequence[int],
                 attention_levels: Sequence[bool], num_res_blocks: int = 1,
                 sigma_data: float = 0.5, train_sigma: tuple[float, float] = (-1.2, 1.2),
                 regression_channels: Sequence[int] | None = None) -> None:  # fmt: skip
        super().__init__()
        self.residual = bool(residual)
        self.cond_channels = int(cond_channels)
        self.regression = (
            RegressionUNet(
                cond_channels,
                channels=regression_channels or channels,
                attention_levels=[False] * len(regression_channels or channels),
                num_res_blocks=num_res_blocks,
            )  # fmt: skip
            if residual
            else None
        )
        net = UNet(2, 1, 1, channels=tuple(channels), attention_levels=tuple(attention_levels),
                   num_res_blocks=num_res_blocks,
                   cond_channels=cond_channels + int(self.residual))  # fmt: skip
        self.denoiser = KarrasDenoiser(net, sigma_data=sigma_data,
                                       train_sigma=LogNormalSigma(*train_sigma))  # fmt: skip

    def condition(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        """``(mean, full_cond)``: the regression mean (zeros without residual) and the
        conditioning the denoiser receives."""
        if self.regression is None:
            return torch.zeros_like(cond[:, :1]), cond
        mean = self.regression(cond)
        return mean, torch.cat([cond, mean.detach()], dim=1)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Tensor) -> Tensor:
        return self.denoiser(x, sigma, cond)


def build_model(cfg: Mapping[str, Any], cond_channels: int) -> DownscalingModel:
    """The model of a validated config (section ``model``)."""
    m = cfg["model"]
    return DownscalingModel(cond_channels, residual=m["residual"], channels=m["channels"],
                            attention_levels=m["attention_levels"],
                            num_res_blocks=m["num_res_blocks"], sigma_data=m["sigma_data"],
                            train_sigma=(m["train_sigma_mean"], m["train_sigma_std"]),
                            regression_channels=m.get("regression_channels"))  # fmt: skip


@torch.no_grad()
def sample_ensemble(model: DownscalingModel, cond: Tensor, *, members: int, steps: int,
                    sampler: str = "heun", sigma_min: float = 0.002, sigma_max: float = 80.0,
                    noise: Tensor | None = None, generator: torch.Generator | None = None,
                    callback: Callable | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Ensemble of ``members`` fields per case, in model space.

    Parameters
    ----------
    cond
        Standardised conditioning ``(B, C, H, W)``.
    noise
        Initial standard-normal noise ``(members, B, 1, H, W)`` (e.g. positional noise for
        tiled inference); drawn from ``generator`` if None.
    sampler
        A core sampler; the deterministic ones (euler, heun, dpmpp_2m, ddim with eta 0) make
        each member a function of its initial noise only, which tiled inference relies on.

    Returns
    -------
    (members (M, B, 1, H, W), mean (B, 1, H, W))
        The members and the regression mean (zeros without the residual model).
    """
    b, _, h, w = cond.shape
    mean, full = model.condition(cond)
    sigmas = karras(steps, sigma_min, sigma_max).to(cond.device)
    if noise is None:
        noise = torch.randn((members, b, 1, h, w), generator=generator,
                            device=generator.device if generator is not None else cond.device)  # fmt: skip
    noise = noise.to(cond.device, cond.dtype)
    if noise.shape != (members, b, 1, h, w):
        raise ValueError(f"noise must have shape {(members, b, 1, h, w)}, got {tuple(noise.shape)}")
    x = noise.flatten(0, 1) * float(sigmas[0])
    fn = get_sampler(sampler)
    full_rep = full.repeat(members, 1, 1, 1)
    out = fn(model, x, sigmas, cond=full_rep, generator=generator, callback=callback)
    out = out.reshape(members, b, 1, h, w) + mean.unsqueeze(0)
    return out, mean
