"""Self-supervised restoration of one noisy cube, no training data (DDS2M-style).

DDS2M (Miao et al., "DDS2M: Self-Supervised Denoising Diffusion Spatio-Spectral Model for
Hyperspectral Image Restoration", ICCV 2023; code miaoyuchun/DDS2M) runs the reverse diffusion
of a posterior sampler whose denoiser is an *untrained* network, fitted during sampling to the
current noisy state and to nothing else: at every step its parameters take a few Adam steps
on ``|g_theta(u) - x_t|^2`` (``u`` a fixed random input, the deep image prior of Ulyanov et al.,
CVPR 2018), warm-started from the previous step, and an exponential moving average of its
output is the step's ``x0`` estimate. The network's bias towards natural images rather than
noise, not any training set, is the prior.

Here, as in the rest of the domain, the cube enters through its robust spectral subspace
(:mod:`.subspace`: noise levels, stripes, impulse and dead entries handled there) and the
untrained network lives on the ``k`` coefficient images, in their maximum-noise-fraction
units (unit noise where observed; DDS2M's spectral factor is this subspace basis, estimated
from the cube, as FastHyDe does; its spatial factor is the network).
:class:`DeepImagePriorDenoiser` is a core ``Denoiser`` (``D(x, sigma)``) and the loop is the
core's DDRM (:func:`diffsci.core.posterior.ddrm_denoise`, ``eta_b = 1`` as DDS2M): while the
diffusion level is above the data's noise the network is fitted to the data plus extra noise
of the remaining variance, below it to the DDRM blend of its own estimate and the data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from diffsci.core.posterior import ddrm_denoise
from diffsci.core.schedules import exponential

from .subspace import robust_subspace

__all__ = ["DeepImagePriorDenoiser", "restore_self_supervised", "SELF_SUPERVISED_DEFAULTS"]

#: The recipe, chosen on validation cubes (benchmarks/hyperspectral.py, its self-supervised
#: selection), never on the held-out ones.
SELF_SUPERVISED_DEFAULTS: dict[str, Any] = {
    "components": 4,
    "steps": 100,
    "iters": 6,
    "lr": 0.01,
    "ema": 0.9,
    "sigma_max": 3.0,
    "sigma_min": 0.01,
    "eta": 0.5,
    "channels": (32, 64, 64),
    "runs": 4,  # the mean of 4 independent runs: 26.74 dB on the validation cubes, 26.07 for 1
}


class DeepImagePriorDenoiser(nn.Module):
    """An untrained network fitted to each state it is asked to denoise (DDS2M's VS2M role).

    Parameters
    ----------
    components
        Channels of the state (the subspace dimension ``k``).
    channels
        Widths of MONAI's ``UNet`` levels (stride 2 between levels): the generator ``g``.
    iters
        Adam steps per call (DDS2M: one per diffusion step over ~1000 steps; fewer sampler
        steps take more each).
    lr
        Adam learning rate (DDS2M: 5e-4).
    ema
        Weight of the running average of ``g(u)`` that is returned (DDS2M: 0.98).
    input_channels
        Channels of the fixed input ``u ~ U(0, 0.1)`` (Ulyanov et al.).
    seed
        Seeds the network's initialisation and ``u``: the restoration is reproducible.

    Notes
    -----
    The state carries over between calls (warm start, running average); :meth:`reset` starts
    a new cube. The sigma argument is not used: the fit sees only the state.
    """

    def __init__(
        self,
        components: int,
        *,
        channels: Sequence[int] = (32, 64, 64),
        iters: int = 4,
        lr: float = 5e-4,
        ema: float = 0.98,
        input_channels: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if components < 1 or iters < 1 or not 0.0 <= ema < 1.0 or lr <= 0:
            raise ValueError(
                f"need components >= 1, iters >= 1, 0 <= ema < 1, lr > 0; got {components}, "
                f"{iters}, {ema}, {lr}"
            )
        self.components, self.iters, self.lr, self.ema = int(components), int(iters), lr, ema
        self.channels, self.input_channels, self.seed = tuple(channels), input_channels, seed
        self.reset()

    @property
    def multiple(self) -> int:
        """Spatial sizes must be multiples of this (the generator's downsampling)."""
        return 2 ** (len(self.channels) - 1)

    def reset(self) -> None:
        """Forget the fitted network and the running average (a new cube)."""
        self.net: nn.Module | None = None
        self._u: Tensor | None = None
        self._avg: Tensor | None = None
        self._opt: torch.optim.Optimizer | None = None
        self.calls = 0

    def _build(self, x: Tensor) -> None:
        from monai.networks.nets import UNet as MonaiUNet

        g = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = MonaiUNet(
                spatial_dims=2,
                in_channels=self.input_channels,
                out_channels=self.components,
                channels=self.channels,
                strides=(2,) * (len(self.channels) - 1),
                num_res_units=1,
            ).to(x.device)
        u = 0.1 * torch.rand((1, self.input_channels, *x.shape[-2:]), generator=g)
        self._u = u.to(x.device)
        self._opt = torch.optim.Adam(self.net.parameters(), lr=self.lr)

    def forward(self, x: Tensor, sigma: Any = None, cond: Any = None) -> Tensor:
        if x.shape[0] != 1 or x.shape[1] != self.components:
            raise ValueError(
                f"the deep image prior restores one state of {self.components} channels at a "
                f"time, got shape {tuple(x.shape)}"
            )
        if self.net is None or self._u.shape[-2:] != x.shape[-2:]:
            self._build(x)
        target = x.detach().float()
        with torch.enable_grad():
            for _ in range(self.iters):
                self._opt.zero_grad(set_to_none=True)
                loss = (self.net(self._u) - target).pow(2).mean()
                loss.backward()
                self._opt.step()
        with torch.no_grad():
            out = self.net(self._u)
            self._avg = out if self._avg is None else self.ema * self._avg + (1 - self.ema) * out
        self.calls += 1
        return self._avg.to(x.dtype)


def restore_self_supervised(
    noisy: np.ndarray,
    *,
    settings: Mapping[str, Any] | None = None,
    sigma: np.ndarray | None = None,
    good_band: np.ndarray | None = None,
    seed: int = 0,
    robust: bool = True,
    device: torch.device | str = "cpu",
):
    """Restore one noisy cube ``(B, H, W)`` with no training data (see the module docstring).

    ``settings`` override :data:`SELF_SUPERVISED_DEFAULTS` (``components``, ``steps`` of the
    log-linear schedule from ``sigma_max`` to ``sigma_min`` in noise units, ``iters`` Adam
    steps of ``lr`` per step, ``ema``, DDRM's ``eta``, the generator's ``channels``, and
    ``runs``: independent runs (network initialisation and DDRM noise from ``seed + r``)
    whose coefficients are averaged, as the trained prior averages posterior samples).
    Returns a :class:`.models.Restored` (its spread: the runs' std; zero for one run).
    """
    from .models import Restored

    cfg = {**SELF_SUPERVISED_DEFAULTS, **(settings or {})}
    unknown = set(cfg) - set(SELF_SUPERVISED_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown self-supervised settings {sorted(unknown)}")
    k = int(cfg["components"])
    sub = robust_subspace(noisy, k, sigma=sigma, good_band=good_band, robust=robust)
    runs = [_one_run(sub, cfg, seed + r, device) for r in range(int(cfg["runs"]))]
    coef = np.mean(runs, axis=0)
    spread = np.std(runs, axis=0) if len(runs) > 1 else np.zeros_like(coef)
    return Restored(sub.cube(coef).astype(np.float32), sub, spread, np.ones(k))


def _one_run(sub, cfg: Mapping[str, Any], seed: int, device) -> np.ndarray:
    """One DDRM run with a freshly initialised network: the coefficient images ``(k, H, W)``."""
    from .models import _pad

    den = DeepImagePriorDenoiser(
        sub.coef.shape[0],
        channels=cfg["channels"],
        iters=int(cfg["iters"]),
        lr=float(cfg["lr"]),
        ema=float(cfg["ema"]),
        seed=seed,
    )
    z, (h, w) = _pad(torch.from_numpy(sub.coef).float()[None], den.multiple)
    s, _ = _pad(torch.from_numpy(sub.coef_std).float()[None], den.multiple)
    sig = exponential(int(cfg["steps"]), float(cfg["sigma_min"]), float(cfg["sigma_max"]))
    g = torch.Generator().manual_seed(seed)
    out = ddrm_denoise(den.to(device), z.to(device), s.to(device), sig, eta=cfg["eta"], generator=g)
    return out[0, :, :h, :w].double().cpu().numpy()
