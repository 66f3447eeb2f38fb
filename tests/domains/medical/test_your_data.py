"""The medical pipeline on a user's own files, written here in the fields' real layouts with
nibabel, pydicom and h5py (not through the project's writers): NIfTI training volumes, a DICOM
test series, a fastMRI k-space file and a DataExchange tomography scan. Trained through
``snakemake medical --config medical_config=...``, applied with ``diffsci apply``, outputs
opened with nibabel, pydicom and h5py; and each mismatch of the issue refused or warned."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
import yaml
from workflow_env import ENV, SNAKEMAKE

from diffsci.core.modelcard import Incompatible
from diffsci.core.modelfile import load_model_file, save_model_file
from diffsci.core.operators import check_adjoint
from diffsci.core.stages import validate_config
from diffsci.core.task import get_task
from diffsci.domains.medical import baselines, io, userdata
from diffsci.domains.medical.operators import (
    OPERATORS,
    ParallelBeamRadon,
    estimate_rotation_center,
)
from diffsci.domains.medical.simulate import random_ellipse_phantoms

ROOT = Path(__file__).resolve().parents[3]
TINY = yaml.safe_load(Path(__file__).with_name("tiny.yaml").read_text())
N = 16  # tiny.yaml's data.size
CENTER = 8.6  # the DataExchange scan's rotation axis, 1.1 columns off the detector middle


# ------------------------------------------------------------------ files in the fields' layouts
def write_nifti(path: Path, vol_hwz: np.ndarray) -> Path:
    """A NIfTI-1 volume (i, j, k) as a scanner export would be (int16 with scl_slope)."""
    img = nib.Nifti1Image((vol_hwz * 1000).astype(np.int16), np.diag([0.8, 0.8, 3.0, 1.0]))
    img.header.set_slope_inter(0.001, 0.0)
    nib.save(img, str(path))
    return path


def write_dicom_series(folder: Path, vol: np.ndarray) -> list[Path]:
    """A CT series (PS3.3 CT Image IOD essentials), one file per slice, HU-like values."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    out = []
    for i in reversed(range(len(vol))):  # written out of order: the reader sorts by position
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = uid = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.InstanceNumber = "CT", "anon", i + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, 2.5 * i]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 2.5
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = vol.shape[1:]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = (vol[i] * 2000).astype(np.uint16).tobytes()
        path = folder / f"IM{i:04d}"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def kspace_of(images: np.ndarray) -> np.ndarray:
    """fastMRI's convention: centered orthonormal 2-D FFT."""
    k = np.fft.fft2(np.fft.ifftshift(images, axes=(-2, -1)), norm="ortho")
    return np.fft.fftshift(k, axes=(-2, -1)).astype(np.complex64)


def write_fastmri(path: Path, images: np.ndarray, *, mask: bool = True) -> Path:
    """A single-coil fastMRI test file: undersampled ``kspace``, its ``mask``, attrs."""
    k = kspace_of(images) * 3e-5  # raw scanner units, nowhere near [0, 1]
    m = np.zeros(images.shape[-1], bool)
    m[::3] = True
    m[images.shape[-1] // 2 - 1 : images.shape[-1] // 2 + 2] = True
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=k * m)
        if mask:
            f.create_dataset("mask", data=m)
        f.attrs["acquisition"] = "CORPD_FBK"
        f.attrs["acceleration"] = 3
    return path


def write_dataexchange(path: Path, images: np.ndarray, *, theta: np.ndarray) -> Path:
    """A DataExchange scan: counts ``I0 exp(-p) + dark`` (uint16), flats, darks, theta (deg)."""
    op = ParallelBeamRadon(N, theta, n_det=N, rotation_center=CENTER)
    sino = op.forward(torch.from_numpy(images).double()[:, None])[:, 0].numpy()  # (rows, a, c)
    dark, i0 = 100.0, 40000.0
    counts = i0 * np.exp(-0.05 * sino) + dark
    with h5py.File(path, "w") as f:
        f.attrs["implements"] = "exchange"
        ex = f.create_group("exchange")
        ex.create_dataset("data", data=np.moveaxis(counts, 0, 1).round().astype(np.uint16))
        ex.create_dataset("data_white", data=np.full((3, len(images), N), i0 + dark, np.uint16))
        ex.create_dataset("data_dark", data=np.full((2, len(images), N), dark, np.uint16))
        ex.create_dataset("theta", data=theta).attrs["units"] = "degrees"
    return path


# ------------------------------------------------------------------ the run
def _cfg(source: dict, **files) -> dict:
    cfg = json.loads(json.dumps(TINY))
    cfg["source"] = source
    cfg["files"] = {"fit": "resize", **files}
    return cfg


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    """The user's files, the tiny pipeline trained on them through Snakemake."""
    if SNAKEMAKE is None:
        pytest.skip("snakemake not installed (pip install -e '.[workflow]')")
    root = tmp_path_factory.mktemp("medical_user")
    raw = root / "raw"
    raw.mkdir()
    ph = random_ellipse_phantoms(28, N, seed=7)
    write_nifti(raw / "subj1.nii.gz", np.moveaxis(ph[:12], 0, -1))
    write_nifti(raw / "subj2.nii", np.moveaxis(ph[12:20], 0, -1))
    # a third subject at another size: resampled (files.fit: resize)
    big = random_ellipse_phantoms(4, 2 * N, seed=8)
    write_nifti(raw / "subj3.nii.gz", np.moveaxis(big, 0, -1))
    write_dicom_series(raw / "test_series", ph[20:23])
    write_nifti(raw / "val.nii.gz", np.moveaxis(ph[23:25], 0, -1))
    cfg = _cfg(
        {
            "kind": "files",
            "train": [str(raw / "subj*.nii*")],
            "validation": [str(raw / "val.nii.gz")],
            "test": [str(raw / "test_series" / "*")],
        }
    )
    config = root / "my.yaml"
    config.write_text(yaml.safe_dump(cfg))
    cmd = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(root), "--cores", "1"]
    cmd += ["medical", "--config", f"medical_config={config}", "domains=[medical]"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=ENV)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    held = random_ellipse_phantoms(2, N, seed=9)
    return root, raw, held


def _apply(model: Path, out: Path, *inputs: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "diffsci.core.cli", "apply", "--domain", "medical"]
    cmd += ["--model", str(model), "--input", *map(str, inputs), "--output", str(out)]
    cmd += ["--device", "cpu", "--quiet"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)


def test_trains_on_the_users_files_and_evaluates_their_test_split(user_run):
    root, _, _ = user_run
    work = root / "results" / "medical"
    train = io.read_images(work / "data" / "train.h5")
    assert train.shape == (12 + 8 + 4, N, N) and 0 <= float(train.min()) <= float(train.max()) <= 1
    truth = io.read_volume_nifti(work / "data" / "test_ground_truth.nii.gz")
    assert truth.shape == (3, N, N)  # the DICOM series, not phantoms or pydicom's examples
    assert not (work / "data" / "mri_volume.h5").exists()
    assert io.read_images(work / "data" / "validation.h5").shape == (2, N, N)
    card = json.loads((work / "model_card.json").read_text())
    assert card["data"]["source"] == "files" and len(card["data"]["files"]["train"]) == 3
    assert card["serves"]["image_size"] == [N, N]
    assert "min-max per volume" in card["normalisation"]["method"]
    assert card["sigma"]["min"] == 0.002 and card["sigma"]["max"] == 80.0
    m = json.loads((work / "metrics.json").read_text())
    assert any(k.startswith("MRI") for k in m["tables"]) and any(
        k.startswith("CT") for k in m["tables"]
    )
    assert m["summary"]["slices"] == 3


def test_apply_reconstructs_kspace_and_a_dataexchange_scan(user_run, tmp_path):
    root, _, held = user_run
    theta = np.linspace(0, 180, 13)  # 0 and 180 inclusive, as a real scan
    ks = write_fastmri(tmp_path / "file1000.h5", held)
    dx = write_dataexchange(tmp_path / "scan_dx.h5", held, theta=theta)
    out = tmp_path / "applied"
    r = _apply(root / "results" / "medical" / "model.pt", out, ks, dx)
    assert r.returncode == 0, r.stderr[-3000:]
    mean = nib.load(str(out / "file1000_mean.nii.gz")).get_fdata()
    assert mean.shape == (N, N, 2)
    ds = [pydicom.dcmread(p) for p in sorted((out / "scan_dx_mean_dicom").iterdir())]
    assert len(ds) == 2 and ds[0].pixel_array.shape == (N, N)
    with h5py.File(out / "file1000.h5") as f:
        assert f["samples"].shape == (2, 2, N, N) and set(f["baselines"]) == {
            "zero-filled",
            "POCS-TV",
        }
        assert f.attrs["mask"] == "file" and f.attrs["scale"] > 0
        # outputs are in the file's own units (the k-space was scaled by 3e-5)
        assert float(np.abs(f["mean"][()]).max()) < 1e-3
    with h5py.File(out / "scan_dx.h5") as f:
        assert f.attrs["rotation_center"] == pytest.approx(CENTER, abs=0.5)
        assert f.attrs["modality"] == "CT" and f.attrs["rotation_center_from"].startswith(
            "estimated"
        )
    prov = json.loads((out / "provenance.json").read_text())["apply"]
    assert prov["inputs"] == [str(ks), str(dx)]


def test_apply_refuses_kspace_of_another_size(user_run, tmp_path):
    root, _, _ = user_run
    big = write_fastmri(tmp_path / "knee128.h5", random_ellipse_phantoms(1, 128, seed=3))
    r = _apply(root / "results" / "medical" / "model.pt", tmp_path / "o", big)
    assert r.returncode == 2
    assert "knee128.h5: the k-space grid is 128x128 but the prior serves 16x16" in r.stderr
    assert "data.size: 128" in r.stderr and "central 16x16" in r.stderr
    assert not (tmp_path / "o").exists()


def test_apply_on_a_model_without_a_card_says_so(user_run, tmp_path):
    root, _, held = user_run
    saved = load_model_file(root / "results" / "medical" / "model.pt")
    del saved.meta["card"]
    save_model_file(
        tmp_path / "model.pt", saved.state_dict, **saved.meta
    )  # no model_card.json beside it
    r = _apply(tmp_path / "model.pt", tmp_path / "o", write_fastmri(tmp_path / "k.h5", held))
    assert r.returncode == 2 and "no model card" in r.stderr


def test_apply_refuses_images_and_multicoil(user_run, tmp_path):
    root, raw, held = user_run
    model = root / "results" / "medical" / "model.pt"
    r = _apply(model, tmp_path / "o", raw / "subj1.nii.gz")
    assert r.returncode == 2 and "apply reconstructs measurements" in r.stderr
    with h5py.File(tmp_path / "multi.h5", "w") as f:
        f.create_dataset("kspace", data=np.stack([kspace_of(held)] * 4, 1))
    r = _apply(model, tmp_path / "o", tmp_path / "multi.h5")
    assert r.returncode == 2 and "multi-coil kspace" in r.stderr


# ------------------------------------------------------------------ mismatches, in process
def test_other_image_sizes_are_refused_with_the_trained_size_and_the_fix(tmp_path):
    path = write_nifti(tmp_path / "ct.nii.gz", np.zeros((300, 484, 2), np.float32))
    cfg = _cfg({"kind": "files", "train": [str(path)], "test": [str(path)]}, fit="refuse")
    cfg["source"]["test"] = [str(write_nifti(tmp_path / "t.nii.gz", np.zeros((N, N, 1))))]
    validate_config(cfg, get_task("medical").schema_path)
    with pytest.raises(Incompatible, match=r"ct.nii.gz: slices are 300x484 but .* 16x16") as e:
        get_task("medical").prepare(cfg, tmp_path / "data")
    assert "files.fit: crop" in str(e.value) and "data.size: 300" in str(e.value)


def test_infer_checks_the_evaluation_slices_against_the_card(tmp_path):
    task = get_task("medical")
    cfg = json.loads(json.dumps(TINY))
    validate_config(cfg, task.schema_path)
    card = {"serves": {"image_size": [N, N]}, "normalisation": {"slice_mean_range": [0.2, 0.3]}}
    truth = nib.Nifti1Image(np.zeros((32, 32, 2), np.float32), np.eye(4))
    nib.save(truth, str(tmp_path / "test_ground_truth.nii.gz"))
    with pytest.raises(Incompatible, match="the image size is 32x32 but the prior serves 16x16"):
        task.check_inputs(cfg, card, tmp_path)
    # the right size but far darker than the training slices: a warning saying by how much
    dark = np.full((2, N, N), 0.01, np.float32)
    with pytest.warns(UserWarning, match=r"mean intensity 0.01 is outside .* by 1.90 x its width"):
        userdata.check_images(dark, card, source="dark.nii.gz")


def test_model_card_records_size_normalisation_and_sigma(tmp_path):
    task = get_task("medical")
    cfg = json.loads(json.dumps(TINY))
    validate_config(cfg, task.schema_path)
    io.write_images(tmp_path / "train.h5", np.full((3, N, N), 0.25, np.float32))
    card = task.model_card(cfg, tmp_path)
    assert card["serves"]["image_size"] == [N, N] and "whole" in card["serves"]["receptive_field"]
    assert card["normalisation"]["slice_mean_range"] == [0.25, 0.25]
    assert card["sigma"] == {
        "min": 0.002,
        "max": 80.0,
        "data": 0.5,
        "train": "EDM log-normal, P_mean -1.2, P_std 1.2",
    }


def test_dataexchange_reader_corrects_flat_dark_and_takes_log(tmp_path):
    theta = np.array([0.0, 90.0, 180.0])
    with h5py.File(tmp_path / "dx.h5", "w") as f:
        ex = f.create_group("exchange")
        ex.create_dataset("data", data=np.full((3, 2, 5), 1100, np.uint16))  # angles, rows, cols
        ex.create_dataset("data_white", data=np.stack([np.full((2, 5), v) for v in (2000, 2200)]))
        ex.create_dataset("data_dark", data=np.full((4, 2, 5), 100, np.uint16))
        ex.create_dataset("theta", data=np.deg2rad(theta)).attrs["units"] = "radians"
    s = io.read_dataexchange(tmp_path / "dx.h5")
    assert s.sinogram.shape == (2, 3, 5) and s.image_size == 5 and s.rotation_center is None
    np.testing.assert_allclose(s.sinogram, -np.log(1000 / 2000), rtol=1e-6)
    np.testing.assert_allclose(s.angles_deg, theta)
    del h5py.File(tmp_path / "dx.h5", "a")["exchange/data_dark"]
    with pytest.raises(KeyError, match=r"dx.h5: no 'exchange/data_dark' dataset"):
        io.read_projection_file(tmp_path / "dx.h5")


def test_rotation_centre_is_estimated_and_removes_the_doubled_image():
    x = torch.from_numpy(random_ellipse_phantoms(1, 32, seed=2)).double()[:, None]
    theta = np.linspace(0, 180, 61)
    true = ParallelBeamRadon(32, theta, n_det=46, rotation_center=25.4)
    y = true.forward(x)
    c = estimate_rotation_center(y[0, 0].numpy(), theta)
    assert c == pytest.approx(25.4, abs=0.5)
    found = ParallelBeamRadon(32, theta, n_det=46, rotation_center=c)
    middle = ParallelBeamRadon(32, theta, n_det=46)

    def err(op: ParallelBeamRadon) -> float:
        return float((baselines.fbp(y, op) - x).square().mean().sqrt())

    assert err(found) < 0.5 * err(middle)
    with pytest.raises(ValueError, match="no two projections 180 degrees apart"):
        estimate_rotation_center(y[0, 0, :-1].numpy(), theta[:-1])


def test_off_centre_detector_is_adjoint_and_the_default_unchanged():
    case = OPERATORS["parallel_beam_radon_off_centre"]()
    assert check_adjoint(case.op, case.x_shape, dtype=case.dtype) <= case.rtol
    theta = np.arange(6) * 30.0
    a, b = ParallelBeamRadon(16, theta), ParallelBeamRadon(16, theta, rotation_center=12.5)
    assert a.rotation_center == (a.n_det - 1) / 2 and b.rotation_center == 12.5
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    assert not torch.allclose(a.forward(x), b.forward(x))


def test_unknown_centre_without_a_180_pair_warns(tmp_path):
    s = io.Sinograms(np.zeros((1, 4, 16), np.float32), np.arange(4) * 45.0, 16, path=tmp_path)
    with pytest.warns(UserWarning, match="rotation centre unknown .* files.rotation_center"):
        c, how = userdata.rotation_center(s, "auto")
    assert c == 7.5 and how == "detector middle"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert userdata.rotation_center(s, 9.0) == (9.0, "config")


def test_fastmri_and_dataexchange_files_train_as_slices(tmp_path):
    """Training images from a fully sampled fastMRI file (|IFFT| of its k-space) and from a
    DataExchange scan (full-view FBP about the estimated centre), normalised to [0, 1]."""
    cfg = _cfg({"kind": "files", "train": ["x"], "test": ["x"]})
    validate_config(cfg, get_task("medical").schema_path)
    ph = random_ellipse_phantoms(3, N, seed=4)
    full = tmp_path / "full.h5"
    with h5py.File(full, "w") as f:
        f.create_dataset("kspace", data=kspace_of(ph) * 1e-4)
    dx = write_dataexchange(tmp_path / "dx.h5", ph, theta=np.linspace(0, 180, 91))
    x, names = userdata.load_images([full, dx], cfg, fbp=baselines.fbp)
    assert x.shape == (6, N, N) and names == [str(full)] * 3 + [str(dx)] * 3
    assert float(x.min()) >= 0 and float(x.max()) == 1.0
    np.testing.assert_allclose(x[:3], ph / ph.max(), atol=1e-5)  # per-volume min-max (min 0)
    err = np.sqrt(np.mean((x[3:] - ph / ph.max()) ** 2))
    assert err < 0.13, err  # the FBP of the off-centre scan, not a doubled image


def test_a_wide_scan_is_refused_until_binned_to_the_served_size(tmp_path):
    from diffsci.domains.medical import reconstruct

    card = {"serves": {"image_size": [N, N]}, "normalisation": {}}
    cfg = _cfg({"kind": "simulate"})
    validate_config(cfg, get_task("medical").schema_path)
    wide = np.zeros((4, 2, 4 * N))
    with h5py.File(tmp_path / "wide.h5", "w") as f:
        ex = f.create_group("exchange")
        ex.create_dataset("data", data=np.full_like(wide, 500.0))
        ex.create_dataset("data_white", data=np.full((1, 2, 4 * N), 1000.0))
        ex.create_dataset("data_dark", data=np.zeros((1, 2, 4 * N)))
        ex.create_dataset("theta", data=np.arange(4) * 45.0)
    out = tmp_path / "o"
    with pytest.raises(Incompatible, match=r"wide.h5: the scan's image grid is 64x64 .* 16x16"):
        reconstruct.apply_file(cfg, None, card, tmp_path / "wide.h5", out, "wide", None)
    binned = io.bin_detector(io.read_projection_file(tmp_path / "wide.h5"), 4)
    assert binned.sinogram.shape == (2, 4, N) and binned.image_size == N
    np.testing.assert_allclose(binned.sinogram, np.log(2), rtol=1e-6)
    userdata.check_size((binned.image_size,) * 2, card, source="binned", what="grid")
