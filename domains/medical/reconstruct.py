"""A trained prior applied to the user's measurements (``diffsci apply``), checked by its card.

- :func:`apply_kspace`: a fastMRI HDF5 file (single-coil ``kspace`` ``(slices, H, W)``, its
  ``mask`` of sampled lines, or the unsampled lines read as zero columns; a fully sampled
  file is undersampled retrospectively with the training config's mask, as fastMRI's
  validation does).
- :func:`apply_projections`: a DataExchange tomography file or a sinogram HDF5, in the scan's
  own geometry (angles, detector, rotation centre given, read or estimated).

Both scale the data so that the zero-filled (MRI) or FBP (CT) image has the intensity the prior
was trained on (maximum about 1), sample the posterior as ``infer`` does, compute the same
baselines, multiply back, and write ``<name>.h5`` (mean, std, samples, baselines, scale and
geometry attributes), ``<name>_mean.nii.gz``, ``<name>_std.nii.gz`` and derived DICOM series
(:func:`~.io.write_reconstructions`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from diffsci.core.fileio import open_hdf5
from diffsci.core.modelcard import Incompatible
from diffsci.core.task import Runtime

from . import baselines, io, posterior, userdata
from .operators import CGPinv, ParallelBeamRadon, RealImageMRI, SingleCoilMRI, kspace_mask

__all__ = ["apply_file", "apply_kspace", "apply_projections", "sampled_lines"]


def sampled_lines(kspace: np.ndarray) -> np.ndarray:
    """The phase-encode lines (columns) holding any nonzero sample, ``(W,)`` bool."""
    return np.abs(kspace).reshape(-1, kspace.shape[-2], kspace.shape[-1]).max(axis=(0, 1)) > 0


def _mask_of(data: io.FastMRIData, cfg: Mapping[str, Any]) -> tuple[np.ndarray, str]:
    if data.mask is not None:
        return data.mask.astype(bool), "file"
    lines = sampled_lines(data.kspace)
    if not lines.all():
        return lines, "zero columns of kspace"
    m, n = cfg["mri"], data.kspace.shape[-1]
    mask = kspace_mask(
        (data.kspace.shape[-2], n),
        acceleration=m["acceleration"],
        center_fraction=m["center_fraction"],
        kind=m["mask"],
        seed=int(cfg["seed"]),
    )
    return mask.numpy().astype(bool), f"retrospective {m['acceleration']}x {m['mask']}"


def _check_kspace(data: io.FastMRIData, card: Mapping[str, Any], source: str) -> None:
    if data.multicoil:
        raise Incompatible(
            f"{source}: multi-coil kspace {data.kspace.shape}; the prior's data step is "
            "single-coil: combine the coils first (e.g. coil compression to one virtual coil), "
            "or apply it to a single-coil file"
        )
    userdata.check_size(data.kspace.shape[-2:], card, source=source, what="the k-space grid")


def _imag_fraction(zf: Tensor) -> float:
    return float(zf.imag.square().sum() / zf.abs().square().sum().clamp_min(1e-30))


def _timed(fn: Any, n: int) -> tuple[Tensor, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) / n


def _sampling(cfg: Mapping[str, Any], section: str) -> dict[str, Any]:
    s, d = cfg["sampling"], cfg[section]
    keys = ("samples", "sampler", "steps", "sigma_min", "sigma_max", "eta", "clip_denoised")
    opts = {k: s[k] for k in keys}
    opts.update(method=d["method"], noise_std=d["noise_std"], sigma_data=cfg["model"]["sigma_data"])
    return opts


def _run(model, op, y, shape, cfg, rt, init, section: str, desc: str) -> tuple[Tensor, float]:
    g = torch.Generator().manual_seed(int(cfg["seed"]) + 1)
    return posterior.sample_slices(
        model,
        op,
        y,
        shape,
        batch=cfg["sampling"]["batch"],
        generator=g,
        device=rt.device,
        init=init,
        start_sigma=cfg[section]["warm_start"],
        progress=rt.progress,
        desc=desc,
        **_sampling(cfg, section),
    )


def apply_kspace(
    cfg: Mapping[str, Any],
    model: nn.Module,
    card: Mapping[str, Any],
    path: Path,
    out_dir: Path,
    name: str,
    rt: Runtime,
) -> None:
    """Reconstruct the single-coil k-space of a fastMRI file (see the module docstring)."""
    data = io.read_fastmri(path)
    _check_kspace(data, card, str(path))
    mask, how = _mask_of(data, cfg)
    k = torch.as_tensor(data.kspace).to(torch.complex64)
    n, h, w = k.shape
    single = SingleCoilMRI(torch.from_numpy(mask.astype(np.float32)))
    zf = baselines.zero_filled(k[:, None] * single.mask, single)
    scale = userdata.kspace_scale(zf.abs().numpy())
    frac = _imag_fraction(zf)
    if frac > 0.05:
        warnings.warn(
            f"{path}: the zero-filled image has {100 * frac:.0f}% of its energy in the "
            "imaginary part; the prior models real-valued (magnitude) images and the data step "
            "keeps the Hermitian-symmetric part of the k-space",
            stacklevel=2,
        )
    userdata.warn_intensity((zf.abs()[:, 0] / scale).numpy(), card, source=str(path))
    k = k / scale
    op = RealImageMRI(torch.from_numpy(mask.astype(np.float32)), (h, w))
    y = op.complete((op.measured * k)[:, None])
    ym = k[:, None] * op.measured
    zf, t_zf = _timed(lambda: baselines.zero_filled(ym, single).abs(), n)
    tv, t_tv = _timed(lambda: baselines.pocs_tv(ym, single, **cfg["mri"]["pocs_tv"]), n)
    samples, sec = _run(model, op, y, (n, 1, h, w), cfg, rt, tv, "mri", f"MRI {path.name}")
    io.write_reconstructions(
        out_dir,
        name,
        samples * scale,
        {"zero-filled": zf * scale, "POCS-TV": tv * scale},
        {"diffusion": sec, "zero-filled": t_zf, "POCS-TV": t_tv},
        extra={"scale": scale, "acceleration": float(w / max(mask.sum(), 1))},
        reference=None,
    )
    _note(out_dir / f"{name}.h5", source=str(path), modality="MRI", mask=how)


def apply_projections(
    cfg: Mapping[str, Any],
    model: nn.Module,
    card: Mapping[str, Any],
    path: Path,
    out_dir: Path,
    name: str,
    rt: Runtime,
) -> None:
    """Reconstruct the slices of a DataExchange or sinogram file (see the module docstring)."""
    sino = io.read_projection_file(path)
    userdata.check_size(
        (sino.image_size, sino.image_size), card, source=str(path), what="the scan's image grid"
    )
    center, how = userdata.rotation_center(sino, cfg["files"]["rotation_center"])
    radon = ParallelBeamRadon(
        sino.image_size,
        sino.angles_deg,
        n_det=sino.sinogram.shape[-1],
        rotation_center=center,
        detector_spacing=sino.detector_spacing,
    )
    y = torch.from_numpy(sino.sinogram)[:, None]
    n, size = y.shape[0], sino.image_size
    first = baselines.fbp(y, radon)
    top = float(np.percentile(first.numpy(), 99.9))
    scale = top if top > 0 else 1.0
    userdata.warn_intensity((first[:, 0] / scale).clamp(0, 1).numpy(), card, source=str(path))
    y = y / scale
    fbp, t_fbp = _timed(lambda: baselines.fbp(y, radon), n)
    tv, t_tv = _timed(lambda: baselines.tv_iterative(y, radon, **cfg["ct"]["tv"]), n)
    op = CGPinv(radon, cfg["sampling"]["cg_iters"])
    samples, sec = _run(model, op, y, (n, 1, size, size), cfg, rt, tv, "ct", f"CT {path.name}")
    io.write_reconstructions(
        out_dir,
        name,
        samples * scale,
        {"FBP": fbp * scale, "TV-iterative": tv * scale},
        {"diffusion": sec, "FBP": t_fbp, "TV-iterative": t_tv},
        extra={"scale": scale, "rotation_center": center},
        reference=None,
    )
    _note(out_dir / f"{name}.h5", source=str(path), modality="CT", rotation_center_from=how)


def _note(path: Path, **attrs: str) -> None:
    import h5py

    with h5py.File(path, "a") as f:
        for k, v in attrs.items():
            f.attrs[k] = v


def _kind(path: Path) -> str:
    """``"mri"`` (fastMRI: ``kspace``) or ``"ct"`` (DataExchange or sinogram HDF5)."""
    if not path.name.lower().endswith((".h5", ".hdf5", ".hdf")):
        raise Incompatible(
            f"{path}: apply reconstructs measurements: a fastMRI HDF5 (kspace) or a CT file "
            "(DataExchange /exchange/data, or sinogram + angles_deg); images (DICOM, NIfTI) "
            "go into source.test of a pipeline run instead"
        )
    with open_hdf5(path, what="measurement file") as f:
        if "kspace" in f:
            return "mri"
        if ("exchange" in f and "data" in f["exchange"]) or "sinogram" in f:
            return "ct"
        keys = sorted(f.keys())
    raise Incompatible(
        f"{path}: neither fastMRI (kspace) nor DataExchange (/exchange/data) nor a sinogram "
        f"file (sinogram, angles_deg); keys: {keys}"
    )


def apply_file(
    cfg: Mapping[str, Any],
    model: nn.Module,
    card: Mapping[str, Any],
    path: Path,
    out_dir: Path,
    name: str,
    rt: Runtime,
) -> None:
    """Reconstruct one measurement file into ``out_dir`` under ``name``."""
    fn = apply_kspace if _kind(path) == "mri" else apply_projections
    fn(cfg, model, card, path, out_dir, name, rt)
