"""Cross-check our DDIM and DPM-Solver++(2M) against diffusers' schedulers, same network.

One small eps-prediction UNet (MONAI ``DiffusionModelUNet``, random init, fixed seed), one
schedule (DDPM linear betas 1e-4..0.02, T=1000). diffusers runs in VP space from ``x_T = z``;
ours runs in sigma space (``x = x_t / sqrt(ab)``) from ``x = z sqrt(1 + sigma_0^2)`` through
:class:`~diffsci.core.denoisers.VPDenoiser`. Both end at ``sigma = 0``, where the two spaces
coincide, so the final samples are compared directly. The network records the timesteps it
receives on both sides. Timing: the full sampling loop, ours vs diffusers, interleaved.

Run: ``python -m benchmarks.diffusers_crosscheck`` (writes ``results/diffusers_crosscheck.json``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import diffusers
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from monai.networks.nets import DiffusionModelUNet
from torch import Tensor, nn

from benchmarks._common import write_result
from diffsci.core.denoisers import VPDenoiser
from diffsci.core.samplers import sample_ddim, sample_dpmpp_2m
from diffsci.core.schedules import ddpm_alphas_cumprod, ddpm_sigmas

T_TRAIN = 1000
TOL = 1e-4


class EpsUNet(nn.Module):
    """MONAI ``DiffusionModelUNet`` behind the core convention ``net(x, t, cond)``.

    ``t`` may be a 0-d (diffusers) or ``(B,)`` tensor; when ``record`` is set, every ``t``
    received is appended to ``calls`` (float64, on the host).
    """

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.record = False
        self.calls: list[Tensor] = []

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if self.record:
            self.calls.append(t.detach().to("cpu", torch.float64).clone())
        return self.unet(x, t)


def randomize_zero_init(net: nn.Module) -> nn.Module:
    """Re-initialise MONAI's zero-initialised output convolutions, so the net is not ``eps = 0``."""
    for m in net.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear) and not bool(m.weight.any()):
            m.reset_parameters()
    return net


def make_unet(
    size: int = 32, channels: tuple[int, ...] = (32, 64, 64), *, seed: int = 0,
    attention: tuple[bool, ...] | None = None, num_res_blocks: int = 1,
) -> EpsUNet:  # fmt: skip
    """Small 2-D, 1-channel eps-prediction UNet with random (seeded) weights, in eval mode.

    Attention at the last level only (MONAI's mid block always has one; it needs ``einops``).
    """
    torch.manual_seed(seed)
    attention = attention if attention is not None else (False,) * (len(channels) - 1) + (True,)
    unet = DiffusionModelUNet(
        spatial_dims=2, in_channels=1, out_channels=1, channels=channels,
        attention_levels=attention, num_res_blocks=num_res_blocks, num_head_channels=channels[-1],
    )  # fmt: skip
    return EpsUNet(randomize_zero_init(unet)).eval()


def ddim_scheduler() -> DDIMScheduler:
    return DDIMScheduler(num_train_timesteps=T_TRAIN, beta_schedule="linear", clip_sample=False,
                         set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading")  # fmt: skip


def dpm_scheduler() -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler(num_train_timesteps=T_TRAIN, beta_schedule="linear",
                                       algorithm_type="dpmsolver++", solver_order=2,
                                       lower_order_final=True, final_sigmas_type="zero")  # fmt: skip


@torch.no_grad()
def run_diffusers(net: nn.Module, sched: Any, z: Tensor, steps: int) -> Tensor:
    """The standard diffusers loop: ``set_timesteps`` (also resets state), then ``step`` each t."""
    sched.set_timesteps(steps)
    x = z * sched.init_noise_sigma
    kw = {"eta": 0.0} if isinstance(sched, DDIMScheduler) else {}
    for t in sched.timesteps:
        eps = net(sched.scale_model_input(x, t), t)
        x = sched.step(eps, t, x, **kw).prev_sample
    return x


def run_ours(sampler: Callable[..., Tensor], den: VPDenoiser, z: Tensor, sigmas: Tensor) -> Tensor:
    """Ours in sigma space: start at ``z sqrt(1 + sigma_0^2)``, i.e. ``x_T / sqrt(ab_T)``."""
    return sampler(den, z * (1 + float(sigmas[0]) ** 2) ** 0.5, sigmas)


def our_sigmas(kind: str, steps: int, ac: Tensor) -> tuple[Tensor, Any]:
    """Our sigma schedule for the comparison with diffusers' ``kind`` scheduler (and the scheduler)."""
    if kind == "ddim":
        return ddpm_sigmas(ac, steps, spacing="leading")[0], ddim_scheduler()
    sched = dpm_scheduler()
    sched.set_timesteps(steps)
    return sched.sigmas.to(torch.float64), sched


def recorded(net: EpsUNet, fn: Callable[[], Tensor]) -> tuple[Tensor, Tensor]:
    """Run ``fn`` and return its output and the timesteps the network received, ``(nfe, B)``."""
    net.calls, net.record = [], True
    try:
        out = fn()
    finally:
        net.record = False
    return out, torch.stack(net.calls)


def check_equality(net: EpsUNet, z: Tensor, steps: int, ac: Tensor) -> dict[str, Any]:
    """Both samplers vs diffusers at ``steps``: max abs diff, timesteps, schedule agreement."""
    den = VPDenoiser(net, prediction="eps", alphas_cumprod=ac)
    out: dict[str, Any] = {}
    for kind, sampler in (("ddim", sample_ddim), ("dpmpp_2m", sample_dpmpp_2m)):
        sigmas, sched = our_sigmas(kind, steps, ac)
        x_theirs, t_theirs = recorded(net, lambda sched=sched: run_diffusers(net, sched, z, steps))
        x_ours, t_ours = recorded(net, lambda s=sampler, sg=sigmas: run_ours(s, den, z, sg))
        ts = sched.timesteps.to(torch.float64)
        # diffusers' own sigmas at its timesteps (from its float32 alphas_cumprod table), then 0
        ab = sched.alphas_cumprod.to(torch.float64)[sched.timesteps]
        ref = torch.cat([((1 - ab) / ab).sqrt(), ab.new_zeros(1)])
        ab_ours = ac[sched.timesteps]
        ref_ours = torch.cat([((1 - ab_ours) / ab_ours).sqrt(), ab.new_zeros(1)])
        diff = (x_ours - x_theirs).abs().max().item()
        t_dev = (t_ours - t_theirs).abs().max().item() if t_ours.shape == t_theirs.shape else None
        out[kind] = {
            "max_abs_diff": diff,
            "max_rel_diff": diff / x_theirs.abs().max().item(),
            "output_abs_max": x_theirs.abs().max().item(),
            "pass": diff <= TOL,
            "nfe_ours": len(t_ours),
            "nfe_diffusers": len(t_theirs),
            "timesteps_diffusers": ts.tolist(),
            "timesteps_equal_diffusers": bool(torch.equal(t_theirs[:, 0], ts)),
            "max_abs_timestep_deviation_ours_vs_diffusers": t_dev,
            "sigmas_rel_err_vs_diffusers_table": ((sigmas[:-1] - ref[:-1]) / ref[:-1]).abs().max().item(),
            "sigmas_rel_err_vs_our_table": ((sigmas[:-1] - ref_ours[:-1]) / ref_ours[:-1]).abs().max().item(),
            "sigmas_end_in_zero": float(sigmas[-1]) == 0.0,
        }
    return out


def _time(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def timing(net: EpsUNet, z: Tensor, steps: int, repeats: int, ac: Tensor) -> dict[str, Any]:
    """Wall time of the full loop, ours vs diffusers, interleaved, plus the network alone."""
    den = VPDenoiser(net, prediction="eps", alphas_cumprod=ac)
    t_fixed = torch.full((z.shape[0],), 500.0)

    @torch.no_grad()
    def net_only() -> None:
        for _ in range(steps):
            net(z, t_fixed)

    out: dict[str, Any] = {}
    for kind, sampler in (("ddim", sample_ddim), ("dpmpp_2m", sample_dpmpp_2m)):
        sigmas, sched = our_sigmas(kind, steps, ac)
        if kind == "ddim":  # our schedule built inside the timed loop, like set_timesteps
            ours = lambda s=sampler: run_ours(s, den, z, ddpm_sigmas(ac, steps)[0])  # noqa: E731
        else:
            ours = lambda s=sampler, sg=sigmas: run_ours(s, den, z, sg)  # noqa: E731
        theirs = lambda sc=sched: run_diffusers(net, sc, z, steps)  # noqa: E731
        ours(), theirs(), net_only()  # warm-up
        t_o, t_d, t_n = [], [], []
        for _ in range(repeats):
            t_o.append(_time(ours))
            t_d.append(_time(theirs))
            t_n.append(_time(net_only))
        m_o, m_d, m_n = (statistics.median(v) for v in (t_o, t_d, t_n))
        out[kind] = {
            "ours_s": t_o, "diffusers_s": t_d, "network_only_s": t_n,
            "ours_median_s": m_o, "diffusers_median_s": m_d, "network_only_median_s": m_n,
            "ratio_ours_over_diffusers": m_o / m_d,
            "median_pairwise_ratio": statistics.median(a / b for a, b in zip(t_o, t_d)),
            "overhead_share_ours": (m_o - m_n) / m_o,
            "overhead_share_diffusers": (m_d - m_n) / m_d,
            "pass": m_o / m_d <= 1.0,
        }  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--timing-steps", type=int, default=25)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    net = make_unet(seed=a.seed)
    gen = torch.Generator().manual_seed(a.seed + 1)
    z = torch.randn(a.batch, 1, 32, 32, generator=gen)
    ac = ddpm_alphas_cumprod(T_TRAIN, beta_start=1e-4, beta_end=0.02, kind="linear")
    ac_diffusers = ddim_scheduler().alphas_cumprod.to(torch.float64)

    results: dict[str, Any] = {
        "diffusers_version": diffusers.__version__,
        "alphas_cumprod_max_rel_diff_ours_vs_diffusers": ((ac - ac_diffusers) / ac).abs().max().item(),
        "equality": {},
    }
    for n in a.steps:
        results["equality"][str(n)] = r = check_equality(net, z, n, ac)
        for kind, v in r.items():
            print(f"{kind:9s} steps={n:3d}  max|diff|={v['max_abs_diff']:.3e}  "
                  f"(|x|max={v['output_abs_max']:.3g})  t-dev={v['max_abs_timestep_deviation_ours_vs_diffusers']:.2e}  "
                  f"pass={v['pass']}")  # fmt: skip
    results["all_equal_within_tol"] = all(
        v["pass"] for r in results["equality"].values() for v in r.values()
    )
    results["timing"] = tm = timing(net, z, a.timing_steps, a.repeats, ac)
    for kind, v in tm.items():
        print(f"{kind:9s} ours {v['ours_median_s']:.3f}s  diffusers {v['diffusers_median_s']:.3f}s  "
              f"net {v['network_only_median_s']:.3f}s  ratio {v['ratio_ours_over_diffusers']:.3f}")  # fmt: skip
    config = {
        "network": "monai DiffusionModelUNet 2-D, 1ch 32x32, channels (32, 64, 64), attention (F, F, T),"
                   " num_res_blocks 1, zero-init convs re-randomised",
        "schedule": "DDPM linear betas 1e-4..0.02, T=1000",
        "steps": a.steps, "batch": a.batch, "timing_steps": a.timing_steps,
        "repeats": a.repeats, "threads": a.threads, "dtype": "float32", "tolerance": TOL,
    }  # fmt: skip
    write_result("diffusers_crosscheck", results, config=config, seed=a.seed)


if __name__ == "__main__":
    main()
