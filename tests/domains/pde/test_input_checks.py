"""Issue 23 for the PDE domain: a prepared file whose grid is not the one its name says, a
corrupt normalisation.json and values that overflow float32 are refused with the file, the
key and the way forward; nothing is written and the input is unchanged."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import yaml

from diffsci.domains.pde import io
from diffsci.domains.pde.task import PDETask
from tests.domains.pde.conftest import small_cfg


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _data_dir(root: Path, nx_file: int, nx_name: int) -> Path:
    """A prepared folder whose train and test files hold ``nx_file`` points but are named
    ``*_nx<nx_name>.h5``."""
    data = root / "data"
    data.mkdir(parents=True)
    u = np.random.default_rng(0).standard_normal((4, 8, nx_file)).astype(np.float32)
    x, t = np.arange(nx_file) / nx_file, np.arange(8) * 0.1
    for split in ("train", "test"):
        io.write_pdebench(data / f"{split}_nx{nx_name}.h5", u, x=x, t=t, attrs={"nu": 0.01})
    io.write_scale(data, 1.0)
    return data


def _cfg64() -> dict:
    cfg = small_cfg(channels=[8, 16], attention_levels=[False, False])
    cfg["data"].update(train_nx=[64], eval_nx=[64])
    return cfg


def test_a_file_on_another_grid_than_its_name_is_refused_by_train_and_infer(tmp_path):
    data = _data_dir(tmp_path, nx_file=32, nx_name=64)
    before = {p: _sha(p) for p in data.iterdir()}
    match = (
        r"train_nx64\.h5: the file's grid is not the nx=64 its name says \('tensor' has 32, "
        r"'x-coordinate' has 32 points\).*rerun the prepare stage"
    )
    with pytest.raises(ValueError, match=match):
        PDETask().train_dataset(_cfg64(), data)
    out = tmp_path / "predictions"
    out.mkdir()
    rt = SimpleNamespace(device="cpu", progress=False)
    (data / "train_nx64.h5").unlink()  # infer reads only the test files
    io.write_pdebench(data / "train_nx64.h5", np.zeros((1, 8, 64)), x=np.arange(64), t=np.arange(8))
    with pytest.raises(ValueError, match=r"test_nx64\.h5: the file's grid is not the nx=64"):
        PDETask().infer(_cfg64(), None, data, out, rt)
    assert list(out.iterdir()) == []
    assert _sha(data / "test_nx64.h5") == before[data / "test_nx64.h5"]


def test_the_train_cli_exits_non_zero_naming_the_misnamed_file(tmp_path, diffsci_cli):
    data = _data_dir(tmp_path / "work", nx_file=32, nx_name=64)
    before = {p.name: _sha(p) for p in data.iterdir()}
    cfg = {**_cfg64(), "seed": 0, "device": "cpu", "train_chunk": 4}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    args = ["--config", str(tmp_path / "c.yaml"), "--workdir", str(tmp_path / "work")]
    r = diffsci_cli("train", "--domain", "pde", *args, "--quiet")
    assert r.returncode != 0
    assert "train_nx64.h5: the file's grid is not the nx=64 its name says" in r.stderr
    assert not (tmp_path / "work" / "model.pt").exists()
    assert {p.name: _sha(p) for p in data.iterdir()} == before


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"scale": ', r"not a readable normalisation file \(JSONDecodeError: Expecting value"),
        ('{"std": 1.0}', r"not a readable normalisation file \(KeyError: 'scale'\)"),
        ('{"scale": -1.0}', "scale is -1.0, not a positive finite number"),
    ],
)
def test_a_corrupt_normalisation_json_names_the_file_and_how_to_remake_it(tmp_path, text, match):
    (tmp_path / io.SCALE_FILE).write_text(text)
    with pytest.raises(ValueError, match=match) as e:
        io.read_scale(tmp_path)
    assert str(tmp_path / "normalisation.json") in str(e.value)
    assert "rerun the prepare stage" in str(e.value)
    assert (tmp_path / io.SCALE_FILE).read_text() == text


def test_a_missing_normalisation_json_says_to_rerun_prepare(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"normalisation\.json: missing.*prepare stage"):
        io.read_scale(tmp_path)


def test_values_that_overflow_float32_are_refused_at_the_reader(tmp_path):
    u = np.zeros((3, 5, 16))
    u[1, 2, 3] = 1e30
    with h5py.File(tmp_path / "fill.h5", "w") as f:
        f["tensor"], f["x-coordinate"], f["t-coordinate"] = u, np.arange(16.0), np.arange(5.0)
    match = r"fill\.h5: 'tensor' has 1 of 240 values of magnitude above 1e\+18 \(largest 1e\+30"
    with pytest.raises(ValueError, match=match):
        io.read_pdebench(tmp_path / "fill.h5")
    np.savez(tmp_path / "big.npz", u=u * 1e10, x=np.arange(16.0), t=np.arange(5.0))
    with pytest.raises(ValueError, match=r"big\.npz: 'u' has 1 of 240 .*largest 1e\+40"):
        io.read_trajectories(tmp_path / "big.npz")


def test_non_finite_values_of_a_user_file_name_the_file_variable_and_samples(tmp_path):
    u = np.zeros((3, 5, 16))
    u[2, 0, 1] = -np.inf
    np.savez(tmp_path / "gap.npz", u=u, x=np.arange(16.0), t=np.arange(5.0))
    match = r"gap\.npz: 'u' \(NaN/inf values in samples \[2\]\) has 1 -inf of 240 values"
    with pytest.raises(ValueError, match=match):
        io.read_trajectories(tmp_path / "gap.npz")
