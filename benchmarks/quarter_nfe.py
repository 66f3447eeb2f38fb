"""Issue 22, bar 3: a domain's quality bars at 1/4 of its posterior-sampling NFE.

The domain benchmark's trained model and held-out data (``benchmarks/work/<domain>``, from
``python -m benchmarks.<domain>``) are reused; only ``sampling`` changes, to a quarter of the
network evaluations per restoration (``steps x samples``) with the core's default few-step
solver (``unipc``): ``steps`` divided by 4 where the configured steps allow it, otherwise
``samples`` divided by 4 (each domain's rule is in :data:`DOMAINS`). The infer and evaluate
stages run again in ``<workdir>_quarter_nfe`` (baselines, where a domain has a stage for them,
are linked from the full run) and the domain benchmark's own bar functions score both runs,
so the report says, bar by bar, whether it still holds at 1/4 NFE and by how much it misses.

Driven: hyperspectral (UniPC 8 steps x 32 samples -> 8 steps x 8 samples), medical (DDIM 50
steps x 8 samples -> UniPC 12 steps x 8 samples), ultrasound (Euler 15 steps x 16 samples
-> x 4 in antithetic pairs, chosen on validation frames; the sequence's warm starts
unchanged), precipitation (every seed's two models, Heun
10 steps = 19 evaluations per member -> UniPC 4 steps on the core's few-step schedule, 13
members; scored by the benchmark's per-seed records and median bars), singlecell (each
population sample: Heun 25 steps = 49 evaluations -> UniPC 12 steps, 64 samples per
perturbation), pde (both models of ``python -m benchmarks.pde``, single grid and
multi-resolution: PDE-Refiner's 4 trained levels per forecast, 64 members -> 16 members; the
levels are what the model was trained on, so the quarter comes from the ensemble; the FNO
baseline's forecasts are linked from the full run).

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.quarter_nfe [--domains ...]`` after the domains'
own benchmarks (writes ``results/quarter_nfe.json``; ``--domains hyperspectral --keep-others``
reruns one domain after its benchmark changed and keeps the others' entries, stamped with the
commit and date they were measured at).
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
from diffsci.core.samplers import nfe as sampler_nfe
from diffsci.core.stages import load_config, run_evaluate, run_infer, validate_config
from diffsci.core.task import TaskPaths, get_task

ROOT = Path(__file__).resolve().parents[1]


def quarter(sampling: dict[str, Any], *, by: str = "steps") -> dict[str, Any]:
    """The sampling section at (at most) 1/4 of the network evaluations, with the default
    few-step solver (one evaluation per step): ``steps`` set to a quarter of the configured
    sampler's evaluations (Heun: two per step but the last), or ``samples`` divided by 4,
    rounded down."""
    n = sampler_nfe(sampling["sampler"], int(sampling[by])) if by == "steps" else int(sampling[by])
    if n < 4:
        raise ValueError(f"sampling.{by} = {n}: a quarter of it is less than one")
    return {**sampling, by: n // 4, "sampler": DEFAULT_SAMPLER}


def nfe(sampling: dict[str, Any]) -> int:
    """Network evaluations per restoration: the sampler's evaluations for ``steps`` times
    ``samples`` (precipitation: ``members``)."""
    per = sampler_nfe(sampling.get("sampler", DEFAULT_SAMPLER), int(sampling["steps"]))
    return per * int(sampling.get("samples", sampling.get("members", 1)))


def _link(src: Path, dst: Path) -> None:
    if dst.is_symlink():
        dst.unlink()
    if not dst.exists():
        dst.symlink_to(src.resolve())


def rerun(
    task: Any, cfg: dict[str, Any], full: TaskPaths, dst: TaskPaths, links: tuple[str, ...]
) -> dict[str, Any]:
    """Infer and evaluate again in ``dst`` with ``cfg``, on the data and model of the full
    run ``full`` (and its work-folder entries ``links``, linked, not copied); returns the
    metrics evaluate wrote."""
    if not full.model.is_file() or not full.metrics.is_file():
        raise SystemExit(
            f"{full.model} or {full.metrics} missing: run python -m benchmarks.{task.name}"
        )
    dst.root.mkdir(parents=True, exist_ok=True)
    for name in ("data", "model.pt", "model_card.json", *links):
        _link(full.root / name, dst.root / name)
    run_infer(task, cfg, dst, progress=False)
    run_evaluate(task, cfg, dst)
    return json.loads(dst.metrics.read_text())


def hyperspectral_bars(metrics: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.hyperspectral import _gaussian_bar, _mixture_bar, _table

    return {
        "gaussian sigma 50: MPSNR >= best classical + 2 dB and SAM <= 0.8 x its SAM": (
            _gaussian_bar(_table(metrics, "gaussian50"))
        ),
        "mixture: MPSNR >= noisy + 22 dB and >= best classical + 3 dB, SAM <= 0.10 rad, "
        "stripe residual <= 0.01": _mixture_bar(_table(metrics, "mixture")),
    }


def medical_bars(metrics: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.medical import bar_margins

    return bar_margins(metrics["tables"])


def ultrasound_bars(metrics: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.ultrasound import _dehazing_bars, _sequence_bar

    tables = metrics["tables"]
    deh = _dehazing_bars(next(v for k, v in tables.items() if k.startswith("Dehazing")))
    values = deh.pop("values")
    out: dict[str, Any] = {k: {"met": v} for k, v in deh.items()}
    for k in ("psnr_ge_hazy_plus_3dB", "psnr_ge_best_baseline_plus_1dB"):
        out[k]["psnr"] = values["psnr"]
    for k in ("gcnr_dehazed_ge_0.95_clean", "gcnr_dehazed_ge_hazy_plus_0.15"):
        out[k]["gcnr"] = values["gcnr"]
    out["ks_dehazed_vs_clean_tissue_le_0.10"]["ks"] = values["ks_tissue_dehazed_vs_clean"]
    seq = next((v for k, v in tables.items() if k.startswith("Sequence")), None)
    sequence = _sequence_bar(seq)
    out["sequence_10x_fewer_nfe_at_equal_psnr"] = {**sequence, "met": sequence["bar"]}
    return out


def singlecell_bars(metrics: dict[str, Any]) -> dict[str, Any]:
    """The single-cell bars evaluate reports (``bar: ...`` in its summary), each with the
    diffusion and identity rows of the mean perturbation table; the krumsiek11 lineage bars do
    not use the sampler and stay as they were."""
    from diffsci.domains.singlecell.metrics import IDENTITY, MODEL

    mean = next(v for k, v in metrics["tables"].items() if k.startswith("Perturbation, mean"))
    rows = {"diffusion": mean[MODEL], "identity": mean[IDENTITY]}
    return {
        k.removeprefix("bar: "): {"met": v, **({} if "krumsiek11" in k or "DPT" in k else rows)}
        for k, v in metrics["summary"].items()
        if k.startswith("bar: ")
    }


#: domain -> (bars from the evaluate stage's metrics, what the quarter run divides, sampling
#: overrides, work-folder entries linked from the full run besides data and model)
DOMAINS: dict[str, tuple[Any, str, dict[str, Any], tuple[str, ...]]] = {
    "hyperspectral": (hyperspectral_bars, "samples", {"self_supervised": False}, ()),
    "medical": (medical_bars, "steps", {}, ()),
    # the configured Euler sampler is kept: UniPC failed the KS and gCNR constraints on the
    # validation frames (results/ultrasound_sampler_selection.json); the 4 samples come in
    # antithetic pairs, +0.16 dB over 4 plain samples on those frames
    # (results/ultrasound_antithetic_selection.json)
    "ultrasound": (
        ultrasound_bars,
        "samples",
        {"sampler": "euler", "antithetic": True},
        ("baselines",),
    ),
    # Heun 25 steps (49 evaluations per population sample) -> UniPC 12 steps; the 64
    # population samples per perturbation stay (the coverage bar is their 90% interval)
    "singlecell": (singlecell_bars, "steps", {}, ()),
}
#: the domain benchmark's work folder under benchmarks/work, where it is not the domain's name
WORKDIRS = {"ultrasound": "ultrasound_bars"}
NOT_DRIVEN: dict[str, str] = {}


def run(domain: str, workdir: Path) -> dict[str, Any]:
    task = get_task(domain)
    cfg = load_config(ROOT / "benchmarks" / "configs" / f"{domain}.yaml", task)
    full = TaskPaths(workdir)
    bars_of, by, extra, links = DOMAINS[domain]
    q = copy.deepcopy(cfg)
    q["sampling"] = {**quarter(cfg["sampling"], by=by), **extra}
    qpaths = TaskPaths(workdir.with_name(workdir.name + "_quarter_nfe"))
    after = bars_of(rerun(task, q, full, qpaths, links))
    before = bars_of(json.loads(full.metrics.read_text()))
    return {
        "sampling (full)": {
            **{k: cfg["sampling"][k] for k in ("sampler", "steps", "samples")},
            "nfe": nfe(cfg["sampling"]),
        },
        "sampling (1/4 NFE)": {
            **{k: q["sampling"][k] for k in ("sampler", "steps", "samples", *extra)},
            "nfe": nfe(q["sampling"]),
        },
        "bars at full NFE": before,
        "bars at 1/4 NFE": after,
        "met at 1/4 NFE": {k: v["met"] for k, v in after.items()},
    }


#: precipitation: the configured Heun becomes UniPC on the core's few-step schedule (its Karras
#: schedule down to sigma_min = 0.002 spends a step of four far below the data's scale)
PRECIPITATION_EXTRA = {"schedule": "default"}


def run_precipitation(domain: str, workdir: Path) -> dict[str, Any]:
    """Precipitation's quarter run: each seed's two models of ``python -m
    benchmarks.precipitation`` (regulariser on and off) sample its 64 held-out cases again with
    the same members at a quarter of the evaluations per member, and the benchmark's own
    per-seed record and median-over-seeds bars score the result."""
    from benchmarks.precipitation import seed_record, summarise

    task = get_task(domain)
    base = load_config(ROOT / "benchmarks" / "configs" / f"{domain}.yaml", task)
    full_path = ROOT / "benchmarks" / "results" / f"{domain}.json"
    if not full_path.is_file():
        raise SystemExit(f"{full_path} missing: run python -m benchmarks.{domain}")
    full = json.loads(full_path.read_text())["results"]
    q = {**quarter(base["sampling"]), **PRECIPITATION_EXTRA}
    qwork = workdir.with_name(workdir.name + "_quarter_nfe")
    records = []
    for seed in full["seeds"]:
        cfg_seed = copy.deepcopy(base)
        cfg_seed["seed"] = seed
        cfg_seed["evaluate"]["split"] = "test"
        cfg_seed["sampling"] = q
        runs: dict[str, Any] = {}
        for name, weight in (("sw_on", base["loss"]["sw_weight"]), ("sw_off", 0.0)):
            cfg = copy.deepcopy(cfg_seed)
            cfg["loss"]["sw_weight"] = weight
            validate_config(cfg, task.schema_path, source=f"{domain} 1/4 NFE")
            src = TaskPaths(workdir / f"seed{seed}" / name)
            dst = TaskPaths(qwork / f"seed{seed}" / name)
            runs[name] = rerun(task, cfg, src, dst, ("checkpoints",))
        records.append(seed_record(cfg_seed, qwork / f"seed{seed}", runs, {}, n_boot=1000))
    summ = summarise(records)
    keys = ("crps_ratio", "spread_skill", "psd_dex")
    return {
        "sampling (full)": {
            **{k: base["sampling"][k] for k in ("sampler", "steps", "members")},
            "nfe": nfe(base["sampling"]),
        },
        "sampling (1/4 NFE)": {
            **{k: q[k] for k in ("sampler", "steps", "members", "schedule")},
            "nfe": nfe(q),
        },
        "bars at full NFE": {
            "met": {k: v for k, v in full["bars"].items() if not k.startswith("scale")},
            "medians over seeds": full["medians_over_seeds"],
        },
        "bars at 1/4 NFE": {"met": summ["bars"], "medians over seeds": summ["medians"]},
        "per seed at 1/4 NFE": [
            {
                "seed": r["seed"],
                **{k: r[k] for k in keys},
                "p99.9_error_reduction": r["p99.9_error"]["reduction"],
                "emd_reduction": r["emd"]["reduction"],
            }
            for r in records
        ],
        "met at 1/4 NFE": summ["bars"],
    }


def pde_levels(cfg: dict[str, Any]) -> int:
    """Network evaluations per forecast member: one per noise level of the sampling schedule
    (PDE-Refiner: its ``refiner_k + 1`` trained levels, Euler ancestral)."""
    from diffsci.domains.pde.models.denoiser import sampling_sigmas

    return len(sampling_sigmas(cfg)) - 1


def pde_bars(tables: dict[str, Any]) -> dict[str, Any]:
    """PDE's bars (``benchmarks.pde``) from the evaluate tables of its ``single`` and
    ``multires`` runs, with the numbers each compares."""
    from benchmarks.pde import multires_ratio, single_bars

    row = tables["single"]["Burgers forecast, nx=64"]
    out = {
        k: {"met": v, "diffusion": row["diffusion (ens. mean)"], "fno": row["fno"]}
        for k, v in single_bars(tables["single"]).items()
    }
    ratio = multires_ratio(tables["multires"])
    out["multires_128_le_1.5x_64"] = {"met": ratio <= 1.5, "ratio": ratio}
    return out


def run_pde(domain: str, workdir: Path) -> dict[str, Any]:
    """PDE's quarter run: the single-grid and multi-resolution models of ``python -m
    benchmarks.pde`` forecast their held-out trajectories again with a quarter of the ensemble
    members (PDE-Refiner samples on its ``refiner_k + 1`` trained levels, Lippe et al. 2023:
    fewer levels would drop refinement, not sample faster), scored by the benchmark's bars."""
    from benchmarks.pde import configs

    task = get_task(domain)
    base = load_config(ROOT / "benchmarks" / "configs" / f"{domain}.yaml", task)
    tables: dict[str, dict[str, Any]] = {"full": {}, "quarter": {}}
    runs = dict(zip(("single", "multires"), configs(base), strict=True))
    for name, cfg in runs.items():
        full = TaskPaths(workdir / name)
        q = copy.deepcopy(cfg)
        q["sampling"]["members"] = int(cfg["sampling"]["members"]) // 4
        dst = TaskPaths(workdir.with_name(workdir.name + "_quarter_nfe") / name)
        tables["quarter"][name] = rerun(task, q, full, dst, ("baselines",))["tables"]
        tables["full"][name] = json.loads(full.metrics.read_text())["tables"]

    sampler, levels = base["sampling"]["sampler"], pde_levels(base)
    members = int(base["sampling"]["members"])
    after = pde_bars(tables["quarter"])
    return {
        "sampling (full)": {
            "sampler": sampler,
            "levels": levels,
            "members": members,
            "nfe": levels * members,
        },
        "sampling (1/4 NFE)": {
            "sampler": sampler,
            "levels": levels,
            "members": members // 4,
            "nfe": levels * (members // 4),
        },
        "bars at full NFE": pde_bars(tables["full"]),
        "bars at 1/4 NFE": after,
        "met at 1/4 NFE": {k: v["met"] for k, v in after.items()},
    }


RUNNERS = {"precipitation": run_precipitation, "pde": run_pde}
DRIVEN = (*DOMAINS, *RUNNERS)


def kept_entries(previous: dict[str, Any] | None, driven: list[str]) -> dict[str, Any]:
    """The domain entries of an earlier result that this run does not drive, each stamped with
    the commit and date it was measured at (so a partial rerun does not erase them)."""
    if not previous:
        return {}
    res = previous.get("results", {})
    stamp = {"commit": previous.get("git_commit"), "date": previous.get("date")}
    out = {}
    for d in DRIVEN:
        if d in driven or d not in res:
            continue
        out[d] = {**res[d], "measured at": res[d].get("measured at") or stamp}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--domains", nargs="+", default=list(DRIVEN), choices=list(DRIVEN))
    p.add_argument(
        "--keep-others",
        action="store_true",
        help="keep the entries of results/quarter_nfe.json for the domains not driven now, "
        "stamped with the commit and date they were measured at",
    )
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    work = ROOT / "benchmarks" / "work"
    results: dict[str, Any] = {
        d: RUNNERS.get(d, run)(d, work / WORKDIRS.get(d, d)) for d in a.domains
    }
    path = ROOT / "benchmarks" / "results" / "quarter_nfe.json"
    if a.keep_others and path.is_file():
        results.update(kept_entries(json.loads(path.read_text()), a.domains))
    domains = [d for d in DRIVEN if d in results]
    results["bars"] = {
        f"{d}: {k}": v for d in domains for k, v in results[d]["met at 1/4 NFE"].items()
    }
    results["not driven"] = {d: why for d, why in NOT_DRIVEN.items() if d not in domains}
    write_result("quarter_nfe", results, config={"domains": domains}, seed=None)


if __name__ == "__main__":
    main()
