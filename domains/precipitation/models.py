"""Networks and their codec: CorrDiff's regression UNet (the conditional mean) and the
conditional diffusion model of the residual, both built on the core's MONAI UNet; ensemble
sampling; the :class:`Normaliser` between physical fields and the model's space (WassDiff's
``log(1 + x)`` for precipitation, then standardisation with the statistics JSON of
:func:`.io.compute_stats`).

Conditioning is image-like: the standardised coarse predictors and invariants
(:class:`Normaliser`), concatenated to the noisy state; with ``residual=True`` the
regression mean is an extra conditioning channel and the diffusion model generates
``target - mean`` (CorrDiff). All fields live in the standardised ``log1p`` space.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from os import PathLike
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from diffsci.core.denoisers import KarrasDenoiser
from diffsci.core.networks import UNet
from diffsci.core.samplers import get_sampler
from diffsci.core.schedules import LogNormalSigma, default_sigmas, karras, start_std

__all__ = [
    "forward_transform",
    "inverse_transform",
    "Normaliser",
    "RegressionUNet",
    "DownscalingModel",
    "build_model",
    "sample_ensemble",
]


def forward_transform(x, kind: str):
    """``log1p`` (precipitation) or identity, for numpy arrays or tensors."""
    if kind == "log1p":
        return torch.log1p(x) if isinstance(x, torch.Tensor) else np.log1p(x)
    if kind == "none":
        return x
    raise ValueError(f"unknown transform {kind!r} (use 'log1p' or 'none')")


def inverse_transform(z, kind: str):
    """Inverse of :func:`forward_transform`; ``expm1`` clamped at 0 (no negative rain)."""
    if kind == "log1p":
        if isinstance(z, torch.Tensor):
            return torch.expm1(z).clamp_min(0)
        return np.maximum(np.expm1(z), 0)
    if kind == "none":
        return z
    raise ValueError(f"unknown transform {kind!r} (use 'log1p' or 'none')")


class Normaliser:
    """Maps physical fields to the model's standardised space and back.

    Parameters
    ----------
    stats
        The statistics mapping (``{"input": {name: {mean, std, transform}}, ...}``).
    input_variables, invariant_variables
        Order of the conditioning channels (the dataset's ``input_variable`` and
        ``invariant_variable`` coordinates).
    """

    def __init__(
        self,
        stats: Mapping[str, Any],
        input_variables: Sequence[str],
        invariant_variables: Sequence[str] = (),
    ) -> None:
        self.stats = stats
        self.input_variables = list(input_variables)
        self.invariant_variables = list(invariant_variables)
        for group, names in (
            ("input", self.input_variables),
            ("invariant", self.invariant_variables),
        ):
            for n in names:
                if n not in stats.get(group, {}):
                    raise KeyError(f"statistics have no entry {group}.{n}")
        if "tp" not in stats.get("output", {}):
            raise KeyError("statistics have no entry output.tp")

    @classmethod
    def from_file(
        cls,
        path: str | PathLike,
        input_variables: Sequence[str],
        invariant_variables: Sequence[str] | None = None,
    ) -> Normaliser:
        """The normaliser of a statistics JSON (:func:`.io.read_stats`), checked to hold every
        variable named; ``invariant_variables`` default to :data:`.io.INVARIANT_VARIABLES`."""
        from .io import INVARIANT_VARIABLES, read_stats

        inv = list(INVARIANT_VARIABLES if invariant_variables is None else invariant_variables)
        names = {"input": list(input_variables), "output": ["tp"], "invariant": inv}
        return cls(read_stats(path, names=names), input_variables, inv)

    @property
    def cond_channels(self) -> int:
        return len(self.input_variables) + len(self.invariant_variables)

    @property
    def dry_level(self) -> float:
        """The model-space value of 0 mm/h (``-mean / std`` of ``log1p``): every value at or
        below it decodes to no rain."""
        return float(self.encode_target(torch.zeros(1)))

    @staticmethod
    def _apply(x: torch.Tensor, s: Mapping[str, Any]) -> torch.Tensor:
        return (forward_transform(x, s["transform"]) - s["mean"]) / s["std"]

    def encode_condition(
        self, inputs: torch.Tensor, invariant: torch.Tensor | None
    ) -> torch.Tensor:
        """``inputs (B, C_in, H, W)`` and ``invariant (C_inv, H, W)`` (or per case
        ``(B, C_inv, H, W)``) -> ``(B, C_cond, H, W)``."""
        chans = [
            self._apply(inputs[:, i], self.stats["input"][n])
            for i, n in enumerate(self.input_variables)
        ]
        if self.invariant_variables:
            if invariant is None:
                raise ValueError(
                    f"this model needs the invariant fields {self.invariant_variables}"
                )
            inv = invariant if invariant.dim() == 4 else invariant.unsqueeze(0)
            for i, n in enumerate(self.invariant_variables):
                chans.append(self._apply(inv[:, i], self.stats["invariant"][n]).expand_as(chans[0]))
        return torch.stack(chans, dim=1).float()

    def encode_target(self, tp: torch.Tensor) -> torch.Tensor:
        """Precipitation (mm h-1) -> standardised ``log1p`` space."""
        return self._apply(tp, self.stats["output"]["tp"]).float()

    def decode_target(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised ``log1p`` space -> precipitation (mm h-1), non-negative."""
        s = self.stats["output"]["tp"]
        return inverse_transform(z * s["std"] + s["mean"], s["transform"])


class RegressionUNet(nn.Module):
    """Deterministic downscaler ``mean = f(cond)``: a UNet on the conditioning channels (noise
    level fixed at 0, so it is a plain UNet), trained with MSE (CorrDiff's regression step)."""

    def __init__(
        self,
        cond_channels: int,
        *,
        channels: Sequence[int],
        attention_levels: Sequence[bool],
        num_res_blocks: int = 1,
    ) -> None:
        super().__init__()
        self.net = UNet(
            2,
            cond_channels,
            1,
            channels=tuple(channels),
            attention_levels=tuple(attention_levels),
            num_res_blocks=num_res_blocks,
        )

    def forward(self, cond: Tensor) -> Tensor:
        zero = torch.zeros(cond.shape[0], device=cond.device, dtype=cond.dtype)
        return self.net(cond, zero)


class DownscalingModel(nn.Module):
    """Regression mean (optional) plus a Karras-preconditioned conditional denoiser.

    ``forward(x, sigma, cond)`` is the denoiser ``D`` of the residual (or of the target when
    ``residual=False``); ``cond`` is the *full* conditioning from :meth:`condition`.
    """

    def __init__(
        self,
        cond_channels: int,
        *,
        residual: bool,
        channels: Sequence[int],
        attention_levels: Sequence[bool],
        num_res_blocks: int = 1,
        sigma_data: float = 0.5,
        train_sigma: tuple[float, float] = (-1.2, 1.2),
        regression_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.residual = bool(residual)
        self.cond_channels = int(cond_channels)
        self.regression = (
            RegressionUNet(
                cond_channels,
                channels=regression_channels or channels,
                attention_levels=[False] * len(regression_channels or channels),
                num_res_blocks=num_res_blocks,
            )
            if residual
            else None
        )
        net = UNet(
            2,
            1,
            1,
            channels=tuple(channels),
            attention_levels=tuple(attention_levels),
            num_res_blocks=num_res_blocks,
            cond_channels=cond_channels + int(self.residual),
        )
        self.denoiser = KarrasDenoiser(
            net, sigma_data=sigma_data, train_sigma=LogNormalSigma(*train_sigma)
        )

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
    return DownscalingModel(
        cond_channels,
        residual=m["residual"],
        channels=m["channels"],
        attention_levels=m["attention_levels"],
        num_res_blocks=m["num_res_blocks"],
        sigma_data=m["sigma_data"],
        train_sigma=(m["train_sigma_mean"], m["train_sigma_std"]),
        regression_channels=m.get("regression_channels"),
    )


@torch.no_grad()
def sample_ensemble(
    model: DownscalingModel,
    cond: Tensor,
    *,
    members: int,
    steps: int,
    sampler: str = "heun",
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    schedule: str = "karras",
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
) -> tuple[Tensor, Tensor]:
    """Ensemble of ``members`` fields per case, in model space.

    Parameters
    ----------
    cond
        Standardised conditioning ``(B, C, H, W)``.
    noise
        Initial standard-normal noise ``(members, B, 1, H, W)`` (e.g. positional noise for
        tiled inference); drawn from ``generator`` if None.
    sampler
        A core sampler; the deterministic ones (euler, heun, dpmpp_2m, unipc, ddim with eta 0) make
        each member a function of its initial noise only, which tiled inference relies on.
    schedule
        ``"karras"``: EDM's schedule (rho 7) from ``sigma_max`` to ``sigma_min``;
        ``"default"``: the core's few-step schedule,
        :func:`~diffsci.core.schedules.default_sigmas` (for ``sampler``, over the denoiser's
        ``sigma_data`` and training range; the start is drawn with the noisy marginal's
        scale ``sqrt(sigma_max^2 + sigma_data^2)``, as :func:`~diffsci.core.samplers.sample`
        does).

    Returns
    -------
    (members (M, B, 1, H, W), mean (B, 1, H, W))
        The members and the regression mean (zeros without the residual model).
    """
    b, _, h, w = cond.shape
    mean, full = model.condition(cond)
    if schedule == "karras":
        sigmas, scale = karras(steps, sigma_min, sigma_max), None
    elif schedule == "default":
        sigmas = default_sigmas(model.denoiser, steps, sampler=sampler)
        scale = start_std(sigmas, model.denoiser.sigma_data)
    else:
        raise ValueError(f"schedule must be 'karras' or 'default', got {schedule!r}")
    sigmas = sigmas.to(cond.device)
    if noise is None:
        noise = torch.randn(
            (members, b, 1, h, w),
            generator=generator,
            device=generator.device if generator is not None else cond.device,
        )
    noise = noise.to(cond.device, cond.dtype)
    if noise.shape != (members, b, 1, h, w):
        raise ValueError(f"noise must have shape {(members, b, 1, h, w)}, got {tuple(noise.shape)}")
    x = noise.flatten(0, 1) * (float(sigmas[0]) if scale is None else scale)
    fn = get_sampler(sampler)
    full_rep = full.repeat(members, 1, 1, 1)
    out = fn(model, x, sigmas, cond=full_rep, generator=generator, callback=callback)
    out = out.reshape(members, b, 1, h, w) + mean.unsqueeze(0)
    return out, mean
