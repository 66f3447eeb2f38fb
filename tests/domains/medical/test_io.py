"""DICOM / NIfTI / fastMRI readers and writers: round trips, new UIDs, bad inputs."""

from __future__ import annotations

import h5py
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from diffsci.domains.medical.io import (
    read_dicom,
    read_dicom_series,
    read_fastmri,
    read_nifti,
    write_dicom_series,
    write_fastmri_like,
    write_nifti,
)

CT = get_testdata_file("CT_small.dcm", download=False)


def _volume(shape=(4, 16, 20), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 1500 - 1000).astype(np.float32)


def test_read_dicom_ct_small():
    img = read_dicom(CT)
    ds = pydicom.dcmread(CT)
    assert img.array.shape == (128, 128) and img.array.dtype == np.float32
    ref = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(img.array, ref)
    assert img.spacing == tuple(float(v) for v in ds.PixelSpacing)
    assert img.meta["series_uid"] == ds.SeriesInstanceUID
    assert "PixelData" not in img.meta["dataset"]


def test_dicom_series_round_trip_default_geometry(tmp_path):
    vol = _volume()
    out = write_dicom_series(vol, tmp_path / "series", spacing=(2.5, 0.7, 0.8))
    files = sorted(out.iterdir())
    assert len(files) == 4
    # no temporary folders are left next to the output
    assert [p.name for p in tmp_path.iterdir()] == ["series"]
    back = read_dicom_series(out)
    slope = (vol.max() - vol.min()) / 65535
    np.testing.assert_allclose(back.array, vol, atol=slope * 0.51 + 1e-3)
    assert back.spacing == pytest.approx((2.5, 0.7, 0.8))
    uids = {pydicom.dcmread(f).SOPInstanceUID for f in files}
    assert len(uids) == 4
    with pytest.raises(FileExistsError, match="series"):
        write_dicom_series(vol, out)
    write_dicom_series(vol[:2], out, overwrite=True)
    assert len(list(out.iterdir())) == 2


def test_dicom_series_with_reference_and_sorting(tmp_path):
    ref = pydicom.dcmread(CT)
    vol = _volume((3, 128, 128), seed=1)
    out = write_dicom_series(
        vol[::-1].copy(), tmp_path / "derived", reference=CT, description="recon"
    )
    # shuffle file names: the reader sorts by position along the slice normal
    files = sorted(out.iterdir())
    for i, f in enumerate(files):
        f.rename(out / f"z_{(7 * i) % 3}_{f.name}")
    back = read_dicom_series(out)
    np.testing.assert_allclose(back.array, vol[::-1], atol=(vol.max() - vol.min()) / 65535 + 1e-3)
    ds = pydicom.dcmread(sorted(out.iterdir())[0])
    assert ds.SeriesInstanceUID != ref.SeriesInstanceUID
    assert ds.SOPInstanceUID != ref.SOPInstanceUID
    assert ds.StudyInstanceUID == ref.StudyInstanceUID
    assert ds.PatientID == ref.PatientID and ds.Modality == ref.Modality
    assert ds.SeriesDescription == "recon"
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx(
        [float(v) for v in ref.PixelSpacing]
    )
    assert [float(v) for v in ds.ImageOrientationPatient] == pytest.approx(
        [float(v) for v in ref.ImageOrientationPatient]
    )
    assert back.meta["origin"] == pytest.approx([float(v) for v in ref.ImagePositionPatient])


def test_mixed_series_refused(tmp_path):
    a = write_dicom_series(_volume((2, 8, 8)), tmp_path / "a")
    b = write_dicom_series(_volume((1, 8, 8)), tmp_path / "b")
    odd = next(b.iterdir())
    odd.rename(a / "intruder.dcm")
    with pytest.raises(ValueError, match="intruder.dcm"):
        read_dicom_series(a)


def test_bad_dicom_inputs(tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not dicom at all" * 10)
    with pytest.raises(ValueError, match="junk.dcm"):
        read_dicom(junk)
    nopix = tmp_path / "nopix.dcm"
    ds = pydicom.dcmread(CT)
    del ds.PixelData
    ds.save_as(nopix)
    with pytest.raises(ValueError, match="nopix.dcm.*no pixel data"):
        read_dicom(nopix)
    with pytest.raises(FileNotFoundError, match="missing.dcm"):
        read_dicom(tmp_path / "missing.dcm")
    d = tmp_path / "series"
    write_dicom_series(_volume((2, 8, 8)), d)
    (d / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="notes.txt"):
        read_dicom_series(d)


def test_nifti_round_trip(tmp_path):
    vol = _volume((5, 6, 7))
    aff = np.diag([0.5, 0.6, 2.0, 1.0])
    aff[:3, 3] = [1, 2, 3]
    p = write_nifti(vol, tmp_path / "v.nii.gz", affine=aff)
    back = read_nifti(p)
    np.testing.assert_array_equal(back.array, vol)
    np.testing.assert_allclose(back.affine, aff)
    assert back.spacing == pytest.approx((0.5, 0.6, 2.0))
    back2 = read_nifti(write_nifti(vol, tmp_path / "s.nii", spacing=(1.5, 1.5, 3.0)))
    assert back2.spacing == pytest.approx((1.5, 1.5, 3.0))
    assert sorted(q.name for q in tmp_path.iterdir()) == ["s.nii", "v.nii.gz"]
    bad = tmp_path / "bad.nii"
    bad.write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match="bad.nii"):
        read_nifti(bad)


def test_fastmri_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    ks = (rng.standard_normal((2, 3, 8, 6)) + 1j * rng.standard_normal((2, 3, 8, 6))).astype(
        np.complex64
    )
    rss = np.abs(ks).sum(1).astype(np.float32)
    p = write_fastmri_like(
        tmp_path / "file1000.h5", ks, reconstruction_rss=rss, ismrmrd_header="<ismrmrdHeader/>"
    )
    d = read_fastmri(p)
    np.testing.assert_array_equal(d.kspace, ks)
    np.testing.assert_array_equal(d.reconstruction_rss, rss)
    assert d.reconstruction_esc is None and d.multicoil
    assert d.ismrmrd_header == "<ismrmrdHeader/>"
    assert d.attrs["max"] == pytest.approx(rss.max()) and d.attrs["acquisition"] == "SIM"
    # a file laid out by fastMRI itself (single coil, esc reconstruction, header as bytes)
    q = tmp_path / "file_singlecoil.h5"
    with h5py.File(q, "w") as f:
        f.create_dataset("kspace", data=ks[:, 0])
        f.create_dataset("reconstruction_esc", data=rss)
        f.create_dataset("ismrmrd_header", data=b"<xml/>")
        f.attrs["max"] = 3.5
        f.attrs["acquisition"] = "CORPD_FBK"
    d = read_fastmri(q)
    assert not d.multicoil and d.attrs["max"] == 3.5 and d.ismrmrd_header == "<xml/>"
    nok = tmp_path / "nokspace.h5"
    with h5py.File(nok, "w") as f:
        f.create_dataset("reconstruction_rss", data=rss)
    with pytest.raises(ValueError, match="nokspace.h5.*kspace"):
        read_fastmri(nok)
    with pytest.raises(FileNotFoundError, match="absent.h5"):
        read_fastmri(tmp_path / "absent.h5")
    txt = tmp_path / "text.h5"
    txt.write_text("not hdf5")
    with pytest.raises(ValueError, match="text.h5"):
        read_fastmri(txt)


def test_fastmri_mask_roundtrip_and_shape_checked(tmp_path):
    ks = (np.random.default_rng(0).standard_normal((2, 8, 6)) + 0j).astype(np.complex64)
    mask = np.array([1, 0, 1, 1, 0, 1], bool)
    p = write_fastmri_like(tmp_path / "m.h5", ks, mask=mask)
    np.testing.assert_array_equal(read_fastmri(p).mask, mask)
    assert read_fastmri(write_fastmri_like(tmp_path / "n.h5", ks)).mask is None
    bad = write_fastmri_like(tmp_path / "bad.h5", ks, mask=mask[:4])
    with pytest.raises(ValueError, match=r"bad\.h5: 'mask' must be \(6,\)"):
        read_fastmri(bad)
