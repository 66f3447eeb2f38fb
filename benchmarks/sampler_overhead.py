"""Sampler overhead: the share of sampling time spent outside the network, for each sampler.

A 64x64 MONAI ``DiffusionModelUNet`` (random init) on CPU is wrapped in :class:`TimedNet`,
which accumulates the wall (``perf_counter``) and CPU (``process_time``) time of every network
call; on CPU the call is synchronous, so ``overhead = (total - network) / total`` is the time
spent in the sampler loop and the denoiser adapter. CPU time is also reported: it is insensitive
to other processes competing for the cores, which wall time is not. Medians over repeats, with
the samplers interleaved inside each repeat.

Run: ``python -m benchmarks.sampler_overhead`` (writes ``results/sampler_overhead.json``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import Tensor, nn

from benchmarks._common import write_result
from diffsci.core.denoisers import KarrasDenoiser, VPDenoiser
from diffsci.core.samplers import get_sampler, nfe
from diffsci.core.schedules import ddpm_alphas_cumprod, karras

SAMPLER_NAMES = (
    "euler",
    "heun",
    "ddim",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_3m",
    "dpmpp_3m_sde",
    "unipc",
    "ipndm",
)
TARGET = 0.02


class EpsUNet(nn.Module):
    """MONAI ``DiffusionModelUNet`` behind the core convention ``net(x, t, cond)``.

    ``t`` may be a 0-d (diffusers) or ``(B,)`` tensor; while ``record`` is set, every ``t``
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
    """Re-initialise MONAI's zero-initialised convolutions, so the net is not ``eps = 0``."""
    for m in net.modules():
        conv = isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear)
        if conv and not bool(m.weight.any()):
            m.reset_parameters()
    return net


def make_unet(
    channels: tuple[int, ...] = (32, 64, 64),
    *,
    seed: int = 0,
    attention: tuple[bool, ...] | None = None,
    num_res_blocks: int = 1,
) -> EpsUNet:
    """2-D, 1-channel eps-prediction UNet with random (seeded) weights, in eval mode.

    Attention at the last level by default (MONAI's mid block always has one; it needs
    ``einops``).
    """
    torch.manual_seed(seed)
    attention = attention if attention is not None else (False,) * (len(channels) - 1) + (True,)
    unet = DiffusionModelUNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=channels,
        attention_levels=attention,
        num_res_blocks=num_res_blocks,
        num_head_channels=channels[-1],
    )
    return EpsUNet(randomize_zero_init(unet)).eval()


class TimedNet(nn.Module):
    """Accumulates wall and CPU seconds spent inside ``net`` (synchronous on CPU)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.reset()

    def reset(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        self.calls = 0

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        w0, c0 = time.perf_counter(), time.process_time()
        out = self.net(*args, **kwargs)
        self.wall += time.perf_counter() - w0
        self.cpu += time.process_time() - c0
        self.calls += 1
        return out


def timed_run(fn: Any, timed: TimedNet) -> dict[str, float]:
    """Run ``fn()`` once: total and in-network wall/CPU seconds and the overhead shares."""
    timed.reset()
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {
        "total_s": wall,
        "network_s": timed.wall,
        "overhead": (wall - timed.wall) / wall,
        "total_cpu_s": cpu,
        "network_cpu_s": timed.cpu,
        "overhead_cpu": (cpu - timed.cpu) / cpu,
        "nfe": timed.calls,
    }


def summarize(runs: list[dict[str, float]]) -> dict[str, Any]:
    """Medians of every field over the repeats (plus the raw runs)."""
    keys = [k for k in runs[0] if k != "nfe"]
    out: dict[str, Any] = {f"median_{k}": statistics.median(r[k] for r in runs) for k in keys}
    out["nfe"] = runs[0]["nfe"]
    out["runs"] = runs
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samplers", nargs="+", default=list(SAMPLER_NAMES))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    channels = (32, 64, 128)
    timed = TimedNet(make_unet(channels, seed=a.seed, num_res_blocks=2))
    ac = ddpm_alphas_cumprod(1000)
    vp = VPDenoiser(timed, prediction="eps", alphas_cumprod=ac)
    denoisers = {
        "karras": (KarrasDenoiser(timed, sigma_data=0.5), karras(a.steps, 0.002, 80.0)),
        "vp": (vp, karras(a.steps, vp.sigma_min, vp.sigma_max)),
    }
    z = torch.randn(a.batch, 1, a.size, a.size, generator=torch.Generator().manual_seed(a.seed + 1))

    def job(den: nn.Module, sigmas: Tensor, name: str):
        def fn() -> Tensor:
            gen = torch.Generator().manual_seed(a.seed + 2)
            return get_sampler(name)(den, z * float(sigmas[0]), sigmas, generator=gen)

        return fn

    jobs = {(d, s): job(den, sig, s) for d, (den, sig) in denoisers.items() for s in a.samplers}
    for fn in jobs.values():  # warm-up
        fn()
    runs: dict[tuple[str, str], list[dict[str, float]]] = {k: [] for k in jobs}
    for _ in range(a.repeats):  # interleaved: every sampler once per repeat
        for k, fn in jobs.items():
            runs[k].append(timed_run(fn, timed))

    results: dict[str, Any] = {}
    for (d, s), rs in runs.items():
        r = summarize(rs)
        assert r["nfe"] == nfe(s, a.steps), (s, r["nfe"])
        r["pass"] = r["median_overhead"] <= TARGET
        r["pass_cpu"] = r["median_overhead_cpu"] <= TARGET
        results.setdefault(d, {})[s] = r
        print(
            f"{d:6s} {s:13s} nfe={r['nfe']:2d}  total {r['median_total_s']:.3f}s  "
            f"net {r['median_network_s']:.3f}s  overhead {100 * r['median_overhead']:.2f}% "
            f"(cpu {100 * r['median_overhead_cpu']:.2f}%)"
        )
    results["max_median_overhead"] = max(
        v["median_overhead"] for d in denoisers for v in results[d].values()
    )
    results["max_median_overhead_cpu"] = max(
        v["median_overhead_cpu"] for d in denoisers for v in results[d].values()
    )
    results["all_pass"] = results["max_median_overhead"] <= TARGET
    config = {
        "network": f"monai DiffusionModelUNet 2-D, 1ch {a.size}x{a.size}, channels {channels}, "
        "attention (F, F, T), num_res_blocks 2, zero-init convs re-randomised",
        "denoisers": {
            "karras": "KarrasDenoiser(sigma_data=0.5), karras(steps, 0.002, 80)",
            "vp": "VPDenoiser(eps, DDPM linear T=1000), karras(steps, table min, max)",
        },
        "steps": a.steps,
        "batch": a.batch,
        "repeats": a.repeats,
        "threads": a.threads,
        "samplers": a.samplers,
        "target_overhead": TARGET,
        "device": "cpu",
        "dtype": "float32",
    }
    write_result("sampler_overhead", results, config=config, seed=a.seed)


if __name__ == "__main__":
    main()
