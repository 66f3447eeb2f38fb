"""Reading/writing the CorrDiff schema; every bad input is a clear error naming the file and
key; writes are atomic (no half-written store that looks complete)."""

from __future__ import annotations

import numpy as np
import pytest

from diffsci.domains.precipitation import io
from diffsci.domains.precipitation.simulate import make_dataset


@pytest.fixture(scope="module")
def ds():
    return make_dataset(2, 32, factor=8, seed=0)


@pytest.mark.parametrize("name", ["d.nc", "d.zarr"])
def test_roundtrip_lazy(ds, tmp_path, name):
    path = io.write_dataset(ds, tmp_path / name, chunks={"time": 1, "y": 16, "x": 16})
    back = io.open_dataset(path)
    assert back["input"].chunks is not None  # dask-backed (lazy)
    np.testing.assert_array_equal(back["output"].values, ds["output"].values)
    assert list(back["input_units"].values) == ["mm h-1", "kg m-2", "K"]
    assert back.attrs["downscaling_factor"] == 8
    assert not list(tmp_path.glob(".*"))  # no temporary left behind


def _bad(ds, tmp_path, fn, name="bad.nc"):
    d = ds.copy(deep=True)
    d = fn(d) or d
    io.write_dataset(d, tmp_path / name)
    return tmp_path / name


def test_missing_variable(ds, tmp_path):
    p = _bad(ds, tmp_path, lambda d: d.drop_vars(["output", "output_units", "output_variable"]))
    with pytest.raises(KeyError, match=r"bad\.nc.*missing variable 'output'"):
        io.open_dataset(p)
    io.open_dataset(p, require_output=False)  # inference needs no target


def test_missing_input_variable(ds, tmp_path):
    p = _bad(ds, tmp_path, lambda d: d.isel(input_variable=[1, 2]))
    with pytest.raises(KeyError, match=r"input_variable lacks \['tp'\]"):
        io.open_dataset(p)


def test_wrong_units(ds, tmp_path):
    def f(d):
        return d.assign_coords(input_units=("input_variable", ["m s-1", "kg m-2", "K"]))

    p = _bad(ds, tmp_path, f)
    with pytest.raises(ValueError, match=r"bad\.nc: input variable 'tp' has units 'm s-1'"):
        io.open_dataset(p)
    ok = _bad(
        ds,
        tmp_path,
        lambda d: d.assign_coords(input_units=("input_variable", ["mm/h", "kg m-2", "K"])),
        name="alias.nc",
    )
    io.open_dataset(ok)


def test_nan_and_negative_precipitation(ds, tmp_path):
    def nan(d):
        d["input"][0, 1, 3, 3] = np.nan

    with pytest.raises(ValueError, match=r"input\[tcwv\] contains NaN"):
        io.open_dataset(_bad(ds, tmp_path, nan))

    def neg(d):
        d["output"][1, 0, 0, 0] = -1.0

    with pytest.raises(ValueError, match="output contains negative precipitation"):
        io.open_dataset(_bad(ds, tmp_path, neg, name="neg.zarr"))
    # the caller's dataset is never modified
    assert np.isfinite(ds["input"].values).all() and (ds["output"].values >= 0).all()


def test_mismatched_grid_and_coordinates(ds, tmp_path):
    p = _bad(ds, tmp_path, lambda d: d.isel(y=slice(0, 30)))
    with pytest.raises(ValueError, match="not divisible by downscaling_factor=8"):
        io.open_dataset(p)
    p = _bad(ds, tmp_path, lambda d: d.drop_vars("lat"), name="nolat.nc")
    with pytest.raises(KeyError, match="missing coordinate 'lat'"):
        io.open_dataset(p)
    bad_inv = ds.copy().assign(invariant=(("invariant_variable", "x", "y"), ds["invariant"].values))
    with pytest.raises(ValueError, match="'invariant' has dims"):
        io.validate_dataset(bad_inv, source="x.nc")
    with pytest.raises(FileNotFoundError, match="nothere.zarr"):
        io.open_dataset(tmp_path / "nothere.zarr")
    (tmp_path / "junk.nc").write_text("not netcdf")
    with pytest.raises(ValueError, match="junk.nc: not a readable"):
        io.open_dataset(tmp_path / "junk.nc")


def test_failed_zarr_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.zarr"
    with pytest.raises(RuntimeError):
        with io.atomic_zarr(target) as tmp:
            (tmp / "part").mkdir(parents=True)
            raise RuntimeError("interrupted")
    assert not target.exists() and not list(tmp_path.iterdir())
    # an existing complete store survives a failed rewrite
    with io.atomic_zarr(target) as tmp:
        tmp.mkdir()
        (tmp / "ok").write_text("1")
    with pytest.raises(RuntimeError):
        with io.atomic_zarr(target) as tmp:
            tmp.mkdir()
            raise RuntimeError("boom")
    assert (target / "ok").read_text() == "1"


def test_stats_roundtrip_and_errors(ds, tmp_path):
    st = io.compute_stats(ds)
    z = np.log1p(ds["output"].values)
    assert st["output"]["tp"]["transform"] == "log1p"
    assert st["output"]["tp"]["mean"] == pytest.approx(z.mean(), rel=1e-5)
    assert st["input"]["t2m"]["transform"] == "none"
    p = io.write_stats(st, tmp_path / "stats.json")
    assert io.read_stats(p, names={"input": ["tp", "tcwv"]}) == st
    with pytest.raises(KeyError, match="missing input.q"):
        io.read_stats(p, names={"input": ["q"]})
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        io.read_stats(tmp_path / "bad.json")
