"""DPM-Solver-v3 with empirical model statistics on the fast-sampling mixtures (issue 22).

Same exact-score 8-D mixtures, energy distance, starting noise and diffusers comparison as
:mod:`benchmarks.fast_sampling` (diffusers measured again in this run). The statistics
(:func:`diffsci.core.ems.compute_statistics`) are estimated from ``--ems-samples`` draws of the
mixture itself (the "data" a user would pass, seeded apart from the evaluation's reference
and starting samples) over the default schedule's sigma range; then
``sample(den, shape, steps=nfe, sampler="dpm_solver_v3", ems=...)`` runs on the same
``default_sigmas`` as the default UniPC row. Rows: the default (UniPC), DPM-Solver-v3 with
EMS from the mixture's samples, with EMS from the model's own samples
(:func:`~diffsci.core.ems.statistics_from_model`: 50-step default sampling, no data needed),
and with the degenerate statistics (``l = 1, s = b = 0``: the negative control that isolates
what the statistics add), each at predictor order 2 and 3.

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.dpm_solver_v3`` (writes
``results/dpm_solver_v3.json``).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import diffusers
import torch

from benchmarks._common import write_result
from benchmarks.fast_sampling import BAR_RATIO, MIXTURES, diffusers_row, problem
from diffsci.core.ems import compute_statistics, statistics_from_model
from diffsci.core.samplers import sample
from diffsci.core.schedules import default_sigmas

NFES = (5, 10, 20)
EMS_LEVELS = 120


def _ours(den, n: int, nfe: int, seed: int, **opts: Any):
    return sample(
        den,
        (n, 8),
        steps=nfe,
        generator=torch.Generator().manual_seed(seed),
        dtype=torch.float64,
        **opts,
    )


def evaluate(key: str, repeats: int, n: int, seed: int, ems_samples: int) -> dict[str, Any]:
    pb = problem(key, repeats, n, seed)
    gm, sd, den, _, ed = pb
    # the statistics cover every default schedule measured (its lowest level falls with NFE)
    levels = [default_sigmas(den, m) for m in NFES]
    lo, hi = min(float(v[-2]) for v in levels), max(float(v[0]) for v in levels)
    t0 = time.perf_counter()
    data = gm.sample(ems_samples, generator=torch.Generator().manual_seed(seed + 900))
    ems = compute_statistics(
        den,
        data,
        sigma_min=lo,
        sigma_max=hi,
        levels=EMS_LEVELS,
        generator=torch.Generator().manual_seed(seed + 901),
    )
    model_ems = statistics_from_model(
        den,
        (8,),
        n=ems_samples,
        sigma_min=lo,
        sigma_max=hi,
        levels=EMS_LEVELS,
        generator=torch.Generator().manual_seed(seed + 902),
        dtype=torch.float64,
    )
    out: dict[str, Any] = {
        "sigma_data": sd,
        "ems_range": [lo, hi],
        "ems_seconds": time.perf_counter() - t0,
        "nfe": {},
    }
    for nfe in NFES:
        row: dict[str, Any] = {"diffusers": diffusers_row(pb, nfe), "ours": {}}
        row["ours"]["default"] = ed(lambda r, m=nfe: _ours(den, n, m, seed + r))
        for order in (2, 3):
            row["ours"][f"dpm_solver_v3_order{order}"] = ed(
                lambda r, m=nfe, o=order: _ours(
                    den, n, m, seed + r, sampler="dpm_solver_v3", ems=ems, order=o
                )
            )
            row["ours"][f"dpm_solver_v3_order{order}_model_ems"] = ed(
                lambda r, m=nfe, o=order: _ours(
                    den, n, m, seed + r, sampler="dpm_solver_v3", ems=model_ems, order=o
                )
            )
            row["ours"][f"dpm_solver_v3_order{order}_degenerate"] = ed(
                lambda r, m=nfe, o=order: _ours(
                    den, n, m, seed + r, sampler="dpm_solver_v3", order=o
                )
            )
        best = min(row["diffusers"].values())
        row["best_diffusers"] = best
        row["ratio_to_best_diffusers"] = {k: v / best for k, v in row["ours"].items()}
        out["nfe"][str(nfe)] = row
        print(
            f"{key} nfe={nfe:2d} best diffusers {best:.4f} | "
            + " ".join(f"{k}={v:.4f}" for k, v in row["ours"].items()),
            flush=True,
        )
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--ems-samples", type=int, default=4096)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    results: dict[str, Any] = {"diffusers_version": diffusers.__version__, "mixtures": {}}
    bars: dict[str, bool] = {}
    for key in MIXTURES:
        res = results["mixtures"][key] = evaluate(key, a.repeats, a.n, a.seed, a.ems_samples)
        for nfe, ratio in BAR_RATIO.items():
            for who, r in res["nfe"][str(nfe)]["ratio_to_best_diffusers"].items():
                bars[f"{key}_{who}_nfe{nfe}_le_{ratio}x_best_diffusers"] = r <= ratio
    results["bars"] = bars
    results["seconds"] = time.perf_counter() - t0
    config = {
        "mixtures": "as benchmarks.fast_sampling",
        "n_samples": a.n,
        "repeats": a.repeats,
        "nfe": list(NFES),
        "bar_ratio": BAR_RATIO,
        "ems": {"samples": a.ems_samples, "levels": EMS_LEVELS, "range": "default_sigmas'"},
        "schedule": "default_sigmas (the default UniPC row's)",
        "environment": "OMP_NUM_THREADS=1",
        "dtype": "float64",
    }
    write_result("dpm_solver_v3", results, config=config, seed=a.seed)
    for k, v in bars.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
