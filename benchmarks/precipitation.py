"""Precipitation quality and scale bars: x8 downscaling ensembles vs interpolation, with and
without WassDiff's sliced-Wasserstein regulariser, over several seeds, and a field of at least
8192^2 downscaled chunk by chunk under 4 GB.

Quality (synthetic 64x64 cases, ``benchmarks/configs/precipitation.yaml``), for each seed of
``--seeds`` (default 0 1 2; a seed sets the training fields, the orography, the held-out and
validation cases, the initialisation and the sampling noise): the config is trained twice
through the generic stages, regulariser on (``loss.sw_weight`` as configured) and off (0), with
the same data, steps and seed, and both ensembles are scored on the seed's ``data.n_test``
held-out cases (``--split test``, the reported numbers) or on its ``data.n_val`` validation
cases (``--split validation``: where recipe choices are made; written to
``precipitation_validation_<config name>.json``). Per seed: the metric tables, the relative
reductions ``1 - on/off`` of the 99.9th-percentile error and of the pixel EMD with a paired
bootstrap over cases (``--n-boot`` resamples of whole cases, the pooled metrics recomputed on each:
:func:`diffsci.domains.precipitation.metrics.case_bootstrap`; 95% percentile intervals of the
reduction and of the difference on - off), and the mass error (max |block mean - coarse|)
of both ensembles as sampled and with ``sampling.mass_consistency`` (applied to the same
members: for a field of one tile the option is exactly this rescaling of the sampled members).

Bars (:func:`quality_bars`): 99.9th-percentile error and EMD each >= 20% lower with the
regulariser in the median over seeds, and in at least 2 of 3 seeds (``ceil(2 n / 3)`` of n)
with that seed's bootstrap interval of the difference on - off below zero, and the interval of
the median reduction (the median over seeds of each resample's reductions, cases resampled
independently per seed) above zero; in every seed, on the regulariser-on run: ensemble CRPS
<= 0.8 x bicubic MAE, adjusted spread-skill in [0.8, 1.2], radially averaged PSD within 0.3 dex
of the truth at every wavenumber finer than the coarse grid.

Scale: a synthetic case of ``--scale-size``^2 (default 8192) is generated on disk (zarr,
512^2 chunks, in a child process), then downscaled by the first seed's regulariser-on model with
``python -m diffsci.domains.precipitation.downscale`` in another child process (tiles of the
training size, overlap blending, output written block by block); its peak RSS
(``getrusage``) must be < 4 GB. Members/steps of this run are chosen for a ~20 min single
thread budget and recorded. With ``--skip-scale`` the scale entry of the existing result file is
carried over with the command, commit and date of the run that measured it.

Usage: ``python -m benchmarks.precipitation [--seeds 0 1 2] [--split test|validation]
[--steps N] [--reuse-model] [--skip-scale]``. Writes ``benchmarks/results/precipitation.json``
(rewritten after every seed, ``complete: false`` until the last); work files in
``benchmarks/work/precipitation/seed<k>``. With ``--reuse-model``, a model trained with a config
that differs only in evaluation keys (``data.n_test``, ``data.n_val``, ``evaluate``,
``sampling``) is reused (recorded per seed as ``model_reused``).
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks._common import (
    RESULTS,
    domain_parser,
    read_config,
    run_stages,
    same_training,
    write_result,
)
from diffsci.core.stages import validate_config
from diffsci.core.task import TaskPaths
from diffsci.core.training import training_log

LIMIT_GB = 4.0

GEN_CHILD = """
import sys, numpy as np
from diffsci.domains.precipitation.simulate import make_dataset
from diffsci.domains.precipitation.io import write_dataset
size, path = int(sys.argv[1]), sys.argv[2]
ds = make_dataset(1, size, factor=8, seed=123, oro_seed=0)
ds = ds.drop_vars("output").drop_vars(["output_units", "output_variable"])
write_dataset(ds, path, chunks={"time": 1, "y": 512, "x": 512})
"""

DOWN_CHILD = """
import resource, sys, time
import torch
torch.set_num_threads(1)
from diffsci.domains.precipitation.downscale import main
t0 = time.perf_counter()
rc = main(sys.argv[1:])
print("SECONDS", time.perf_counter() - t0)
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(rc)
"""


def _scale(model_dir: Path, work: Path, size: int, opts: dict) -> dict:
    import xarray as xr

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    inp, out = work / f"scale_{size}.zarr", work / f"scale_{size}_out.zarr"
    t0 = time.perf_counter()
    if not inp.exists():
        subprocess.run([sys.executable, "-c", GEN_CHILD, str(size), str(inp)], check=True, env=env)
    gen_s = time.perf_counter() - t0
    args = [
        "--model",
        str(model_dir / "model.pt"),
        "--stats",
        str(model_dir / "data/stats.json"),
        "--input",
        str(inp),
        "--output",
        str(out),
        "--no-progress",
    ]
    for k, v in opts.items():
        if isinstance(v, bool):
            args += [f"--{k.replace('_', '-')}"] if v else []
        else:
            args += [f"--{k.replace('_', '-')}", str(v)]
    r = subprocess.run(
        [sys.executable, "-c", DOWN_CHILD, *args], capture_output=True, text=True, env=env
    )
    if r.returncode != 0:
        raise RuntimeError(f"scale downscaling failed:\n{r.stderr[-3000:]}")
    lines = dict(
        ln.split(" ", 1) for ln in r.stdout.splitlines() if ln.startswith(("SECONDS", "MAXRSS"))
    )
    rss_gb = int(lines["MAXRSS_KB"]) / 1024**2
    ds = xr.open_zarr(out)
    p = ds["precip"]
    inp_ds = xr.open_zarr(inp)
    # mass check on a corner block (the whole field would be read again: not needed)
    import numpy as np

    from diffsci.domains.precipitation.operators import block_mean

    blk = p.isel(ensemble=0, time=0, y=slice(0, 512), x=slice(0, 512)).values
    cin = inp_ds["input"].isel(time=0, input_variable=0, y=slice(0, 512), x=slice(0, 512)).values
    res = {
        "size": f"{size}x{size}",
        "input_store_chunks": "512x512 per variable",
        "output_shape": list(p.shape),
        "output_chunks": [c[0] for c in p.chunks],
        "generation_seconds": round(gen_s, 1),
        "downscale_seconds": round(float(lines["SECONDS"]), 1),
        "megapixels_per_second": round(
            size * size * opts["members"] / float(lines["SECONDS"]) / 1e6, 4
        ),
        "peak_rss_gb": round(rss_gb, 3),
        "options": opts,
        "corner_block_mass_error_max": float(np.abs(block_mean(blk, 8) - block_mean(cin, 8)).max()),
        "output_finite_corner": bool(np.isfinite(blk).all()),
    }
    shutil.rmtree(out, ignore_errors=True)  # ~0.3 GB per member: do not keep
    return res


BAR_REDUCTION = 0.2


def _ci(x: np.ndarray) -> list[float]:
    return [float(np.percentile(x, 2.5)), float(np.percentile(x, 97.5))]


def paired_reduction(on: float, off: float, draws_on: np.ndarray, draws_off: np.ndarray) -> dict:
    """The reduction ``1 - on/off`` of a metric with the regulariser, its bootstrap draws'
    95% interval, and the interval of the difference ``on - off``."""
    red = 1 - on / off if off > 0 else float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        reds = 1 - draws_on / draws_off
    lo, hi = _ci(reds)
    return {
        "sw_on": on,
        "sw_off": off,
        "reduction": red,
        "ci95_reduction": [lo, hi],
        "ci95_difference_on_minus_off": _ci(draws_on - draws_off),
        "ci_excludes_zero": bool(lo > 0 or hi < 0),
        "draws": reds,  # removed before writing; the median's interval needs them
    }


def quality_bars(seeds: list[dict], median_ci: dict[str, list[float]]) -> dict[str, bool]:
    """The quality bars over per-seed records (see the module doc). ``seeds``: one dict per
    seed with ``crps_ratio``, ``spread_skill``, ``psd_dex`` and, for ``p99.9_error`` and
    ``emd``, ``{"reduction", "ci95_difference_on_minus_off"}``; ``median_ci``: the bootstrap
    interval of the median reduction of each of the two."""
    need = math.ceil(2 * len(seeds) / 3)
    bars: dict[str, bool] = {}
    for key, name in (("p99.9_error", "p99.9_error"), ("emd", "emd")):
        reds = [s[key]["reduction"] for s in seeds]
        # a seed passes with a reduction >= 20% whose sign the bootstrap resolves: the 95%
        # interval of the difference on - off lies below zero
        passing = sum(
            s[key]["reduction"] >= BAR_REDUCTION and s[key]["ci95_difference_on_minus_off"][1] < 0
            for s in seeds
        )
        bars[f"{name}_ge_20pct_lower_with_sw"] = bool(
            float(np.median(reds)) >= BAR_REDUCTION and passing >= need and median_ci[key][0] > 0
        )
    bars["crps_le_0.8x_bicubic_mae_every_seed"] = all(s["crps_ratio"] <= 0.8 for s in seeds)
    bars["spread_skill_in_0.8_1.2_every_seed"] = all(0.8 <= s["spread_skill"] <= 1.2 for s in seeds)
    bars["psd_high_k_within_0.3_dex_every_seed"] = all(s["psd_dex"] <= 0.3 for s in seeds)
    return bars


def _mass(cfg: dict, work: Path, ens_on: np.ndarray, ens_off: np.ndarray) -> dict:
    from diffsci.domains.precipitation import io, metrics
    from diffsci.domains.precipitation.downscale import enforce_mass
    from diffsci.domains.precipitation.operators import block_mean
    from diffsci.domains.precipitation.task import _eval_path

    truth, tp_in, factor = io.read_truth(_eval_path(cfg, work / "sw_on" / "data"))
    coarse = block_mean(tp_in, factor)
    out: dict = {}
    for name, ens in (("sw_on", ens_on), ("sw_off", ens_off)):
        fixed = enforce_mass(ens, coarse, factor)
        out[name] = {
            "mass_error_as_sampled": metrics.mass_error(ens, coarse, factor),
            "mass_error_with_mass_consistency": metrics.mass_error(fixed, coarse, factor),
            "with_mass_consistency": {
                "CRPS": metrics.crps(fixed, truth),
                "EMD": metrics.pixel_emd(fixed, truth),
                "p99.9 error": metrics.percentile_error(fixed, truth, 99.9),
                "PSD high-k max |dex|": metrics.psd_dex_error(fixed, truth, factor=factor)["max"],
                "spread-skill (adj.)": metrics.spread_skill(fixed, truth),
            },
        }
    return out


def _training_part(cfg: dict) -> dict:
    """The config without the keys that shape only the evaluation: which cases and how many
    (``data.n_test``, ``data.n_val``, ``evaluate``), and how they are sampled (``sampling``);
    with the regulariser off (``loss.sw_weight`` 0), without its settings (the loss reads
    none of them then)."""
    c = copy.deepcopy(cfg)
    for k in ("evaluate", "sampling"):
        c.pop(k, None)
    for k in ("n_test", "n_val"):
        c.get("data", {}).pop(k, None)
    loss = c.get("loss", {})
    if loss.get("sw_weight", 0) == 0:  # regulariser off: its other settings are never read
        c["loss"] = {"sw_weight": 0}
    return c


def _stages(task, cfg: dict, workdir: Path, *, reuse_model: bool) -> tuple[dict, dict, bool]:
    """:func:`run_stages`, except that with ``reuse_model`` a model trained with a config that
    differs from ``cfg`` only in evaluation keys (:func:`_training_part`) is reused too (the
    generic check compares the task's training sections). Returns ``(metrics, stage seconds,
    reused)``."""

    def same(trained: dict | None, now: dict) -> bool:
        if trained is None:
            return False
        return _training_part(trained) == _training_part(now) or same_training(task, trained, now)

    runs, times = run_stages(task, cfg, workdir, reuse_model=reuse_model, same=same)
    return runs, times, "train" not in times


def seed_record(cfg: dict, work: Path, runs: dict, times: dict, *, n_boot: int) -> dict:
    """Everything one seed contributes: tables, reductions with their bootstrap, mass errors."""
    from diffsci.domains.precipitation import io, metrics
    from diffsci.domains.precipitation.task import _eval_path

    table = lambda r: next(iter(r["tables"].values()))  # noqa: E731
    on, off = table(runs["sw_on"]), table(runs["sw_off"])
    ens_key = next(k for k in on if k.startswith("diffusion"))
    d_on, d_off = on[ens_key], off[ens_key]
    truth, _, _ = io.read_truth(_eval_path(cfg, work / "sw_on" / "data"))
    ens_on = io.read_predictions(work / "sw_on" / "predictions" / "predictions.zarr")[0]
    ens_off = io.read_predictions(work / "sw_off" / "predictions" / "predictions.zarr")[0]
    t0 = time.perf_counter()
    boot = metrics.case_bootstrap(ens_on, ens_off, truth, n_boot=n_boot, seed=int(cfg["seed"]))
    boot_s = time.perf_counter() - t0
    return {
        "seed": int(cfg["seed"]),
        "cases": int(truth.shape[0]),
        "crps_ratio": d_on["CRPS"] / on["bicubic"]["MAE"],
        "spread_skill": d_on["spread-skill (adj.)"],
        "psd_dex": d_on["PSD high-k max |dex|"],
        "p99.9_error": paired_reduction(
            d_on["p99.9 error"], d_off["p99.9 error"], boot["pq_a"], boot["pq_b"]
        ),
        "emd": paired_reduction(d_on["EMD"], d_off["EMD"], boot["emd_a"], boot["emd_b"]),
        "crps_ratio_sw_off": d_off["CRPS"] / off["bicubic"]["MAE"],
        # where the extremes errors come from: the signed tail and the dry fraction
        "pooled_quantiles_mm_h": {
            name: {f"q{q:g}": float(np.percentile(x, q)) for q in (50, 90, 99, 99.9, 99.99)}
            | {"fraction_below_0.01": float((x < 0.01).mean()), "mean": float(x.mean())}
            for name, x in (("truth", truth), ("sw_on", ens_on), ("sw_off", ens_off))
        },
        "mass": _mass(cfg, work, ens_on, ens_off),
        "bootstrap": {"resamples": n_boot, "seed": int(cfg["seed"]), "seconds": round(boot_s, 1)},
        "sw_on": on,
        "sw_off": off,
        "rank_histogram_sw_on": runs["sw_on"]["summary"]["rank histogram"],
        "rank_histogram_sw_off": runs["sw_off"]["summary"]["rank histogram"],
        "stage_seconds": times,
        "training": {n: training_log(TaskPaths(work / n).checkpoints) for n in runs},
    }


def summarise(records: list[dict]) -> dict:
    """Medians over seeds, the bootstrap interval of the median reductions, and the bars."""
    med = lambda f: float(np.median([f(r) for r in records]))  # noqa: E731
    median_ci = {
        k: _ci(np.median(np.stack([r[k]["draws"] for r in records]), axis=0))
        for k in ("p99.9_error", "emd")
    }
    medians = {
        "p99.9_error_reduction_with_sw": med(lambda r: r["p99.9_error"]["reduction"]),
        "p99.9_error_reduction_ci95": median_ci["p99.9_error"],
        "emd_reduction_with_sw": med(lambda r: r["emd"]["reduction"]),
        "emd_reduction_ci95": median_ci["emd"],
        "p99.9_error_sw_on": med(lambda r: r["p99.9_error"]["sw_on"]),
        "p99.9_error_sw_off": med(lambda r: r["p99.9_error"]["sw_off"]),
        "emd_sw_on": med(lambda r: r["emd"]["sw_on"]),
        "emd_sw_off": med(lambda r: r["emd"]["sw_off"]),
        "ratio_crps_to_bicubic_mae": med(lambda r: r["crps_ratio"]),
        "spread_skill_adj": med(lambda r: r["spread_skill"]),
        "psd_high_k_max_dex": med(lambda r: r["psd_dex"]),
        "mass_error_sw_on_as_sampled": med(lambda r: r["mass"]["sw_on"]["mass_error_as_sampled"]),
        "mass_error_sw_on_with_mass_consistency": med(
            lambda r: r["mass"]["sw_on"]["mass_error_with_mass_consistency"]
        ),
    }
    return {"medians": medians, "bars": quality_bars(records, median_ci)}


def _strip(rec: dict) -> dict:
    out = copy.deepcopy(rec)
    for k in ("p99.9_error", "emd"):
        out[k].pop("draws", None)
    return out


def _previous_scale() -> dict | None:
    """The scale entry of the existing result file with the provenance of its run."""
    path = RESULTS / "precipitation.json"
    if not path.exists():
        return None
    old = json.loads(path.read_text())
    sc = old.get("results", {}).get("scale")
    if not sc:
        return None
    if "measured_by" not in sc:
        sc = {
            **sc,
            "measured_by": {k: old.get(k) for k in ("command", "git_commit", "date")},
        }
    return sc


def main() -> None:
    p = domain_parser("precipitation")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--split", choices=["test", "validation"], default="test")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--skip-scale", action="store_true")
    p.add_argument("--scale-size", type=int, default=8192)
    p.add_argument("--scale-members", type=int, default=1)
    p.add_argument("--scale-steps", type=int, default=1)
    a = p.parse_args()
    import torch

    torch.set_num_threads(1)
    task, base = read_config(a, "precipitation")
    # validation runs are pilots: one result file per config
    name = (
        "precipitation" if a.split == "test" else f"precipitation_validation_{Path(a.config).stem}"
    )
    work = Path(a.workdir) if a.split == "test" else Path(a.workdir + "_validation")
    carried = _previous_scale() if a.skip_scale and a.split == "test" else None
    scale: dict = {}
    worker = None
    records: list[dict] = []
    for k, seed in enumerate(a.seeds):
        cfg_seed = copy.deepcopy(base)
        cfg_seed["seed"] = seed
        cfg_seed["evaluate"]["split"] = a.split
        wseed = work / f"seed{seed}"
        runs, times, reused = {}, {}, {}
        for run, w in (("sw_on", base["loss"]["sw_weight"]), ("sw_off", 0.0)):
            cfg = copy.deepcopy(cfg_seed)
            cfg["loss"]["sw_weight"] = w
            validate_config(cfg, task.schema_path, source=a.config)
            runs[run], times[run], reused[run] = _stages(
                task, cfg, wseed / run, reuse_model=a.reuse_model
            )
            if run == "sw_on" and k == 0 and not a.skip_scale:
                # the scale run needs only the regulariser-on model: its child processes run
                # while the other models train (this thread only waits on them)
                opts = {
                    "members": a.scale_members,
                    "steps": a.scale_steps,
                    "sampler": "euler",
                    "tile": base["data"]["size"],
                    "overlap": 8,
                    "block": 512,
                    "batch": 16,
                    "mass_consistency": True,
                }

                def job(opts=opts, model_dir=wseed / "sw_on"):
                    try:
                        scale.update(_scale(model_dir, work, a.scale_size, opts))
                    except Exception as e:  # noqa: BLE001 - reported in the result
                        scale["error"] = f"{type(e).__name__}: {e}"

                worker = threading.Thread(target=job)
                worker.start()
        records.append(seed_record(cfg_seed, wseed, runs, times, n_boot=a.n_boot))
        records[-1]["model_reused"] = reused
        done = k + 1 == len(a.seeds)
        if done and worker is not None:
            worker.join()
        summ = summarise(records)
        bars = summ["bars"]
        results = {
            "complete": done,
            "split": a.split,
            "seeds": [r["seed"] for r in records],
            "cases_per_seed": [r["cases"] for r in records],
            "grid": runs["sw_on"]["summary"]["grid"],
            "medians_over_seeds": summ["medians"],
            "per_seed": [_strip(r) for r in records],
            "bars": bars,
        }
        if done and worker is not None:
            results["scale"] = scale
            bars["scale_ge_8192_peak_rss_lt_4GB"] = (
                "error" not in scale and a.scale_size >= 8192 and scale["peak_rss_gb"] < LIMIT_GB
            )
        elif carried is not None:
            results["scale"] = carried
            bars["scale_ge_8192_peak_rss_lt_4GB (carried over)"] = bool(
                "error" not in carried
                and carried["output_shape"][-1] >= 8192
                and carried["peak_rss_gb"] < LIMIT_GB
            )
        results["all_bars_met"] = all(bars.values())
        print(json.dumps({"seed": seed, **bars}, indent=1), flush=True)
        write_result(name, results, config=base, seed=None)


if __name__ == "__main__":
    main()
