"""Medical file formats: DICOM (files and series), NIfTI, fastMRI HDF5, and the task's files.

Readers return plain numpy arrays plus the geometry needed to write results back; every
error on a bad file (not DICOM, no pixel data, mixed series, fastMRI file without ``kspace``)
is a ``ValueError``/``FileNotFoundError`` whose message names the file. Writers are atomic:
a DICOM series is written to a temporary sibling folder and renamed into place, HDF5/NIfTI
files are written to a temporary name and renamed, so no half-written output ever looks
complete.

The task's own files (last section) hold torch tensors in and out: training images
(``images`` in HDF5), slice stacks as NIfTI volumes, single-coil k-space with its line mask
(fastMRI layout), sinograms, and the posterior samples with their summaries and baselines.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from diffsci.core.datasource import FLOAT32_SAFE_MAX, require_finite
from diffsci.core.fileio import atomic_path, open_hdf5

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "Reconstructions",
    "read_images",
    "write_images",
    "read_volume_nifti",
    "write_volume_nifti",
    "read_kspace_and_mask",
    "read_sinograms",
    "write_sinograms",
    "read_reconstructions",
    "write_reconstructions",
    "read_volume_reconstructions",
    "write_volume_reconstructions",
    "DicomImage",
    "FastMRIData",
    "NiftiImage",
    "read_dicom",
    "read_dicom_series",
    "write_dicom_series",
    "read_nifti",
    "write_nifti",
    "read_fastmri",
    "write_fastmri_like",
    "read_dicom_files",
    "Sinograms",
    "read_dataexchange",
    "read_projection_file",
    "bin_detector",
    "fastmri_images",
    "read_image_volumes",
    "check_size",
]

#: How to remake the task's own files in the data folder.
RERUN_PREPARE = "rerun the prepare stage (`diffsci prepare` or `snakemake --forcerun prepare`)"

PathLike = str | os.PathLike


class DicomImage(NamedTuple):
    """An image or volume read from DICOM.

    Attributes
    ----------
    array
        ``float32`` values after RescaleSlope/Intercept: ``(H, W)`` for a single file
        (``(frames, H, W)`` for multi-frame), ``(slices, H, W)`` for a series.
    spacing
        ``(row, col)`` PixelSpacing in mm for a file; ``(slice, row, col)`` for a series
        (slice spacing from the positions, else SliceThickness, else 1).
    meta
        Geometry and identifiers: ``series_uid``, ``origin`` (ImagePositionPatient of the
        first slice), ``orientation`` (ImageOrientationPatient), ``files`` (sorted), and
        ``dataset`` (the first slice's pydicom Dataset without pixel data).
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    meta: dict[str, Any]


class NiftiImage(NamedTuple):
    """A NIfTI volume: ``array`` in the file's (i, j, k) order, its 4x4 ``affine`` and voxel
    ``spacing`` (the affine's column norms)."""

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, ...]


@dataclass
class FastMRIData:
    """Contents of a fastMRI HDF5 file.

    Attributes
    ----------
    kspace
        Complex k-space ``(slices, H, W)`` (single coil) or ``(slices, coils, H, W)``.
    reconstruction_rss, reconstruction_esc
        Reference reconstructions ``(slices, h, w)`` if present.
    ismrmrd_header
        The ISMRMRD XML header (``str``) if present.
    attrs
        File attributes (``max``, ``norm``, ``acquisition``, ``patient_id``, ...).
    path
        The file read.
    mask
        The sampled phase-encode lines ``(W,)`` (bool) if the file has a ``mask`` dataset
        (fastMRI's test and challenge files do).
    """

    kspace: np.ndarray
    reconstruction_rss: np.ndarray | None = None
    reconstruction_esc: np.ndarray | None = None
    ismrmrd_header: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    mask: np.ndarray | None = None

    @property
    def multicoil(self) -> bool:
        return self.kspace.ndim == 4


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------


def _dcmread(path: Path, *, pixels: bool = True, defer: bool = False):
    """``path`` read by pydicom: all of it, the header only (``pixels=False``), or with large
    values such as the pixel data deferred (``defer=True``: present but not loaded)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not path.is_file():
        raise FileNotFoundError(f"DICOM file not found: {path}")
    try:
        if defer:
            ds = pydicom.dcmread(path, defer_size=1024)
        else:
            ds = pydicom.dcmread(path, stop_before_pixels=not pixels)
    except InvalidDicomError as e:
        raise ValueError(f"{path} is not a DICOM file: {e}") from e
    except Exception as e:  # truncated/corrupt files raise assorted errors
        raise ValueError(f"{path} could not be read as DICOM: {e}") from e
    return ds


def _pixels(ds, path: Path) -> np.ndarray:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ValueError(
            f"{path} has no pixel data (not an image: SOP class {ds.get('SOPClassUID', '?')})"
        )
    try:
        arr = ds.pixel_array
    except Exception as e:
        raise ValueError(f"{path}: pixel data could not be decoded: {e}") from e
    slope = float(ds.get("RescaleSlope", 1) or 1)
    inter = float(ds.get("RescaleIntercept", 0) or 0)
    return (arr.astype(np.float64) * slope + inter).astype(np.float32)


def read_dicom(path: PathLike) -> DicomImage:
    """Read one DICOM image file.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    DicomImage
        ``array`` ``(H, W)`` float32 with RescaleSlope/Intercept applied, ``spacing``
        ``(row, col)`` from PixelSpacing (``(1, 1)`` if absent), ``meta``.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is not DICOM, is corrupt, or has no pixel data (message names the file).
    """
    p = Path(path)
    ds = _dcmread(p)
    arr = _pixels(ds, p)
    spacing = tuple(float(v) for v in ds.get("PixelSpacing", [1.0, 1.0]))
    meta = _meta(ds, [p])
    return DicomImage(arr, spacing, meta)


def _meta(ds, files: list[Path]) -> dict[str, Any]:
    head = ds.copy()
    for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if tag in head:
            del head[tag]
    return {
        "series_uid": str(ds.get("SeriesInstanceUID", "")),
        "origin": tuple(float(v) for v in ds.get("ImagePositionPatient", [0.0, 0.0, 0.0])),
        "orientation": tuple(
            float(v) for v in ds.get("ImageOrientationPatient", [1.0, 0, 0, 0, 1.0, 0])
        ),
        "files": [str(f) for f in files],
        "dataset": head,
    }


def _slice_key(ds) -> tuple[float, float]:
    pos = ds.get("ImagePositionPatient")
    iop = ds.get("ImageOrientationPatient")
    inst = float(ds.get("InstanceNumber", 0) or 0)
    if pos is not None and iop is not None:
        r, c = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
        return float(np.dot(np.cross(r, c), np.asarray(pos, float))), inst
    return inst, 0.0


def read_dicom_series(directory: PathLike) -> DicomImage:
    """Read a DICOM series from a folder into a volume ``(slices, H, W)``.

    Every regular, non-hidden file in ``directory`` must be a DICOM image of one series.
    Slices are ordered along the slice normal (``ImagePositionPatient`` projected on the
    cross product of ``ImageOrientationPatient``), else by ``InstanceNumber``.

    Raises
    ------
    FileNotFoundError
        If the folder does not exist or holds no files.
    ValueError
        If a file is not a DICOM image, the files belong to different series (the message
        lists the files of each SeriesInstanceUID), or the slice sizes differ.
    """
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"DICOM series folder not found: {d}")
    files = sorted(f for f in d.iterdir() if f.is_file() and not f.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"no files in DICOM series folder {d}")
    heads = [_slice_head(f) for f in files]
    by_series: dict[str, list[str]] = {}
    for f, ds in zip(files, heads, strict=True):
        by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(f.name)
    if len(by_series) > 1:
        parts = "; ".join(f"{uid or '<none>'}: {', '.join(n)}" for uid, n in by_series.items())
        raise ValueError(f"{d} mixes {len(by_series)} series (SeriesInstanceUID: files): {parts}")
    return _read_series(files, heads)


_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _slice_head(path: Path):
    """The header of one slice of a series (pixel data deferred, not loaded), refusing a file
    that ends before its pixel data: a truncated copy reads as a header missing its
    SeriesInstanceUID and would otherwise be reported as a second series."""
    from pydicom.uid import UID

    ds = _dcmread(path, pixels=False, defer=True)
    sop = ds.get("SOPClassUID")
    image = sop is None or "Image" in UID(str(sop)).name
    if image and not any(t in ds for t in _PIXEL_TAGS):
        last = next(reversed([e.keyword or str(e.tag) for e in ds]), "none")
        raise ValueError(
            f"{path}: truncated DICOM file: it ends ({path.stat().st_size} bytes, last element "
            f"{last}) before its pixel data; copy the file again from its source"
        )
    return ds


def _position(ds) -> tuple[str, float] | None:
    """Where a slice lies: ImagePositionPatient along the slice normal, else SliceLocation,
    else InstanceNumber (``None`` when the header holds none of them)."""
    if ds.get("ImagePositionPatient") is not None and ds.get("ImageOrientationPatient"):
        return "ImagePositionPatient", round(_slice_key(ds)[0], 4)
    for tag in ("SliceLocation", "InstanceNumber"):
        if ds.get(tag) is not None:
            return tag, round(float(ds.get(tag)), 4)
    return None


def _refuse_duplicates(files: list[Path], heads: list[Any]) -> None:
    """Refuse two files of one image (same SOPInstanceUID) or two slices at one position: a
    copied slice would otherwise become a volume of twice the slices with a zero spacing."""
    keys = (
        ("SOPInstanceUID", lambda h: h.get("SOPInstanceUID")),
        ("slice position", _position),
    )
    for what, key in keys:
        seen: dict[Any, Path] = {}
        for f, h in zip(files, heads, strict=True):
            k = key(h)
            if k is None:
                continue
            if k in seen:
                val = f"{k[0]} {k[1]:g}" if isinstance(k, tuple) else f"{k}"
                raise ValueError(
                    f"{seen[k]} and {f.name} are the same slice ({what}: {val}); a volume holds "
                    "each slice once: remove the duplicate file (or keep one series per folder "
                    "for repeated acquisitions)"
                )
            seen[k] = f


def _read_series(files: list[Path], heads: list[Any]) -> DicomImage:
    """Slices of one series (headers ``heads``) ordered along the normal, stacked."""
    _refuse_duplicates(files, heads)
    order = sorted(range(len(files)), key=lambda i: (_slice_key(heads[i]), files[i].name))
    files = [files[i] for i in order]
    slices, first = [], None
    for f in files:
        ds = _dcmread(f)
        arr = _pixels(ds, f)
        if arr.ndim != 2:
            raise ValueError(f"{f}: expected a 2-D slice, got pixel array shape {arr.shape}")
        if slices and arr.shape != slices[0].shape:
            raise ValueError(f"{f}: slice shape {arr.shape} differs from {slices[0].shape}")
        slices.append(arr)
        first = ds if first is None else first
    vol = np.stack(slices)
    pix = tuple(float(v) for v in first.get("PixelSpacing", [1.0, 1.0]))
    keys = [_slice_key(_dcmread(f, pixels=False))[0] for f in files[:2]] if len(files) > 1 else []
    if (
        len(keys) == 2
        and "ImagePositionPatient" in first
        and "ImageOrientationPatient" in first
        and keys[1] != keys[0]
    ):
        dz = abs(keys[1] - keys[0])
    else:
        dz = float(first.get("SpacingBetweenSlices", first.get("SliceThickness", 1.0)) or 1.0)
    return DicomImage(vol, (dz, *pix), _meta(first, files))


def read_dicom_files(files: list[PathLike]) -> list[DicomImage]:
    """DICOM files (e.g. a glob over several series folders) as one volume per series.

    Files are grouped by SeriesInstanceUID (first-seen order) and each group is ordered and
    stacked as :func:`read_dicom_series` does (DICOM PS3.3 C.7.6.2: ImagePositionPatient along
    the normal of ImageOrientationPatient).

    Raises
    ------
    ValueError
        A file that is not a DICOM image (the message names it), or slices of different sizes
        within one series.
    """
    paths = [Path(f) for f in files]
    heads = [_slice_head(f) for f in paths]
    groups: dict[str, list[int]] = {}
    for i, ds in enumerate(heads):
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(i)
    return [
        _read_series([paths[i] for i in idx], [heads[i] for i in idx]) for idx in groups.values()
    ]


def _reference_dataset(reference: Any):
    import pydicom

    if reference is None:
        return None
    if isinstance(reference, pydicom.Dataset):
        return reference
    p = Path(reference)
    if p.is_dir():
        return read_dicom_series(p).meta["dataset"]
    return _dcmread(p, pixels=False)


def _replace_dir(tmp: Path, out: Path, overwrite: bool) -> None:
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists (pass overwrite=True to replace it)")
        trash = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, trash)
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)


def write_dicom_series(
    volume: np.ndarray,
    out_dir: PathLike,
    *,
    reference: Any = None,
    spacing: tuple[float, float, float] | None = None,
    description: str = "diffsci derived",
    series_number: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a volume ``(slices, H, W)`` as a new (derived) DICOM series, atomically.

    Each slice is stored as unsigned 16-bit with one RescaleSlope/RescaleIntercept for the
    whole volume (``slope = (max - min) / 65535``), so float values round-trip to within
    ``slope / 2``. A new SeriesInstanceUID and new SOPInstanceUIDs are generated
    (``pydicom.uid.generate_uid``); ImageType is ``DERIVED\\SECONDARY``.

    Parameters
    ----------
    volume
        ``(slices, H, W)`` (or ``(H, W)``) real values.
    out_dir
        Folder to create; files ``slice_0000.dcm`` ... are written to a temporary sibling
        folder first and renamed into place.
    reference
        A pydicom Dataset, a DICOM file or a series folder whose patient/study identifiers,
        Modality, SOP class, FrameOfReferenceUID and geometry (ImagePositionPatient of the
        first slice, ImageOrientationPatient, PixelSpacing, SliceThickness) are reused.
        ``None``: a Secondary Capture with identity orientation, origin 0 and unit spacing.
    spacing
        ``(slice, row, col)`` in mm; overrides the reference's.
    description
        SeriesDescription.
    series_number
        SeriesNumber (default: the reference's + 1000, else 1000).
    overwrite
        Replace an existing ``out_dir`` (the old one is removed only after the new one is
        in place).

    Returns
    -------
    Path
        ``out_dir``.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    vol = np.asarray(volume, dtype=np.float64)
    if vol.ndim == 2:
        vol = vol[None]
    if vol.ndim != 3:
        raise ValueError(f"volume must be (slices, H, W), got shape {vol.shape}")
    if not np.isfinite(vol).all():
        raise ValueError("volume contains non-finite values")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (pass overwrite=True to replace it)")
    ref = _reference_dataset(reference)

    lo, hi = float(vol.min()), float(vol.max())
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    # DS values hold at most 16 characters: quantise with the values actually written
    slope_s, lo_s = f"{slope:.10g}", f"{lo:.10g}"
    slope, lo = float(slope_s), float(lo_s)
    stored = np.round((vol - lo) / slope).clip(0, 65535).astype(np.uint16)

    def rget(name: str, default: Any) -> Any:
        return ref.get(name, default) if ref is not None else default

    iop = [float(v) for v in rget("ImageOrientationPatient", [1.0, 0.0, 0.0, 0.0, 1.0, 0.0])]
    origin = np.asarray([float(v) for v in rget("ImagePositionPatient", [0.0, 0.0, 0.0])])
    pix = [float(v) for v in rget("PixelSpacing", [1.0, 1.0])]
    dz = float(rget("SpacingBetweenSlices", rget("SliceThickness", 1.0)) or 1.0)
    if spacing is not None:
        dz, pix = float(spacing[0]), [float(spacing[1]), float(spacing[2])]
    normal = np.cross(np.asarray(iop[:3]), np.asarray(iop[3:]))
    sop_class = rget("SOPClassUID", SecondaryCaptureImageStorage)
    series_uid = generate_uid()
    study_uid = rget("StudyInstanceUID", None) or generate_uid()
    for_uid = rget("FrameOfReferenceUID", None) or generate_uid()
    number = (
        series_number if series_number is not None else int(rget("SeriesNumber", 0) or 0) + 1000
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for i, sl in enumerate(stored):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = sop_class
            sop_uid = generate_uid()
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = pydicom.Dataset()
            ds.file_meta = meta
            for name in (
                "PatientName",
                "PatientID",
                "PatientBirthDate",
                "PatientSex",
                "StudyDate",
                "StudyTime",
                "StudyID",
                "AccessionNumber",
                "ReferringPhysicianName",
                "StudyDescription",
            ):
                if ref is not None and name in ref:
                    setattr(ds, name, ref.get(name))
            ds.SOPClassUID = sop_class
            ds.SOPInstanceUID = sop_uid
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = for_uid
            ds.Modality = rget("Modality", "OT")
            ds.ImageType = ["DERIVED", "SECONDARY"]
            ds.SeriesDescription = description
            ds.SeriesNumber = number
            ds.InstanceNumber = i + 1
            ds.ImageOrientationPatient = [f"{v:.6g}" for v in iop]
            ds.ImagePositionPatient = [f"{v:.6f}" for v in origin + i * dz * normal]
            ds.PixelSpacing = [f"{v:.6g}" for v in pix]
            ds.SliceThickness = f"{dz:.6g}"
            ds.SpacingBetweenSlices = f"{dz:.6g}"
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = int(sl.shape[0]), int(sl.shape[1])
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 0
            ds.RescaleSlope = slope_s
            ds.RescaleIntercept = lo_s
            ds.PixelData = np.ascontiguousarray(sl).tobytes()
            ds.save_as(tmp / f"slice_{i:04d}.dcm", enforce_file_format=True)
        _replace_dir(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# --------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------


def read_nifti(path: PathLike) -> NiftiImage:
    """Read a NIfTI-1/2 file (``.nii`` or ``.nii.gz``) with nibabel.

    Returns
    -------
    NiftiImage
        ``array`` (float32, the file's axis order, scaling applied), ``affine`` ``(4, 4)``,
        ``spacing`` per spatial axis.
    """
    import nibabel as nib

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"NIfTI file not found: {p}")
    try:
        img = nib.load(str(p))
        arr = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as e:
        raise ValueError(f"{p} could not be read as NIfTI: {e}") from e
    aff = np.asarray(img.affine, dtype=np.float64)
    spacing = tuple(float(v) for v in np.linalg.norm(aff[:3, :3], axis=0))
    return NiftiImage(arr, aff, spacing)


def write_nifti(
    volume: np.ndarray,
    path: PathLike,
    *,
    spacing: tuple[float, ...] | None = None,
    affine: np.ndarray | None = None,
) -> Path:
    """Write a volume as NIfTI-1 (float32), atomically (temporary name, then rename).

    Parameters
    ----------
    volume
        2-D or 3-D array, stored in its own axis order (nibabel's ``(i, j, k)``).
    path
        ``.nii`` or ``.nii.gz``.
    spacing
        Voxel sizes (diagonal affine); ignored if ``affine`` is given.
    affine
        ``(4, 4)`` voxel-to-world matrix.
    """
    import nibabel as nib

    vol = np.asarray(volume, dtype=np.float32)
    if affine is None:
        aff = np.eye(4)
        if spacing is not None:
            sp = list(spacing) + [1.0] * (3 - len(spacing))
            aff[[0, 1, 2], [0, 1, 2]] = sp[:3]
    else:
        aff = np.asarray(affine, dtype=np.float64)
        if aff.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {aff.shape}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if p.name.endswith(".nii.gz") else ".nii"
    with atomic_path(p, suffix=suffix) as tmp:
        nib.save(nib.Nifti1Image(vol, aff), tmp)
    return p


# --------------------------------------------------------------------------------------------
# fastMRI
# --------------------------------------------------------------------------------------------


def read_fastmri(path: PathLike) -> FastMRIData:
    """Read a fastMRI HDF5 file (``kspace``, optional reconstructions, header, attributes).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is not HDF5, or has no ``kspace`` dataset (message names the file).
    """

    p = Path(path)
    with open_hdf5(p, what="fastMRI file") as f:
        if "kspace" not in f:
            raise ValueError(f"{p} has no 'kspace' dataset (keys: {sorted(f.keys())})")
        ks = np.asarray(f["kspace"][()])
        if not np.iscomplexobj(ks):
            raise ValueError(f"{p}: 'kspace' must be complex, got dtype {ks.dtype}")
        if ks.ndim not in (3, 4):
            raise ValueError(f"{p}: 'kspace' must be (slices, [coils,] H, W), got {ks.shape}")
        require_finite(ks, source=str(p), variable="dataset 'kspace'", max_abs=FLOAT32_SAFE_MAX)
        rec = {
            k: np.asarray(f[k][()]) if k in f else None
            for k in ("reconstruction_rss", "reconstruction_esc")
        }
        hdr = None
        if "ismrmrd_header" in f:
            raw = f["ismrmrd_header"][()]
            hdr = raw.decode() if isinstance(raw, bytes | np.bytes_) else str(raw)
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
        mask = np.asarray(f["mask"][()]).astype(bool) if "mask" in f else None
    if mask is not None and mask.shape != (ks.shape[-1],):
        raise ValueError(
            f"{p}: 'mask' must be ({ks.shape[-1]},) for kspace {ks.shape}, got {mask.shape}"
        )
    return FastMRIData(
        ks, rec["reconstruction_rss"], rec["reconstruction_esc"], hdr, attrs, p, mask
    )


def write_fastmri_like(
    path: PathLike,
    kspace: np.ndarray,
    *,
    reconstruction_rss: np.ndarray | None = None,
    reconstruction_esc: np.ndarray | None = None,
    ismrmrd_header: str | None = None,
    mask: np.ndarray | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write a file in fastMRI's layout (for fixtures and simulated data), atomically.

    ``mask`` (``(W,)``, the sampled phase-encode lines) is stored as fastMRI's test files do.

    ``attrs`` default: ``max`` (of the RSS, else ESC reconstruction), ``norm`` (its
    Frobenius norm) and ``acquisition="SIM"``; given values override them.
    """
    import h5py

    ks = np.asarray(kspace)
    if not np.iscomplexobj(ks) or ks.ndim not in (3, 4):
        raise ValueError(
            f"kspace must be complex (slices, [coils,] H, W), got {ks.dtype} {ks.shape}"
        )
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    ref = reconstruction_rss if reconstruction_rss is not None else reconstruction_esc
    a: dict[str, Any] = {"acquisition": "SIM"}
    if ref is not None:
        a["max"] = float(np.max(ref))
        a["norm"] = float(np.linalg.norm(np.asarray(ref, dtype=np.float64)))
    a.update(attrs or {})
    with atomic_path(p, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("kspace", data=ks.astype(np.complex64))
        if reconstruction_rss is not None:
            f.create_dataset("reconstruction_rss", data=np.asarray(reconstruction_rss, np.float32))
        if reconstruction_esc is not None:
            f.create_dataset("reconstruction_esc", data=np.asarray(reconstruction_esc, np.float32))
        if ismrmrd_header is not None:
            f.create_dataset("ismrmrd_header", data=np.bytes_(ismrmrd_header.encode()))
        if mask is not None:
            f.create_dataset("mask", data=np.asarray(mask).astype(bool))
        for k, v in a.items():
            f.attrs[k] = v
    return p


# --------------------------------------------------------------------------------------------
# The task's files
# --------------------------------------------------------------------------------------------


def write_images(path: PathLike, images: np.ndarray) -> Path:
    """Images ``(n, H, W)`` as the gzip-compressed float32 dataset ``images`` of an HDF5 file."""
    import h5py

    p = Path(path)
    with atomic_path(p, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("images", data=np.asarray(images, np.float32), compression="gzip")
    return p


def check_size(shape: tuple[int, ...], size: int | None, *, source: str, variable: str) -> None:
    """Refuse images whose last two axes are not ``size x size`` (the config's ``data.size``):
    a data folder prepared for another size would train or reconstruct at the wrong size."""
    if size is None or tuple(shape[-2:]) == (size, size):
        return
    h, w = shape[-2:]
    raise ValueError(
        f"{source}: {variable} holds {h}x{w} images but the config's data.size is {size}; the "
        f"data folder was prepared for another size: {RERUN_PREPARE} with this config, or set "
        f"data.size: {h}" + ("" if h == w else " (square slices only)")
    )


def read_images(path: PathLike, key: str = "images", *, size: int | None = None) -> Tensor:
    """The dataset ``key`` of an HDF5 file as a float32 tensor (see :func:`write_images`),
    refusing NaN/inf, magnitudes that overflow float32 arithmetic and (with ``size``) images
    that are not ``size x size``."""
    import torch

    with open_hdf5(path, what="file (run the prepare stage)") as f:
        if key not in f:
            raise KeyError(f"{path}: no dataset {key!r}")
        raw = f[key][()]
    _check_values(raw, path, key)
    check_size(raw.shape, size, source=str(path), variable=f"dataset {key!r}")
    return torch.from_numpy(raw).float()


def _check_values(values: Any, path: PathLike, key: str) -> None:
    """NaN/inf or overflowing values of a task file: the file, the dataset and the fix."""
    require_finite(
        values,
        source=str(path),
        variable=f"dataset {key!r}",
        fix=f"fill or mask them in the data you prepared from, then {RERUN_PREPARE}",
        max_abs=FLOAT32_SAFE_MAX,
    )


def write_volume_nifti(volume: np.ndarray, path: PathLike) -> Path:
    """A stack of slices ``(Z, H, W)`` as NIfTI ``(H, W, Z)`` (slices along k)."""
    return write_nifti(np.moveaxis(np.asarray(volume), 0, -1), path)


def read_volume_nifti(path: PathLike) -> np.ndarray:
    """Inverse of :func:`write_volume_nifti`: ``(Z, H, W)`` float32 (NaN/inf refused)."""
    arr = np.asarray(read_nifti(path).array)
    if arr.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D volume, got shape {arr.shape}")
    require_finite(arr, source=str(path), variable="the volume", max_abs=FLOAT32_SAFE_MAX)
    return np.moveaxis(arr.astype(np.float32), -1, 0)


def read_kspace_and_mask(path: PathLike, *, size: int | None = None) -> tuple[Tensor, Tensor]:
    """Single-coil k-space ``(slices, H, W)`` and its float32 ``(W,)`` line mask from a fastMRI
    file (:func:`read_fastmri`); a file without a mask, with coils, with NaN/inf k-space or
    (with ``size``) not ``size x size`` is an error naming it."""
    import torch

    data = read_fastmri(path)
    if data.mask is None:
        raise KeyError(f"{path}: no 'mask' dataset (the sampled phase-encode lines)")
    if data.kspace.ndim != 3:
        raise ValueError(
            f"{path}: expected single-coil kspace (slices, H, W), got {data.kspace.shape}"
        )
    check_size(data.kspace.shape, size, source=str(path), variable="dataset 'kspace'")
    return torch.as_tensor(data.kspace), torch.from_numpy(data.mask.astype(np.float32))


def write_sinograms(
    path: PathLike,
    sinograms: np.ndarray,
    angles_deg: np.ndarray,
    image_size: int,
    *,
    rotation_center: float | None = None,
    detector_spacing: float | None = None,
) -> Path:
    """Parallel-beam sinograms ``(n, n_angles, n_det)`` (float32) with their angles (degrees)
    and the reconstructed image size, as HDF5 (``sinogram``, ``angles_deg``, attrs
    ``geometry``, ``image_size``, and ``rotation_center`` (detector column of the axis) and
    ``detector_spacing`` (bin width in image pixels) when given)."""
    import h5py

    p = Path(path)
    with atomic_path(p, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("sinogram", data=np.asarray(sinograms).astype(np.float32))
        f.create_dataset("angles_deg", data=angles_deg)
        f.attrs["geometry"] = "parallel-beam"
        f.attrs["image_size"] = image_size
        for k, v in (("rotation_center", rotation_center), ("detector_spacing", detector_spacing)):
            if v is not None:
                f.attrs[k] = float(v)
    return p


def read_sinograms(path: PathLike, *, size: int | None = None) -> tuple[Tensor, np.ndarray, int]:
    """Inverse of :func:`write_sinograms`: float32 sinograms, angles (degrees), image size.

    Raises
    ------
    KeyError
        A dataset or the ``image_size`` attribute missing (naming the file and the key).
    ValueError
        NaN/inf values, or an ``image_size`` other than ``size`` (the config's ``data.size``).
    """
    import torch

    with open_hdf5(path, what="CT file (run the prepare stage)") as f:
        for key in ("sinogram", "angles_deg"):
            if key not in f:
                raise KeyError(f"{path}: no dataset {key!r} (keys: {sorted(f)}); {RERUN_PREPARE}")
        if "image_size" not in f.attrs:
            raise KeyError(
                f"{path}: no attribute 'image_size' (the side of the reconstructed slices; "
                f"attributes: {sorted(f.attrs)}); {RERUN_PREPARE}"
            )
        raw, angles = f["sinogram"][()], f["angles_deg"][()]
        n_img = int(f.attrs["image_size"])
    _check_values(raw, path, "sinogram")
    _check_values(angles, path, "angles_deg")
    if size is not None and n_img != size:
        raise ValueError(
            f"{path}: attribute image_size is {n_img} but the config's data.size is {size}; "
            f"the data folder was prepared for another size: {RERUN_PREPARE} with this config, "
            f"or set data.size: {n_img}"
        )
    return torch.from_numpy(raw).float(), angles, n_img


def write_reconstructions(
    out_dir: PathLike,
    name: str,
    samples: Tensor,
    baselines: Mapping[str, Any],
    seconds: Mapping[str, float],
    *,
    extra: Mapping[str, float],
    reference: PathLike,
) -> None:
    """Posterior samples ``(S, n, 1, H, W)`` of slices and their baselines, in native formats.

    Writes ``<name>.h5`` (``mean``, ``std``, ``samples``, group ``baselines``; attrs
    ``seconds_per_slice`` as JSON and ``extra``), ``<name>_mean.nii.gz`` and
    ``<name>_std.nii.gz`` (:func:`write_volume_nifti`), and derived DICOM series
    ``<name>_mean_dicom`` and ``<name>_std_dicom`` of the ``reference`` series.
    """
    import h5py

    out_dir = Path(out_dir)
    mean, std = samples.mean(0)[:, 0], samples.std(0)[:, 0]
    with atomic_path(out_dir / f"{name}.h5", suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("mean", data=mean.numpy())
        f.create_dataset("std", data=std.numpy())
        f.create_dataset("samples", data=samples[:, :, 0].numpy(), compression="gzip")
        grp = f.create_group("baselines")
        for k, v in baselines.items():
            grp.create_dataset(k, data=np.asarray(v, dtype=np.float32).reshape(mean.shape))
        f.attrs["seconds_per_slice"] = json.dumps(seconds)
        for k, v in extra.items():
            f.attrs[k] = v
    write_volume_nifti(mean.numpy(), out_dir / f"{name}_mean.nii.gz")
    write_volume_nifti(std.numpy(), out_dir / f"{name}_std.nii.gz")
    for what, v in (("mean", mean), ("std", std)):
        write_dicom_series(
            v.numpy(),
            out_dir / f"{name}_{what}_dicom",
            reference=reference,
            description=f"diffsci {name} posterior {what}",
        )


@dataclass
class Reconstructions:
    """What :func:`read_reconstructions` returns.

    Attributes
    ----------
    preds
        ``{"diffusion (posterior mean)": mean, <baseline>: image, ...}``, each ``(n, H, W)``.
    samples
        Posterior samples ``(S, n, H, W)``.
    seconds
        Seconds per slice by method (``"diffusion"`` for the posterior).
    extra
        The other attributes (data residuals).
    """

    preds: dict[str, Tensor]
    samples: Tensor
    seconds: dict[str, float]
    extra: dict[str, float]


def read_reconstructions(path: PathLike) -> Reconstructions:
    """Inverse of :func:`write_reconstructions`'s HDF5 file."""
    import torch

    with open_hdf5(path, what="predictions file (run the infer stage)") as f:
        preds = {"diffusion (posterior mean)": torch.from_numpy(f["mean"][()])}
        for k in f["baselines"]:
            preds[k] = torch.from_numpy(f["baselines"][k][()])
        samples = torch.from_numpy(f["samples"][()])
        seconds = json.loads(f.attrs["seconds_per_slice"])
        extra = {k: float(v) for k, v in f.attrs.items() if k != "seconds_per_slice"}
    return Reconstructions(preds, samples, seconds, extra)


def write_volume_reconstructions(
    path: PathLike,
    slicewise: Tensor,
    slice_tv: Tensor,
    baselines: Mapping[str, np.ndarray],
    *,
    z_tv_weight: float,
) -> Path:
    """A volume's posterior samples ``(S, Z, 1, H, W)``, slice-wise and with slice-axis TV,
    and its baselines ``(Z, H, W)``, as HDF5: ``mean_slicewise``, ``mean`` and ``std`` (of
    ``slice_tv``), one dataset per baseline, attr ``z_tv_weight``."""
    import h5py

    p = Path(path)
    with atomic_path(p, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("mean_slicewise", data=slicewise.mean(0)[:, 0].cpu().numpy())
        f.create_dataset("mean", data=slice_tv.mean(0)[:, 0].cpu().numpy())
        f.create_dataset("std", data=slice_tv.std(0)[:, 0].cpu().numpy())
        for k, v in baselines.items():
            f.create_dataset(k, data=v)
        f.attrs["z_tv_weight"] = z_tv_weight
    return p


def read_volume_reconstructions(path: PathLike) -> dict[str, Tensor]:
    """The datasets of :func:`write_volume_reconstructions`'s file, ``(Z, H, W)`` each."""
    import torch

    with open_hdf5(path, what="volume predictions file (run the infer stage)") as f:
        return {k: torch.from_numpy(f[k][()]) for k in f}


# --------------------------------------------------------------------------------------------
# Tomography (DataExchange) and the user's image files
# --------------------------------------------------------------------------------------------


@dataclass
class Sinograms:
    """Parallel-beam sinograms of a scan and their geometry.

    Attributes
    ----------
    sinogram
        ``(slices, n_angles, n_det)`` float32 line integrals (``-log`` of the normalised
        transmission for a DataExchange file).
    angles_deg
        ``(n_angles,)`` projection angles in degrees.
    image_size
        Side of the square image the scan reconstructs to (DataExchange: the detector width,
        image pixels of the detector's pitch).
    rotation_center
        Detector column of the rotation axis if the file states it, else ``None``.
    detector_spacing
        Detector bin width in image pixels.
    path
        The file read.
    """

    sinogram: np.ndarray
    angles_deg: np.ndarray
    image_size: int
    rotation_center: float | None = None
    detector_spacing: float = 1.0
    path: Path | None = None


def _dx_dataset(f: Any, key: str, p: Path) -> np.ndarray:
    if key not in f:
        raise KeyError(
            f"{p}: no {key!r} dataset (a DataExchange tomography file holds /exchange/data, "
            "/exchange/data_white, /exchange/data_dark and /exchange/theta)"
        )
    return np.asarray(f[key][()], dtype=np.float64)


def _frame_mean(frames: np.ndarray, shape: tuple[int, ...], key: str, p: Path) -> np.ndarray:
    frames = frames if frames.ndim == 3 else frames[None]
    if frames.shape[1:] != shape:
        raise ValueError(f"{p}: {key} frames are {frames.shape[1:]}, projections {shape}")
    return frames.mean(0)


def read_dataexchange(path: PathLike, *, min_transmission: float = 1e-6) -> Sinograms:
    """Read a tomography file in the DataExchange layout and return its sinograms.

    Layout (De Carlo et al., "Scientific data exchange: a schema for HDF5-based storage of
    raw and analyzed data", J. Synchrotron Rad. 21, 1224, 2014; APS/dxchange):
    ``/exchange/data`` projections ``(n_angles, rows, cols)``, ``/exchange/data_white`` flat
    fields and ``/exchange/data_dark`` dark fields ``(frames, rows, cols)``,
    ``/exchange/theta`` angles in degrees (radians if its ``units`` attribute says so).

    The projections are flat/dark corrected, ``T = (data - dark) / (white - dark)`` with the
    mean flat and dark frames, clipped below at ``min_transmission``, and turned into line
    integrals ``-log T`` (Beer-Lambert). Each detector row is one slice's sinogram.

    Returns
    -------
    Sinograms
        ``sinogram`` ``(rows, n_angles, cols)``; ``image_size = cols``; ``rotation_center``
        from ``/exchange/rotation_center`` if present, else ``None``.

    Raises
    ------
    KeyError
        A dataset of the layout is missing (the message names the file and key).
    ValueError
        Shapes that do not match, or flat fields not brighter than dark fields.
    """
    p = Path(path)
    with open_hdf5(p, what="DataExchange tomography file") as f:
        data = _dx_dataset(f, "exchange/data", p)
        if data.ndim != 3:
            raise ValueError(f"{p}: /exchange/data must be (angles, rows, cols), got {data.shape}")
        white = _frame_mean(_dx_dataset(f, "exchange/data_white", p), data.shape[1:], "white", p)
        dark = _frame_mean(_dx_dataset(f, "exchange/data_dark", p), data.shape[1:], "dark", p)
        theta = _dx_dataset(f, "exchange/theta", p).reshape(-1)
        units = str(f["exchange/theta"].attrs.get("units", "degrees")).lower()
        center = f["exchange/rotation_center"][()] if "exchange/rotation_center" in f else None
    if theta.size != data.shape[0]:
        raise ValueError(f"{p}: /exchange/theta has {theta.size} angles, data {data.shape[0]}")
    if units.startswith("rad"):
        theta = np.rad2deg(theta)
    gain = white - dark
    if not (gain > 0).all():
        raise ValueError(
            f"{p}: data_white is not brighter than data_dark at {int((gain <= 0).sum())} "
            "pixels; check the flat and dark fields (swapped?)"
        )
    trans = np.clip((data - dark) / gain, min_transmission, None)
    sino = np.moveaxis(-np.log(trans), 1, 0).astype(np.float32)
    c = None if center is None else float(np.asarray(center).reshape(-1)[0])
    return Sinograms(sino, theta, int(data.shape[2]), c, 1.0, p)


def read_projection_file(path: PathLike) -> Sinograms:
    """Sinograms from a DataExchange file (:func:`read_dataexchange`) or from a sinogram HDF5
    (:func:`write_sinograms`: ``sinogram`` ``(slices, n_angles, n_det)`` or
    ``(n_angles, n_det)``, ``angles_deg``, attrs ``image_size`` and optionally
    ``rotation_center``, ``detector_spacing``).

    Raises
    ------
    ValueError
        Neither layout (the message lists the file's keys).
    """
    p = Path(path)
    with open_hdf5(p, what="CT projection file") as f:
        if "exchange" in f and "data" in f["exchange"]:
            dx = True
        elif "sinogram" in f and "angles_deg" in f:
            dx = False
            sino = np.asarray(f["sinogram"][()])
            angles = np.asarray(f["angles_deg"][()], np.float64).reshape(-1)
            a = dict(f.attrs)
            for key, values in (("sinogram", sino), ("angles_deg", angles)):
                require_finite(
                    values, source=str(p), variable=f"dataset {key!r}", max_abs=FLOAT32_SAFE_MAX
                )
            sino = sino.astype(np.float32)
        else:
            raise ValueError(
                f"{p}: neither a DataExchange file (/exchange/data, data_white, data_dark, "
                "theta) nor a sinogram file (sinogram, angles_deg); keys: "
                f"{sorted(f.keys())}"
            )
    if dx:
        return read_dataexchange(p)
    sino = sino[None] if sino.ndim == 2 else sino
    if sino.ndim != 3 or sino.shape[1] != angles.size:
        raise ValueError(f"{p}: sinogram {sino.shape} does not match {angles.size} angles_deg")
    size = int(a.get("image_size", math.floor(sino.shape[2] / math.sqrt(2))))
    center = float(a["rotation_center"]) if "rotation_center" in a else None
    return Sinograms(sino, angles, size, center, float(a.get("detector_spacing", 1.0)), p)


def bin_detector(sino: Sinograms, factor: int) -> Sinograms:
    """Sinograms on a detector ``factor`` times coarser: the mean of ``factor`` neighbouring
    columns (trailing columns that do not fill a bin are dropped), reconstructing to an image
    ``factor`` times smaller (``image_size // factor``) on pixels of the binned pitch; the
    rotation centre is carried over to the binned columns."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    n = sino.sinogram.shape[-1] // factor
    binned = sino.sinogram[..., : n * factor].reshape(*sino.sinogram.shape[:-1], n, factor)
    c = sino.rotation_center
    return Sinograms(
        binned.mean(-1).astype(np.float32),
        sino.angles_deg,
        sino.image_size // factor,
        None if c is None else (c + 0.5) / factor - 0.5,
        sino.detector_spacing,
        sino.path,
    )


def fastmri_images(data: FastMRIData) -> np.ndarray:
    """The images ``(slices, h, w)`` of a fastMRI file: ``reconstruction_esc`` (single coil)
    or ``reconstruction_rss`` (multi coil) when present (fastMRI's references, Zbontar et al.
    2018), else the magnitude of the centered orthonormal inverse FFT of ``kspace``
    (root-sum-of-squares over coils)."""
    for ref in (data.reconstruction_esc, data.reconstruction_rss):
        if ref is not None:
            return np.asarray(ref, np.float32)
    k = np.fft.ifftshift(data.kspace, axes=(-2, -1))
    img = np.fft.fftshift(np.fft.ifft2(k, norm="ortho"), axes=(-2, -1))
    mag = np.abs(img)
    if data.multicoil:
        mag = np.sqrt((mag**2).sum(1))
    return mag.astype(np.float32)


_NIFTI = (".nii", ".nii.gz")
_HDF5 = (".h5", ".hdf5", ".hdf")


def _nifti_slices(path: Path, slice_axis: int) -> np.ndarray:
    arr = read_nifti(path).array
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{path}: expected a 2-D or 3-D NIfTI image, got shape {arr.shape}")
    return np.moveaxis(arr, slice_axis, 0)


def read_image_volumes(
    files: list[PathLike], *, nifti_slice_axis: int = 2
) -> list[tuple[str, np.ndarray]]:
    """The user's image files as ``[(name, slices (n, H, W) float32), ...]``, one per volume.

    By suffix: ``.nii``/``.nii.gz`` (NIfTI-1/2, slices along ``nifti_slice_axis``);
    ``.h5``/``.hdf5`` with ``kspace`` (fastMRI, :func:`fastmri_images`); any other file is
    read as DICOM and grouped into series (:func:`read_dicom_files`). A DataExchange file is
    not an image file (its slices need a reconstruction): the caller handles it.
    """
    out: list[tuple[str, np.ndarray]] = []
    dicoms: list[Path] = []
    for f in map(Path, files):
        name = f.name.lower()
        if name.endswith(_NIFTI):
            out.append((str(f), _nifti_slices(f, nifti_slice_axis)))
        elif name.endswith(_HDF5):
            out.append((str(f), fastmri_images(read_fastmri(f))))
        else:
            dicoms.append(f)
    for img in read_dicom_files(dicoms) if dicoms else []:
        out.append((img.meta["files"][0], img.array))
    return out
