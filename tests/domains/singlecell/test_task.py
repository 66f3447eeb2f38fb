"""The single-cell task through the CLI (all five stages, tiny config) and its bad input."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from diffsci.core.stages import validate_config
from diffsci.core.task import get_task
from diffsci.domains.singlecell import io
from diffsci.domains.singlecell.metrics import ORACLE

TINY = {
    "seed": 0,
    "device": "cpu",
    "perturbation": {
        "n_perturbations": 2,
        "n_cells": 8,
        "n_control": 8,
        "train_populations": 2,
        "mixture_populations": 2,
        "test_draws": 4,
        "n_pcs": 8,
        "eval_pcs": 8,
        "n_de": 20,
    },
    "model": {
        "width": 16,
        "depth": 1,
        "heads": 2,
        "lineage_hidden": 16,
        "lineage_layers": 1,
        "lineage_code_dim": 4,
        "em_after": 3,
    },
    "train": {"steps": 6, "batch_size": 4, "ckpt_every": 3, "log_every": 3},
    "sampling": {"steps": 3, "samples": 3},
    "lineage": {"infer_tau_grid": 5, "infer_noise": 1, "cells_per_item": 2},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory, cli_pipeline):
    return cli_pipeline("singlecell", TINY, tmp_path_factory.mktemp("singlecell"))


def test_schema_defaults_fill_and_default_configs_validate():
    task = get_task("singlecell")
    cfg = json.loads(json.dumps(TINY))
    validate_config(cfg, task.schema_path)
    assert cfg["perturbation"]["held_out_cell_type"] == "CD19+ B"
    root = Path(__file__).resolve().parents[3]
    for name in (
        "workflows/config/singlecell.yaml",
        "workflows/config/singlecell_gpu.yaml",
        "benchmarks/configs/singlecell.yaml",
    ):
        validate_config(yaml.safe_load((root / name).read_text()), task.schema_path, source=name)


def test_pipeline_writes_anndata_and_tables(run):
    _, work = run
    pred = io.read(work / "predictions" / "perturbation.h5ad")
    assert pred.obs["sample"].nunique() == 3 and set(pred.obs["perturbation"]) == {"P1", "P2"}
    assert (pred.obs["cell_type"] == "CD19+ B").all()
    base = io.read(work / "predictions" / "baselines.h5ad")
    assert set(base.obs["condition"]) == {"identity", "mean-shift"}
    lin = io.read(work / "predictions" / "lineage.h5ad")
    for key in ("lineage_branch", "lineage_pseudotime", "dpt_pseudotime", "leiden"):
        assert key in lin.obs
    assert "lineage" in lin.uns and "paga" in lin.uns
    m = json.loads((work / "metrics.json").read_text())
    mean = next(v for k, v in m["tables"].items() if k.startswith("Perturbation, mean"))
    assert set(mean) == {
        "diffusion (population samples)",
        "identity (control)",
        "mean-shift",
        ORACLE,
    }
    for name in ("diffusion (population samples)", ORACLE):
        row = mean[name]
        assert {
            "E-distance (PCA)",
            "MMD (PCA, rbf)",
            "R2 all genes",
            "R2 top-20 DE",
            "coverage 90% (hidden-factor draws)",
        } <= set(row)
        assert all(np.isfinite(v) for v in row.values())
    assert not any(ORACLE in k for k in m["summary"])  # no bar is about the oracle
    lin_t = next(v for k, v in m["tables"].items() if k.startswith("Lineage"))
    assert set(lin_t) == {
        "diffusion tree codebook",
        "DPT (scanpy)",
        "PAGA (Leiden clusters, scanpy)",
    }
    assert any(k.startswith("bar: ") for k in m["summary"])
    # the report stage writes one CSV per metric table (it wrote one HTML <table> each) and
    # evaluate's figures exist (the HTML report embedded each one as an <img>)
    tables = [p for p in (work / "tables").glob("*.csv") if p.name != "summary.csv"]
    assert len(tables) >= 4 and sum((work / f).is_file() for f in m["figures"]) == 2


def test_control_file_that_is_not_anndata_fails_cleanly(run, tmp_path, diffsci_cli):
    cfg, work = run
    import shutil

    bad = tmp_path / "w"
    shutil.copytree(work / "data", bad / "data")
    path = bad / "data" / "control.h5ad"
    path.unlink()
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(4)
    before = path.read_bytes()
    r = diffsci_cli("train", "--domain", "singlecell", "--config", str(cfg), "--workdir", str(bad))
    assert r.returncode != 0 and "control.h5ad" in r.stderr
    assert path.read_bytes() == before
    assert not (bad / "model.pt").exists()


def test_unknown_held_out_cell_type_and_missing_raw(tmp_path):
    """In process (the CLI's exit code on bad input is checked above): errors name the cell
    type and the file, nothing is written, the input is untouched."""
    import pandas as pd
    from anndata import AnnData

    from diffsci.core.stages import run_prepare
    from diffsci.core.task import TaskPaths

    task = get_task("singlecell")
    cfg = json.loads(json.dumps(TINY))
    cfg["perturbation"]["held_out_cell_type"] = "Neuron"
    validate_config(cfg, task.schema_path)
    paths = TaskPaths(tmp_path / "w")
    with pytest.raises(KeyError, match="unknown cell_type 'Neuron'"):
        run_prepare(task, cfg, paths)
    assert not paths.data.exists()
    src = tmp_path / "noraw.h5ad"
    AnnData(
        np.ones((4, 3), np.float32),
        obs=pd.DataFrame({"bulk_labels": list("aabb")}, index=list("wxyz")),
    ).write_h5ad(src)
    before = src.read_bytes()
    cfg["perturbation"]["input"] = str(src)
    with pytest.raises(ValueError, match="noraw.h5ad has no .raw"):
        run_prepare(task, cfg, paths)
    assert src.read_bytes() == before and not paths.data.exists()
