"""Few-step ODE accuracy on the domains' trained priors: ours vs diffusers, same network, same
initial noise (issue 22, bar 2).

For each domain whose prior is an unconditional image denoiser (``D(x, sigma)``: medical's
image prior, hyperspectral's subspace-coefficient prior), the workflow's default config
(``workflows/config/<domain>.yaml``) is prepared and trained through the generic stages (or
its model reused when trained with exactly that config). From one batch of initial noise ``z``
each solver integrates the probability-flow ODE at 5 and 10 network evaluations (NFE) and at
200 NFE on its own schedule; the error is the relative RMS distance of the few-step result to
that solver's own 200-NFE solution (the truncation error of the discretisation):

* ours: ``sample()``'s defaults, UniPC on ``default_sigmas(den, nfe)`` (the 200-NFE reference
  starts at the same ``sigma_max``);
* diffusers 0.42 ``DPMSolverMultistepScheduler`` / ``UniPCMultistepScheduler``, shipped and with
  Karras sigmas, Stable Diffusion's scaled-linear betas, driven as in
  :mod:`benchmarks.fast_sampling` (the eps the network would give at the scheduler's sigma).

Bar: ours <= 0.7 x the best diffusers configuration at 5 and at 10 NFE, per domain.

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.fast_sampling_domains`` (writes
``results/fast_sampling_domains.json``; work files in ``benchmarks/work/fast_sampling_domains``).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks._common import write_result
from benchmarks.fast_sampling import DIFFUSERS, run_diffusers
from diffsci.core.modelfile import load_model_file
from diffsci.core.samplers import SAMPLERS
from diffsci.core.schedules import default_sigmas, denoiser_sigma_info
from diffsci.core.stages import load_config, load_model, run_prepare, run_train
from diffsci.core.task import TaskPaths, get_task

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ("medical", "hyperspectral")
NFES = (5, 10)
REF_NFE = 200
BAR_RATIO = 0.7


def trained_prior(domain: str, work: Path) -> tuple[torch.nn.Module, tuple[int, ...], dict]:
    """The domain's prior trained with its workflow config (reused when already trained with
    exactly it) and the shape of one training sample."""
    task = get_task(domain)
    cfg = load_config(ROOT / "workflows" / "config" / f"{domain}.yaml", task)
    cfg["device"] = "cpu"
    paths = TaskPaths(work / domain)
    reuse = paths.model.is_file() and load_model_file(paths.model).provenance.get("config") == cfg
    if not reuse:
        run_prepare(task, cfg, paths)
        run_train(task, cfg, paths, progress=False)
    model = load_model(task, cfg, paths.model)
    first = task.train_dataset(cfg, paths.data)[0]
    shape = tuple((first[0] if isinstance(first, (tuple, list)) else first).shape)
    return model, shape, cfg


class _AsFloat:
    """The float32 network called with the float64 tensors diffusers' driver passes."""

    def __init__(self, den: torch.nn.Module) -> None:
        self.den = den

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        return self.den(x.float(), sigma.float()).double()


def rel_err(x: Tensor, ref: Tensor) -> float:
    return float((x - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt())


@torch.no_grad()
def measure(den: torch.nn.Module, shape: tuple[int, ...], n: int, seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((n, *shape), generator=g, dtype=torch.float64)
    sd = denoiser_sigma_info(den)["sigma_data"] or 0.5
    f = _AsFloat(den)
    unipc = SAMPLERS["unipc"]

    def ours(nfe: int) -> Tensor:
        sig = default_sigmas(den, nfe).double()
        return unipc(f, z * math.hypot(float(sig[0]), sd), sig)

    ref = ours(REF_NFE)
    out: dict[str, Any] = {"sigma_data": sd, "ours": {}, "diffusers": {}}
    for nfe in NFES:
        out["ours"][str(nfe)] = rel_err(ours(nfe), ref)
    for name, (cls, kw) in DIFFUSERS.items():
        dref = run_diffusers(cls, kw, f, z, REF_NFE)
        out["diffusers"][name] = {
            str(m): rel_err(run_diffusers(cls, kw, f, z, m), dref) for m in NFES
        }
    for nfe in NFES:
        best = min(v[str(nfe)] for v in out["diffusers"].values())
        out[f"ratio_nfe{nfe}"] = out["ours"][str(nfe)] / best
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--domains", nargs="+", default=list(DOMAINS))
    p.add_argument("--n", type=int, default=16, help="samples (initial noises) per domain")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=str(ROOT / "benchmarks" / "work" / "fast_sampling_domains"))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    results: dict[str, Any] = {"domains": {}}
    bars: dict[str, bool] = {}
    for d in a.domains:
        den, shape, _ = trained_prior(d, Path(a.workdir))
        res = results["domains"][d] = {"shape": list(shape), **measure(den, shape, a.n, a.seed)}
        for nfe in NFES:
            bars[f"{d}_nfe{nfe}_le_{BAR_RATIO}x_best_diffusers"] = (
                res[f"ratio_nfe{nfe}"] <= BAR_RATIO
            )
        print(d, {k: v for k, v in res.items() if k.startswith(("ours", "ratio"))}, flush=True)
    results["bars"] = bars
    results["not_measured"] = {
        "pde, precipitation": "conditional priors (previous frame / coarse input): not driven yet",
        "singlecell": "a population transformer, not an image ODE prior: not driven yet",
        "ultrasound": "joint tissue+haze priors: not driven yet",
    }
    results["seconds"] = time.perf_counter() - t0
    config = {
        "configs": {d: f"workflows/config/{d}.yaml" for d in a.domains},
        "n_initial_noises": a.n,
        "nfe": list(NFES),
        "reference_nfe": REF_NFE,
        "ours": "UniPC on default_sigmas(den, nfe) (sample()'s defaults)",
        "diffusers": list(DIFFUSERS),
        "error": "relative RMS distance to the same solver's 200-NFE solution from the same z",
        "environment": "OMP_NUM_THREADS=1, float64 solver state, float32 network",
    }
    write_result("fast_sampling_domains", results, config=config, seed=a.seed)
    for k, v in bars.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
