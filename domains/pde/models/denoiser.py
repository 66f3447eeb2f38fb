"""The diffusion model of wavelet coefficients: its network, noise schedules and loss.

A conditional denoiser (Karras preconditioning, :class:`diffsci.core.denoisers.KarrasDenoiser`)
over the ``4**level`` coefficient channels of :mod:`.codec`, conditioned on the encoded initial
state (concatenated channels). The backbone is the core UNet or the grid-independent
:class:`~.fno.FNODenoiserNet`. Training sigmas are EDM's log-normal (Karras et al. 2022) or
PDE-Refiner's levels (Lippe et al. 2023): a regression level, then geometric refinement levels,
which are then also every sampler's schedule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from diffsci.core.denoisers import KarrasDenoiser, edm_loss
from diffsci.core.guidance import drop_condition
from diffsci.core.networks import UNet
from diffsci.core.schedules import DiscreteSigma, LogNormalSigma, karras, refiner_levels
from diffsci.core.task import LossFn

from .fno import FNODenoiserNet

__all__ = [
    "build_denoiser",
    "check_grid",
    "chunk_loss",
    "grid_multiple",
    "refiner_sigmas",
    "sampling_sigmas",
    "serves_prior",
]


def refiner_sigmas(m: Mapping[str, Any]) -> list[float]:
    """PDE-Refiner's noise levels of the ``model`` config section (``refiner_*``)."""
    try:
        return refiner_levels(
            m["refiner_k"], sigma_min=m["refiner_sigma_min"], sigma_max=m["refiner_sigma_max"]
        )
    except ValueError as e:
        raise ValueError(f"config model.refiner_*: {e}") from e


def _train_sigma(m: Mapping[str, Any]) -> tuple[Any, float | None]:
    """Training sigma distribution and the regression threshold of ``KarrasDenoiser``."""
    if m["sigma_schedule"] != "refiner":
        return LogNormalSigma(m["p_mean"], m["p_std"]), None
    levels = refiner_sigmas(m)
    weights = [m["refiner_regression_weight"]] + [1.0] * (len(levels) - 1)
    # any threshold between the regression level and the first refinement level works; the
    # geometric midpoint is far from both in float32
    reg = math.sqrt(levels[0] * levels[1]) if m["refiner_zero_input"] else None
    return DiscreteSigma(levels, weights), reg


def build_denoiser(cfg: Mapping[str, Any]) -> KarrasDenoiser:
    """The (untrained) denoiser ``D(c, sigma, cond)`` of a config's ``model`` section."""
    m = cfg["model"]
    ch = 4 ** m["level"]
    train_sigma, reg = _train_sigma(m)
    kw = {"sigma_data": m["sigma_data"], "train_sigma": train_sigma, "regression_sigma": reg}
    if m.get("backbone", "unet") == "fno":
        net = FNODenoiserNet(
            ch,
            ch,
            cond_channels=ch,
            modes=tuple(m["modes"]),
            width=m["width"],
            depth=m["depth"],
            padding=(m["time_padding"], 0),
        )
        return KarrasDenoiser(net, **kw)
    net = UNet(
        2,
        ch,
        ch,
        cond_channels=ch,
        channels=tuple(m["channels"]),
        attention_levels=tuple(m["attention_levels"]),
        num_res_blocks=m["num_res_blocks"],
    )
    return KarrasDenoiser(net, **kw)


def _chunk_loss(
    model: nn.Module, batch: Mapping[str, Tensor], rng: Any, *, cond_dropout: float
) -> Tensor:
    # A batch holds whole chunks of one grid: (chunks, chunk, C, h, w) -> (n, C, h, w).
    x, c = batch["x"].flatten(0, 1), batch["cond"].flatten(0, 1)
    c = drop_condition(c, 0.0, cond_dropout, rng)
    return edm_loss(model, x, rng, cond=c)


def chunk_loss(cond_dropout: float) -> LossFn:
    """EDM loss on :class:`~.codec.TrajectoryChunks` batches. Each sample's condition is
    replaced by the null condition (zeros) with probability ``cond_dropout``, which also trains
    the unconditional prior that data assimilation and the event study sample from."""
    return partial(_chunk_loss, cond_dropout=cond_dropout)


def sampling_sigmas(cfg: Mapping[str, Any]) -> Tensor:
    """Sampling schedule of every sampler run (forecast, assimilation, event study): the
    training levels for ``model.sigma_schedule: refiner`` (PDE-Refiner: a regression step,
    then one refinement per level; the model has seen no other sigma), else Karras
    ``sampling.steps`` from ``sampling.sigma_max`` to ``sampling.sigma_min``."""
    m, s = cfg["model"], cfg["sampling"]
    if m["sigma_schedule"] == "refiner":
        return torch.tensor(refiner_sigmas(m) + [0.0], dtype=torch.float64)
    return karras(s["steps"], s["sigma_min"], s["sigma_max"])


def serves_prior(cfg: Mapping[str, Any]) -> bool:
    """Whether the model is a usable unconditional prior over a continuous noise schedule.

    Not with ``model.sigma_schedule: refiner``: it has seen only the refiner's levels (a
    regression level, then tiny noise), so prior sampling, data assimilation and event-guided
    sampling from it return noise-free regressions of the null condition, not samples. Those
    stages are skipped for it (forecasts and the forecast-based event probability still run).
    """
    return cfg["model"]["sigma_schedule"] != "refiner"


def grid_multiple(cfg: Mapping[str, Any]) -> int:
    """Trajectory sizes (nt and nx) the model can serve are multiples of this number."""
    m = cfg["model"]
    if m.get("backbone", "unet") == "fno":
        return 2 ** m["level"]
    return 2 ** (m["level"] + len(m["channels"]) - 1)


def check_grid(cfg: Mapping[str, Any], nt: int, nx: int, *, source: str) -> None:
    """Raise a clear error for a grid the model cannot serve."""
    k = grid_multiple(cfg)
    if nt % k or nx % k:
        raise ValueError(
            f"{source}: grid nt={nt}, nx={nx} cannot be served by this model: with wavelet level "
            f"{cfg['model']['level']} and backbone {cfg['model'].get('backbone', 'unet')} "
            f"(model.channels={cfg['model']['channels']}) both must be multiples of {k}"
        )
