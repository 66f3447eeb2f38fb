"""PDE quality bar: wavelet diffusion vs FNO vs persistence on Burgers, and multi-resolution.

Runs the generic stages (the same code as the Snakemake rules) twice:

1. ``single``: train on the 64 grid, evaluate on 64: diffusion rollout nRMSE vs FNO's (bar:
   <= FNO overall and >= 10% lower over the last quarter of frames); both must beat persistence.
2. ``multires``: train on 32 + 64, evaluate on 64 and 128 (bar: error at 128 <= 1.5x at 64).

Usage: ``python -m benchmarks.pde [--config benchmarks/configs/pde.yaml] [--steps N]
[--workdir DIR] [--result-name NAME] [--single-only]``. ``--single-only`` skips the
multi-resolution run (its bar is then not checked), e.g. to compare the two models at another
step budget. Writes ``benchmarks/results/<NAME>.json`` (default
``pde``); work files go to ``benchmarks/work/pde`` (ignored).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from benchmarks._common import domain_parser, read_config, write_result
from diffsci.core.stages import run_baselines, run_evaluate, run_infer, run_prepare, run_train
from diffsci.core.task import TaskPaths, get_task


def _run(cfg: dict, workdir: Path) -> tuple[dict, dict]:
    task = get_task("pde")
    paths = TaskPaths(workdir)
    times = {}
    for name, fn in (("prepare", run_prepare), ("train", run_train), ("infer", run_infer)):
        t0 = time.perf_counter()
        fn(task, cfg, paths, progress=False)
        times[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_baselines(task, cfg, paths, progress=False)
    times["fno_train"] = time.perf_counter() - t0
    run_evaluate(task, cfg, paths)
    return json.loads(paths.metrics.read_text())["tables"], times


def configs(base: dict) -> tuple[dict, dict]:
    """The single-grid and the multi-resolution configs of the benchmark config ``base``."""
    single = copy.deepcopy(base)
    multi = copy.deepcopy(base)
    multi["data"]["train_nx"], multi["data"]["eval_nx"] = [32, 64], [64, 128]
    # one chunk per step (a step never mixes grids); same trajectories per step as `single`
    multi["train_chunk"] = base["train_chunk"] * base["train"]["batch_size"]
    multi["train"]["batch_size"] = 1
    return single, multi


def single_bars(tables: dict) -> dict[str, bool]:
    """The single-grid bars, from the evaluate stage's tables."""
    f64 = tables["Burgers forecast, nx=64"]
    d, f, per = f64["diffusion (ens. mean)"], f64["fno"], f64["persistence"]
    return {
        "diffusion_nrmse_le_fno": d["nRMSE"] <= f["nRMSE"],
        "diffusion_last_quarter_10pct_below_fno": d["nRMSE last quarter"]
        <= 0.9 * f["nRMSE last quarter"],
        "diffusion_beats_persistence": d["nRMSE"] < per["nRMSE"],
    }


def multires_ratio(tables: dict) -> float:
    """Diffusion's ensemble-mean nRMSE at 128 over that at 64 (the bar: <= 1.5)."""
    row = "diffusion (ens. mean)"
    return (
        tables["Burgers forecast, nx=128"][row]["nRMSE"]
        / tables["Burgers forecast, nx=64"][row]["nRMSE"]
    )


def main() -> None:
    p = domain_parser("pde", reuse_model=False)  # --steps: both models
    p.add_argument("--result-name", default="pde", help="benchmarks/results/<name>.json")
    p.add_argument("--single-only", action="store_true", help="skip the multi-resolution run")
    a = p.parse_args()
    _, base = read_config(a, "pde")

    single, multi = configs(base)
    tabs_s, t_s = _run(single, Path(a.workdir) / "single")
    f64 = tabs_s["Burgers forecast, nx=64"]
    bars = single_bars(tabs_s)
    if a.single_only:
        results = {
            "single_grid_64": f64,
            "bars": bars,
            "multires": "skipped (--single-only)",
            "seconds": {"single": t_s},
        }
        write_result(a.result_name, results, config={"single": single}, seed=base["seed"])
        print(json.dumps(bars, indent=1))
        return
    tabs_m, t_m = _run(multi, Path(a.workdir) / "multires")

    ratio = multires_ratio(tabs_m)
    fno128 = tabs_m["Burgers forecast, nx=128"]["fno"]["nRMSE"]
    bars["multires_128_le_1.5x_64"] = ratio <= 1.5
    results = {
        "single_grid_64": f64,
        "multires": {k: v for k, v in tabs_m.items()},
        "multires_ratio_128_over_64": ratio,
        "fno_multires_ratio_128_over_64": fno128
        / tabs_m["Burgers forecast, nx=64"]["fno"]["nRMSE"],
        "assimilation_64": tabs_s.get("Burgers assimilation (sparse noisy sensors), nx=64"),
        "bars": bars,
        "all_bars_met": all(bars.values()),
        "seconds": {"single": t_s, "multires": t_m},
    }
    write_result(
        a.result_name, results, config={"single": single, "multires": multi}, seed=base["seed"]
    )
    print(json.dumps(bars, indent=1))


if __name__ == "__main__":
    main()
