"""Single-cell quality bars: held-out cell type perturbation response and krumsiek11 lineage.

Runs the generic stages (the same code as the Snakemake rules) with
``benchmarks/configs/singlecell.yaml`` and checks the bars defined in
:data:`diffsci.domains.singlecell.metrics.BARS` (evaluate reports each as a ``bar: ...``
entry of its summary): on the mean over the simulated perturbations of the held-out cell type,
top-50-DE R^2 >= 0.9 and >= identity + 0.3, E-distance <= 0.5 x identity's, coverage of the
hidden-factor draws by the 90% interval of the predicted population scores >= 0.8; on
krumsiek11, NMI vs fates >= 0.8 and pseudotime Spearman >= scanpy DPT's. Also records the E-distance cross-check against an independent
implementation (a loop over cells with ``numpy.linalg.norm``) on a fixed example. The tables
carry an oracle row (the simulator's ground truth applied to the held-out cell type's
control-pool cells): the ceiling of predictions made from that pool, not a method.

Usage: ``python -m benchmarks.singlecell [--config ...] [--steps N] [--reuse-model]``.
Writes ``benchmarks/results/singlecell.json``; work files go to ``benchmarks/work/singlecell``.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from benchmarks._common import domain_parser, read_config, run_stages, write_result
from diffsci.core.task import TaskPaths
from diffsci.core.training import training_log
from diffsci.domains.singlecell.metrics import ORACLE


def edistance_crosscheck(seed: int = 0) -> dict[str, float]:
    """Our E-distance against a direct double loop over cells (pertpy's formula)."""
    from diffsci.domains.singlecell.metrics import e_distance

    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(40, 10)), rng.normal(0.5, 1.2, size=(55, 10))

    def mean_dist(a, b):
        return sum(np.linalg.norm(u - v) for u in a for v in b) / (len(a) * len(b))

    ref = 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)
    ours = e_distance(x, y)
    return {"ours": ours, "independent": ref, "abs_diff": abs(ours - ref)}


def main() -> None:
    p = domain_parser("singlecell")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    task, cfg = read_config(a, "singlecell")
    m, times = run_stages(task, cfg, a.workdir, reuse_model=a.reuse_model, progress=True)
    tables, summary = m["tables"], m["summary"]
    mean = next(v for k, v in tables.items() if k.startswith("Perturbation, mean"))
    lin = next(v for k, v in tables.items() if k.startswith("Lineage"))
    xc = edistance_crosscheck()
    bars = {k.removeprefix("bar: "): v for k, v in summary.items() if k.startswith("bar: ")}
    bars["E-distance equals pertpy's formula to 1e-8"] = bool(xc["abs_diff"] <= 1e-8)
    results = {
        "bars_met": bars,
        "held_out_cell_type": summary["held-out cell type"],
        "perturbation_mean": mean,
        "oracle_note": (
            f"'{ORACLE}': the simulator's known program applied to the held-out cell type's "
            "control-pool cells (the pool every method predicts from; the truth was simulated "
            "on the disjoint perturbed pool), fresh hidden factors. A ceiling, not a method: "
            "no bar is about it"
        ),
        "lineage": lin,
        "edistance_crosscheck": xc,
        "tables": tables,
        "seconds": times,
        "training": training_log(TaskPaths(a.workdir).checkpoints),
    }
    write_result("singlecell", results, config=cfg, seed=int(cfg.get("seed", 0)))
    print(json.dumps({"bars_met": bars, "perturbation_mean": mean, "lineage": lin}, indent=1))


if __name__ == "__main__":
    main()
