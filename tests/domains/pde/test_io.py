"""PDEBench HDF5 reader/writer: round trips, PDEBench's own layout, bad files, atomic writes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from diffsci.domains.pde.io import PDEData, read_pdebench, write_pdebench


def _u1d(n: int = 4, nt: int = 5, nx: int = 16) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, nt, nx))


def _pdebench_1d(path, u: np.ndarray) -> None:
    """A file laid out as PDEBench's 1D_Burgers_Sols_Nu*.hdf5: t has nt + 1 entries."""
    n, nt, nx = u.shape
    dx, dt = 1.0 / nx, 0.01
    with h5py.File(path, "w") as f:
        f.create_dataset("tensor", data=u.astype(np.float32))
        f.create_dataset("x-coordinate", data=((np.arange(nx) + 0.5) * dx).astype(np.float32))
        f.create_dataset("t-coordinate", data=(np.arange(nt + 1) * dt).astype(np.float32))


def test_round_trip_1d(tmp_path):
    u, x, t = _u1d(), np.arange(16) / 16, np.linspace(0, 1, 5)
    out = write_pdebench(tmp_path / "a.h5", u, x=x, t=t, attrs={"nu": 0.1, "pde": "burgers"})
    assert out == tmp_path / "a.h5"
    data = read_pdebench(out)
    assert isinstance(data, PDEData) and data.spatial_dims == 1
    assert data.u.dtype == np.float32 and data.u.shape == u.shape
    np.testing.assert_array_equal(data.u, u.astype(np.float32))
    np.testing.assert_array_equal(data.x, x)
    np.testing.assert_array_equal(data.t, t)
    assert data.y is None
    assert data.attrs == {"nu": 0.1, "pde": "burgers"}
    with h5py.File(out) as f:  # readable without this package, PDEBench key names
        assert f["tensor"].dtype == np.float32
        assert set(f) == {"tensor", "x-coordinate", "t-coordinate"}
    assert [p.name for p in tmp_path.iterdir()] == ["a.h5"]  # no temporary left


def test_round_trip_2d_and_max_samples(tmp_path):
    u = np.random.default_rng(1).standard_normal((5, 3, 8, 6))
    x, y, t = np.arange(8) / 8, np.arange(6) / 6, np.array([0.0, 0.5, 1.0])
    write_pdebench(tmp_path / "b.h5", u, x=x, y=y, t=t, attrs={"nu": 1e-3, "k": np.arange(3)})
    data = read_pdebench(tmp_path / "b.h5", max_samples=2)
    assert data.spatial_dims == 2 and data.u.shape == (2, 3, 8, 6)
    np.testing.assert_array_equal(data.u, u[:2].astype(np.float32))
    np.testing.assert_array_equal(data.y, y)
    np.testing.assert_array_equal(data.attrs["k"], np.arange(3))
    assert read_pdebench(tmp_path / "b.h5", max_samples=99).u.shape[0] == 5


def test_reads_pdebench_layout_with_extra_time(tmp_path):
    u = _u1d(3, 4, 32)
    _pdebench_1d(tmp_path / "1D_Burgers_Sols_Nu0.1.hdf5", u)
    data = read_pdebench(tmp_path / "1D_Burgers_Sols_Nu0.1.hdf5")
    assert data.u.shape == (3, 4, 32)
    np.testing.assert_allclose(data.t, np.arange(4) * 0.01, rtol=1e-6)
    np.testing.assert_allclose(data.x[0], 0.5 / 32)
    assert data.attrs == {}


def test_overwrite_replaces_file(tmp_path):
    p = tmp_path / "c.h5"
    write_pdebench(p, _u1d(), x=np.arange(16), t=np.arange(5))
    write_pdebench(p, _u1d(2), x=np.arange(16), t=np.arange(5))
    assert read_pdebench(p).u.shape[0] == 2


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    calls = []
    original = h5py.Group.create_dataset

    def failing(self, name, *args, **kwargs):
        calls.append(name)
        if name == "t-coordinate":
            raise RuntimeError("disk full")
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        write_pdebench(tmp_path / "d.h5", _u1d(), x=np.arange(16), t=np.arange(5))
    assert "tensor" in calls  # the failure came midway, after the tensor was written
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_previous_file(tmp_path):
    p = tmp_path / "e.h5"
    write_pdebench(p, _u1d(), x=np.arange(16), t=np.arange(5))
    with pytest.raises(ValueError, match="attrs\\['bad'\\]"):
        write_pdebench(p, _u1d(2), x=np.arange(16), t=np.arange(5), attrs={"bad": object()})
    assert read_pdebench(p).u.shape[0] == 4
    assert [q.name for q in tmp_path.iterdir()] == ["e.h5"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(u=np.zeros((4, 16))), "u must"),
        (dict(x=np.arange(15)), "x has 15"),
        (dict(t=np.arange(6)), "t has 6"),
        (dict(y=np.arange(3)), "y given"),
        (dict(u=np.zeros((2, 5, 16, 4))), "y is required"),
        (dict(u=np.full((2, 5, 16), np.nan)), "non-finite"),
        (dict(u=np.full((2, 5, 16), 1e300)), "non-finite"),
        (dict(attrs={"nu": None}), "attrs\\['nu'\\]"),
    ],
)
def test_write_rejects_bad_input(tmp_path, kwargs, match):
    args = dict(u=_u1d(), x=np.arange(16), t=np.arange(5)) | kwargs
    with pytest.raises(ValueError, match=match):
        write_pdebench(tmp_path / "f.h5", args.pop("u"), **args)
    assert list(tmp_path.iterdir()) == []


def _write_raw(path, **datasets) -> None:
    with h5py.File(path, "w") as f:
        for key, value in datasets.items():
            f.create_dataset(key, data=value)


def test_read_rejects_bad_files(tmp_path):
    good = {"tensor": _u1d(), "x-coordinate": np.arange(16.0), "t-coordinate": np.arange(5.0)}
    cases = {
        "no_tensor.h5": ({k: v for k, v in good.items() if k != "tensor"}, "'tensor'"),
        "rank.h5": (good | {"tensor": np.zeros((4, 16))}, "'tensor' must be"),
        "no_x.h5": ({k: v for k, v in good.items() if k != "x-coordinate"}, "'x-coordinate'"),
        "x_len.h5": (good | {"x-coordinate": np.arange(17.0)}, "x-coordinate has 17"),
        "t_len.h5": (good | {"t-coordinate": np.arange(7.0)}, "t-coordinate has 7"),
        "no_y.h5": (good | {"tensor": np.zeros((2, 5, 16, 3))}, "'y-coordinate'"),
        "cfd.h5": ({"density": np.zeros((2, 5, 16)), "Vx": np.zeros((2, 5, 16))}, "CFD"),
    }
    for name, (datasets, match) in cases.items():
        _write_raw(tmp_path / name, **datasets)
        with pytest.raises(ValueError, match=match) as info:
            read_pdebench(tmp_path / name)
        assert name in str(info.value)


def test_read_names_nan_samples(tmp_path):
    u = _u1d(6)
    u[2, 1, 3] = np.nan
    u[4, 0, 0] = np.inf
    _pdebench_1d(tmp_path / "nan.h5", u)
    with pytest.raises(ValueError, match=r"nan\.h5.*samples \[2, 4\]"):
        read_pdebench(tmp_path / "nan.h5")
    assert read_pdebench(tmp_path / "nan.h5", max_samples=2).u.shape[0] == 2


def test_read_rejects_non_hdf5_and_missing_files(tmp_path):
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match=r"text\.h5.*HDF5"):
        read_pdebench(tmp_path / "text.h5")
    with pytest.raises(FileNotFoundError):
        read_pdebench(tmp_path / "absent.h5")
    with pytest.raises(ValueError, match="max_samples"):
        read_pdebench(tmp_path / "text.h5", max_samples=0)


def test_groups_per_seed_layout_is_reported(tmp_path):
    with h5py.File(tmp_path / "seeds.h5", "w") as f:
        f.create_dataset("0000/data", data=np.zeros((5, 16, 1)))
        f.create_dataset("0000/grid/x", data=np.arange(16.0))
    with pytest.raises(ValueError, match="one-group-per-seed"):
        read_pdebench(tmp_path / "seeds.h5")
