"""Does more training data and more steps widen the joint prior's margin over the supervised UNet?

Why: the ultrasound bar asks the joint posterior (tissue + haze priors) for B-mode PSNR >= the
best baseline + 1 dB, and the best baseline is the supervised UNet trained on the same (hazy,
clean) pairs for the same steps; the bar run misses it (+0.26 dB). The hyperspectral prior gained
1.7 dB from 8x the scenes and 10x the steps, so this checks whether the ultrasound priors are
held back the same way, on validation frames only.

What: for each recipe (``data.n_train`` training frames, ``train.steps`` = the supervised
baseline's ``supervised_steps``; the rest is ``benchmarks/configs/ultrasound.yaml``) the
priors are trained in ``--workdir-root/<recipe>`` (or reused when that folder's ``model.pt``
was trained with the recipe), the supervised UNet is trained as the task's baselines stage
trains it, and both dehaze the sampler selection's 6 validation frames (seed + 30_000; never
the held-out ones) with the config's sampling. Scores: the benchmark table's B-mode PSNR,
KS vs clean (tissue) and gCNR (anechoic). The current recipe (16 frames, 2400 steps) reuses the
bar run's priors in ``benchmarks/work/ultrasound_bars``.

Run::

    OMP_NUM_THREADS=1 python -m benchmarks.ultrasound_training_scale

Writes ``benchmarks/results/ultrasound_training_scale.json``.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import same_training, write_result
from benchmarks.ultrasound_sampler_selection import (
    CONFIG,
    GCNR,
    HAZY,
    KS,
    PSNR,
    VALIDATION_SEED,
    WORK,
    validation_frames,
)
from diffsci.core.modelfile import load_model_file
from diffsci.core.stages import load_config, load_model, run_prepare, run_train
from diffsci.core.task import TaskPaths, get_task
from diffsci.domains.ultrasound import baselines, data, models
from diffsci.domains.ultrasound.dehaze import SamplingOptions, dehaze_frames
from diffsci.domains.ultrasound.task import _grid, _table, train_supervised

#: (training frames, steps of the priors and of the supervised UNet)
RECIPES = ((16, 2400), (64, 6000))
JOINT, SUPERVISED = "joint diffusion", "supervised UNet"


def _recipe_config(base: dict[str, Any], n_train: int, steps: int) -> dict[str, Any]:
    cfg = copy.deepcopy(base)
    cfg["data"]["n_train"], cfg["train"]["steps"] = n_train, steps
    cfg["baselines"]["supervised_steps"] = steps
    return cfg


def _priors(task, cfg: dict[str, Any], work: Path):
    paths = TaskPaths(work)
    paths.root.mkdir(parents=True, exist_ok=True)
    trained = (
        load_model_file(paths.model).provenance.get("config") if paths.model.is_file() else None
    )
    if not same_training(task, trained, cfg):
        run_prepare(task, cfg, paths)
        run_train(task, cfg, paths)
    return load_model(task, cfg, paths.model), paths


def score_recipe(task, cfg: dict[str, Any], work: Path, frames: int) -> dict[str, Any]:
    """Train (or reuse) one recipe's priors and supervised UNet; score both on validation."""
    t0 = time.perf_counter()
    model, paths = _priors(task, cfg, work)
    net = train_supervised(cfg, paths.data)
    meta = data.read_meta(paths.data)
    seed = int(cfg["seed"])
    y, hazy, clean, rois = validation_frames(cfg, frames, seed + VALIDATION_SEED, meta["scale"])
    x, _, info = dehaze_frames(model, y, SamplingOptions.from_config(cfg), seed=seed + 1)
    with torch.no_grad():
        xs = baselines.apply_tiled(net, y, cfg["sampling"]["tile"], cfg["sampling"]["overlap"])
    env = {
        HAZY: hazy,
        JOINT: models.channels_to_iq(x, meta["scale"]).abs().numpy(),
        SUPERVISED: models.channels_to_iq(xs, meta["scale"]).abs().numpy(),
    }
    cost = {
        JOINT: {"network evaluations per frame": info["nfe_per_frame"]},
        SUPERVISED: {"network evaluations per frame": 1.0},
    }
    table = _table(env, cost, clean, rois, _grid(meta), cfg["metrics"]["dynamic_range"])
    rows = {k: {m: table[k][m] for m in (PSNR, KS, GCNR)} for k in (HAZY, JOINT, SUPERVISED)}
    return {
        "workdir": str(work),
        "n_train": cfg["data"]["n_train"],
        "steps": cfg["train"]["steps"],
        "scores": rows,
        "joint - supervised PSNR (dB)": rows[JOINT][PSNR] - rows[SUPERVISED][PSNR],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(CONFIG))
    p.add_argument("--workdir-root", default=str(Path(WORK).parent / "ultrasound_scale"))
    p.add_argument("--frames", type=int, default=6)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    task = get_task("ultrasound")
    base = load_config(a.config, task)
    out = []
    for n_train, steps in RECIPES:
        cfg = _recipe_config(base, n_train, steps)
        current = (n_train, steps) == (base["data"]["n_train"], base["train"]["steps"])
        work = Path(WORK) if current else Path(a.workdir_root) / f"n{n_train}_s{steps}"
        row = score_recipe(task, cfg, work, a.frames)
        print(row, flush=True)
        out.append(row)
    write_result(
        "ultrasound_training_scale",
        {
            "recipes": out,
            "validation": {"frames": a.frames, "seed": int(base["seed"]) + VALIDATION_SEED},
            "note": "validation frames only; the supervised UNet gets the priors' data and steps",
        },
        config={"config": str(a.config), "recipes": [list(r) for r in RECIPES]},
        seed=int(base["seed"]),
    )


if __name__ == "__main__":
    main()
