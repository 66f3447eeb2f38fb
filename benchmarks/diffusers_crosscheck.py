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
from collections.abc import Callable
from typing import Any

import diffusers
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from torch import Tensor, nn

from benchmarks._common import write_result
from benchmarks.sampler_overhead import EpsUNet, TimedNet, make_unet, timed_run
from diffsci.core.denoisers import VPDenoiser
from diffsci.core.samplers import sample_ddim, sample_dpmpp_2m
from diffsci.core.schedules import ddpm_alphas_cumprod, ddpm_sigmas

T_TRAIN = 1000
TOL = 1e-4
REL_TOL = 2e-6  # max|diff| / max|x|: ~16 float32 ulps


def ddim_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=T_TRAIN,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing="leading",
    )


def dpm_scheduler() -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler(
        num_train_timesteps=T_TRAIN,
        beta_schedule="linear",
        algorithm_type="dpmsolver++",
        solver_order=2,
        lower_order_final=True,
        final_sigmas_type="zero",
    )


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


class GaussEps(nn.Module):
    """``eps = sqrt(1-ab(t)) x_t + sqrt(ab(t)) net(x_t, t)``: exact eps of N(0, I) data plus a UNet.

    A random UNet alone predicts ``|x0| ~ |x_t - eps| / sqrt(ab_T)`` (``1 / sqrt(ab_T)`` is about
    157 for this schedule), so its samples reach hundreds, where a float32 ulp (6.1e-5 at 512)
    is close to the tolerance; this wrapper keeps predictions and samples O(1), so an absolute
    tolerance of 1e-4 is meaningful. ``ab(t)`` is interpolated linearly in ``t``.
    """

    def __init__(self, net: nn.Module, alphas_cumprod: Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("ac", torch.as_tensor(alphas_cumprod, dtype=torch.float64))

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        t = torch.as_tensor(t, device=x.device).to(torch.float64).expand(x.shape[0])
        lo = t.floor().clamp(0, len(self.ac) - 2).long()
        w = t - lo
        ab = (
            (self.ac[lo] * (1 - w) + self.ac[lo + 1] * w)
            .to(x.dtype)
            .reshape(-1, *[1] * (x.dim() - 1))
        )
        return (1 - ab).sqrt() * x + ab.sqrt() * self.net(x, t.to(x.dtype), cond)


def check_equality(
    net: nn.Module, rec: EpsUNet, z: Tensor, steps: int, ac: Tensor, tol: float = TOL
) -> dict[str, Any]:
    """Both samplers vs diffusers at ``steps``: max abs diff, timesteps, schedule agreement.

    ``rec`` is the :class:`EpsUNet` inside ``net`` that records the timesteps.
    """
    den = VPDenoiser(net, prediction="eps", alphas_cumprod=ac)
    out: dict[str, Any] = {}
    for kind, sampler in (("ddim", sample_ddim), ("dpmpp_2m", sample_dpmpp_2m)):
        sigmas, sched = our_sigmas(kind, steps, ac)
        x_theirs, t_theirs = recorded(rec, lambda sched=sched: run_diffusers(net, sched, z, steps))
        x_ours, t_ours = recorded(rec, lambda s=sampler, sg=sigmas: run_ours(s, den, z, sg))
        ts = sched.timesteps.to(torch.float64)
        # diffusers' sigmas at its timesteps from its own (float32) alphas_cumprod table, and ours
        ab = sched.alphas_cumprod.to(torch.float64)[sched.timesteps]
        ab_ours = ac[sched.timesteps]
        rel = lambda a, b: ((a - b) / b).abs().max().item()  # noqa: E731
        diff = (x_ours - x_theirs).abs().max().item()
        scale = x_theirs.abs().max().item()
        t_dev = (t_ours - t_theirs).abs().max().item() if t_ours.shape == t_theirs.shape else None
        out[kind] = {
            "max_abs_diff": diff,
            "max_rel_diff": diff / scale,
            "output_abs_max": scale,
            "pass_abs": diff <= tol,
            "pass_rel": diff / scale <= REL_TOL,
            "nfe_ours": len(t_ours),
            "nfe_diffusers": len(t_theirs),
            "timesteps_diffusers": ts.tolist(),
            "timesteps_received_equal_scheduler": bool(torch.equal(t_theirs[:, 0], ts)),
            "max_abs_timestep_deviation_ours_vs_diffusers": t_dev,
            "sigmas_rel_err_vs_diffusers_table": rel(sigmas[:-1], ((1 - ab) / ab).sqrt()),
            "sigmas_rel_err_vs_our_table": rel(sigmas[:-1], ((1 - ab_ours) / ab_ours).sqrt()),
            "sigmas_end_in_zero": float(sigmas[-1]) == 0.0,
        }
    return out


@torch.no_grad()
def run_diffusers_dpm_f64(net: nn.Module, z: Tensor, steps: int, sigmas: Tensor) -> Tensor:
    """diffusers' DPM-Solver++(2M) update functions in float64 with ``sigmas`` (step() would
    cast the sample to float32). Same order logic as ``step()`` for ``solver_order=2`` and
    ``final_sigmas_type='zero'``: first order on the first and the last step."""
    sched = dpm_scheduler()
    sched.set_timesteps(steps)
    sched.sigmas = sigmas.to(torch.float64)
    x = z * sched.init_noise_sigma
    n = len(sched.timesteps)
    for i, t in enumerate(sched.timesteps):
        if sched.step_index is None:
            sched._init_step_index(t)
        m = sched.convert_model_output(net(x, t), sample=x)
        sched.model_outputs = [sched.model_outputs[-1], m]
        if i == 0 or i == n - 1:
            x = sched.dpm_solver_first_order_update(m, sample=x)
        else:
            x = sched.multistep_dpm_solver_second_order_update(sched.model_outputs, sample=x)
        sched._step_index += 1
    return x


def check_float64(net: nn.Module, z: Tensor, steps: int) -> dict[str, float]:
    """Same comparison in float64 with one shared float64 table (diffusers' own, upcast).

    Tells float32 rounding apart from any difference in the algorithms: DDIM runs diffusers'
    ``step()`` with its ``alphas_cumprod`` upcast; DPM-Solver++ runs its update functions in
    float64 (see :func:`run_diffusers_dpm_f64`) with sigmas from that table.
    """
    ac64 = ddim_scheduler().alphas_cumprod.to(torch.float64)
    den = VPDenoiser(net, prediction="eps", alphas_cumprod=ac64)
    z = z.to(torch.float64)
    sched = ddim_scheduler()
    sched.alphas_cumprod = ac64
    sigmas = ddpm_sigmas(ac64, steps, spacing="leading")[0]
    ddim = (run_ours(sample_ddim, den, z, sigmas) - run_diffusers(net, sched, z, steps)).abs().max()
    sched = dpm_scheduler()
    sched.set_timesteps(steps)
    ab = ac64[sched.timesteps]
    sigmas = torch.cat([((1 - ab) / ab).sqrt(), ab.new_zeros(1)])
    x_ours = run_ours(sample_dpmpp_2m, den, z, sigmas)
    dpm = (x_ours - run_diffusers_dpm_f64(net, z, steps, sigmas)).abs().max()
    return {
        "ddim_max_abs_diff": ddim.item(),
        "dpmpp_2m_max_abs_diff": dpm.item(),
        "output_abs_max": x_ours.abs().max().item(),
    }


def timing(unet: EpsUNet, z: Tensor, steps: int, repeats: int, ac: Tensor) -> dict[str, Any]:
    """Full sampling loop, ours vs diffusers, interleaved, and the network alone.

    The network is wrapped in :class:`TimedNet`, so each run also gives its in-network time
    and the overhead share ``(total - network) / total``. Wall and CPU (process) time.
    """
    timed = TimedNet(unet)
    den = VPDenoiser(timed, prediction="eps", alphas_cumprod=ac)
    t_fixed = torch.full((z.shape[0],), 500.0)

    @torch.no_grad()
    def net_only() -> None:
        for _ in range(steps):
            timed(z, t_fixed)

    out: dict[str, Any] = {}
    for kind, sampler in (("ddim", sample_ddim), ("dpmpp_2m", sample_dpmpp_2m)):
        sigmas, sched = our_sigmas(kind, steps, ac)
        if kind == "ddim":  # our schedule built inside the timed loop, like set_timesteps
            ours = lambda s=sampler: run_ours(s, den, z, ddpm_sigmas(ac, steps)[0])  # noqa: E731
        else:
            ours = lambda s=sampler, sg=sigmas: run_ours(s, den, z, sg)  # noqa: E731
        theirs = lambda sc=sched: run_diffusers(timed, sc, z, steps)  # noqa: E731
        ours(), theirs(), net_only()  # warm-up
        runs: dict[str, list[dict[str, float]]] = {"ours": [], "diffusers": [], "network_only": []}
        for _ in range(repeats):
            runs["ours"].append(timed_run(ours, timed))
            runs["diffusers"].append(timed_run(theirs, timed))
            runs["network_only"].append(timed_run(net_only, timed))
        med = {
            f"{who}_{k}": statistics.median(r[k] for r in rs)
            for who, rs in runs.items()
            for k in ("total_s", "total_cpu_s", "overhead", "overhead_cpu")
        }
        pairs = list(zip(runs["ours"], runs["diffusers"], strict=True))
        ratio = med["ours_total_s"] / med["diffusers_total_s"]
        out[kind] = {
            **med,
            "ratio_ours_over_diffusers": ratio,
            "ratio_ours_over_diffusers_cpu": med["ours_total_cpu_s"] / med["diffusers_total_cpu_s"],
            "median_pairwise_ratio": statistics.median(
                o["total_s"] / d["total_s"] for o, d in pairs
            ),
            "median_pairwise_ratio_cpu": statistics.median(
                o["total_cpu_s"] / d["total_cpu_s"] for o, d in pairs
            ),
            "network_share_ours": 1 - med["ours_overhead"],
            "pass": ratio <= 1.0,
            "runs": runs,
        }
    return out


def _print_eq(tag: str, n: int, r: dict[str, Any]) -> None:
    for kind, v in r.items():
        print(
            f"{tag:10s} {kind:9s} steps={n:3d}  max|diff|={v['max_abs_diff']:.2e}  "
            f"rel={v['max_rel_diff']:.1e}  |x|max={v['output_abs_max']:.3g}  "
            f"t-dev={v['max_abs_timestep_deviation_ours_vs_diffusers']:.1e}  "
            f"abs<={TOL:g}: {v['pass_abs']}"
        )


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
    unet = make_unet(seed=a.seed)
    z = torch.randn(a.batch, 1, 32, 32, generator=torch.Generator().manual_seed(a.seed + 1))
    ac = ddpm_alphas_cumprod(T_TRAIN, beta_start=1e-4, beta_end=0.02, kind="linear")
    ac_diffusers = ddim_scheduler().alphas_cumprod.to(torch.float64)
    nets = {"unet_gauss": GaussEps(unet, ac), "unet_raw": unet}

    results: dict[str, Any] = {
        "diffusers_version": diffusers.__version__,
        "alphas_cumprod_max_rel_diff_ours_vs_diffusers": ((ac - ac_diffusers) / ac)
        .abs()
        .max()
        .item(),
        "equality_float32": {name: {} for name in nets},
        "equality_float64": {},
    }
    for name, net in nets.items():
        for n in a.steps:
            r = check_equality(net, unet, z, n, ac)
            results["equality_float32"][name][str(n)] = r
            _print_eq(name, n, r)
    unet64 = make_unet(seed=a.seed).double()
    for n in a.steps:
        results["equality_float64"][str(n)] = r64 = check_float64(unet64, z, n)
        print(
            f"float64    unet_raw  steps={n:3d}  ddim {r64['ddim_max_abs_diff']:.1e}  "
            f"dpmpp_2m {r64['dpmpp_2m_max_abs_diff']:.1e}  |x|max={r64['output_abs_max']:.3g}"
        )
    eq = results["equality_float32"]
    results["pass_abs_unet_gauss"] = all(
        v["pass_abs"] for r in eq["unet_gauss"].values() for v in r.values()
    )
    results["pass_abs_unet_raw"] = all(
        v["pass_abs"] for r in eq["unet_raw"].values() for v in r.values()
    )
    results["pass_rel_all"] = all(
        v["pass_rel"] for d in eq.values() for r in d.values() for v in r.values()
    )
    results["pass_float64"] = all(
        max(r["ddim_max_abs_diff"], r["dpmpp_2m_max_abs_diff"]) <= 1e-9
        for r in results["equality_float64"].values()
    )

    results["timing"] = tm = timing(unet, z, a.timing_steps, a.repeats, ac)
    for kind, v in tm.items():
        print(
            f"timing     {kind:9s} ours {v['ours_total_s']:.3f}s  diffusers "
            f"{v['diffusers_total_s']:.3f}s  net alone {v['network_only_total_s']:.3f}s  "
            f"ratio {v['ratio_ours_over_diffusers']:.3f} (cpu "
            f"{v['ratio_ours_over_diffusers_cpu']:.3f})  overhead ours "
            f"{100 * v['ours_overhead']:.2f}%  diffusers {100 * v['diffusers_overhead']:.2f}%"
        )
    config = {
        "network": "monai DiffusionModelUNet 2-D, 1ch 32x32, channels (32, 64, 64), attention "
        "(F, F, T), num_res_blocks 1, zero-init convs re-randomised; unet_raw = that "
        "UNet as eps; unet_gauss = sqrt(1-ab) x_t + sqrt(ab) UNet (O(1) samples)",
        "schedule": "DDPM linear betas 1e-4..0.02, T=1000",
        "steps": a.steps,
        "batch": a.batch,
        "timing_steps": a.timing_steps,
        "timing_network": "unet_raw",
        "repeats": a.repeats,
        "threads": a.threads,
        "dtype": "float32 (equality_float64: float64)",
        "abs_tolerance": TOL,
        "rel_tolerance": REL_TOL,
    }
    write_result("diffusers_crosscheck", results, config=config, seed=a.seed)


if __name__ == "__main__":
    main()
