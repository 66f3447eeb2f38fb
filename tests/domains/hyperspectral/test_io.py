"""Readers and writers of hyperspectral cubes: round trips on files the tests write, and the
bad-input errors (file and key named, nothing half-written, input never modified)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from diffsci.domains.hyperspectral import io

WL = np.linspace(400.0, 700.0, 8)


def _cube(bands: int = 8, h: int = 6, w: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((bands, h, w)).astype(np.float32)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_envi_round_trip_keeps_wavelengths_bad_bands_and_map_info(tmp_path):
    good = np.ones(8, bool)
    good[2] = False
    cube = io.make_cube(
        _cube(),
        WL,
        good_band=good,
        attrs={"map_info": "{UTM, 1, 1, 500000, 4000000, 30, 30, 33, North, WGS-84}"},
    )
    hdr = io.write_envi(cube, tmp_path / "scene.hdr")
    back = io.read_envi(hdr)
    np.testing.assert_array_equal(back.values, cube.values)
    np.testing.assert_allclose(back["wavelength"].values, WL, atol=1e-3)
    assert back["good_band"].values.tolist() == good.tolist()
    assert "UTM" in back.attrs["map_info"]
    assert not list(tmp_path.glob(".*"))  # no temporary left


def test_envi_writes_a_dask_cube_chunk_by_chunk_with_the_same_bytes(tmp_path):
    import dask.array as da

    arr = _cube(h=9, w=7)
    arr[3, 2, 1] = np.nan
    attrs = {"data_ignore_value": -9999.0}
    eager = io.write_envi(io.make_cube(arr, WL, attrs=attrs), tmp_path / "eager.hdr", byte_order=1)
    lazy = io.make_cube(da.from_array(arr, chunks=(3, 4, 4)), WL, attrs=attrs)
    hdr = io.write_envi(lazy, tmp_path / "lazy.hdr", byte_order=1)
    assert _digest(hdr.with_suffix(".img")) == _digest(eager.with_suffix(".img"))
    back = io.read_envi(hdr)
    assert np.isnan(back.values[3, 2, 1])
    np.testing.assert_array_equal(np.nan_to_num(back.values), np.nan_to_num(arr))


def test_envi_written_by_spectral_bil_big_endian_micrometres(tmp_path):
    """A file written by SPy itself (another writer): BIL interleave, big-endian int16,
    wavelengths in micrometres, a data ignore value."""
    import spectral.io.envi as envi

    data = (np.arange(4 * 5 * 3).reshape(4, 5, 3) + 1).astype(np.int16)  # rows, cols, bands
    data[0, 0, :] = -9999
    meta = {
        "wavelength": [0.45, 0.55, 0.65],
        "wavelength units": "Micrometers",
        "data ignore value": -9999,
        "byte order": 1,
    }
    envi.save_image(
        str(tmp_path / "spy.hdr"), data, interleave="bil", byteorder=1, metadata=meta, force=True
    )
    cube = io.read_envi(tmp_path / "spy.hdr")
    np.testing.assert_allclose(cube["wavelength"].values, [450, 550, 650])
    assert cube.attrs["interleave"] == "bil"
    v = cube.values
    assert np.isnan(v[:, 0, 0]).all()
    np.testing.assert_array_equal(v[:, 1, 2], data[1, 2].astype(np.float32))


def test_envi_header_without_data_file(tmp_path):
    io.write_envi(io.make_cube(_cube(), WL), tmp_path / "a.hdr")
    (tmp_path / "a.img").unlink()
    with pytest.raises(FileNotFoundError, match=r"a\.hdr: ENVI header without its data file"):
        io.read_cube(tmp_path / "a.hdr")


def test_envi_truncated_data_file(tmp_path):
    io.write_envi(io.make_cube(_cube(), WL), tmp_path / "a.hdr")
    raw = (tmp_path / "a.img").read_bytes()
    (tmp_path / "a.img").write_bytes(raw[:-10])
    with pytest.raises(
        io.CubeError, match=r"a\.img: truncated ENVI data file: 950 bytes.*needs 960"
    ):
        io.read_cube(tmp_path / "a.hdr")


def test_mat_v5_round_trip_and_missing_variable_lists_present(tmp_path):
    x = _cube()
    path = tmp_path / "icvl.mat"
    scipy.io.savemat(path, {"rad": np.moveaxis(x, 0, -1), "bands": WL[None]})
    before = _digest(path)
    cube = io.read_cube(path, variable="rad", wavelength_variable="bands")
    np.testing.assert_allclose(cube.values, x)
    np.testing.assert_allclose(cube["wavelength"].values, WL)
    with pytest.raises(
        io.CubeError, match=r"icvl\.mat: no variable 'cube'; the file holds: bands, rad"
    ):
        io.read_cube(path, variable="cube")
    assert _digest(path) == before


def _write_v73(path: Path, **arrays: np.ndarray) -> None:
    """A MATLAB v7.3 file: HDF5 with MATLAB's 512-byte user block, arrays stored transposed."""
    import h5py

    with h5py.File(path, "w", userblock_size=512) as f:
        for k, v in arrays.items():
            f[k] = np.asarray(v).T
    head = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by diffsci tests HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(head.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02" + b"IM")


def test_mat_v73_via_h5py(tmp_path):
    x = _cube()
    path = tmp_path / "v73.mat"
    _write_v73(path, ref=np.moveaxis(x, 0, -1))
    cube = io.read_cube(path, variable="ref", wavelength={"start": 400, "stop": 700})
    np.testing.assert_allclose(cube.values, x)
    np.testing.assert_allclose(cube["wavelength"].values, WL)
    with pytest.raises(io.CubeError, match=r"v73\.mat: no variable 'rad'; the file holds: ref"):
        io.read_cube(path, variable="rad", wavelength=list(WL))


def test_netcdf_and_zarr_round_trip(tmp_path):
    cube = io.make_cube(_cube(), WL, good_band=[True] * 7 + [False], attrs={"sensor": "test"})
    for path in (
        io.write_netcdf(cube, tmp_path / "c.nc"),
        io.write_zarr(cube, tmp_path / "c.zarr"),
    ):
        back = io.read_cube(path)
        np.testing.assert_array_equal(back.values, cube.values)
        np.testing.assert_allclose(back["wavelength"].values, WL)
        assert back["good_band"].values.tolist() == [True] * 7 + [False]


def test_declared_band_count_and_wavelengths_must_match(tmp_path):
    path = io.write_netcdf(io.make_cube(_cube(), WL), tmp_path / "c.nc")
    with pytest.raises(io.CubeError, match=r"c\.nc: the file has 8 bands but 10 are declared"):
        io.read_cube(path, bands=10)
    shifted = list(WL + np.r_[0, 0, 0, 3.0, 0, 0, 0, 0])
    with pytest.raises(io.CubeError, match=r"c\.nc: wavelength of band 3 is .* nm in the file but"):
        io.read_cube(path, wavelength=shifted)
    with pytest.raises(io.CubeError, match="8 bands but 5 wavelengths are declared"):
        io.read_cube(path, wavelength=[1, 2, 3, 4, 5])


def test_mat_without_wavelengths_needs_a_declaration(tmp_path):
    path = tmp_path / "c.mat"
    scipy.io.savemat(path, {"rad": np.moveaxis(_cube(), 0, -1)})
    with pytest.raises(io.CubeError, match=r"c\.mat: no wavelengths in the file; declare them"):
        io.read_cube(path, variable="rad")


@pytest.mark.parametrize("fill,kind", [(np.nan, "NaN"), (0.0, "zero")])
def test_dead_bands_are_refused_or_masked(tmp_path, fill, kind):
    x = _cube()
    x[5] = fill
    path = io.write_netcdf(io.make_cube(x, WL), tmp_path / "d.nc")
    with pytest.raises(
        io.CubeError,
        match=rf"d\.nc: variable 'reflectance': dead bands 5 \(614\.3 nm, all {kind}\)",
    ):
        io.read_cube(path)
    cube = io.read_cube(path, bad_bands="mask")
    assert cube["good_band"].values.tolist() == [True] * 5 + [False] + [True] * 2


def test_failed_write_leaves_nothing_and_keeps_old_file(tmp_path, monkeypatch):
    cube = io.make_cube(_cube(), WL)
    path = io.write_netcdf(cube, tmp_path / "c.nc")
    before = _digest(path)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("xarray.Dataset.to_netcdf", boom)
    with pytest.raises(OSError, match="disk full"):
        io.write_netcdf(io.make_cube(_cube(seed=1), WL), path)
    assert _digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.nc"]


def test_reader_is_lazy_for_envi(tmp_path):
    import dask.array as dsa

    io.write_envi(io.make_cube(_cube(h=40), WL), tmp_path / "big.hdr")
    cube = io.read_envi(tmp_path / "big.hdr", chunk_rows=16)
    assert isinstance(cube.data, dsa.Array) and cube.data.chunks[1] == (16, 16, 8)
