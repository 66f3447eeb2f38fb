"""The 1/4-NFE sampling settings of benchmarks/quarter_nfe.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.quarter_nfe import nfe, quarter
from diffsci.core.samplers import DEFAULT_SAMPLER


def test_quarter_divides_the_steps_and_takes_the_default_solver():
    s = {"steps": 20, "sampler": "euler", "samples": 4, "lam": 1.0}
    q = quarter(s)
    assert q == {"steps": 5, "sampler": DEFAULT_SAMPLER, "samples": 4, "lam": 1.0}
    assert s["steps"] == 20  # the input is not modified
    assert quarter({"steps": 50, "sampler": "ddim"})["steps"] == 12  # at most a quarter
    # Heun spends two evaluations per step but the last: 10 steps are 19, a quarter is 4
    heun = {"steps": 10, "sampler": "heun", "members": 13}
    assert quarter(heun)["steps"] == 4 and nfe(heun) == 19 * 13
    q = quarter(s, by="samples")
    assert q["samples"] == 1 and q["steps"] == 20 and nfe(q) * 4 == nfe(s)
    with pytest.raises(ValueError, match="less than one"):
        quarter({"steps": 3, "sampler": "euler"})


def test_ultrasound_bars_read_the_dehazing_and_sequence_tables():
    from benchmarks.quarter_nfe import ultrasound_bars
    from benchmarks.ultrasound import JOINT, PSNR

    def row(psnr, gcnr=0.9, ks=0.05, nfe=None):
        r = {PSNR: psnr, "gCNR anechoic": gcnr, "KS vs clean (tissue)": ks}
        return r if nfe is None else {**r, "network evaluations per frame": nfe}

    tables = {
        "Dehazing: held-out frames": {
            "clean (reference)": row(99.0, gcnr=0.94, ks=0.0),
            "no processing (hazy)": row(18.0, gcnr=0.83, ks=0.2),
            JOINT: row(21.5, gcnr=0.93, ks=0.04),
            "supervised UNet (hazy -> clean pairs)": row(21.0),
        },
        "Sequence: moving phantom": {
            "joint diffusion, every frame from noise": row(20.0, nfe=240.0),
            "joint diffusion, SeqDiff warm start": row(19.8, nfe=20.0),
        },
    }
    got = ultrasound_bars({"tables": tables})
    assert got["psnr_ge_hazy_plus_3dB"]["met"] and not got["psnr_ge_best_baseline_plus_1dB"]["met"]
    assert (
        got["gcnr_dehazed_ge_0.95_clean"]["met"]
        and got["ks_dehazed_vs_clean_tissue_le_0.10"]["met"]
    )
    assert got["sequence_10x_fewer_nfe_at_equal_psnr"]["met"]  # 12x fewer, -0.2 dB
    assert got["sequence_10x_fewer_nfe_at_equal_psnr"]["nfe_ratio"] == 12.0


def test_a_partial_rerun_keeps_the_other_domains_stamped_with_their_commit():
    from benchmarks.quarter_nfe import kept_entries

    previous = {
        "git_commit": "abc",
        "date": "2026-12-07",
        "results": {
            "hyperspectral": {"met at 1/4 NFE": {"x": False}},
            "medical": {"met at 1/4 NFE": {"y": True}},
            "ultrasound": {"met at 1/4 NFE": {"z": True}, "measured at": {"commit": "old"}},
        },
    }
    kept = kept_entries(previous, ["hyperspectral"])
    assert set(kept) == {"medical", "ultrasound"}
    assert kept["medical"]["measured at"] == {"commit": "abc", "date": "2026-12-07"}
    assert kept["ultrasound"]["measured at"] == {"commit": "old"}  # an older stamp stays
    assert kept_entries(None, ["hyperspectral"]) == {}


def test_singlecell_bars_read_the_evaluate_summary_with_the_table_rows():
    from benchmarks.quarter_nfe import singlecell_bars
    from diffsci.domains.singlecell.metrics import IDENTITY, MODEL

    metrics = {
        "tables": {"Perturbation, mean over 3": {MODEL: {"R2 top-50 DE": 0.85}, IDENTITY: {}}},
        "summary": {
            "bar: top-DE R2 >= 0.9": False,
            "bar: krumsiek11 NMI >= 0.8": True,
            "held-out cell type": "B",
        },
    }
    got = singlecell_bars(metrics)
    assert set(got) == {"top-DE R2 >= 0.9", "krumsiek11 NMI >= 0.8"}
    assert got["top-DE R2 >= 0.9"] == {
        "met": False,
        "diffusion": {"R2 top-50 DE": 0.85},
        "identity": {},
    }
    assert got["krumsiek11 NMI >= 0.8"] == {"met": True}


def test_pde_counts_one_evaluation_per_refiner_level_and_scores_its_bars():
    from benchmarks.pde import configs
    from benchmarks.quarter_nfe import pde_bars, pde_levels
    from diffsci.core.stages import load_config
    from diffsci.core.task import get_task

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "benchmarks" / "configs" / "pde.yaml", get_task("pde"))
    assert pde_levels(cfg) == cfg["model"]["refiner_k"] + 1
    single, multi = configs(cfg)
    assert multi["data"]["eval_nx"] == [64, 128] and single["data"] == cfg["data"]

    def forecast(diff, fno, per=0.5, last=None):
        def r(v):
            return {"nRMSE": v, "nRMSE last quarter": last or 2 * v}

        return {"diffusion (ens. mean)": r(diff), "fno": r(fno), "persistence": r(per)}

    tables = {
        "single": {"Burgers forecast, nx=64": forecast(0.014, 0.015)},
        "multires": {
            "Burgers forecast, nx=64": forecast(0.02, 0.02),
            "Burgers forecast, nx=128": forecast(0.031, 0.02),
        },
    }
    got = pde_bars(tables)
    assert got["diffusion_nrmse_le_fno"]["met"] and got["diffusion_beats_persistence"]["met"]
    # 0.028 last quarter vs 0.9 x 0.030: not 10% below
    assert not got["diffusion_last_quarter_10pct_below_fno"]["met"]
    assert got["multires_128_le_1.5x_64"] == {"met": False, "ratio": pytest.approx(1.55)}


def test_rerun_refuses_a_missing_full_run_naming_its_benchmark(tmp_path):
    from benchmarks.quarter_nfe import rerun
    from diffsci.core.task import TaskPaths, get_task

    full, dst = TaskPaths(tmp_path / "full"), TaskPaths(tmp_path / "quarter")
    with pytest.raises(SystemExit, match="run python -m benchmarks.pde"):
        rerun(get_task("pde"), {}, full, dst, ())
    assert not dst.root.exists()  # nothing written
