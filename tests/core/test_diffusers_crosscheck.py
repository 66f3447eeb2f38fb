"""Our DDIM and DPM-Solver++(2M) reproduce diffusers' schedulers, same network, same schedule.

diffusers runs in VP space from ``x_T = z``; ours runs in sigma space through ``VPDenoiser``
from ``z sqrt(1 + sigma_0^2)`` (``x = x_t / sqrt(ab)``); both end at sigma = 0, where the two
spaces coincide. The tiny eps-network is ``sqrt(1-ab) x_t + sqrt(ab) conv(x_t, t)`` (the exact
eps of N(0, I) data plus a random conv net) so samples stay O(1) and absolute tolerances mean
something. The full-size version is ``benchmarks/diffusers_crosscheck.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from diffsci.core.denoisers import VPDenoiser
from diffsci.core.samplers import sample_ddim, sample_dpmpp_2m
from diffsci.core.schedules import ddpm_alphas_cumprod, ddpm_sigmas

diffusers = pytest.importorskip("diffusers")


class TinyEps(nn.Module):
    """Tiny time-conditioned eps-network on 1x8x8 images; records the timesteps it receives."""

    def __init__(self, alphas_cumprod: Tensor, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 1, 3, padding=1)
        self.temb = nn.Linear(2, 8)
        self.register_buffer("ac", torch.as_tensor(alphas_cumprod, dtype=torch.float64))
        self.ts: list[Tensor] = []

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        t = torch.as_tensor(t).to(torch.float64).expand(x.shape[0])
        self.ts.append(t.clone())
        lo = t.floor().clamp(0, len(self.ac) - 2).long()
        ab = (self.ac[lo] * (1 - (t - lo)) + self.ac[lo + 1] * (t - lo)).to(x.dtype)[
            :, None, None, None
        ]
        emb = self.temb(torch.stack([torch.sin(t / 100), torch.cos(t / 100)], -1).to(x.dtype))
        h = torch.tanh(self.c1(x) + emb[:, :, None, None])
        return (1 - ab).sqrt() * x + ab.sqrt() * self.c2(h)


def _ddim() -> diffusers.DDIMScheduler:
    return diffusers.DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing="leading",
    )


def _dpm() -> diffusers.DPMSolverMultistepScheduler:
    return diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        algorithm_type="dpmsolver++",
        solver_order=2,
        lower_order_final=True,
        final_sigmas_type="zero",
    )


@torch.no_grad()
def _run_diffusers(net: TinyEps, sched: Any, z: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    sched.set_timesteps(steps)
    net.ts = []
    x = z * sched.init_noise_sigma
    kw = {"eta": 0.0} if isinstance(sched, diffusers.DDIMScheduler) else {}
    for t in sched.timesteps:
        x = sched.step(net(sched.scale_model_input(x, t), t), t, x, **kw).prev_sample
    return x, torch.stack(net.ts)[:, 0]


def _run_ours(
    sampler: Any, net: TinyEps, ac: Tensor, z: Tensor, sigmas: Tensor
) -> tuple[Tensor, Tensor]:
    net.ts = []
    den = VPDenoiser(net, prediction="eps", alphas_cumprod=ac)
    x = sampler(den, z * (1 + float(sigmas[0]) ** 2) ** 0.5, sigmas)
    return x, torch.stack(net.ts)[:, 0]


@pytest.mark.parametrize("steps", [7, 10])
def test_ddim_matches_diffusers_float64(steps: int) -> None:
    ac = ddpm_alphas_cumprod(1000)
    net = TinyEps(ac).double()
    z = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigmas, ts = ddpm_sigmas(ac, steps, spacing="leading")
    sched = _ddim()
    x_ref, t_ref = _run_diffusers(net, sched, z, steps)
    assert torch.equal(sched.timesteps, ts)
    x, t = _run_ours(sample_ddim, net, ac, z, sigmas)
    assert x.dtype == x_ref.dtype == torch.float64
    assert len(t) == len(t_ref) == steps
    torch.testing.assert_close(t, t_ref, rtol=0, atol=1e-9)  # the integer timesteps
    assert 0.5 < float(x.abs().max()) < 20
    # diffusers' own alphas_cumprod is float32 (3.6e-7 relative from ours): 1e-5 absorbs that
    assert (x - x_ref).abs().max() <= 1e-5
    # with one shared float64 table the two agree to rounding
    ac32 = _ddim().alphas_cumprod.to(torch.float64)
    sched = _ddim()
    sched.alphas_cumprod = ac32
    x_ref, _ = _run_diffusers(net, sched, z, steps)
    x, _ = _run_ours(sample_ddim, net, ac32, z, ddpm_sigmas(ac32, steps, spacing="leading")[0])
    assert (x - x_ref).abs().max() <= 1e-10


@pytest.mark.parametrize("steps", [7, 10])
def test_dpmpp_2m_matches_diffusers_float32(steps: int) -> None:
    # diffusers' DPMSolverMultistepScheduler.step() casts the sample to float32: compare in float32
    ac = ddpm_alphas_cumprod(1000)
    net = TinyEps(ac)
    z = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    sched = _dpm()
    sched.set_timesteps(steps)
    sigmas = sched.sigmas.to(torch.float64)
    ab = sched.alphas_cumprod.to(torch.float64)[sched.timesteps]
    assert float(sigmas[-1]) == 0.0
    torch.testing.assert_close(sigmas[:-1], ((1 - ab) / ab).sqrt(), rtol=1e-6, atol=0)
    x_ref, t_ref = _run_diffusers(net, _dpm(), z, steps)
    x, t = _run_ours(sample_dpmpp_2m, net, ac, z, sigmas)
    assert len(t) == len(t_ref) == steps
    # VPDenoiser maps the scheduler's sigmas back to its integer timesteps; the float32 sigmas
    # from diffusers' float32 table land up to ~2e-4 off the integers in our float64 table.
    torch.testing.assert_close(t, t_ref, rtol=0, atol=1e-3)
    assert 0.5 < float(x.abs().max()) < 20
    assert (x - x_ref).abs().max() <= 1e-4
