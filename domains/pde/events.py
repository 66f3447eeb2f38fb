"""Event study: the probability of an extreme event under the initial-condition distribution,
the model's estimate against a Monte Carlo of the solver, and event-conditioned sampling.

The event is "max |u| over the last quarter of frames > threshold", the threshold being the
training data's ``events.quantile`` of that statistic (so the event has a known, moderate base
rate). The model's estimate averages its ensemble forecasts over initial states of the data's
distribution, ``P = E_u0[P(event | u0)]``; the same states go through the solver, so the
per-state forecast probabilities also get a Brier score (and its skill against the solver's
base rate on those states). With a model that serves a prior
(:func:`~diffsci.domains.pde.models.denoiser.serves_prior`) two more rows: the estimate from
the null-condition prior (trained only by condition dropout, so weaker), and samples from that
prior guided towards the event (:class:`EventGuidance`, DPS-style on a smoothed indicator) with
how often they realise it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffsci.core.samplers import sample

from .io import read_pdebench, split_files
from .models.codec import codec, decode
from .models.denoiser import sampling_sigmas, serves_prior
from .sampling import forecast as model_forecast
from .simulate import burgers_dataset, solver_grid

__all__ = ["EVENT", "EventGuidance", "event_stat", "event_study", "event_threshold"]

EVENT = "max |u| over the last quarter of frames > threshold"


def event_stat(u: Tensor) -> Tensor:
    """Event statistic of trajectories ``(B, nt, nx)``: max |u| over the last quarter."""
    q = max(1, u.shape[1] // 4)
    return u[:, -q:].abs().flatten(1).max(1).values


def event_threshold(cfg: Mapping[str, Any], data_dir: Path) -> float:
    """The ``events.quantile`` of :func:`event_stat` over the training trajectories (finest
    training grid)."""
    files = split_files(data_dir, "train")
    train = torch.from_numpy(read_pdebench(files[max(cfg["data"]["train_nx"])]).u)
    return float(torch.quantile(event_stat(train.double()), cfg["events"]["quantile"]))


def log_event(u: Tensor, threshold: float, tau: float) -> Tensor:
    """Smoothed log-indicator of the event on trajectories ``u (B, nt, nx)``: a log-sum-exp
    maximum (temperature 0.01) through a log-sigmoid of width ``tau``."""
    q = max(1, u.shape[1] // 4)
    smooth_max = torch.logsumexp(u[:, -q:].abs().flatten(1) / 0.01, 1) * 0.01
    return torch.nn.functional.logsigmoid((smooth_max - threshold) / tau)


class EventGuidance(nn.Module):
    """DPS-style guidance towards an event: ``D + scale * sigma^2 * grad_x log p(event |
    D(x))``, the log-likelihood evaluated on the denoised estimate, its gradient a VJP through
    the denoiser (Chung et al. 2023).

    :class:`diffsci.core.guidance.GradientGuidance` takes a likelihood of the noisy state, so
    it would run the network twice per step for this one.

    Parameters
    ----------
    denoiser
        Prior denoiser ``D(x, sigma, cond)``.
    log_event
        ``x0 -> (B,)`` log-likelihood of the event given the denoised estimate.
    scale
        Guidance strength (``events.guidance_scale``).
    """

    def __init__(
        self, denoiser: nn.Module, log_event: Callable[[Tensor], Tensor], *, scale: float
    ) -> None:
        super().__init__()
        self.denoiser, self.log_event, self.scale = denoiser, log_event, scale

    def forward(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            d = self.denoiser(xg, sigma, cond)
            (grad,) = torch.autograd.grad(self.log_event(d).sum(), xg)
        return d.detach() + self.scale * sigma.reshape(-1, 1, 1, 1) ** 2 * grad


def _prior_samples(
    den: nn.Module,
    cfg: Mapping[str, Any],
    *,
    nx: int,
    scale: float,
    generator: torch.Generator,
    device: torch.device,
) -> Tensor:
    """``events.n_samples`` trajectories from the null-condition prior (``den`` may wrap it),
    ``sampling.batch`` at a time."""
    e, d, m, s = cfg["events"], cfg["data"], cfg["model"], cfg["sampling"]
    k = 2 ** m["level"]
    shape = (e["n_samples"], 4 ** m["level"], d["nt"] // k, nx // k)
    null = torch.zeros(shape, device=device)
    sig = sampling_sigmas(cfg)
    out = []
    for i in range(0, shape[0], s["batch"]):
        b = min(s["batch"], shape[0] - i)
        x = sample(
            den,
            (b, *shape[1:]),
            sig,
            sampler=s["sampler"],
            cond=null[:b],
            generator=generator,
            device=device,
        )
        out.append(x.cpu())
    return decode(torch.cat(out), scale=scale, **codec(cfg))


def _forecast_probabilities(
    model: nn.Module,
    u0: Tensor,
    cfg: Mapping[str, Any],
    *,
    threshold: float,
    scale: float,
    generator: torch.Generator,
    device: torch.device,
    forecast: Callable[..., Tensor],
) -> Tensor:
    """``P(event | u0)`` per initial state ``u0 (n, nx)``: the fraction of the ensemble
    forecast's ``sampling.members`` members that realise the event."""
    s, members = cfg["sampling"], cfg["sampling"]["members"]
    p = []
    for i in range(0, len(u0), s["batch"]):
        ens = forecast(
            model,
            u0[i : i + s["batch"]].to(device),
            cfg["data"]["nt"],
            cfg=cfg,
            scale=scale,
            members=members,
            generator=generator,
        )
        hits = (event_stat(ens.flatten(0, 1).cpu()) > threshold).double()
        p.append(hits.reshape(members, -1).mean(0))
    return torch.cat(p)


def _forecast_scores(p: Tensor, outcome: Tensor, members: int) -> dict[str, Any]:
    """Forecast probabilities ``p`` against the solver's outcomes on the same states."""
    brier = float(((p - outcome) ** 2).mean())
    base = float(outcome.mean())
    brier_ref = base * (1 - base)  # climatology (the solver's base rate on the same states)
    return {
        "p_model_forecast": float(p.mean()),
        "p_solver_same_initial_states": base,
        "n_initial_states": len(p),
        "members": members,
        "brier_score": brier,
        "brier_skill_score": 1 - brier / brier_ref if brier_ref > 0 else None,
    }


def _prior_scores(free: Tensor, guided: Tensor, hits_mc: Tensor, thr: float) -> dict[str, Any]:
    """The null-condition prior's event rate (against the solver's) and the guided hit rate."""
    hits_model = (event_stat(free) > thr).double()
    p_mc, p_model = float(hits_mc.mean()), float(hits_model.mean())
    se = (p_mc * (1 - p_mc) / len(hits_mc) + p_model * (1 - p_model) / len(hits_model)) ** 0.5
    return {
        "p_model_unconditional": p_model,
        "n_model": len(hits_model),
        "difference_in_standard_errors": (p_model - p_mc) / se if se > 0 else None,
        "event_conditioned_hit_rate": float((event_stat(guided) > thr).double().mean()),
    }


def event_study(
    model: nn.Module,
    cfg: Mapping[str, Any],
    data_dir: Path,
    *,
    nx: int,
    scale: float,
    device: torch.device,
    forecast: Callable[..., Tensor] = model_forecast,
) -> dict[str, Any]:
    """The event study on grid ``nx`` (see the module docstring); the ``events.json`` record.

    ``forecast`` is :func:`~diffsci.domains.pde.sampling.forecast`'s signature (tests pass
    oracles). Random draws: the solver's initial states from ``seed + 20000``; every model
    sample from one generator seeded ``seed + 3``, in the order prior samples, forecasts,
    guided samples.
    """
    e, d = cfg["events"], cfg["data"]
    thr = event_threshold(cfg, data_dir)
    fine = solver_grid([nx], d["solver_nx"])
    u0, u_mc, _ = burgers_dataset(
        e["n_mc"],
        fine,
        seed=int(cfg["seed"]) + 20_000,
        nu=d["nu"],
        t_end=d["t_end"],
        nt=d["nt"],
        initial=d["initial"],
    )
    hits_mc = (event_stat(torch.from_numpy(u_mc[..., :: fine // nx])) > thr).double()
    g = torch.Generator().manual_seed(int(cfg["seed"]) + 3)
    kw = {"scale": scale, "generator": g, "device": device}
    prior = serves_prior(cfg)
    with torch.no_grad():
        free = _prior_samples(model, cfg, nx=nx, **kw) if prior else None
        n_ic = min(e["n_samples"], e["n_mc"])
        u0_model = torch.from_numpy(u0[:n_ic, :: fine // nx]).float()
        p_ic = _forecast_probabilities(model, u0_model, cfg, threshold=thr, forecast=forecast, **kw)
    out = {
        "event": EVENT,
        "threshold": thr,
        "quantile_of_training_data": e["quantile"],
        "grid_nx": nx,
        "p_solver_monte_carlo": float(hits_mc.mean()),
        "n_solver": len(hits_mc),
        **_forecast_scores(p_ic, hits_mc[:n_ic], cfg["sampling"]["members"]),
    }
    if not prior:  # the null-condition prior and guided sampling need a trained prior
        return out
    c = codec(cfg)
    guide = EventGuidance(
        model,
        lambda x0: log_event(decode(x0, scale=scale, **c), thr, e["tau"]),
        scale=e["guidance_scale"],
    )
    guided = _prior_samples(guide, cfg, nx=nx, **kw)
    return {
        **out,
        **_prior_scores(free, guided, hits_mc, thr),
        "guidance_scale": e["guidance_scale"],
    }
