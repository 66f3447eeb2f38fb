"""int8 inference of the domains' priors on CPU: forward latency and the headline metric, fp32
vs int8 (issue 22).

For each domain prior trained by :mod:`benchmarks.fast_sampling_domains` (the workflow's
default config; trained here if missing): medical, hyperspectral, ultrasound's tissue and haze
priors, precipitation's conditional denoiser (its condition: the regression mean stacked on the
coarse field, as the ensemble sampler passes it), pde's conditional denoiser and singlecell's
population denoiser (its set transformer, ``perturbation.karras.net``, is the quantized part;
the per-perturbation linear map and the population-mean head stay fp32),
:func:`diffsci.core.quantize.quantize_int8` makes an int8 copy calibrated on 16 training
samples (with their conditions) noised to each level of a 20-step default schedule
(``--method pt2e``, the default: torchao export quantization lowered by inductor; ``eager``:
int8 islands).

Latency: median of ``--reps`` forwards of one batch of 16 at sigma = sigma_data, the models
alternating in one run, one thread; the quartiles of the per-repeat fp32/int8 ratios show the
spread (runs differed by 20% between invocations on an idle machine). The bar's fp32 is the
eager fp32 model the domains run; with pt2e the run also times the fp32 model compiled the
same way (``torch.compile`` with freezing) and the eager int8 islands, so the part of the
speed-up that compilation alone gives is on record.

Quality: the domain's own ``infer`` and ``evaluate`` run with the fp32 model and with the model
whose priors are replaced by their int8 copies, on the same prepared test data and seed. The
headline metric is every PSNR entry (dB) where the tables have one, else the diffusion rows'
CRPS (precipitation), nRMSE (pde) or E-distance and top-50-DE R^2 (singlecell), compared
relatively. A domain whose posterior sampler
differentiates the network (a DPS-type likelihood step) cannot run an int8 network, whose
kernels have no backward: recorded as "not servable".

Bar: int8 forward >= 1.8x faster than fp32, and the headline metric within 0.3 dB (or 2%
relative).

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.quantization`` (writes
``results/quantization.json``; about 15 minutes, most of it compiling and the domains' infer;
``--domains singlecell --keep-others`` drives one domain and keeps the others' entries, stamped
with the commit and date they were measured at).
"""

from __future__ import annotations

import argparse
import copy
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import kept_domains, write_result
from benchmarks.fast_sampling_domains import ROOT, prior_batches, trained_prior
from diffsci.core.quantize import calibration_batches, quantize_int8
from diffsci.core.schedules import default_sigmas, denoiser_sigma_info
from diffsci.core.task import Runtime, TaskPaths, get_task

DOMAINS = ("medical", "hyperspectral", "ultrasound", "precipitation", "pde", "singlecell")
RESULT = ROOT / "benchmarks" / "results" / "quantization.json"
SPEEDUP_BAR, DB_BAR, REL_BAR = 1.8, 0.3, 0.02


def with_int8(domain: str, model: torch.nn.Module, q: dict[str, torch.nn.Module]):
    """The domain's model with its priors replaced by their int8 copies ``q``."""
    if domain == "ultrasound":
        m = copy.copy(model)  # shares everything but the two replaced priors
        m._modules = dict(model._modules, tissue=q["ultrasound tissue"], haze=q["ultrasound haze"])
        return m
    if domain in ("precipitation", "singlecell"):
        m = copy.copy(model)
        part = "denoiser" if domain == "precipitation" else "perturbation"
        m._modules = dict(model._modules, **{part: q[domain]})
        return m
    return q[domain]


class CompiledFP32(torch.nn.Module):
    """The fp32 denoiser through ``torch.compile`` with inductor's freezing, as the pt2e int8
    copy is run: separates what the int8 arithmetic gains from what compilation alone does."""

    def __init__(self, den: torch.nn.Module) -> None:
        super().__init__()
        self.den = den
        self.__dict__["_compiled"] = torch.compile(den)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, *cond: Any) -> torch.Tensor:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            return self._compiled(x, sigma, *cond)


@torch.no_grad()
def latency(
    models: dict[str, torch.nn.Module], x: torch.Tensor, reps: int, cond: Any = None
) -> dict:
    """Median forward seconds of each model on batch ``x`` (and condition ``cond``) at sigma =
    sigma_data, the models alternating within each repeat; paired ratios against ``"fp32"``
    and, where present, of ``"int8"`` against ``"fp32 compiled"``."""
    sd = denoiser_sigma_info(models["fp32"])["sigma_data"] or 0.5
    sigma = torch.full((len(x),), float(sd))
    args = (x, sigma) if cond is None else (x, sigma, cond)
    times: dict[str, list[float]] = {k: [] for k in models}
    first: dict[str, float] = {}
    for k, m in models.items():  # warm-up; the compiled models compile here
        t0 = time.perf_counter()
        m(*args)
        first[k] = time.perf_counter() - t0
    for _ in range(reps):
        for name, m in models.items():
            t0 = time.perf_counter()
            m(*args)
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


#: headline metrics compared in relative terms, per domain: (metrics, rows whose name starts
#: with one of these); the others compare every PSNR entry in dB
RELATIVE = {
    "precipitation": (("CRPS",), ("diffusion",)),
    "pde": (("nRMSE",), ("diffusion",)),
    "singlecell": (("E-distance (PCA)", "R2 top-50 DE"), ("diffusion",)),
}


def headline(domain: str, tables: dict[str, Any]) -> dict[str, float]:
    """``{"table | row | metric": value}``: every PSNR entry, or the diffusion rows' relative
    metric of :data:`RELATIVE` where the domain's tables have no PSNR."""
    wanted, rows = RELATIVE.get(domain, ((), ("",)))
    return {
        f"{t} | {row} | {k}": float(v)
        for t, table in tables.items()
        for row, metrics in table.items()
        if row.startswith(rows)
        for k, v in metrics.items()
        if (k in wanted if domain in RELATIVE else "PSNR" in k) and isinstance(v, (int, float))
    }


def worst_change(domain: str, f32: dict[str, float], i8: dict[str, float]) -> dict[str, Any]:
    """The largest change of a headline metric: dB for PSNR, relative otherwise."""
    if domain in RELATIVE:
        diff = {k: i8[k] / v - 1 for k, v in f32.items() if k in i8 and v}
        worst = max((abs(v) for v in diff.values()), default=float("nan"))
        return {"relative_change": diff, "worst": worst, "within": worst <= REL_BAR}
    diff = {k: i8[k] - v for k, v in f32.items() if k in i8}
    worst = max((abs(v) for v in diff.values()), default=float("nan"))
    return {"psnr_difference_db": diff, "worst": worst, "within": worst <= DB_BAR}


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
    return {"headline": headline(domain, res.tables), "infer_seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--domains", nargs="+", default=list(DOMAINS))
    p.add_argument("--reps", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", choices=("pt2e", "eager"), default="pt2e")
    p.add_argument("--workdir", default=str(ROOT / "benchmarks" / "work" / "fast_sampling_domains"))
    p.add_argument(
        "--keep-others",
        action="store_true",
        help="keep the entries and bars of results/quantization.json for the domains not "
        "driven now, stamped with the commit and date they were measured at",
    )
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(a.workdir)
    results: dict[str, Any] = {"domains": {}}
    bars: dict[str, bool] = {}
    for d in a.domains:
        model, _, cfg = trained_prior(d, work)
        model = model.eval()
        task = get_task(d)
        ds = task.train_dataset(cfg, TaskPaths(work / d).data)
        sets = prior_batches(d, model, [ds[i] for i in range(min(16, len(ds)))])
        r: dict[str, Any] = {"priors": {}}
        q: dict[str, torch.nn.Module] = {}
        for name, (den, x0, cond) in sets.items():
            g = torch.Generator().manual_seed(a.seed)
            t0 = time.perf_counter()
            calib = list(calibration_batches(x0, default_sigmas(den, 20), generator=g))
            q[name] = quantize_int8(den, calib, cond=cond, method=a.method)
            p_r: dict[str, Any] = {"calibration_seconds": time.perf_counter() - t0}
            models = {"fp32": den, "int8": q[name]}
            if a.method == "pt2e":
                models["fp32 compiled"] = CompiledFP32(den)
                models["int8 eager islands"] = quantize_int8(den, calib, cond=cond, method="eager")
            p_r["latency"] = latency(models, x0, a.reps, cond)
            r["priors"][name] = p_r
            key = f"{name.replace(' ', '_')}_int8_ge_{SPEEDUP_BAR}x_faster"
            bars[key] = p_r["latency"]["speedup"] >= SPEEDUP_BAR
            print(name, p_r["latency"], flush=True)
        qual = (
            f"{d}_headline_within_{REL_BAR:.0%}" if d in RELATIVE else f"{d}_psnr_within_{DB_BAR}db"
        )
        try:
            f32 = quality(d, model, cfg, work, "fp32")
            i8 = quality(d, with_int8(d, model, q), cfg, work, "int8")
            r["quality"] = {
                "fp32": f32,
                "int8": i8,
                **worst_change(d, f32["headline"], i8["headline"]),
            }
            bars[qual] = r["quality"]["within"]
        except RuntimeError as e:  # a posterior step that differentiates the network
            r["quality"] = {"not servable": f"{type(e).__name__}: {str(e)[:300]}"}
            bars[qual] = False
        results["domains"][d] = r
        print(d, {k: v for k, v in r["quality"].items() if k not in ("fp32", "int8")}, flush=True)
    if a.keep_others:
        kept, kept_bars = kept_domains(RESULT, a.domains)
        results["domains"] = {**kept, **results["domains"]}
        bars = {**kept_bars, **bars}
    results["bars"] = bars
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
