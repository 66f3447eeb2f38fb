"""Issue 22, bar 3: a domain's quality bars at 1/4 of its posterior-sampling NFE.

The domain benchmark's trained model and held-out data (``benchmarks/work/<domain>``, from
``python -m benchmarks.<domain>``) are reused; only ``sampling`` changes: ``steps`` divided
by 4 (rounded down, at least 2) and the core's default few-step solver (``unipc``) instead of
the configured one. The infer and evaluate stages run again in ``<workdir>_quarter_nfe`` and
the domain benchmark's own bar functions score both runs, so the report says, bar by bar,
whether it still holds at 1/4 NFE and by how much it misses.

Driven: hyperspectral (20 Euler steps of the proximal posterior sampler -> 5 UniPC steps).
Not driven yet: the other domains (their benchmarks' bar code is not separable from their
runs in the same way, or, for ultrasound, the baselines stage would run again); recorded.

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.quarter_nfe`` after ``python -m
benchmarks.hyperspectral`` (writes ``results/quarter_nfe.json``).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import write_result
from diffsci.core.samplers import DEFAULT_SAMPLER
from diffsci.core.stages import load_config, run_evaluate, run_infer
from diffsci.core.task import TaskPaths, get_task

ROOT = Path(__file__).resolve().parents[1]


def quarter(sampling: dict[str, Any]) -> dict[str, Any]:
    """The sampling section at 1/4 NFE with the default few-step solver."""
    return {**sampling, "steps": max(2, int(sampling["steps"]) // 4), "sampler": DEFAULT_SAMPLER}


def _link(src: Path, dst: Path) -> None:
    if dst.is_symlink():
        dst.unlink()
    if not dst.exists():
        dst.symlink_to(src.resolve())


def hyperspectral_bars(metrics: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.hyperspectral import _gaussian_bar, _mixture_bar, _table

    return {
        "gaussian sigma 50: MPSNR >= best classical + 2 dB and SAM <= 0.8 x its SAM": (
            _gaussian_bar(_table(metrics, "gaussian50"))
        ),
        "mixture: MPSNR >= noisy + 22 dB and >= best classical + 3 dB, SAM <= 0.10 rad, "
        "stripe residual <= 0.01": _mixture_bar(_table(metrics, "mixture")),
    }


DOMAINS = {"hyperspectral": (hyperspectral_bars, {"self_supervised": False})}


def run(domain: str, workdir: Path) -> dict[str, Any]:
    task = get_task(domain)
    cfg = load_config(ROOT / "benchmarks" / "configs" / f"{domain}.yaml", task)
    full = TaskPaths(workdir)
    if not full.model.is_file() or not full.metrics.is_file():
        raise SystemExit(
            f"{full.model} or {full.metrics} missing: run python -m benchmarks.{domain}"
        )
    bars_of, extra = DOMAINS[domain]
    q = copy.deepcopy(cfg)
    q["sampling"] = {**quarter(cfg["sampling"]), **extra}
    qpaths = TaskPaths(workdir.with_name(workdir.name + "_quarter_nfe"))
    qpaths.root.mkdir(parents=True, exist_ok=True)
    _link(full.data, qpaths.data)
    _link(full.model, qpaths.model)
    _link(full.model.with_name("model_card.json"), qpaths.model.with_name("model_card.json"))
    run_infer(task, q, qpaths, progress=False)
    run_evaluate(task, q, qpaths)
    before = bars_of(json.loads(full.metrics.read_text()))
    after = bars_of(json.loads(qpaths.metrics.read_text()))
    return {
        "sampling (full)": {k: cfg["sampling"][k] for k in ("sampler", "steps")},
        "sampling (1/4 NFE)": {k: q["sampling"][k] for k in ("sampler", "steps")},
        "bars at full NFE": before,
        "bars at 1/4 NFE": after,
        "met at 1/4 NFE": {k: v["met"] for k, v in after.items()},
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--domains", nargs="+", default=list(DOMAINS))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    results: dict[str, Any] = {d: run(d, ROOT / "benchmarks" / "work" / d) for d in a.domains}
    results["bars"] = {
        f"{d}: {k}": v for d in a.domains for k, v in results[d]["met at 1/4 NFE"].items()
    }
    results["not driven"] = {
        "medical, pde, precipitation, singlecell, ultrasound": "not driven in this benchmark yet"
    }
    write_result("quarter_nfe", results, config={"domains": a.domains}, seed=None)


if __name__ == "__main__":
    main()
