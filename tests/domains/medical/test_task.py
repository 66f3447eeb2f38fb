"""The medical task end to end on a tiny config (in process), and its bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from diffsci.core.stages import run_evaluate, run_infer, run_prepare, run_train, validate_config
from diffsci.core.task import Runtime, TaskPaths, get_task
from diffsci.domains.medical.io import read_volume_nifti

#: the same tiny config the shared contract test runs through the CLI
TINY = yaml.safe_load(Path(__file__).with_name("tiny.yaml").read_text())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    task = get_task("medical")
    cfg = json.loads(json.dumps(TINY))
    validate_config(cfg, task.schema_path)
    paths = TaskPaths(tmp_path_factory.mktemp("medical"))
    for fn in (run_prepare, run_train, run_infer, run_evaluate):
        fn(task, cfg, paths, progress=False)
    return task, cfg, paths


def test_pipeline_writes_native_formats_and_metrics(run):
    task, cfg, paths = run
    pred = paths.predictions
    for name in ("mri", "ct"):
        assert (pred / f"{name}.h5").is_file()
        mean = read_volume_nifti(pred / f"{name}_mean.nii.gz")
        assert mean.shape == (5, 16, 16)  # 3 phantoms + CT_small + MR_small
        assert len(list((pred / f"{name}_mean_dicom").glob("*.dcm"))) == 5
    with h5py.File(pred / "mri.h5") as f:
        assert f["samples"].shape == (2, 5, 16, 16)
        assert set(f["baselines"]) == {"zero-filled", "POCS-TV"}
        # hard data consistency: every sample fits the measured k-space
        assert f.attrs["kspace_residual_max"] <= 1e-5
    m = json.loads(paths.metrics.read_text())
    mri = next(v for k, v in m["tables"].items() if k.startswith("MRI"))
    row = mri["diffusion (posterior mean)"]
    assert {
        "PSNR median (dB)",
        "SSIM (fastMRI 7x7 uniform)",
        "SSIM (MONAI 11x11 gaussian)",
        "NMSE",
        "coverage 90%",
        "seconds per slice",
    } <= set(row)
    assert 0 <= row["coverage 90%"] <= 1
    ctt = next(v for k, v in m["tables"].items() if k.startswith("CT"))
    assert {"FBP", "FBP (clipped to [0, 1])", "TV-iterative", "diffusion (posterior mean)"} == set(
        ctt
    )
    assert all(np.isfinite(v["PSNR median (dB)"]) for v in ctt.values())
    vol = next(v for k, v in m["tables"].items() if k.startswith("MRI 3-D volume (4 slices)"))
    assert set(vol) == {
        "diffusion 2-D slice-wise",
        "diffusion + slice-axis TV",
        "POCS-TV",
        "zero-filled",
    }
    assert read_volume_nifti(pred / "mri_volume_mean.nii.gz").shape == (4, 16, 16)


def test_derived_dicom_has_new_uids(run):
    from diffsci.domains.medical.io import read_dicom_series

    _, _, paths = run
    ref = read_dicom_series(paths.data / "test_dicom")
    out = read_dicom_series(paths.predictions / "mri_mean_dicom")
    assert out.meta["series_uid"] != ref.meta["series_uid"]
    assert out.array.shape == ref.array.shape


def test_mri_file_without_mask_names_the_file(run, tmp_path):
    task, cfg, paths = run
    import shutil

    data = tmp_path / "data"
    shutil.copytree(paths.data, data)
    with h5py.File(data / "mri_test.h5", "a") as f:
        del f["mask"]
    out = tmp_path / "pred"
    out.mkdir()
    from diffsci.core.stages import load_model

    model = load_model(task, cfg, paths.model)
    with pytest.raises(KeyError, match="mri_test.h5"):
        task.infer(cfg, model, data, out, Runtime(torch.device("cpu")))


def test_missing_training_data_is_a_clear_error(tmp_path):
    task = get_task("medical")
    with pytest.raises(FileNotFoundError, match="train.h5"):
        task.train_dataset(TINY, tmp_path)


def test_hard_dc_with_noisy_data_is_refused(run, tmp_path):
    from diffsci.core.stages import load_model

    task, cfg, paths = run
    noisy = json.loads(json.dumps(cfg))
    noisy["mri"]["noise_std"] = 0.05
    out = tmp_path / "pred"
    out.mkdir()
    with pytest.raises(ValueError, match="mri.method hard_dc"):
        task.infer(
            noisy, load_model(task, cfg, paths.model), paths.data, out, Runtime(torch.device("cpu"))
        )
