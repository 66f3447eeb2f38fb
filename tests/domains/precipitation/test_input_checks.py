"""Issue 23 for the precipitation domain: a prepared dataset of another downscaling factor
than data.factor, +inf and 1e30 in a netCDF input are refused naming the file, the variable
and the way forward (non-zero exit from the CLI); nothing is written, the input unchanged."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("xarray")

from diffsci.core.stages import validate_config  # noqa: E402
from diffsci.core.task import Runtime  # noqa: E402
from diffsci.domains.precipitation import io  # noqa: E402
from diffsci.domains.precipitation.simulate import make_dataset  # noqa: E402
from diffsci.domains.precipitation.task import PrecipitationTask  # noqa: E402

CFG = {
    "seed": 0,
    "device": "cpu",
    "data": {"size": 32, "factor": 8, "n_train": 4, "n_test": 2},
    "model": {"channels": [8, 16], "attention_levels": [False, False]},
    "loss": {"sw_weight": 0.2},
    "train": {"steps": 2, "batch_size": 2},
    "sampling": {"members": 1, "sampler": "euler", "steps": 1, "sigma_max": 10.0},
    "evaluate": {"thresholds": [0.5], "fss_scales": [1]},
}


def _cfg() -> dict:
    cfg = yaml.safe_load(yaml.safe_dump(CFG))
    validate_config(cfg, PrecipitationTask.schema_path)
    return cfg


def _sha(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()


def _data(root: Path, *, factor: int, fn=None) -> Path:
    """A prepared data folder (train.nc, test.zarr, stats.json) of ``factor``; ``fn`` edits
    the training dataset before it is written."""
    data = root / "data"
    data.mkdir(parents=True)
    ds = make_dataset(4, 32, factor=factor, seed=0)
    if fn is not None:
        fn(ds)
    io.write_dataset(ds, data / "train.nc")
    io.write_dataset(make_dataset(2, 32, factor=factor, seed=1), data / "test.zarr")
    io.write_stats(
        io.compute_stats(make_dataset(4, 32, factor=factor, seed=0)), data / "stats.json"
    )
    return data


def test_a_x4_dataset_under_data_factor_8_is_refused_by_train_card_and_infer(tmp_path):
    data = _data(tmp_path, factor=4)
    before = {p.name: _sha(p) for p in data.iterdir()}
    task, cfg = PrecipitationTask(), _cfg()
    match = r"train\.nc: downscaling_factor is 4 \(the file's attribute\) but the config's data\.f"
    with pytest.raises(ValueError, match=match) as e:
        task.train_dataset(cfg, data)
    assert "data.factor: 4" in str(e.value)
    with pytest.raises(ValueError, match=match):
        task.model_card(cfg, data)
    out = tmp_path / "predictions"
    out.mkdir()
    with pytest.raises(ValueError, match=r"test\.zarr: downscaling_factor is 4"):
        task.infer(cfg, None, data, out, Runtime(torch.device("cpu")))
    assert list(out.iterdir()) == []
    assert {p.name: _sha(p) for p in data.iterdir()} == before


def test_the_train_cli_exits_non_zero_on_a_dataset_of_another_factor(tmp_path, diffsci_cli):
    _data(tmp_path / "work", factor=4)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_cfg()))
    args = ["--config", str(tmp_path / "c.yaml"), "--workdir", str(tmp_path / "work")]
    r = diffsci_cli("train", "--domain", "precipitation", *args, "--quiet")
    assert r.returncode != 0
    assert "train.nc: downscaling_factor is 4" in r.stderr and "data.factor is 8" in r.stderr
    assert not (tmp_path / "work" / "model.pt").exists()


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (np.inf, r"input\[tcwv\] contains \+/-inf \(1 of 4096 values; a fill value"),
        (1e30, r"input\[tcwv\] has 1 of 4096 values of magnitude above 1e\+18; such values"),
    ],
)
def test_inf_and_1e30_in_a_netcdf_input_name_the_file_and_variable(tmp_path, value, match):
    def bad(ds):
        ds["input"].values[0, 1, 3, 3] = value

    data = _data(tmp_path, factor=8, fn=bad)
    before = _sha(data / "train.nc")
    with pytest.raises(ValueError, match=rf"{tmp_path}/data/train\.nc: {match}"):
        PrecipitationTask().train_dataset(_cfg(), data)
    assert _sha(data / "train.nc") == before


def test_1e39_in_a_float64_file_is_reported_as_too_large_not_as_inf(tmp_path):
    ds = make_dataset(2, 32, factor=8, seed=0)
    ds["input"] = ds["input"].astype("f8")
    ds["input"].values[1, 2, 0, 0] = 1e39
    io.write_dataset(ds, tmp_path / "big.nc")
    with pytest.raises(ValueError, match=r"big\.nc: input\[t2m\] has 1 of 2048 values of magn"):
        io.open_dataset(tmp_path / "big.nc")


def test_a_tile_with_overflowing_values_names_the_source():
    tile = np.zeros((1, 2, 4, 4), np.float32)
    tile[0, 1, 2, 2] = 3e20
    with pytest.raises(ValueError, match=r"case\.nc: input has 1 of 32 values of magnitude"):
        io.check_block(tile, name="input", source="case.nc", precip=False)
