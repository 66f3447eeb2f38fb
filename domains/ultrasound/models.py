"""The two diffusion priors of dehazing: tissue and haze, on beamformed IQ patches.

Stevens et al. ("Dehazing Ultrasound using Diffusion Models", IEEE TMI 2024) train one
score model on clean tissue and one on haze, then sample both jointly from the hazy data.
Here each prior is a Karras-preconditioned 2-D UNet of the core (:class:`KarrasDenoiser`
around :class:`~diffsci.core.networks.UNet`) on two channels (I and Q) of beamformed IQ
patches in model units (IQ divided by one global scale; :func:`iq_to_channels`).

:class:`DehazePriors` holds both so the core's one training loop trains them: the loss is the
sum of each network's own EDM loss on its own data (tissue patches, haze patches); the
networks share no parameter, so each gets exactly the gradient of its own loss (only the
optional global gradient-norm clipping couples their step sizes; configs set ``grad_clip``
to ``null`` to train them as if separately).

:class:`SupervisedDehazer` is the supervised baseline of issue 20: the same UNet trained by
regression on (hazy, clean) pairs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from diffsci.core.denoisers import KarrasDenoiser, edm_loss
from diffsci.core.networks import UNet

__all__ = [
    "DehazePriors",
    "build_priors",
    "dehaze_loss",
    "iq_to_channels",
    "channels_to_iq",
    "SupervisedDehazer",
    "supervised_loss",
]


def iq_to_channels(iq: Tensor, scale: float) -> Tensor:
    """Complex IQ ``(..., nz, nx)`` -> real ``(..., 2, nz, nx)`` (I, Q) divided by ``scale``."""
    return torch.stack([iq.real, iq.imag], -3).to(torch.float32) / scale


def channels_to_iq(x: Tensor, scale: float) -> Tensor:
    """Inverse of :func:`iq_to_channels`."""
    return torch.complex(x[..., 0, :, :].double(), x[..., 1, :, :].double()) * scale


def _prior(model_cfg: Mapping[str, Any], sigma_data: float) -> KarrasDenoiser:
    net = UNet(
        2,
        2,
        2,
        channels=tuple(model_cfg["channels"]),
        attention_levels=tuple(model_cfg["attention_levels"]),
        num_res_blocks=model_cfg["num_res_blocks"],
    )
    return KarrasDenoiser(net, sigma_data=sigma_data)


class DehazePriors(nn.Module):
    """The tissue prior ``tissue(x, sigma)`` and the haze prior ``haze(h, sigma)``.

    ``forward`` denoises a 4-channel stack ``[x (I, Q), h (I, Q)]`` with each prior on its own
    half, at the same sigma.
    """

    def __init__(self, tissue: KarrasDenoiser, haze: KarrasDenoiser) -> None:
        super().__init__()
        self.tissue, self.haze = tissue, haze

    def forward(self, z: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        return torch.cat([self.tissue(z[:, :2], sigma), self.haze(z[:, 2:], sigma)], 1)


def build_priors(model_cfg: Mapping[str, Any]) -> DehazePriors:
    """Both untrained priors from the config's ``model`` section (``channels``,
    ``attention_levels``, ``num_res_blocks``, ``sigma_data`` of tissue and haze)."""
    return DehazePriors(
        _prior(model_cfg, model_cfg["sigma_data_tissue"]),
        _prior(model_cfg, model_cfg["sigma_data_haze"]),
    )


def _flip(x: Tensor, rng: Any) -> Tensor:
    """Lateral mirror with probability 1/2 per sample (a mirrored scene is a valid scene)."""
    flip = (rng.rand((x.shape[0],)) < 0.5).to(x.device).reshape(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


def dehaze_loss(model: nn.Module, batch: Any, rng: Any) -> dict[str, Tensor]:
    """EDM loss of each prior on its own patches (Karras et al. 2022), summed; both terms are
    logged. ``batch = (tissue patches, haze patches)``, each ``(B, 2, p, p)``."""
    base = model.module if hasattr(model, "module") else model
    x, h = batch
    lt = edm_loss(base.tissue, _flip(x, rng), rng)
    lh = edm_loss(base.haze, _flip(h, rng), rng)
    return {"loss": lt + lh, "loss_tissue": lt.detach(), "loss_haze": lh.detach()}


class SupervisedDehazer(nn.Module):
    """The supervised baseline: a core UNet regressing the tissue IQ from the hazy IQ
    (trained on pairs ``y = (1 - w) x + w h`` made from the training patches), no diffusion."""

    def __init__(self, model_cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.net = UNet(
            2,
            2,
            2,
            channels=tuple(model_cfg["channels"]),
            attention_levels=tuple(model_cfg["attention_levels"]),
            num_res_blocks=model_cfg["num_res_blocks"],
        )

    def forward(self, y: Tensor) -> Tensor:
        return y + self.net(y, torch.zeros(y.shape[0], device=y.device))


def supervised_loss(model: nn.Module, batch: Any, rng: Any) -> Tensor:
    """Mean squared error of the tissue estimate, both inputs mirrored together."""
    y, x = batch
    flip = (rng.rand((y.shape[0],)) < 0.5).to(y.device).reshape(-1, 1, 1, 1)
    y, x = torch.where(flip, y.flip(-1), y), torch.where(flip, x.flip(-1), x)
    return ((model(y) - x) ** 2).mean()
