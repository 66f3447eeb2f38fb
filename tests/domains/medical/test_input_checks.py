"""Issue 23 for the medical domain: data of another size than data.size, NaN/inf or 1e30 in
the task's files, a CT file without image_size, one posterior sample, and DICOM series with a
duplicated or a truncated slice are refused naming the file, the key and the way forward;
nothing is written and the inputs are unchanged."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from diffsci.core.stages import validate_config
from diffsci.core.task import Runtime, get_task
from diffsci.domains.medical import io, userdata

TINY = yaml.safe_load(Path(__file__).with_name("tiny.yaml").read_text())
RT = Runtime(torch.device("cpu"))


def _cfg(**data) -> dict:
    cfg = json.loads(json.dumps(TINY))
    cfg["data"].update(data)
    validate_config(cfg, get_task("medical").schema_path)
    return cfg


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _images(n: int = 4, size: int = 16) -> np.ndarray:
    return np.random.default_rng(0).random((n, size, size)).astype(np.float32)


def _kspace(images: np.ndarray) -> np.ndarray:
    return np.fft.fft2(images).astype(np.complex64)


def _infer(cfg: dict, data: Path, tmp_path: Path) -> Path:
    """Run infer with no model (the readers fail first) and return the empty output folder."""
    out = tmp_path / "pred"
    out.mkdir(parents=True)
    get_task("medical").infer(cfg, None, data, out, RT)
    return out


# ------------------------------------------------------------------ size against data.size
def test_16_pixel_training_data_under_data_size_32_is_refused(tmp_path):
    path = io.write_images(tmp_path / "train.h5", _images(size=16))
    before = _sha(path)
    match = r"train\.h5: dataset 'images' holds 16x16 images but the config's data\.size is 32"
    with pytest.raises(ValueError, match=match) as e:
        get_task("medical").train_dataset(_cfg(size=32), tmp_path)
    assert "rerun the prepare stage" in str(e.value) and "data.size: 16" in str(e.value)
    with pytest.raises(ValueError, match=match):
        get_task("medical").model_card(_cfg(size=32), tmp_path)
    assert _sha(path) == before
    assert get_task("medical").train_dataset(_cfg(size=16), tmp_path).tensors[0].shape[-1] == 16


def test_the_train_cli_exits_non_zero_on_data_of_another_size(tmp_path, diffsci_cli):
    (tmp_path / "work" / "data").mkdir(parents=True)
    path = io.write_images(tmp_path / "work" / "data" / "train.h5", _images(size=16))
    before = _sha(path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_cfg(size=32)))
    args = ["--config", str(tmp_path / "c.yaml"), "--workdir", str(tmp_path / "work")]
    r = diffsci_cli("train", "--domain", "medical", *args, "--quiet")
    assert r.returncode != 0
    assert "train.h5: dataset 'images' holds 16x16 images but the config's data.size is 32" in (
        r.stderr
    )
    assert not (tmp_path / "work" / "model.pt").exists() and _sha(path) == before


def test_test_files_of_another_size_are_refused_by_infer(tmp_path):
    img = _images(2, 16)
    io.write_fastmri_like(tmp_path / "mri_test.h5", _kspace(img), mask=np.ones(16))
    with pytest.raises(ValueError, match=r"mri_test\.h5: dataset 'kspace' holds 16x16 images"):
        _infer(_cfg(size=32), tmp_path, tmp_path / "a")
    io.write_sinograms(tmp_path / "ct_test.h5", np.zeros((2, 6, 16)), np.arange(6.0) * 30, 16)
    cfg = _cfg(size=32)
    cfg["mri"]["enabled"] = False
    with pytest.raises(ValueError, match=r"ct_test\.h5: attribute image_size is 16 but the conf"):
        _infer(cfg, tmp_path, tmp_path / "b")
    assert list((tmp_path / "b" / "pred").iterdir()) == []


def test_a_ct_file_without_image_size_names_the_file_and_attribute(tmp_path):
    path = io.write_sinograms(tmp_path / "ct_test.h5", np.zeros((2, 6, 16)), np.arange(6.0), 16)
    with h5py.File(path, "a") as f:
        del f.attrs["image_size"]
    before = _sha(path)
    with pytest.raises(KeyError, match=r"ct_test\.h5: no attribute 'image_size' .*prepare stage"):
        io.read_sinograms(path)
    assert _sha(path) == before


# ------------------------------------------------------------------ non-finite and 1e30 values
@pytest.mark.parametrize("name", ["mri_test.h5", "ct_test.h5"])
def test_nan_in_a_test_file_names_the_file_and_dataset(tmp_path, name):
    cfg = _cfg()
    img = _images(2, 16)
    if name == "mri_test.h5":
        k = _kspace(img)
        k[1, 3, 4] = np.nan
        io.write_fastmri_like(tmp_path / name, k, mask=np.ones(16))
        match = r"mri_test\.h5: dataset 'kspace' has 1 NaN of 512 values \(first at index \[1,"
    else:
        cfg["mri"]["enabled"] = False
        sino = np.zeros((2, 6, 16))
        sino[0, 2, 5] = np.nan
        io.write_sinograms(tmp_path / name, sino, np.arange(6.0) * 30, 16)
        match = r"ct_test\.h5: dataset 'sinogram' has 1 NaN of 192 values \(first at index \[0, 2"
    with pytest.raises(ValueError, match=match):
        _infer(cfg, tmp_path, tmp_path)
    assert list((tmp_path / "pred").iterdir()) == []


@pytest.mark.parametrize(("value", "match"), [(np.inf, "1 \\+inf of 1024"), (1e30, "1 of 1024")])
def test_bad_training_values_name_train_h5_not_an_x0_batch(tmp_path, value, match):
    img = _images(4, 16)
    img[2, 1, 1] = value
    io.write_images(tmp_path / "train.h5", img)
    with pytest.raises(ValueError, match=rf"train\.h5: dataset 'images' has {match} values"):
        get_task("medical").train_dataset(_cfg(size=16), tmp_path)


def test_nan_in_a_users_kspace_or_sinogram_file_names_it(tmp_path):
    k = _kspace(_images(2, 16))
    k[0, 0, 0] = complex(np.inf, 0)
    io.write_fastmri_like(tmp_path / "knee.h5", k)
    with pytest.raises(ValueError, match=r"knee\.h5: dataset 'kspace' has 1 inf of 512 values"):
        io.read_fastmri(tmp_path / "knee.h5")
    sino = np.zeros((1, 6, 16))
    sino[0, 0, 0] = -np.inf
    io.write_sinograms(tmp_path / "scan.h5", sino, np.arange(6.0) * 30, 16)
    with pytest.raises(ValueError, match=r"scan\.h5: dataset 'sinogram' has 1 -inf of 96"):
        io.read_projection_file(tmp_path / "scan.h5")


def test_a_1e30_fill_value_in_a_users_image_is_refused_naming_it(tmp_path):
    vol = np.ones((16, 16, 2), np.float32)
    vol[0, 0, 1] = 1e30
    path = io.write_nifti(vol, tmp_path / "subj.nii.gz")
    cfg = _cfg(size=16)
    cfg["files"] = {"fit": "refuse"}
    validate_config(cfg, get_task("medical").schema_path)
    with pytest.raises(ValueError, match=r"subj\.nii\.gz: the image has 1 of 512 values of magn"):
        userdata.load_images([path], cfg, fbp=None)


# ------------------------------------------------------------------ sampling.samples
def test_one_posterior_sample_is_refused_by_the_schema_naming_the_key():
    cfg = json.loads(json.dumps(TINY))
    cfg["sampling"]["samples"] = 1
    with pytest.raises(ValueError, match="sampling/samples") as e:
        validate_config(cfg, get_task("medical").schema_path)
    assert "minimum of 2" in str(e.value) or "less than the minimum" in str(e.value)


# ------------------------------------------------------------------ DICOM series
@pytest.fixture
def series(tmp_path) -> Path:
    return io.write_dicom_series(_images(3, 8) * 100, tmp_path / "series")


def test_a_series_holding_two_copies_of_one_slice_is_refused_naming_both(series):
    shutil.copy(series / "slice_0001.dcm", series / "slice_0001 (copy).dcm")
    before = {p.name: _sha(p) for p in series.iterdir()}
    with pytest.raises(
        ValueError, match=r"slice_0001 \(copy\)\.dcm and slice_0001\.dcm are the same"
    ):
        io.read_dicom_series(series)
    with pytest.raises(ValueError, match="are the same slice"):
        io.read_dicom_files(sorted(series.iterdir()))
    assert {p.name: _sha(p) for p in series.iterdir()} == before


def test_two_slices_at_one_position_are_refused(series):
    import pydicom

    ds = pydicom.dcmread(series / "slice_0002.dcm")
    ds.ImagePositionPatient = pydicom.dcmread(series / "slice_0000.dcm").ImagePositionPatient
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(series / "slice_0002.dcm")
    with pytest.raises(ValueError, match=r"same slice \(slice position: ImagePositionPatient 0\)"):
        io.read_dicom_series(series)


@pytest.mark.parametrize("keep", [300, 600, 900])
def test_a_truncated_slice_is_reported_as_truncated_not_as_another_series(series, keep):
    f = series / "slice_0001.dcm"
    f.write_bytes(f.read_bytes()[:keep])
    with pytest.raises(ValueError, match=r"slice_0001\.dcm: truncated DICOM file") as e:
        io.read_dicom_series(series)
    assert "mixes" not in str(e.value) and "copy the file again" in str(e.value)
