"""The precipitation task end to end through the CLI (all five stages, tiny config), its
outputs in native formats, and bad input at the stage level."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

TINY = {
    "seed": 0,
    "device": "cpu",
    "data": {"size": 32, "factor": 8, "n_train": 32, "n_test": 2},
    "model": {"channels": [8, 16], "attention_levels": [False, False]},
    "loss": {"sw_weight": 0.2},
    "train": {"steps": 4, "batch_size": 8, "ckpt_every": 2, "log_every": 2},
    "sampling": {"members": 3, "sampler": "euler", "steps": 2, "sigma_max": 10.0},
    "evaluate": {"thresholds": [0.5, 2.0], "fss_scales": [1, 5]},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory, cli_pipeline):
    return cli_pipeline("precipitation", TINY, tmp_path_factory.mktemp("precip"))


def test_outputs_native_and_metrics(run):
    xr = pytest.importorskip("xarray")
    _, work = run
    data = work / "data"
    assert (data / "train.nc").is_file() and (data / "test.zarr" / ".zmetadata").is_file()
    assert {"input", "output", "invariant"} <= set(json.loads((data / "stats.json").read_text()))
    for name in ("predictions.zarr", "predictions.nc"):
        p = work / "predictions" / name
        ds = xr.open_zarr(p) if name.endswith(".zarr") else xr.open_dataset(p, engine="h5netcdf")
        assert ds["precip"].dims == ("ensemble", "time", "y", "x")
        assert ds["precip"].shape == (3, 2, 32, 32)
        assert ds["precip"].attrs["units"] == "mm h-1"
        assert {"ensemble_mean", "bicubic", "bilinear", "regression"} <= set(ds.data_vars)
        assert float(ds["precip"].min()) >= 0
        ds.close()
    m = json.loads((work / "metrics.json").read_text())
    table = next(iter(m["tables"].values()))
    assert {"diffusion ensemble (3 members)", "regression UNet", "bicubic", "bilinear"} == set(
        table
    )
    row = table["diffusion ensemble (3 members)"]
    assert {
        "CRPS",
        "MAE",
        "RMSE",
        "bias",
        "CSI@2",
        "FSS@2,5px",
        "EMD",
        "p99.9 error",
        "PSD high-k max |dex|",
        "spread-skill (adj.)",
    } <= set(row)
    assert all(np.isfinite(v) for v in table["bicubic"].values())
    assert len(m["summary"]["rank histogram"]) == 4
    assert {Path(f).name for f in m["figures"]} == {
        "psd.png",
        "rank_histogram.png",
        "example_fields.png",
    }
    # the report stage's CSV tables: the metric table with the same methods, and the summary
    tables = sorted((work / "tables").glob("*.csv"))
    metric_tables = [t for t in tables if t.name != "summary.csv"]
    assert len(metric_tables) >= 1 and (work / "tables" / "summary.csv").is_file()
    with open(metric_tables[0], newline="") as f:
        header, *body = list(csv.reader(f))
    assert header[0] == "method" and {r[0] for r in body} == set(table)
    assert (work / "checkpoints" / "last.pt").is_file()


def test_bad_test_data_fails_infer_without_outputs(run, tmp_path, diffsci_cli):
    xr = pytest.importorskip("xarray")
    from diffsci.domains.precipitation import io

    cfg, work = run
    bad = tmp_path / "work"
    (bad / "data").mkdir(parents=True)
    for f in ("stats.json", "train.nc"):
        (bad / "data" / f).write_bytes((work / "data" / f).read_bytes())
    (bad / "model.pt").write_bytes((work / "model.pt").read_bytes())
    ds = xr.open_zarr(work / "data" / "test.zarr").load()
    ds = ds.assign_coords(input_units=("input_variable", ["m", "kg m-2", "K"]))
    io.write_dataset(ds, bad / "data" / "test.zarr")
    r = diffsci_cli(
        "infer", "--domain", "precipitation", "--config", str(cfg), "--workdir", str(bad)
    )
    assert r.returncode != 0
    assert "test.zarr: input variable 'tp' has units 'm'" in r.stderr
    assert not (bad / "predictions").exists()


def test_bad_config_is_rejected(tmp_path):
    from diffsci.core.stages import validate_config
    from diffsci.core.task import get_task

    cfg = {**TINY, "sampling": {"sampler": "euler_ancestral"}}
    with pytest.raises(ValueError, match="sampling/sampler"):
        validate_config(cfg, get_task("precipitation").schema_path)


def test_sw_clamp_dry_passes_the_dry_level_as_floor(tmp_path, monkeypatch):
    import torch

    from diffsci.core.stages import validate_config
    from diffsci.domains.precipitation import losses
    from diffsci.domains.precipitation import task as task_mod
    from diffsci.domains.precipitation.models import Normaliser

    cfg = json.loads(json.dumps(TINY))
    cfg["data"].update(n_train=4, n_test=1)
    cfg["loss"].update(sw_clamp_dry=True)
    t = task_mod.PrecipitationTask()
    validate_config(cfg, t.schema_path)
    t.prepare(cfg, tmp_path)
    model = t.build_model(cfg)
    seen = {}
    monkeypatch.setattr(losses, "downscaling_loss", lambda *a, **kw: seen.update(kw) or {})
    # the loss cannot clamp without the dry level (the task reads it from stats.json)
    with pytest.raises(RuntimeError, match="sw_clamp_dry"):
        losses.training_loss(cfg["loss"], dry_level=None)
    t.make_loss(cfg, tmp_path)(model, (None, None), None)
    stats = json.loads((tmp_path / "stats.json").read_text())["output"]["tp"]
    assert "sw_clamp_dry" not in seen
    assert seen["sw_floor"] == pytest.approx((np.log1p(0.0) - stats["mean"]) / stats["std"])
    norm = Normaliser.from_file(tmp_path / "stats.json", cfg["data"]["input_variables"])
    # the floor decodes to 0 mm/h and anything below it too
    assert float(norm.decode_target(torch.tensor([seen["sw_floor"] - 0.3]))) == 0.0
    cfg["loss"]["sw_clamp_dry"] = False
    seen.clear()
    t.make_loss(cfg, tmp_path)(model, (None, None), None)
    assert "sw_floor" not in seen and "sw_clamp_dry" not in seen
