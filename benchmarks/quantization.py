"""int8 inference of the domains' priors on CPU: forward latency and the headline metric, fp32
vs int8 (issue 22).

For each domain prior trained by :mod:`benchmarks.fast_sampling_domains` (the workflow's
default config; trained here if missing), :func:`diffsci.core.quantize.quantize_int8` makes an
int8 copy calibrated on 16 training samples noised to each level of a 20-step default schedule
(``--method pt2e``, the default: torchao export quantization lowered by inductor; ``eager``:
int8 islands). Latency: median of ``--reps`` forwards of one batch at sigma = sigma_data, the
models alternating in one run, one thread; the quartiles of the per-repeat fp32/int8 ratios
show the spread (runs of 15 repeats differed by 20% between invocations on an idle machine).
The bar's fp32 is the eager fp32 model the domains run; with pt2e the run also times the fp32
model compiled the same way (``torch.compile`` with freezing) and the eager int8 islands, so
the part of the speed-up that compilation alone gives is on record. Quality: the domain's own ``infer`` and ``evaluate`` run
with each model on the same prepared test data and seed; every PSNR in the metric tables is
compared.

Bar: int8 forward >= 1.8x faster than fp32, and the headline metric within 0.3 dB.

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.quantization`` (writes
``results/quantization.json``).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import write_result
from benchmarks.fast_sampling_domains import ROOT, trained_prior
from diffsci.core.quantize import calibration_batches, quantize_int8
from diffsci.core.schedules import default_sigmas, denoiser_sigma_info
from diffsci.core.task import Runtime, TaskPaths, get_task

DOMAINS = ("medical", "hyperspectral")
SPEEDUP_BAR, DB_BAR = 1.8, 0.3


def _batch(task, cfg, data_dir: Path, n: int) -> torch.Tensor:
    ds = task.train_dataset(cfg, data_dir)
    items = [ds[i] for i in range(min(n, len(ds)))]
    return torch.stack([it[0] if isinstance(it, (tuple, list)) else it for it in items])


class CompiledFP32(torch.nn.Module):
    """The fp32 denoiser through ``torch.compile`` with inductor's freezing, as the pt2e int8
    copy is run: separates what the int8 arithmetic gains from what compilation alone does."""

    def __init__(self, den: torch.nn.Module) -> None:
        super().__init__()
        self.den = den
        self.__dict__["_compiled"] = torch.compile(den)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            return self._compiled(x, sigma)


@torch.no_grad()
def latency(models: dict[str, torch.nn.Module], x: torch.Tensor, reps: int) -> dict:
    """Median forward seconds of each model on batch ``x`` at sigma = sigma_data, the models
    alternating within each repeat; paired ratios against ``"fp32"`` and, where present,
    of ``"int8"`` against ``"fp32 compiled"``."""
    sd = denoiser_sigma_info(models["fp32"])["sigma_data"] or 0.5
    sigma = torch.full((len(x),), float(sd))
    times: dict[str, list[float]] = {k: [] for k in models}
    first: dict[str, float] = {}
    for k, m in models.items():  # warm-up; the compiled models compile here
        t0 = time.perf_counter()
        m(x, sigma)
        first[k] = time.perf_counter() - t0
    for _ in range(reps):
        for name, m in models.items():
            t0 = time.perf_counter()
            m(x, sigma)
            times[name].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}

    def paired(num: str, den: str) -> list[float]:
        ratios = sorted(a / b for a, b in zip(times[num], times[den], strict=True))
        q = len(ratios) // 4
        return [ratios[q], ratios[len(ratios) // 2], ratios[-1 - q]]

    out = {
        "median_seconds": med,
        "first_call_seconds": first,
        "speedup": med["fp32"] / med["int8"],
        "paired_ratio_quartiles": paired("fp32", "int8"),
        "speedup_vs_fp32": {k: med["fp32"] / v for k, v in med.items() if k != "fp32"},
        "reps": reps,
        "batch": list(x.shape),
    }
    if "fp32 compiled" in models:
        out["speedup_vs_fp32_compiled"] = med["fp32 compiled"] / med["int8"]
        out["paired_ratio_quartiles_vs_fp32_compiled"] = paired("fp32 compiled", "int8")
    return out


def _psnrs(tables: dict[str, Any]) -> dict[str, float]:
    return {
        f"{t} | {row} | {k}": float(v)
        for t, rows in tables.items()
        for row, metrics in rows.items()
        for k, v in metrics.items()
        if "PSNR" in k and isinstance(v, (int, float))
    }


def quality(domain: str, model: torch.nn.Module, cfg: dict, work: Path, tag: str) -> dict:
    """The domain's infer + evaluate with ``model`` on the prepared data of ``work``."""
    task = get_task(domain)
    src = TaskPaths(work / domain)
    run = TaskPaths(work / f"{domain}_{tag}")
    shutil.rmtree(run.root, ignore_errors=True)
    run.root.mkdir(parents=True)
    (run.root / "data").symlink_to(src.data.resolve())
    run.predictions.mkdir()
    t0 = time.perf_counter()
    torch.manual_seed(int(cfg.get("seed", 0)))
    task.infer(cfg, model, run.data, run.predictions, Runtime(torch.device("cpu"), False))
    seconds = time.perf_counter() - t0
    run.figures.mkdir()
    res = task.evaluate(cfg, run, run.figures)
    return {"psnr": _psnrs(res.tables), "infer_seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--domains", nargs="+", default=list(DOMAINS))
    p.add_argument("--reps", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", choices=("pt2e", "eager"), default="pt2e")
    p.add_argument("--workdir", default=str(ROOT / "benchmarks" / "work" / "fast_sampling_domains"))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(a.workdir)
    results: dict[str, Any] = {"domains": {}}
    bars: dict[str, bool] = {}
    for d in a.domains:
        den, _, cfg = trained_prior(d, work)
        den = den.eval()
        task = get_task(d)
        x0 = _batch(task, cfg, TaskPaths(work / d).data, 16)
        g = torch.Generator().manual_seed(a.seed)
        t0 = time.perf_counter()
        calib = list(calibration_batches(x0, default_sigmas(den, 20), generator=g))
        q = quantize_int8(den, calib, method=a.method)
        r: dict[str, Any] = {"calibration_seconds": time.perf_counter() - t0}
        models = {"fp32": den, "int8": q}
        if a.method == "pt2e":
            models["fp32 compiled"] = CompiledFP32(den)
            models["int8 eager islands"] = quantize_int8(den, calib, method="eager")
        r["latency"] = latency(models, x0, a.reps)
        try:
            f32, i8 = quality(d, den, cfg, work, "fp32"), quality(d, q, cfg, work, "int8")
            diff = {k: i8["psnr"][k] - v for k, v in f32["psnr"].items() if k in i8["psnr"]}
            r["quality"] = {"fp32": f32, "int8": i8, "psnr_difference_db": diff}
            worst = max((abs(v) for v in diff.values()), default=float("nan"))
            bars[f"{d}_psnr_within_{DB_BAR}db"] = worst <= DB_BAR
        except RuntimeError as e:  # e.g. a posterior step that differentiates the network
            r["quality"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            bars[f"{d}_psnr_within_{DB_BAR}db"] = False
        bars[f"{d}_int8_ge_{SPEEDUP_BAR}x_faster"] = r["latency"]["speedup"] >= SPEEDUP_BAR
        results["domains"][d] = r
        print(d, r["latency"], r.get("quality", {}).get("psnr_difference_db"), flush=True)
    results["bars"] = bars
    results["not_measured"] = {
        "pde, precipitation, singlecell, ultrasound": "conditional / joint priors: not driven yet"
    }
    config = {
        "configs": {d: f"workflows/config/{d}.yaml" for d in a.domains},
        "method": a.method,
        "methods": {
            "pt2e": "torch.export of the denoiser's network, torchao X86InductorQuantizer "
            "(static int8 activations and per-channel weights), convert_pt2e, torch.compile "
            "with inductor freezing; Karras preconditioning in fp32",
            "eager": "eager-mode static PTQ, int8 islands around every Conv/Linear, x86 qconfig "
            "(histogram activations, per-channel weights)",
        },
        "calibration": "16 training samples noised to each sigma of default_sigmas(den, 20)",
        "fp32": "the eager fp32 model, as the domains run it (the bar's reference); "
        "'fp32 compiled' (torch.compile, freezing) is reported beside it",
        "reps": a.reps,
        "threads": 1,
        "environment": "OMP_NUM_THREADS=1",
    }
    write_result("quantization", results, config=config, seed=a.seed)
    for k, v in bars.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
