"""Diffusion dehazing of beamformed IQ frames: joint posterior of tissue and haze, tiled.

The observation model (model units, IQ as two real channels) is
``y = (1 - w) x + w h`` with ``x`` the tissue, ``h`` the haze and ``w`` the haze weight
(:func:`~.simulate.mix_haze`). Dividing by ``1 - w`` gives ``y' = x + gamma h`` with
``gamma = w / (1 - w)``: an identity operator on ``x`` (orthonormal rows), for which the core's
:class:`~diffsci.core.posterior.JointPosterior` likelihood variance
``s^2 + r_x^2 + gamma^2 r_h^2`` is the stated one. Both priors are sampled jointly by one
solver (Stevens et al., "Dehazing Ultrasound using Diffusion Models", IEEE TMI 2024).

Full frames are processed patch-wise with the core's :func:`~diffsci.core.tiling.tiled_map`
(raised-cosine overlap blending); each tile's initial noise is
:func:`~diffsci.core.tiling.positional_noise`, so overlapping tiles start from the same noise
where they overlap.

Sequences (SeqDiff, Stevens et al., arXiv 2409.05399): frame ``t > 0`` starts from frame
``t - 1``'s posterior estimate noised to ``warm_sigma`` and runs a short schedule from there
(``warm_steps`` network evaluations instead of ``steps``, Karras spacing down to
``warm_sigma_min``). With ``warm_antithetic`` the warm samples come in antithetic pairs (start
noise ``z`` and ``-z``; Hammersley & Morton 1956): the mean of a pair cancels the part of the
estimate that is linear in the start noise, the largest part of its Monte Carlo error when a
frame averages few samples after few steps.

:func:`single_prior_dps`: the baseline that knows only the tissue prior and treats the haze
as Gaussian noise, ``y' = x + n``, ``n ~ N(0, s^2)`` with ``s`` the haze's std times
``gamma`` (core :func:`~diffsci.core.posterior.reconstruct`, PiGDM variance).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from diffsci.core.operators import Identity
from diffsci.core.posterior import JointPosterior, reconstruct
from diffsci.core.samplers import get_sampler
from diffsci.core.schedules import karras
from diffsci.core.tiling import positional_noise, tiled_map

__all__ = ["SamplingOptions", "CountingDenoiser", "dehaze_frames", "single_prior_dps"]


@dataclass(frozen=True)
class SamplingOptions:
    """How the joint posterior is sampled (the config's ``sampling`` section)."""

    haze_weight: float
    steps: int = 20
    sampler: str = "euler"
    sigma_min: float = 0.005
    sigma_max: float = 3.0
    noise_std: float = 0.01
    guidance: float = 1.0
    tile: int = 32
    overlap: int = 16
    batch: int = 8
    warm_sigma: float | None = None
    warm_steps: int = 2
    samples: int = 1
    warm_samples: int = 1
    warm_sigma_min: float | None = None
    antithetic: bool = False
    warm_antithetic: bool = False

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> SamplingOptions:
        s = cfg["sampling"]
        keys = (
            "steps",
            "sampler",
            "sigma_min",
            "sigma_max",
            "noise_std",
            "guidance",
            "tile",
            "overlap",
            "batch",
            "samples",
            "antithetic",
        )
        return cls(haze_weight=cfg["haze"]["weight"], **{k: s[k] for k in keys})

    def __post_init__(self) -> None:
        if self.warm_sigma is not None:
            low = self.sigma_min if self.warm_sigma_min is None else self.warm_sigma_min
            if not 0 < low < self.warm_sigma:
                raise ValueError(
                    f"the warm schedule needs 0 < warm_sigma_min < warm_sigma, got {low} and "
                    f"{self.warm_sigma} (config: sequence.warm_sigma_min, sequence.warm_sigma)"
                )

    def with_sequence(self, seq: Mapping[str, Any]) -> SamplingOptions:
        """These options with the warm starts of a config's ``sequence`` section."""
        return replace(
            self,
            warm_sigma=seq["warm_sigma"],
            warm_steps=seq["warm_steps"],
            warm_samples=seq["warm_samples"],
            warm_sigma_min=seq.get("warm_sigma_min"),
            warm_antithetic=seq.get("antithetic", False),
        )

    @property
    def gamma(self) -> float:
        return self.haze_weight / (1 - self.haze_weight)

    def sigmas(self) -> Tensor:
        return karras(self.steps, self.sigma_min, self.sigma_max)

    def warm_sigmas(self) -> Tensor:
        if self.warm_sigma is None:
            raise ValueError("warm_sigmas needs warm_sigma")
        low = self.sigma_min if self.warm_sigma_min is None else self.warm_sigma_min
        return karras(self.warm_steps, low, self.warm_sigma)


class CountingDenoiser(nn.Module):
    """Counts network evaluations (one per call, per sample in the batch: ``nfe_per_item``)."""

    def __init__(self, denoiser: nn.Module) -> None:
        super().__init__()
        self.denoiser, self.calls = denoiser, 0

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        self.calls += 1
        return self.denoiser(x, sigma, cond)


def _joint(priors: nn.Module, y: Tensor, opt: SamplingOptions) -> JointPosterior:
    shape = tuple(y.shape[1:])
    return JointPosterior(
        priors.tissue,
        priors.haze,
        shape_x=shape,
        shape_h=shape,
        y=y / (1 - opt.haze_weight),
        gamma=opt.gamma,
        noise_std=opt.noise_std / (1 - opt.haze_weight),
        sigma_data_x=priors.tissue.sigma_data,
        sigma_data_h=priors.haze.sigma_data,
        scale=opt.guidance,
    )


def _tile_fn(
    priors: nn.Module,
    opt: SamplingOptions,
    seed: int,
    counter: list[int],
    warm: bool,
    sign: float = 1.0,
):
    """``fn(tiles, origins)`` for :func:`tiled_map`: source channels ``[y (2)]`` or, warm,
    ``[y (2), x_prev (2), h_prev (2)]``; returns ``[x (2), h (2)]`` per tile. ``sign = -1``
    negates the start noise (the antithetic partner of the same seed)."""

    def fn(tiles: np.ndarray, origins: list[tuple[int, int]]) -> np.ndarray:
        t = torch.from_numpy(tiles)
        y = t[:, :2]
        n, _, th, tw = y.shape
        joint = CountingDenoiser(_joint(priors, y, opt))
        noise = np.stack(
            [
                positional_noise((4,), slice(r, r + th), slice(c, c + tw), seed=seed)
                for r, c in origins
            ]
        )
        noise = sign * torch.from_numpy(noise).reshape(n, -1)
        if warm:
            sig = opt.warm_sigmas()
            z = t[:, 2:6].reshape(n, -1) + float(sig[0]) * noise
        else:
            sig = opt.sigmas()
            z = noise * float(sig[0])
        z = get_sampler(opt.sampler)(joint, z, sig)
        counter[0] += joint.calls
        x, h = joint.denoiser.split(z)
        return torch.cat([x, h], 1).detach().numpy()

    return fn


@torch.no_grad()
def dehaze_frames(
    priors: nn.Module,
    y: Tensor,
    opt: SamplingOptions,
    *,
    seed: int = 0,
    sequence: bool = False,
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """Posterior means ``(x, h)`` of the joint posterior for hazy frames ``y``
    ``(T, 2, nz, nx)`` (model units), each the mean of ``opt.samples`` samples.

    The mean of the samples estimates the posterior mean (the MMSE estimate) in the IQ
    domain; a single sample (``samples: 1``) keeps the sampling noise of a small prior.
    ``sequence=True`` with ``opt.warm_sigma`` set: frame 0 from noise, every later frame's
    ``opt.warm_samples`` samples warm started from the previous frame's posterior mean
    (in antithetic pairs with ``opt.warm_antithetic``; frames from noise with
    ``opt.antithetic``). Returns
    ``(x, h, info)`` with ``info`` holding the network evaluations per frame
    (``nfe_per_frame``: calls of the joint denoiser, each evaluating both priors, per tile
    position, all samples counted) and ``seconds_per_frame``.
    """
    priors = priors.eval()
    xs, hs = [], []
    counter = [0]
    t0 = time.perf_counter()
    prev: np.ndarray | None = None
    batches = 0
    per_frame: dict[int, int] = {}  # samples drawn per frame
    for k in range(y.shape[0]):
        warm = sequence and opt.warm_sigma is not None and prev is not None
        src = y[k].numpy().astype(np.float32)
        if warm:
            src = np.concatenate([src, prev])
        out = np.zeros((4, *src.shape[-2:]), np.float32)
        n_s = opt.warm_samples if warm else opt.samples
        pairs = opt.warm_antithetic if warm else opt.antithetic
        for j in range(n_s):
            part = np.zeros_like(out)
            # antithetic pairs (j even, j odd) share a seed and negate its noise
            jj, sign = (j // 2, -1.0 if j % 2 else 1.0) if pairs else (j, 1.0)
            fn = _tile_fn(priors, opt, seed + 7919 * k + 104729 * jj, counter, warm, sign)
            with torch.enable_grad():
                res = tiled_map(fn, src, part, tile=opt.tile, overlap=opt.overlap, batch=opt.batch)
            out += part / n_s
            batches += -(-res["tiles"] // opt.batch)
            per_frame[k] = per_frame.get(k, 0) + 1
        prev = out
        xs.append(torch.from_numpy(out[:2].copy()))
        hs.append(torch.from_numpy(out[2:].copy()))
    sec = (time.perf_counter() - t0) / y.shape[0]
    # calls per batch of tiles, times the samples: per tile position, averaged over frames
    nfe = counter[0] / max(batches, 1) * sum(per_frame.values()) / y.shape[0]
    info = {"nfe_per_frame": nfe, "seconds_per_frame": sec}
    return torch.stack(xs), torch.stack(hs), info


def single_prior_dps(
    tissue: nn.Module, y: Tensor, opt: SamplingOptions, haze_std: float, *, seed: int = 0
) -> tuple[Tensor, dict[str, float]]:
    """Tissue-prior-only posterior mean estimate with the haze modelled as Gaussian noise of
    std ``gamma * haze_std`` (whole frames, core :func:`reconstruct`, ``pigdm``)."""
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    out = []
    counting = CountingDenoiser(tissue)
    for k in range(y.shape[0]):
        yk = (y[k : k + 1] / (1 - opt.haze_weight)).float()
        rec = reconstruct(
            counting,
            Identity(),
            yk,
            sigmas=opt.sigmas(),
            shape=tuple(yk.shape),
            method="pigdm",
            noise_std=float(np.hypot(opt.gamma * haze_std, opt.noise_std)),
            sampler=opt.sampler,
            generator=g,
            sigma_data=tissue.sigma_data,
        )
        out.append(rec.mean[0])
    sec = (time.perf_counter() - t0) / y.shape[0]
    return torch.stack(out).detach(), {
        "nfe_per_frame": counting.calls / y.shape[0],
        "seconds_per_frame": sec,
    }
