"""Choose the hyperspectral benchmark's posterior sampler and steps on validation cubes.

The benchmark's trained prior (``benchmarks/work/hyperspectral/model.pt``) restores validation
cubes (``seed + 20_000``, as ``hyperspectral_selfsup_selection``; the held-out cubes are
``seed + 10_000``) under i.i.d. Gaussian noise sigma 50/255 with each candidate ``(sampler,
steps)`` of the proximal posterior sampler, the other sampling settings as configured. The
pick is the largest mean MPSNR; ties within 0.05 dB go to fewer network evaluations.

Run after ``python -m benchmarks.hyperspectral``: ``OMP_NUM_THREADS=1 python -m
benchmarks.hyperspectral_sampler_selection`` (writes
``results/hyperspectral_sampler_selection.json``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._common import write_result
from benchmarks.hyperspectral import trained_model
from diffsci.domains.hyperspectral import metrics, simulate
from diffsci.domains.hyperspectral.models import restore

ROOT = Path(__file__).resolve().parents[1]
# (sampler, steps): the configured one first; NFE = steps (x2 - 1 for heun)
CANDIDATES = [("euler", 20), ("unipc", 5), ("unipc", 10), ("dpmpp_2m", 10), ("heun", 10)]


def nfe(sampler: str, steps: int) -> int:
    return 2 * steps - 1 if sampler == "heun" else steps


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=str(ROOT / "benchmarks" / "work" / "hyperspectral"))
    p.add_argument("--cubes", type=int, default=5)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(a.workdir)
    model, cfg = trained_model(work)
    seed = int(cfg["seed"])
    wl = np.linspace(cfg["data"]["wavelength_min"], cfg["data"]["wavelength_max"], 31)
    clean = simulate.make_scenes(a.cubes, 64, wl, seed=seed + 20_000)
    rng = np.random.default_rng(seed + 20_007)
    noisy = [simulate.add_noise(x, "gaussian50", rng)[0] for x in clean]
    rows: list[dict[str, Any]] = []
    for sampler, steps in CANDIDATES:
        s = {**cfg["sampling"], "sampler": sampler, "steps": steps}
        scores = []
        for i, (x, y) in enumerate(zip(clean, noisy, strict=True)):
            r = restore(model, y, sampling=s, generator=torch.Generator().manual_seed(i))
            est = np.clip(r.cube, 0, 1)
            scores.append((metrics.mpsnr(est, x), metrics.sam(est, x)))
        rows.append(
            {
                "sampler": sampler,
                "steps": steps,
                "nfe per sample": nfe(sampler, steps),
                "mean MPSNR": float(np.mean([m for m, _ in scores])),
                "mean SAM (rad)": float(np.mean([q for _, q in scores])),
            }
        )
        print(rows[-1], flush=True)
    top = max(r["mean MPSNR"] for r in rows)
    best = min(
        (r for r in rows if r["mean MPSNR"] >= top - 0.05), key=lambda r: r["nfe per sample"]
    )
    write_result(
        "hyperspectral_sampler_selection",
        {"candidates": rows, "best": {k: best[k] for k in ("sampler", "steps")}},
        config={"cubes": a.cubes, "case": "gaussian50", "model": str(work / "model.pt")},
        seed=seed,
    )


if __name__ == "__main__":
    main()
