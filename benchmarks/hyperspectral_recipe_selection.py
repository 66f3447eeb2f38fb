"""Choose the hyperspectral benchmark prior's training budget (scenes x steps) on validation cubes.

Why: the prior of ``benchmarks/configs/hyperspectral.yaml`` was trained on 96 synthetic scenes
for 600 steps with its loss still falling; the sigma-50 and mixture bars ask for more than it
gave. The simulator makes training scenes for free, so the budget is chosen here, on validation
cubes only.

What: for each recipe ``(n_train, steps)``, optionally with other UNet level widths
(``--recipes 768:6000:32-64-128``), the benchmark config (everything else unchanged) is
prepared and trained in ``--workdir-root/n<scenes>_s<steps>[_c<widths>]`` (reused when that
folder's model was trained with the recipe), then restores validation cubes (``make_scenes`` with seed 20000, never
the held-out seed 10000; noise from the QRNN3D generators with seed 5) at sigma 50 and under the
mixture. The LRTV-like baseline at the prior's rank is scored on the same cubes. Pick rule: the
largest sigma-50 MPSNR (the budget is bounded by the CPU time a bar run can afford).

Run::

    OMP_NUM_THREADS=1 python -m benchmarks.hyperspectral_recipe_selection

Writes ``benchmarks/results/hyperspectral_recipe_selection.json``.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from benchmarks._common import same_training, write_result
from diffsci.core.modelfile import load_model_file
from diffsci.core.stages import load_model, run_prepare, run_train, validate_config
from diffsci.core.task import TaskPaths, get_task
from diffsci.domains.hyperspectral import baselines, metrics, models, simulate

HERE = Path(__file__).resolve().parent
#: (training scenes, steps); the first is the former benchmark recipe
RECIPES = ((96, 600), (384, 2400), (768, 6000))
VALIDATION_SEED, NOISE_SEED = 20_000, 5
CASES = ("gaussian50", "mixture")


def validation_cubes(cfg: dict[str, Any], n: int) -> list[tuple[np.ndarray, dict[str, Any]]]:
    """``n`` clean validation cubes and their noisy versions per case."""
    d = cfg["data"]
    wl = np.linspace(d["wavelength_min"], d["wavelength_max"], d["bands"])
    clean = simulate.make_scenes(
        n,
        d["size"],
        wl,
        seed=VALIDATION_SEED,
        variability=d.get("variability", 0.15),
        illumination=d.get("illumination", 0.2),
    )
    rng = np.random.default_rng(NOISE_SEED)
    noisy = {c: [simulate.add_noise(x, c, rng)[0] for x in clean] for c in CASES}
    return [(x, {c: noisy[c][i] for c in CASES}) for i, x in enumerate(clean)]


def _scores(rows: list[tuple[float, float]]) -> dict[str, float]:
    a = np.asarray(rows)
    return {"MPSNR": float(a[:, 0].mean()), "SAM (rad)": float(a[:, 1].mean())}


def score(model, sampling: dict[str, Any], cubes) -> dict[str, dict[str, float]]:
    """Mean MPSNR and SAM of the prior's restorations per case."""
    out = {}
    for case in CASES:
        rows = []
        for i, (x, noisy) in enumerate(cubes):
            g = torch.Generator().manual_seed(i)
            y = noisy[case].astype(np.float32)
            r = np.clip(models.restore(model, y, sampling=sampling, generator=g).cube, 0, 1)
            rows.append((metrics.mpsnr(r, x), metrics.sam(r, x)))
        out[case] = _scores(rows)
    return out


def baseline(cubes, k: int) -> dict[str, dict[str, float]]:
    """The LRTV-like baseline at the prior's rank on the same cubes."""
    out = {}
    for case in CASES:
        rows = []
        for x, noisy in cubes:
            r = baselines.robust_subspace_tv(noisy[case], None, k=k)
            rows.append((metrics.mpsnr(r, x), metrics.sam(r, x)))
        out[case] = _scores(rows)
    return out


def trained(task, cfg: dict[str, Any], work: Path):
    paths = TaskPaths(work)
    paths.root.mkdir(parents=True, exist_ok=True)
    prov = load_model_file(paths.model).provenance.get("config") if paths.model.is_file() else None
    if not same_training(task, prov, cfg):
        run_prepare(task, cfg, paths)
        run_train(task, cfg, paths)
    return load_model(task, cfg, paths.model)


def parse_recipe(text: str) -> tuple[int, int, tuple[int, ...] | None]:
    """``"scenes:steps"`` or ``"scenes:steps:c1-c2-..."`` (the UNet's level widths)."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"recipe {text!r}: expected scenes:steps or scenes:steps:c1-c2-...")
    widths = tuple(int(c) for c in parts[2].split("-")) if len(parts) == 3 else None
    return int(parts[0]), int(parts[1]), widths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(HERE / "configs" / "hyperspectral.yaml"))
    p.add_argument("--workdir-root", default=str(HERE / "work" / "hyperspectral_recipes"))
    p.add_argument("--cubes", type=int, default=8)
    p.add_argument(
        "--result",
        default="hyperspectral_recipe_selection",
        help="name of the JSON under benchmarks/results (another comparison, another name)",
    )
    p.add_argument(
        "--recipes",
        nargs="+",
        help="scenes:steps pairs, optionally :c1-c2-... UNet widths (default: the three of "
        "RECIPES with the config's widths)",
    )
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    task = get_task("hyperspectral")
    base = yaml.safe_load(Path(a.config).read_text())
    validate_config(base, task.schema_path, source=a.config)
    recipes = [parse_recipe(r) for r in a.recipes] if a.recipes else [(*r, None) for r in RECIPES]
    cubes = validation_cubes(base, a.cubes)
    rows = []
    for n_train, steps, widths in recipes:
        cfg = copy.deepcopy(base)
        cfg["data"]["n_train"], cfg["train"]["steps"] = n_train, steps
        name = f"n{n_train}_s{steps}"
        if widths is not None:
            cfg["model"]["channels"] = list(widths)
            cfg["model"]["attention_levels"] = [False] * len(widths)
            name += "_c" + "-".join(map(str, widths))
        t0 = time.perf_counter()
        model = trained(task, cfg, Path(a.workdir_root) / name)
        row = {"n_train": n_train, "steps": steps, "channels": cfg["model"]["channels"]}
        row.update(score(model, dict(cfg["sampling"]), cubes))
        row["seconds"] = round(time.perf_counter() - t0, 1)
        print(row, flush=True)
        rows.append(row)
    best = max(rows, key=lambda r: r["gaussian50"]["MPSNR"])
    write_result(
        a.result,
        {
            "rule": "the largest sigma-50 MPSNR on the validation cubes",
            "validation": {"cubes": a.cubes, "seed": VALIDATION_SEED, "noise seed": NOISE_SEED},
            "candidates": rows,
            "LRTV-like at the prior's rank": baseline(cubes, int(base["model"]["components"])),
            "best": {k: best[k] for k in ("n_train", "steps", "channels")},
        },
        config={"config": str(a.config), "recipes": [list(r) for r in recipes]},
        seed=int(base["seed"]),
    )


if __name__ == "__main__":
    main()
