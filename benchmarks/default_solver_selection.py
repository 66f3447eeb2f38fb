"""Choose the default solver's settings (UniPC variant and order) on validation mixtures.

``sample()`` without a sampler runs UniPC (Zhao et al. 2023) with order 2 and the ``bh2``
variant (``B(h) = e^h - 1``), as diffusers' ``UniPCMultistepScheduler`` defaults. The UniPC
paper recommends ``bh1`` (``B(h) = h``) for unconditional sampling at very few steps and
``bh2`` for guided sampling; order 3 gains where the history is smooth. This script scores
each ``(order, variant)`` on the default schedule's shape and the two runners-up of
``default_schedule_selection`` on the same exact-score validation mixtures (never the bar's
mixtures A and B), by the energy distance at 5 and 10 NFE, and picks the smallest geometric
mean over mixtures and NFE. The bar run (``benchmarks.fast_sampling``) then uses the pick once.

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.default_solver_selection`` (writes
``results/default_solver_selection.json``).
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from typing import Any

from benchmarks._common import write_result
from benchmarks.default_schedule_selection import (
    NFES,
    VALIDATION,
    candidate_sigmas,
    geometric_means,
    label,
    mean_distance,
    validation_args,
    validation_problem,
)
from diffsci.core.samplers import sample_unipc

ORDERS = (2, 3)
VARIANTS = ("bh1", "bh2")
# (rho, sigma_max / sigma_data, knee): the default and default_schedule_selection's runners-up
SHAPES = ((math.inf, 20.0, None), (math.inf, 40.0, None), (15.0, 20.0, None))


def solver_label(order: int, variant: str, shape: tuple[float, float, float | None]) -> str:
    return f"order={order},{variant},{label(*shape)}"


def score(name: str, n: int, repeats: int, seed: int) -> dict[str, Any]:
    _, den, refs, sd, dim = validation_problem(name, n, repeats, seed)
    out: dict[str, Any] = {"sigma_data": sd, "energy_distance": {}}
    for order, variant, shape, nfe in itertools.product(ORDERS, VARIANTS, SHAPES, NFES):
        sig = candidate_sigmas(nfe, sd, *shape)
        run = functools.partial(sample_unipc, order=order, variant=variant)
        key = f"{solver_label(order, variant, shape)},nfe={nfe}"
        out["energy_distance"][key] = mean_distance(den, refs, sig, sd, dim, seed, run)
    return out


def main(argv: list[str] | None = None) -> None:
    a = validation_args(__doc__, argv)
    t0 = time.perf_counter()
    per = {name: score(name, a.n, a.repeats, a.seed) for name in VALIDATION}
    labels = [solver_label(*c) for c in itertools.product(ORDERS, VARIANTS, SHAPES)]
    geo = geometric_means(per, labels)
    for k, v in sorted(geo.items(), key=lambda kv: kv[1]):
        print(f"{k:36s} geometric-mean energy distance {v:.5f}", flush=True)
    best = min(geo, key=geo.get)
    current = solver_label(2, "bh2", SHAPES[0])
    results = {
        "geometric_mean_energy_distance": geo,
        "best": best,
        "current_default": current,
        "best_over_current": geo[best] / geo[current],
        "per_mixture": per,
        "seconds": time.perf_counter() - t0,
    }
    config = {
        "validation_mixtures": "benchmarks.default_schedule_selection.VALIDATION",
        "orders": list(ORDERS),
        "variants": list(VARIANTS),
        "shapes": [label(*s) for s in SHAPES],
        "nfe": list(NFES),
        "n_samples": a.n,
        "repeats": a.repeats,
        "objective": "geometric mean over mixtures and NFE of the energy distance",
        "environment": "OMP_NUM_THREADS=1",
    }
    write_result("default_solver_selection", results, config=config, seed=a.seed)


if __name__ == "__main__":
    main()
