"""Precipitation quality and scale bars: x8 downscaling ensembles vs interpolation, with and
without WassDiff's sliced-Wasserstein regulariser, and a field of at least 8192^2 downscaled
chunk by chunk under 4 GB.

Quality (held-out synthetic 64x64 cases, ``benchmarks/configs/precipitation.yaml``): the
config is trained twice through the generic stages, regulariser on (``loss.sw_weight`` as
configured) and off (0), with the same data, steps and seed. Bars, on the regulariser-on run
unless stated: ensemble CRPS <= 0.8 x bicubic MAE; 99.9th-percentile error and pixel EMD
>= 20% lower than with the regulariser off; adjusted spread-skill in [0.8, 1.2]; radially
averaged PSD within 0.3 dex of the truth at every wavenumber finer than the coarse grid.

Scale: a synthetic case of ``--scale-size``^2 (default 8192) is generated on disk (zarr,
512^2 chunks, in a child process), then downscaled by the regulariser-on model with
``python -m diffsci.domains.precipitation.downscale`` in another child process (tiles of the
training size, overlap blending, output written block by block); its peak RSS
(``getrusage``) must be < 4 GB. Members/steps of this run are chosen for a ~20 min single
thread budget and recorded.

Usage: ``python -m benchmarks.precipitation [--steps N] [--reuse-model] [--skip-scale]``.
Writes ``benchmarks/results/precipitation.json``; work files in ``benchmarks/work/precipitation``.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks._common import domain_parser, read_config, run_stages, write_result
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


def main() -> None:
    p = domain_parser("precipitation")
    p.add_argument("--skip-scale", action="store_true")
    p.add_argument("--scale-size", type=int, default=8192)
    p.add_argument("--scale-members", type=int, default=1)
    p.add_argument("--scale-steps", type=int, default=1)
    a = p.parse_args()
    import torch

    torch.set_num_threads(1)
    task, base = read_config(a, "precipitation")
    work = Path(a.workdir)
    runs, times = {}, {}
    scale: dict = {}
    worker = None
    for name, w in (("sw_on", base["loss"]["sw_weight"]), ("sw_off", 0.0)):
        cfg = copy.deepcopy(base)
        cfg["loss"]["sw_weight"] = w
        validate_config(cfg, task.schema_path, source=a.config)
        runs[name], times[name] = run_stages(task, cfg, work / name, reuse_model=a.reuse_model)
        if name == "sw_on" and not a.skip_scale:
            # the scale run needs only the regulariser-on model: its child processes run
            # while the regulariser-off model trains (this thread only waits on them)
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

            def job(opts=opts):
                try:
                    scale.update(_scale(work / "sw_on", work, a.scale_size, opts))
                except Exception as e:  # noqa: BLE001 - reported in the result, not hidden
                    scale["error"] = f"{type(e).__name__}: {e}"

            worker = threading.Thread(target=job)
            worker.start()
    table = lambda r: next(iter(r["tables"].values()))  # noqa: E731
    on, off = table(runs["sw_on"]), table(runs["sw_off"])
    ens = next(k for k in on if k.startswith("diffusion"))
    d_on, d_off = on[ens], off[ens]
    bic_mae = on["bicubic"]["MAE"]
    red = lambda k: 1 - d_on[k] / d_off[k] if d_off[k] > 0 else float("nan")  # noqa: E731
    bars = {
        "crps_le_0.8x_bicubic_mae": d_on["CRPS"] <= 0.8 * bic_mae,
        "p99.9_error_ge_20pct_lower_with_sw": red("p99.9 error") >= 0.2,
        "emd_ge_20pct_lower_with_sw": red("EMD") >= 0.2,
        "spread_skill_in_0.8_1.2": 0.8 <= d_on["spread-skill (adj.)"] <= 1.2,
        "psd_high_k_within_0.3_dex": d_on["PSD high-k max |dex|"] <= 0.3,
    }
    results = {
        "quality": {
            "held_out_cases": runs["sw_on"]["summary"]["held-out cases"],
            "grid": runs["sw_on"]["summary"]["grid"],
            "ratio_crps_to_bicubic_mae": d_on["CRPS"] / bic_mae,
            "p99.9_error_reduction_with_sw": red("p99.9 error"),
            "emd_reduction_with_sw": red("EMD"),
            "sw_on": on,
            "sw_off": off,
            "rank_histogram_sw_on": runs["sw_on"]["summary"]["rank histogram"],
            "rank_histogram_sw_off": runs["sw_off"]["summary"]["rank histogram"],
            "stage_seconds": times,
            "training": {n: training_log(TaskPaths(work / n).checkpoints) for n in runs},
        },
        "bars": bars,
    }
    if worker is not None:
        worker.join()
        results["scale"] = scale
        bars["scale_ge_8192_peak_rss_lt_4GB"] = (
            "error" not in scale and a.scale_size >= 8192 and scale["peak_rss_gb"] < LIMIT_GB
        )
    results["all_bars_met"] = all(bars.values())
    print(json.dumps(bars, indent=1))
    write_result("precipitation", results, config=base, seed=int(base.get("seed", 0)))


if __name__ == "__main__":
    main()
