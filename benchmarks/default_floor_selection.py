"""Check ``default_sigmas``' last non-zero level on validation mixtures, never on A and B.

:mod:`benchmarks.default_schedule_selection` chose the shape and the top of the default
schedule but kept its floor rule, ``_min_factor(n) * sigma_data`` (0.02 at 10 steps, raised as
``(10 / n)^3`` below, so 0.16 at 5). The floor decides the last step, the jump ``x = D(x)``
from that level to 0, whose error grows with the level while a lower floor stretches the other
steps. This script scores other floors for the default's log-linear schedule from
``DEFAULT_SIGMA_MAX_FACTOR * sigma_data`` on the same validation mixtures, by the geometric
mean energy distance over them, at 5 and at 10 network evaluations separately (the rule has
one value per NFE).

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.default_floor_selection`` (writes
``results/default_floor_selection.json``; about 20 s).
"""

from __future__ import annotations

import math
import time
from typing import Any

from benchmarks._common import write_result
from benchmarks.default_schedule_selection import (
    VALIDATION,
    mean_distance,
    validation_args,
    validation_problem,
)
from diffsci.core.schedules import DEFAULT_SIGMA_MAX_FACTOR, _min_factor, exponential

#: last non-zero level / sigma_data tried at each NFE (the rule's value is among them)
FLOORS = {5: (0.04, 0.08, 0.16, 0.3, 0.5), 10: (0.01, 0.02, 0.04, 0.08)}


def geometric_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def main(argv: list[str] | None = None) -> None:
    a = validation_args(__doc__, argv)
    t0 = time.perf_counter()
    per: dict[str, dict[str, float]] = {}
    for name in VALIDATION:
        _, den, refs, sd, dim = validation_problem(name, a.n, a.repeats, a.seed)
        for nfe, floors in FLOORS.items():
            for f in floors:
                sig = exponential(nfe, f * sd, DEFAULT_SIGMA_MAX_FACTOR * sd)
                dist = mean_distance(den, refs, sig, sd, dim, a.seed)
                per.setdefault(f"nfe={nfe},floor={f:g}", {})[name] = dist
    geo = {k: geometric_mean(list(v.values())) for k, v in per.items()}
    results: dict[str, Any] = {"geometric_mean_energy_distance": geo, "per_mixture": per}
    for nfe, floors in FLOORS.items():
        best = min(floors, key=lambda f: geo[f"nfe={nfe},floor={f:g}"])
        results[f"nfe={nfe}"] = {"best floor": best, "current rule": _min_factor(nfe)}
        print(nfe, {f: round(geo[f"nfe={nfe},floor={f:g}"], 5) for f in floors}, flush=True)
    results["seconds"] = time.perf_counter() - t0
    config = {
        "validation_mixtures": list(VALIDATION),
        "schedule": f"log-linear from {DEFAULT_SIGMA_MAX_FACTOR:g} sigma_data to floor * "
        "sigma_data, then 0; UniPC",
        "floors": {str(k): list(v) for k, v in FLOORS.items()},
        "n_samples": a.n,
        "repeats": a.repeats,
        "environment": "OMP_NUM_THREADS=1",
    }
    write_result("default_floor_selection", results, config=config, seed=a.seed)


if __name__ == "__main__":
    main()
