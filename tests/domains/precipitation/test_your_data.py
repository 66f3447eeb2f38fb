"""The precipitation pipeline on a user's own files: plain gridded netCDF-3 (classic, as many
reanalysis files still are) and netCDF-4 files written here with xarray's own engines (not the
project's writer), trained through ``snakemake precipitation --config precipitation_config=...``
and applied to a held-out file through ``diffsci apply``; then each mismatch of issue 19 (the
model card, factor, units, NaN/inf, out-of-range inputs, the CLI's output suffix, shapes)."""

from __future__ import annotations

import json
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

xr = pytest.importorskip("xarray")
pytest.importorskip("scipy")

from workflow_env import ENV, SNAKEMAKE  # noqa: E402

from diffsci.core.modelcard import Incompatible  # noqa: E402
from diffsci.core.modelfile import load_model_file, save_model_file  # noqa: E402
from diffsci.domains.precipitation import card, io  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
SIZE, FACTOR = 32, 8


def _fields(n: int, seed: int, *, scale: float = 1.0):
    """Fine precipitation (mm/h), its coarse block means on the coarse grid, tcwv, t2m."""
    rng = np.random.default_rng(seed)
    wet = rng.random((n, SIZE, SIZE)) < 0.4
    tp = np.where(wet, scale * rng.lognormal(0.0, 1.0, (n, SIZE, SIZE)), 0.0)
    c = SIZE // FACTOR
    coarse = tp.reshape(n, c, FACTOR, c, FACTOR).mean((2, 4))
    tcwv = 20 + 5 * rng.random((n, c, c))
    t2m = 280 + 3 * rng.random((n, c, c))
    return tp, coarse, tcwv, t2m


def gridded(path: Path, n: int, seed: int, *, engine: str, target: bool = True, **kw) -> Path:
    """A plain gridded file as reanalysis products ship them: one variable per field, coarse
    predictors on their own (8x coarser) grid, orography ``z`` (m) on the fine grid."""
    tp, coarse, tcwv, t2m = _fields(n, seed, **kw)
    lat = 45 + 0.05 * np.arange(SIZE)
    lon = 5 + 0.05 * np.arange(SIZE)
    clat, clon = lat.reshape(-1, FACTOR).mean(1), lon.reshape(-1, FACTOR).mean(1)
    oro = 1000 + 500 * np.sin(lat[:, None] / 3) * np.cos(lon[None] / 2)
    time = np.datetime64("2021-06-01T00", "ns") + np.arange(n) * np.timedelta64(1, "h")
    data = {
        "tp_coarse": (("time", "clat", "clon"), coarse.astype("f4"), {"units": "mm/h"}),
        "tcwv": (("time", "clat", "clon"), tcwv.astype("f4"), {"units": "kg m**-2"}),
        "t2m": (("time", "clat", "clon"), t2m.astype("f4"), {"units": "K"}),
        "z": (("lat", "lon"), oro.astype("f4"), {"units": "m"}),
    }
    if target:
        data["tp"] = (("time", "lat", "lon"), tp.astype("f4"), {"units": "mm h-1"})
    ds = xr.Dataset(
        data,
        coords={"time": time, "lat": lat, "lon": lon, "clat": clat, "clon": clon},
        attrs={"Conventions": "CF-1.8"},
    )
    if engine == "zarr":
        ds.to_zarr(path, mode="w")
    else:
        ds.to_netcdf(path, engine=engine)
    return path


VARIABLES = {"inputs": {"tp": "tp_coarse"}, "invariants": {"orography": "z"}}


def _config(tmp: Path, files: dict) -> Path:
    cfg = yaml.safe_load((ROOT / "tests/domains/precipitation/tiny.yaml").read_text())
    cfg["data"] = {"factor": FACTOR}
    cfg["source"] = {"kind": "files", **files}
    cfg["variables"] = VARIABLES
    path = tmp / "my.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny model trained on the user's files through the Snakemake workflow."""
    if SNAKEMAKE is None:
        pytest.skip("snakemake not installed (pip install -e '.[workflow]')")
    tmp = tmp_path_factory.mktemp("precip_own")
    raw = tmp / "raw"
    raw.mkdir()
    train = [
        gridded(raw / "era_2021a.nc", 16, 1, engine="scipy"),  # netCDF-3 classic
        gridded(raw / "era_2021b.nc", 16, 2, engine="h5netcdf"),  # netCDF-4
    ]
    val = [gridded(raw / "era_2021c.nc", 2, 9, engine="h5netcdf")]
    test = [gridded(raw / "era_2022.nc", 2, 3, engine="scipy")]
    splits = {"train": train, "validation": val, "test": test}
    cfg = _config(tmp, {k: [str(p) for p in v] for k, v in splits.items()})
    cmd = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(tmp), "--cores", "1"]
    cmd += ["precipitation", "--config", f"precipitation_config={cfg}", "domains=[precipitation]"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=ENV)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return tmp, tmp / "results" / "precipitation"


def test_trains_on_own_files_and_applies_to_a_held_out_one(trained, diffsci_cli):
    tmp, work = trained
    m = json.loads((work / "metrics.json").read_text())
    assert m["tables"] and m["summary"]
    truth = xr.open_zarr(work / "data" / "test.zarr")
    assert truth.sizes["time"] == 2 and float(truth["lat"][0]) == 45.0  # the user's test split
    assert xr.open_dataset(work / "data" / "validation.nc").sizes["time"] == 2
    held = gridded(tmp / "raw" / "era_2023.nc", 3, 4, engine="scipy", target=False)
    out = tmp / "applied"
    r = diffsci_cli(
        "apply",
        "--domain",
        "precipitation",
        "--model",
        str(work / "model.pt"),
        "--input",
        str(held),
        "--output",
        str(out),
        "--quiet",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ds = xr.open_dataset(out / "era_2023_downscaled.nc")  # netCDF-4, the suffix says so
    assert ds["precip"].dims == ("ensemble", "time", "y", "x")
    assert ds["precip"].shape == (3, 3, SIZE, SIZE)
    assert ds["precip"].attrs["standard_name"] == "lwe_precipitation_rate"
    assert ds["precip"].attrs["units"] == "mm h-1" and ds.attrs["Conventions"] == "CF-1.8"
    assert np.isfinite(ds["precip"].values).all() and (ds["precip"].values >= 0).all()
    np.testing.assert_allclose(ds["lat"].values, 45 + 0.05 * np.arange(SIZE))
    assert json.loads((out / "provenance.json").read_text())["apply"]["inputs"] == [str(held)]


def test_apply_to_a_wetter_zarr_warns_by_how_much_and_writes_zarr(trained):
    import torch

    from diffsci.core.stages import load_model
    from diffsci.core.task import Runtime
    from diffsci.domains.precipitation.task import PrecipitationTask

    # in process: the CLI's --input takes files only (core expand_paths), a zarr store is a folder
    tmp, work = trained
    wet = gridded(tmp / "raw" / "wet.zarr", 2, 6, engine="zarr", target=False, scale=4.0)
    c = json.loads((work / "model_card.json").read_text())
    task = PrecipitationTask()
    model = load_model(task, c["config"], work / "model.pt")
    out = tmp / "applied_wet"
    out.mkdir()
    rt = Runtime(torch.device("cpu"))
    with pytest.warns(UserWarning, match=r"wet\.zarr: mean of input 'tp' .* by .* x its width"):
        task.apply(c["config"], model, c, [wet], out, rt)
    ds = xr.open_zarr(out / "wet_downscaled.zarr")  # a zarr input gives a zarr output
    assert ds["precip"].shape == (3, 2, SIZE, SIZE) and ds["precip"].attrs["units"] == "mm h-1"
    ens_mean = float(ds["ensemble_mean"].mean())
    assert np.isfinite(ens_mean) and ds.attrs["Conventions"] == "CF-1.8"


def test_the_card_records_what_the_model_serves(trained):
    _, work = trained
    c = json.loads((work / "model_card.json").read_text())
    sv = c["serves"]
    assert sv["factor"] == FACTOR and sv["input_variables"] == ["tp", "tcwv", "t2m"]
    assert sv["input_units"] == ["mm h-1", "kg m-2", "K"]
    assert sv["invariant_variables"] == ["orography"] and sv["invariant_units"] == ["m"]
    assert sv["grid"]["height"] == sv["grid"]["width"] == SIZE and sv["tile"] is None
    assert sv["grid_multiple_of"] == FACTOR and sv["training_time_steps"] == 32
    assert set(c["normalisation"]["stats"]) == {"input", "output", "invariant"}
    assert c["normalisation"]["ranges"]["input"]["tp"]["max"] > 0
    assert c["sigma"]["max"] == 10.0 and c["data"]["source"] == "files"
    assert len(c["data"]["files"]["train"]) == 2


def _own(path: Path, **kw):
    return io.read_user_dataset(
        path,
        input_variables=["tp", "tcwv", "t2m"],
        factor=FACTOR,
        variables=VARIABLES,
        **kw,
    )


def test_inputs_outside_the_training_statistics_warn_by_how_much(trained, tmp_path):
    _, work = trained
    c = json.loads((work / "model_card.json").read_text())
    same = _own(gridded(tmp_path / "same.nc", 2, 7, engine="scipy"), require_output=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        card.check_dataset(same, c, source="same.nc")
    assert not [w for w in seen if "input 'tp'" in str(w.message)]
    wet = _own(gridded(tmp_path / "wet.nc", 2, 7, engine="scipy", scale=4.0))
    with pytest.warns(UserWarning, match=r"wet\.nc: mean of input 'tp' .* outside the training"):
        card.check_dataset(wet, c, source=str(tmp_path / "wet.nc"))


def test_a_netcdf_of_another_factor_is_refused_naming_both(trained, tmp_path):
    _, work = trained
    p = gridded(tmp_path / "x4.nc", 2, 5, engine="h5netcdf")
    ds = xr.open_dataset(p).load()
    ds.attrs["downscaling_factor"] = 4
    ds.to_netcdf(tmp_path / "x4b.nc", engine="h5netcdf")
    with pytest.raises(ValueError, match=r"x4b\.nc: downscaling_factor is 4 .* data\.factor is 8"):
        _own(tmp_path / "x4b.nc")
    c = json.loads((work / "model_card.json").read_text())
    theirs = _own(p).assign_attrs(downscaling_factor=4)
    with pytest.raises(Incompatible, match="downscaling_factor is 4 but the model serves 8"):
        card.check_dataset(theirs, c, source="x4.nc")


def test_other_variables_or_units_are_refused_with_the_way_forward(trained, tmp_path):
    _, work = trained
    c = json.loads((work / "model_card.json").read_text())
    ds = _own(gridded(tmp_path / "a.nc", 2, 5, engine="scipy"))
    other = ds.assign_coords(input_variable=["tp", "tcwv", "sp"])
    with pytest.raises(Incompatible, match="missing 1: t2m; not served 1: sp.*variables.inputs"):
        card.check_dataset(other, c, source="a.nc")
    bad = gridded(tmp_path / "m.nc", 2, 5, engine="scipy")
    raw = xr.open_dataset(bad).load()
    raw["tp"].attrs["units"] = "m"  # ERA5's accumulated metres
    raw.to_netcdf(tmp_path / "m2.nc", engine="scipy")
    with pytest.raises(ValueError, match=r"m2\.nc: target 'tp' has units 'm', expected 'mm h-1'"):
        _own(tmp_path / "m2.nc")


@pytest.mark.parametrize("bad,engine", [(np.inf, "scipy"), (np.nan, "h5netcdf")])
def test_inf_or_nan_in_a_netcdf_names_the_file_and_variable(tmp_path, bad, engine):
    p = gridded(tmp_path / "g.nc", 2, 5, engine=engine)
    ds = xr.open_dataset(p).load()
    ds["tcwv"].values[1, 2, 3] = bad
    ds.to_netcdf(tmp_path / "bad.nc", engine=engine)
    what = "\\+inf" if np.isinf(bad) else "NaN"
    with pytest.raises(ValueError, match=rf"bad\.nc: variable 'tcwv' contains {what} at 1 of"):
        _own(tmp_path / "bad.nc")


def test_inf_in_a_corrdiff_file_names_the_file_and_variable(tmp_path):
    tp, coarse, tcwv, t2m = _fields(2, 0)
    up = np.repeat(np.repeat(coarse, FACTOR, 1), FACTOR, 2)
    ins = np.stack([up, np.full_like(up, 20), np.full_like(up, 280)], 1)
    ds = io.build_dataset(ins, tp[:, None], np.ones((1, SIZE, SIZE)), factor=FACTOR)
    ds["input"].values[0, 2, 0, 0] = np.inf
    ds.to_netcdf(tmp_path / "cd.nc", engine="scipy")  # CorrDiff schema, netCDF-3
    with pytest.raises(ValueError, match=r"cd\.nc: input\[t2m\] contains \+/-inf"):
        io.open_dataset(tmp_path / "cd.nc", required_inputs=["tp", "tcwv", "t2m"])


def test_netcdf3_opens_and_a_missing_engine_is_named(tmp_path, monkeypatch):
    import importlib.util

    p = gridded(tmp_path / "classic.nc", 2, 5, engine="scipy")
    assert p.read_bytes()[:3] == b"CDF"  # classic or 64-bit offset, by the writer's choice
    fmt, engine = io.file_engine(p)
    assert fmt.startswith("netCDF-3") and engine == "scipy"
    assert _own(p)["input"].shape == (2, 3, SIZE, SIZE)
    (tmp_path / "f.grib").write_bytes(b"GRIB" + bytes(100))
    find = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n in ("scipy", "cfgrib") else find(n)
    )
    with pytest.raises(ValueError, match=r"classic\.nc: a netCDF-3 .*'scipy'.* pip install scipy"):
        io.file_engine(p)
    with pytest.raises(ValueError, match=r"f\.grib: a GRIB file .*'cfgrib'.* pip install cfgrib"):
        io.file_engine(tmp_path / "f.grib")


def test_build_dataset_names_the_bad_shape_without_the_values():
    good = np.zeros((2, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match=r"inputs has shape \(2, 3, 32\), expected \(time, 3, y"):
        io.build_dataset(good[..., 0], None, None, factor=FACTOR)
    with pytest.raises(ValueError, match=r"outputs has shape \(2, 32, 32\)") as e:
        io.build_dataset(good, np.zeros((2, SIZE, SIZE)), None, factor=FACTOR)
    assert len(str(e.value)) < 200
    with pytest.raises(ValueError, match=r"invariant has shape \(16, 16\), expected \(1, 32, 32"):
        io.build_dataset(good, None, np.zeros((16, 16)), factor=FACTOR)


def test_downscale_cli_refuses_a_netcdf_name_for_its_zarr_store(trained, capsys):
    from diffsci.domains.precipitation.downscale import main

    tmp, work = trained
    out = tmp / "big_out.nc"
    argv = ["--model", str(work / "model.pt"), "--stats", str(work / "data" / "stats.json")]
    argv += ["--input", str(work / "data" / "test.zarr"), "--no-progress"]
    argv += ["--members", "2", "--steps", "2"]
    assert main([*argv, "--output", str(out)]) == 2
    assert (
        "big_out.nc: the store-to-store downscaling writes a zarr store" in capsys.readouterr().err
    )
    assert not out.exists()
    zarr_out = tmp / "big_out.zarr"  # the same run named for its format (tile: the card's grid)
    assert main([*argv, "--output", str(zarr_out)]) == 0
    assert xr.open_zarr(zarr_out)["precip"].shape == (2, 2, SIZE, SIZE)
    wet = _own(gridded(tmp / "wet_cli.nc", 2, 8, engine="scipy", scale=4.0))
    wet.to_zarr(tmp / "wet_cli.zarr", mode="w")  # CorrDiff schema, as the CLI reads it
    argv[argv.index("--input") + 1] = str(tmp / "wet_cli.zarr")
    with pytest.warns(UserWarning, match=r"wet_cli\.zarr: mean of input 'tp' .* x its width"):
        assert main([*argv, "--output", str(tmp / "wet_out.zarr")]) == 0


def test_apply_output_names_match_the_format_and_do_not_collide(tmp_path):
    assert io.output_names(["a/x.nc", "b/y.zarr", "c/z.grib"]) == [
        "x_downscaled.nc",
        "y_downscaled.zarr",
        "z_downscaled.nc",
    ]
    with pytest.raises(ValueError, match="would both write x_downscaled.nc"):
        io.output_names(["a/x.nc", "b/x.nc"])


def test_apply_on_a_model_without_a_card_says_so(trained, tmp_path, diffsci_cli):
    _, work = trained
    old = tmp_path / "old"
    old.mkdir()
    saved = load_model_file(work / "model.pt")
    saved.meta.pop("card")
    save_model_file(old / "model.pt", saved.state_dict, **saved.meta)
    r = diffsci_cli(
        "apply",
        "--domain",
        "precipitation",
        "--model",
        str(old / "model.pt"),
        "--input",
        str(work / "data" / "test.zarr"),
        "--output",
        str(tmp_path / "o"),
        "--quiet",
    )
    assert r.returncode != 0 and "no model card" in r.stderr
    assert not (tmp_path / "o").exists()


def test_a_card_without_precipitation_entries_is_refused():
    with pytest.raises(Incompatible, match="retrain the model"):
        card.check_card({"serves": {}}, source="m.pt")


def test_a_test_file_without_target_or_on_another_grid_is_refused(tmp_path):
    p = gridded(tmp_path / "no_tp.nc", 2, 5, engine="scipy", target=False)
    with pytest.raises(KeyError, match=r"no_tp\.nc: no variable 'tp' \(config variables.target"):
        _own(p)
    a = _own(gridded(tmp_path / "a.nc", 2, 5, engine="scipy"))
    b = a.assign_coords(lat=("y", a["lat"].values + 10))
    with pytest.raises(ValueError, match=r"b\.nc: its lat grid .* differs from a\.nc's"):
        io.merge_cases([a, b], ["a.nc", "b.nc"])


def test_a_grid_the_network_cannot_take_whole_is_refused(trained, tmp_path):
    _, work = trained
    c = json.loads((work / "model_card.json").read_text())
    ds = _own(gridded(tmp_path / "a.nc", 2, 5, engine="scipy")).isel(y=slice(0, 28))
    with pytest.raises(Incompatible, match=r"a\.nc: grid 28x32 is not a multiple of 8"):
        card.check_dataset(ds, c, source="a.nc")
    with pytest.raises(Incompatible, match=r"grid 24x32 is smaller than the model's tile 32"):
        card.check_dataset(ds.isel(y=slice(0, 24)), c, source="a.nc", tile=32)
