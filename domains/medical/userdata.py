"""The user's own images and scans in, and the model card's checks.

- :func:`load_images`: a split's files (DICOM, NIfTI, fastMRI HDF5, DataExchange tomography
  HDF5) as slices ``(n, N, N)`` in ``[0, 1]``: fitted to the prior's size (``files.fit``:
  refuse, resize or crop) and normalised (``files.normalise``: min-max per volume or per
  slice between two percentiles). A DataExchange scan becomes slices through full-view FBP
  (its reference reconstruction), with the rotation centre of :func:`rotation_center`.
- :func:`card_part`: what the prior serves (image size, intensity range, normalisation, sigma
  range, training-image statistics); :func:`check_size` and :func:`warn_intensity` check
  inputs against it.

The prior is a UNet over the whole ``N x N`` image (its receptive field is the whole image,
trained at one size): it is not applied to other sizes, which are refused with the trained size
and the ways forward.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffsci.core.datasource import FLOAT32_SAFE_MAX, require_finite
from diffsci.core.modelcard import Incompatible, warn_outside

from . import io
from .operators import ParallelBeamRadon, estimate_rotation_center

__all__ = [
    "is_dataexchange",
    "fit_slices",
    "normalise",
    "rotation_center",
    "load_images",
    "card_part",
    "check_size",
    "warn_intensity",
    "slice_means",
]

#: How the prior reaches its inputs, for the card.
RECEPTIVE_FIELD = (
    "the whole N x N image (a UNet trained at that one size); other sizes are refused, not tiled"
)


def is_dataexchange(path: str | Path) -> bool:
    """Whether ``path`` is an HDF5 file with ``/exchange/data`` (DataExchange layout)."""
    import h5py

    p = Path(path)
    if not p.name.lower().endswith((".h5", ".hdf5", ".hdf")) or not h5py.is_hdf5(p):
        return False
    with h5py.File(p, "r") as f:
        return "exchange" in f and "data" in f["exchange"]


def _resample(x: np.ndarray, size: int) -> np.ndarray:
    from skimage.transform import resize

    shape = (x.shape[0], size, size)
    return resize(x, shape, order=1, anti_aliasing=True, preserve_range=True).astype(np.float32)


def fit_slices(slices: np.ndarray, size: int, fit: str, *, source: str) -> np.ndarray:
    """Slices ``(n, H, W)`` as ``(n, size, size)``.

    ``fit``: ``"refuse"`` (they must already be ``size x size``), ``"resize"`` (anti-aliased
    bilinear resampling of the whole slice; a non-square slice changes aspect) or ``"crop"``
    (the central square ``min(H, W)``, then resampled).

    Raises
    ------
    Incompatible
        ``fit: refuse`` and another size: names the file, both sizes and the fixes.
    """
    h, w = slices.shape[-2:]
    if (h, w) == (size, size):
        return slices.astype(np.float32)
    if fit == "refuse":
        raise Incompatible(
            f"{source}: slices are {h}x{w} but the prior is trained and served at "
            f"{size}x{size} (data.size); set data.size: {h} to train at this size (square "
            "slices), or files.fit: crop (central square, resampled) or files.fit: resize to "
            f"resample your images to {size}x{size}"
        )
    if fit == "crop":
        m = min(h, w)
        top, left = (h - m) // 2, (w - m) // 2
        slices = slices[:, top : top + m, left : left + m]
    return _resample(slices, size)


def normalise(vol: np.ndarray, per: str, percentiles: Sequence[float]) -> np.ndarray:
    """Min-max normalisation to ``[0, 1]`` between two percentiles (clipped), per volume or per
    slice (fastMRI normalises per volume; Zbontar et al. 2018)."""
    lo_p, hi_p = float(percentiles[0]), float(percentiles[1])
    axes = None if per == "volume" else (1, 2)
    lo = np.percentile(vol, lo_p, axis=axes, keepdims=True)
    hi = np.percentile(vol, hi_p, axis=axes, keepdims=True)
    return np.clip((vol - lo) / np.maximum(hi - lo, 1e-12), 0, 1).astype(np.float32)


def rotation_center(sino: io.Sinograms, setting: float | str | None) -> tuple[float, str]:
    """The rotation-axis column of a scan and how it was found.

    ``setting`` (``files.rotation_center``): a number is used as given; ``"auto"`` takes the
    file's own value, else estimates it from a 0/180 degree pair
    (:func:`~.operators.estimate_rotation_center`), else the detector middle with a warning.
    """
    n_det = sino.sinogram.shape[-1]
    if isinstance(setting, int | float):
        return float(setting), "config"
    if sino.rotation_center is not None:
        return float(sino.rotation_center), "file"
    try:
        return estimate_rotation_center(sino.sinogram, sino.angles_deg), "estimated (0/180 deg)"
    except ValueError as e:
        warnings.warn(
            f"{sino.path}: rotation centre unknown ({e}); using the detector middle "
            f"{(n_det - 1) / 2:.1f}: set files.rotation_center if the reconstruction looks "
            "doubled",
            stacklevel=2,
        )
        return (n_det - 1) / 2.0, "detector middle"


def radon_for(sino: io.Sinograms, setting: float | str | None) -> ParallelBeamRadon:
    """The projector of a scan's geometry (angles, detector, rotation centre)."""
    c, _ = rotation_center(sino, setting)
    return ParallelBeamRadon(
        sino.image_size,
        sino.angles_deg,
        n_det=sino.sinogram.shape[-1],
        rotation_center=c,
        detector_spacing=sino.detector_spacing,
    )


def _scan_slices(path: Path, files_cfg: Mapping[str, Any], fbp: Callable) -> np.ndarray:
    import torch

    sino = io.read_projection_file(path)
    op = radon_for(sino, files_cfg["rotation_center"])
    rec = fbp(torch.from_numpy(sino.sinogram).double()[:, None], op)[:, 0]
    return rec.clamp_min(0).numpy().astype(np.float32)


def load_images(
    files: Sequence[Path], cfg: Mapping[str, Any], *, fbp: Callable
) -> tuple[np.ndarray, list[str]]:
    """A split's files as slices ``(n, N, N)`` in ``[0, 1]`` (``N = data.size``) and the
    source of each slice (file name).

    ``fbp(sinograms, op)`` reconstructs the slices of DataExchange scans (the task passes
    :func:`~.baselines.fbp`).
    """
    fc, size = cfg["files"], int(cfg["data"]["size"])
    scans = [f for f in files if is_dataexchange(f)]
    images = [f for f in files if f not in scans]
    vols = io.read_image_volumes(images, nifti_slice_axis=fc["nifti_slice_axis"])
    vols += [(str(f), _scan_slices(f, fc, fbp)) for f in scans]
    out, names = [], []
    for name, vol in vols:
        require_finite(vol, source=name, variable="the image", max_abs=FLOAT32_SAFE_MAX)
        v = fit_slices(vol, size, fc["fit"], source=name)
        out.append(normalise(v, fc["normalise"], fc["percentiles"]))
        names += [name] * len(v)
    return np.concatenate(out).astype(np.float32), names


def slice_means(x: np.ndarray) -> np.ndarray:
    """Mean intensity of each slice ``(n, H, W) -> (n,)``."""
    return np.asarray(x, np.float64).reshape(len(x), -1).mean(1)


def card_part(cfg: Mapping[str, Any], train: np.ndarray) -> dict[str, Any]:
    """The medical part of the model card for a prior trained on ``train`` ``(n, N, N)``."""
    n = int(cfg["data"]["size"])
    user = (cfg.get("source") or {}).get("kind", "simulate") == "files"
    means = slice_means(train)
    fc = cfg["files"]
    how = (
        f"min-max per {fc['normalise']} between percentiles {list(fc['percentiles'])}, to [0, 1]"
        if user
        else "simulated phantoms scaled to max 1; pydicom's examples min-max to [0, 1]"
    )
    s = cfg["sampling"]
    return {
        "serves": {
            "image_size": [n, n],
            "channels": ["magnitude (real-valued)"],
            "intensity_range": [0.0, 1.0],
            "receptive_field": RECEPTIVE_FIELD,
            "mri": "single-coil Cartesian k-space (slices, N, N), phase-encode lines along W",
            "ct": "parallel-beam sinograms of N x N slices (any angles, rotation centre, spacing)",
        },
        "normalisation": {
            "method": how,
            "prior_variable": "z = 2 x - 1",
            "train_slices": int(len(train)),
            "train_mean": float(np.mean(train)),
            "train_std": float(np.std(train)),
            "slice_mean_range": [float(means.min()), float(means.max())],
        },
        "sigma": {
            "min": float(s["sigma_min"]),
            "max": float(s["sigma_max"]),
            "data": float(cfg["model"]["sigma_data"]),
            "train": "EDM log-normal, P_mean -1.2, P_std 1.2",
        },
    }


def check_size(shape: Sequence[int], card: Mapping[str, Any], *, source: str, what: str) -> None:
    """Refuse an image grid other than the card's ``image_size``, naming the fixes."""
    served = [int(v) for v in card["serves"]["image_size"]]
    found = [int(v) for v in shape]
    if found == served:
        return
    n = served[0]
    raise Incompatible(
        f"{source}: {what} is {found[0]}x{found[1]} but the prior serves {n}x{n} images only "
        f"(it was trained at {n}x{n}; its receptive field is the whole image, so other sizes "
        f"would run out of distribution). Retrain at this size (data.size: {found[0]}, "
        "source.kind: files with your images of this size), or resample the input to "
        f"{n}x{n} (for k-space: its central {n}x{n} lines, a lower-resolution image of the same "
        f"field of view; for CT: the detector binned by {max(found[0] // n, 1)} with "
        "io.bin_detector, written with io.write_sinograms)"
    )


def warn_intensity(images: np.ndarray, card: Mapping[str, Any], *, source: str) -> bool:
    """Warn when the mean intensity of ``images`` (normalised to ``[0, 1]``) lies outside the
    range of the training slices' means (the card's ``slice_mean_range``)."""
    norm = card.get("normalisation") or {}
    if "slice_mean_range" not in norm:
        return False
    lo, hi = norm["slice_mean_range"]
    value = float(slice_means(images).mean())
    return warn_outside("mean intensity", value, lo, hi, source=source, tolerance=0.25)


def check_images(images: np.ndarray, card: Mapping[str, Any], *, source: str) -> None:
    """:func:`check_size` and :func:`warn_intensity` of slices ``(n, H, W)``."""
    check_size(images.shape[-2:], card, source=source, what="the image size")
    warn_intensity(images, card, source=source)


def kspace_scale(zero_filled: np.ndarray) -> float:
    """The scale that maps a volume's zero-filled magnitude to a maximum of 1 (the k-space is
    divided by it before sampling and the outputs multiplied back)."""
    m = float(np.max(np.abs(zero_filled)))
    return m if m > 0 and math.isfinite(m) else 1.0
