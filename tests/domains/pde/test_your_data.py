"""The user's own trajectories: PDEBench HDF5 and .mat/.npz files written here in the field's
layouts (h5py, scipy.io, numpy; not the project's writer), trained on through Snakemake,
applied to a held-out file through ``diffsci apply``, and each mismatch of issue 19 refused or
warned about."""

from __future__ import annotations

import json
import subprocess
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from workflow_env import BIN, ENV, SNAKEMAKE

from diffsci.core.modelcard import Incompatible
from diffsci.core.stages import validate_config
from diffsci.domains.pde import io, userdata
from diffsci.domains.pde.simulate import burgers_dataset
from diffsci.domains.pde.task import SCHEMA

ROOT = Path(__file__).resolve().parents[3]
TINY = Path(__file__).with_name("tiny.yaml")
NX, NT = 64, 16  # the files' grid and frames; the model uses every 2nd point and frame


def _trajectories(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    _, u, t = burgers_dataset(
        n, NX, seed=seed, nu=0.05, t_end=0.5, nt=NT, initial={"kind": "sines", "k_max": 4}
    )
    return u.astype(np.float32), t


def write_pdebench_file(path: Path, u: np.ndarray, t: np.ndarray, x: np.ndarray, **attrs) -> Path:
    """PDEBench's 1-D layout as its generators write it: ``tensor`` (N, nt, nx), cell-centre
    ``x-coordinate`` and ``t-coordinate`` with ``nt + 1`` entries."""
    with h5py.File(path, "w") as f:
        f["tensor"] = u
        f["x-coordinate"] = x
        f["t-coordinate"] = np.append(t, t[-1] + (t[1] - t[0]))
        f.attrs.update(attrs)
    return path


def _x(lo: float = -1.0, hi: float = 1.0, n: int = NX) -> np.ndarray:
    return lo + (hi - lo) * (np.arange(n) + 0.5) / n  # cell centres of [lo, hi)


def _cfg(tmp_path: Path, files: dict, **over) -> dict:
    cfg = yaml.safe_load(TINY.read_text())
    for k in ("nu", "t_end", "n_train", "n_test", "solver_nx"):
        cfg["data"].pop(k)
    cfg["source"] = {"kind": "files", **files}
    cfg["files"] = {"frame_stride": 2, **over}
    validate_config(cfg, SCHEMA)
    return cfg


@pytest.fixture(scope="module")
def user_files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("user")
    for name, n, seed in (("train", 24, 0), ("val", 4, 1), ("test", 4, 2)):
        u, t = _trajectories(n, seed)
        write_pdebench_file(root / f"1D_Burgers_Sols_Nu0.05_{name}.hdf5", u, t, _x())
    u, t = _trajectories(3, 3)  # the held-out file: PDE-FIND's .mat layout, usol (nx, nt)
    scipy_io = pytest.importorskip("scipy.io")
    scipy_io.savemat(root / "heldout.mat", {"u": u[0].T, "x": _x(), "t": t, "nu": 0.05})
    return root


@pytest.fixture(scope="module")
def trained(user_files, tmp_path_factory) -> Path:
    """The tiny model trained on the user's files through ``snakemake pde``."""
    if SNAKEMAKE is None:
        pytest.skip("snakemake not installed (pip install -e '.[workflow]')")
    work = tmp_path_factory.mktemp("run")
    cfg = yaml.safe_load(TINY.read_text())
    for k in ("nu", "t_end", "n_train", "n_test", "solver_nx"):
        cfg["data"].pop(k)
    f = user_files
    cfg["source"] = {
        "kind": "files",
        "train": [str(f / "1D_Burgers_Sols_Nu0.05_train.hdf5")],
        "validation": [str(f / "1D_Burgers_Sols_Nu0.05_val.hdf5")],
        "test": [str(f / "1D_Burgers_Sols_Nu0.05_test.hdf5")],
    }
    cfg["files"] = {"frame_stride": 2}
    config = work / "my.yaml"
    config.write_text(yaml.safe_dump(cfg))
    cmd = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(work), "--cores", "1"]
    cmd += ["pde", "--config", f"pde_config={config}", "domains=[pde]"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=ENV)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return work / "results" / "pde"


def test_snakemake_trains_on_the_files_and_apply_writes_pdebench(trained, user_files, tmp_path):
    card = json.loads((trained / "model_card.json").read_text())
    sv = card["serves"]
    assert card["data"]["source"] == "files"
    assert sv["equation"] == "burgers" and sv["nu"] == [0.05, 0.05]  # nu from the file name
    assert sv["x0"] == pytest.approx(-1 + 1 / NX) and sv["domain_length"] == pytest.approx(2.0)
    assert sv["nt"] == 8 and sv["train_nx"] == [32] and sv["grid_multiple"] == 4
    assert card["normalisation"]["scale"] > 0 and card["sigma"]["sampling"] == [0.002, 80.0]
    m = json.loads((trained / "metrics.json").read_text())
    assert m["summary"]["equation"] == "burgers" and m["summary"]["nu"] == 0.05
    assert "Burgers forecast, nx=32" in m["tables"]
    with h5py.File(trained / "data" / "test_nx32.h5") as f:
        np.testing.assert_allclose(f["x-coordinate"][()], _x()[::2])  # the file's own x

    out = tmp_path / "applied"
    _apply(trained / "model.pt", user_files / "heldout.mat", out)
    with h5py.File(out / "heldout.h5") as f:  # PDEBench HDF5, opened with h5py
        assert f["tensor"].shape == (1, 8, NX) and f["ensemble"].shape == (2, 1, 8, NX)
        np.testing.assert_allclose(f["x-coordinate"][()], _x())
        assert f["t-coordinate"].shape == (8,) and f.attrs["equation"] == "burgers"
        assert f.attrs["nu"] == 0.05 and np.isfinite(f["tensor"][()]).all()
    assert json.loads((out / "provenance.json").read_text())["apply"]["inputs"]


def _apply(model: Path, file: Path, out: Path) -> None:
    r = subprocess.run(
        [str(BIN / "diffsci"), "apply", "--domain", "pde", "--model", str(model)]
        + ["--input", str(file), "--output", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert r.returncode == 0, r.stderr[-3000:]


def test_the_trained_fno_baseline_applies_to_new_files(trained, user_files, tmp_path):
    card = json.loads((trained / "fno_card.json").read_text())
    assert card["config"]["network"] == "fno" and card["serves"]["domain_length"] == 2.0
    _apply(trained / "fno.pt", user_files / "heldout.mat", tmp_path / "fno")
    with h5py.File(tmp_path / "fno" / "fno_heldout.h5") as f:
        assert f["tensor"].shape == (1, 8, NX) and f.attrs["method"] == "fno"
        np.testing.assert_allclose(f["x-coordinate"][()], _x())


def _card(**serves) -> dict:
    sv = {
        "equation": "burgers",
        "nu": [0.05, 0.05],
        "x0": 0.0,
        "domain_length": 1.0,
        "dt": 0.1,
        "nt": 8,
        "grid_multiple": 8,
        **serves,
    }
    return {"serves": sv, "normalisation": {"scale": 1.0, "trajectory_std": [0.2, 0.6]}}


def _data(path: Path, tmp_path: Path, **attrs) -> tuple[io.PDEData, dict]:
    cfg = _cfg(tmp_path, {"train": [str(path)], "test": [str(path)]}, frame_stride=1)
    data = userdata.load(path, cfg)
    return data, userdata.physics(data, path, cfg)


def _wave(nx: int, lo: float, hi: float, closed: bool = False, amp: float = 0.5):
    x = np.linspace(lo, hi, nx) if closed else lo + (hi - lo) * np.arange(nx) / nx
    t = 0.1 * np.arange(8)
    u = amp * np.sin(2 * np.pi * (x[None, None] - lo) / (hi - lo) + t[None, :, None])
    return np.repeat(u, 2, axis=0).astype(np.float32), x, t


@pytest.mark.parametrize("equation", ["kdv", "Kuramoto-Sivashinsky"])
def test_another_equation_is_refused(tmp_path, equation):
    u, x, t = _wave(32, 0.0, 1.0)
    path = write_pdebench_file(tmp_path / "f.h5", u, t, x, equation=equation)
    data, phys = _data(path, tmp_path)
    with pytest.raises(Incompatible, match=r"equation is .* model serves 'burgers'.*train a model"):
        userdata.check(data, phys, _card(), source=str(path))


def test_a_grid_on_minus_one_one_is_not_taken_as_the_unit_interval(tmp_path):
    u, x, t = _wave(33, -1.0, 1.0, closed=True)  # linspace(-1, 1, 33): the endpoint repeats
    path = write_pdebench_file(tmp_path / "f.h5", u, t, x)
    data, phys = _data(path, tmp_path)
    assert data.u.shape[-1] == 32 and phys["domain_length"] == pytest.approx(2.0)
    assert phys["x0"] == -1.0
    with pytest.raises(Incompatible, match=r"domain length .* is 2 but the model serves 1"):
        userdata.check(data, phys, _card(), source=str(path))
    userdata.check(data, phys, _card(x0=-1.0, domain_length=2.0), source=str(path))


def test_the_file_viscosity_is_reported_and_warned_about(tmp_path):
    u, x, t = _wave(32, 0.0, 1.0)
    path = write_pdebench_file(tmp_path / "1D_Burgers_Sols_Nu0.001.hdf5", u, t, x)
    data, phys = _data(path, tmp_path)
    assert phys["nu"] == 0.001  # from PDEBench's file name
    with pytest.warns(UserWarning, match=r"viscosity nu 0.001 is outside the training range"):
        userdata.check(data, phys, _card(), source=str(path))


def test_amplitude_outside_training_warns_and_grid_multiple_refused(tmp_path):
    u, x, t = _wave(32, 0.0, 1.0, amp=5.0)
    data, phys = _data(write_pdebench_file(tmp_path / "a.h5", u, t, x, nu=0.05), tmp_path)
    with pytest.warns(UserWarning, match=r"trajectory std .* outside the training range"):
        userdata.check(data, phys, _card(), source="a.h5")
    u, x, t = _wave(36, 0.0, 1.0)
    data, phys = _data(write_pdebench_file(tmp_path / "b.h5", u, t, x, nu=0.05), tmp_path)
    with pytest.raises(Incompatible, match=r"nx=36 .* multiple of 8; resample the file to nx=32"):
        userdata.check(data, phys, _card(), source="b.h5")


def test_frame_spacing_mismatch_is_refused(tmp_path):
    u, x, t = _wave(32, 0.0, 1.0)
    data, phys = _data(write_pdebench_file(tmp_path / "a.h5", u, 2 * t, x, nu=0.05), tmp_path)
    with pytest.raises(Incompatible, match=r"frame spacing dt=0.2, the model forecasts at dt=0.1"):
        userdata.check(data, phys, _card(), source="a.h5")


def test_mat_and_npz_readers_find_the_axes(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    u, x, t = _wave(32, 0.0, 1.0)
    scipy_io.savemat(tmp_path / "a.mat", {"usol": u[0].T, "xx": x, "tt": t, "equation": "kdv"})
    got = io.read_trajectories(tmp_path / "a.mat", keys={"u": "usol", "x": "xx", "t": "tt"})
    np.testing.assert_allclose(got.u, u[:1]) and np.testing.assert_allclose(got.x, x)
    assert got.attrs["equation"] == "kdv"
    np.savez(tmp_path / "b.npz", u=np.transpose(u, (2, 0, 1)), x=x, t=t)  # (nx, N, nt)
    np.testing.assert_allclose(io.read_trajectories(tmp_path / "b.npz").u, u)
    with pytest.raises(ValueError, match=r"no variable 'u' for u .* set files.keys.u"):
        io.read_trajectories(tmp_path / "a.mat")


def test_prepare_refuses_mixed_equations_and_unequal_grids(tmp_path):
    from diffsci.core.datasource import resolve_source

    u, x, t = _wave(32, 0.0, 1.0)
    a = write_pdebench_file(tmp_path / "a.h5", u, t, x, equation="burgers")
    b = write_pdebench_file(tmp_path / "b.h5", u, t, x, equation="kdv")
    c = write_pdebench_file(tmp_path / "c.h5", u, t, x, equation="burgers")
    cfg = _cfg(tmp_path, {"train": [str(a), str(b)], "test": [str(c)]}, frame_stride=1)
    with pytest.raises(ValueError, match=r"differ in equation .* one model per equation"):
        userdata.prepare_files(cfg, tmp_path, resolve_source(cfg))
    cfg = _cfg(tmp_path, {"train": [str(a)], "test": [str(b)]}, frame_stride=1)
    with pytest.raises(ValueError, match=r"source.test: equation 'kdv' differs"):
        userdata.prepare_files(cfg, tmp_path, resolve_source(cfg))
    cfg["data"]["eval_nx"] = [24]
    with pytest.raises(ValueError, match=r"24 does not divide"):
        userdata.on_grid(u, x, 24, source="source.test")


def test_a_nonuniform_grid_is_refused(tmp_path):
    u, x, t = _wave(32, 0.0, 1.0)
    x = x**2
    path = write_pdebench_file(tmp_path / "a.h5", u, t, x)
    with pytest.raises(ValueError, match=r"not a uniform increasing grid .* resample"):
        _data(path, tmp_path)


def test_simulate_stays_the_default(tmp_path):
    cfg = yaml.safe_load(TINY.read_text())
    validate_config(cfg, SCHEMA)
    assert cfg["source"]["kind"] == "simulate"
    del cfg["data"]["nu"]
    with pytest.raises(ValueError, match="'nu' is a required property"):
        validate_config(cfg, SCHEMA)


def test_evaluate_names_the_file_equation(tmp_path):
    from diffsci.core.task import TaskPaths
    from diffsci.domains.pde.task import PDETask

    u, x, t = _wave(32, 0.0, 1.0)
    paths = TaskPaths(tmp_path)
    for d in (paths.data, paths.predictions, paths.baselines):
        d.mkdir()
    io.write_pdebench(paths.data / "test_nx32.h5", u, x=x, t=t, attrs={"equation": "kdv"})
    cfg = _cfg(tmp_path, {"train": [__file__], "test": [str(TINY)]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (tmp_path / "fig").mkdir()
        res = PDETask().evaluate(cfg, paths, tmp_path / "fig")
    assert list(res.tables) == ["KdV forecast, nx=32"]
    assert res.summary["equation"] == "kdv" and res.summary["nu"] is None


def test_apply_on_a_model_without_a_card_says_so(tmp_path):
    from diffsci.core.modelfile import save_model_file
    from diffsci.core.stages import run_apply

    save_model_file(tmp_path / "model.pt", {})  # a model file with no card (trained before them)
    with pytest.raises(Incompatible, match="no model card .* retrain"):
        run_apply("pde", model=tmp_path / "model.pt", inputs=[__file__], output=tmp_path / "o")


def test_non_periodic_trajectories_warn(tmp_path):
    u, x, t = _wave(32, 0.0, 1.0)
    u = u + np.linspace(0, 1, 32, dtype=np.float32)  # a ramp: a jump of 1 across the boundary
    path = write_pdebench_file(tmp_path / "a.h5", u, t, x, nu=0.05)
    with pytest.warns(UserWarning, match=r"not periodic in x \(a jump of"):
        data, phys = _data(path, tmp_path)
    assert phys["periodic"] is False
    with pytest.warns(UserWarning, match=r"not periodic in x but the model was trained on"):
        userdata.check(data, phys, _card(periodic=True), source="a.h5")


def test_infer_checks_the_prepared_test_data_against_the_card(tmp_path):
    from diffsci.domains.pde.task import PDETask

    u, x, t = _wave(32, 0.0, 1.0)
    io.write_pdebench(tmp_path / "test_nx32.h5", u, x=x, t=t, attrs={"equation": "kdv"})
    with pytest.raises(Incompatible, match=r"test_nx32.h5: the equation is 'kdv'"):
        PDETask().check_inputs({}, _card(), tmp_path)
    io.write_pdebench(tmp_path / "test_nx32.h5", u, x=x, t=t, attrs={"equation": "burgers"})
    PDETask().check_inputs({}, _card(), tmp_path)


def test_cell_centres_serve_a_model_trained_on_grid_nodes(tmp_path):
    u, x, t = _wave(32, 0.0, 1.0)
    path = write_pdebench_file(tmp_path / "a.h5", u, t[:-1], x + 0.5 / 32, nu=0.05)  # PDEBench
    data, phys = _data(path, tmp_path)
    assert phys["x0"] == 1 / 64
    userdata.check(data, phys, _card(), source="a.h5")  # simulated card: nodes i / nx
    with pytest.raises(Incompatible, match=r"domain origin .* is 0.5 but the model serves 0"):
        phys["x0"] = 0.5
        userdata.check(data, phys, _card(), source="a.h5")


def test_apply_refuses_kdv_and_the_unit_interval_through_the_trained_model(trained, tmp_path):
    from diffsci.core.stages import run_apply

    u, t = _trajectories(2, 5)
    kdv = write_pdebench_file(tmp_path / "kdv.h5", u, t, _x(), equation="KdV")
    unit = write_pdebench_file(tmp_path / "unit.h5", u, t, _x(0.0, 1.0), nu=0.05)
    model = trained / "model.pt"
    with pytest.raises(Incompatible, match=r"kdv.h5: the equation is 'kdv' but .* 'burgers'"):
        run_apply("pde", model=model, inputs=[str(kdv)], output=tmp_path / "o", progress=False)
    with pytest.raises(Incompatible, match=r"unit.h5: the domain length .* is 1 but .* 2"):
        run_apply("pde", model=model, inputs=[str(unit)], output=tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


def test_apply_forecasts_any_frame_spacing_and_warns_on_an_untrained_grid(tmp_path):
    u, x, t = _wave(64, 0.0, 1.0)
    path = write_pdebench_file(tmp_path / "a.h5", u, 0.5 * t, x, nu=0.05)  # dt 0.05, not 0.1
    cfg = _cfg(tmp_path, {"train": [str(path)], "test": [str(path)]}, frame_stride=1)
    card = _card(train_nx=[32], eval_nx=[32])
    with pytest.warns(UserWarning, match=r"nx=64 is none the model was trained .* \[32\]"):
        data, phys = userdata.load_checked(path, cfg, card)
    assert data.u.shape == (2, 8, 64) and phys["dt"] is None


def test_hdf5_with_other_names_and_matlab_v73(tmp_path):
    u, x, t = _wave(32, 0.0, 1.0)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["sol"], f["xs"], f["ts"] = np.transpose(u, (0, 2, 1)), x, t  # (N, nx, nt)
        f.attrs["equation"] = "kdv"
    got = io.read_trajectories(tmp_path / "a.h5", keys={"u": "sol", "x": "xs", "t": "ts"})
    np.testing.assert_allclose(got.u, u) and (got.attrs["equation"] == "kdv")
    with pytest.raises(ValueError, match=r"no variable 'tensor' for u .* \['sol', 'ts', 'xs'\]"):
        io.read_trajectories(tmp_path / "a.h5", keys={"x": "xs", "t": "ts"})
    # MATLAB v7.3: HDF5 behind a 512-byte header, arrays stored column-major (transposed)
    path = tmp_path / "b.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        f["usol"], f["x"], f["t"] = u[0], x[None], t[None]  # MATLAB usol (nx, nt)
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116) + b"\0" * 8 + b"\x00\x02IM")
    got = io.read_trajectories(path, keys={"u": "usol"})
    np.testing.assert_allclose(got.u, u[:1])


def test_files_of_several_viscosities_give_the_card_a_range(tmp_path):
    from diffsci.core.datasource import resolve_source
    from diffsci.domains.pde.task import PDETask

    u, x, t = _wave(32, 0.0, 1.0)
    files = [
        write_pdebench_file(tmp_path / f"1D_Burgers_Sols_Nu{nu}.hdf5", u, t, x)
        for nu in (0.01, 0.05, 0.1)
    ]
    cfg = _cfg(tmp_path, {"train": [str(f) for f in files[:2]], "test": [str(files[2])]})
    cfg["files"]["frame_stride"] = 1
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    userdata.prepare_files(cfg, data_dir, resolve_source(cfg))
    card = userdata.card(cfg, data_dir)
    assert card["serves"]["nu"] == [0.01, 0.05] and card["serves"]["domain_length"] == 1.0
    with pytest.warns(UserWarning, match=r"viscosity nu 0.1 is outside .* \[0.01, 0.05\]"):
        PDETask().check_inputs(cfg, card, data_dir)


def test_max_trajectories_reads_only_the_first(tmp_path):
    u, x, t = _wave(32, 0.0, 1.0)
    u = np.concatenate([u, u, u])  # 6 trajectories
    h5 = write_pdebench_file(tmp_path / "a.h5", u, t, x)
    np.savez(tmp_path / "b.npz", u=u, x=x, t=t)
    for path in (h5, tmp_path / "b.npz"):
        cfg = _cfg(tmp_path, {"train": [str(path)], "test": [str(h5)]}, max_trajectories=4)
        assert userdata.load(path, cfg).u.shape == (4, 4, 32)  # frame_stride 2 of 8 frames


def test_the_notebook_opens_a_run_on_the_users_files(trained, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    path = ROOT / "workflows" / "notebooks" / "pde.ipynb"
    nb = nbformat.read(path, as_version=4)
    monkeypatch.setenv("DIFFSCI_WORKDIR", str(trained))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    meta = {"metadata": {"path": str(path.parent)}}
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources=meta).execute()
