"""diffsci.domains.medical: MRI and CT forward models, baselines, phantoms, file formats.

Submodules: :mod:`.mri` (centered FFTs, MONAI-identical k-space masks, single/multi-coil
operators), :mod:`.ct` (parallel-beam Radon as a sparse matrix, FBP), :mod:`.baselines`
(zero-filled, POCS-TV, FBP, TV-iterative), :mod:`.phantoms` (textured ellipse phantoms,
pydicom's bundled images), :mod:`.io` (DICOM, NIfTI, fastMRI HDF5) and :mod:`.metrics`
(fastMRI PSNR/SSIM/NMSE). Their public names are re-exported here lazily.
"""

from __future__ import annotations

from diffsci.core.lazy import lazy_getattr

_EXPORTS = {
    # mri
    "fft2c": "mri",
    "ifft2c": "mri",
    "kspace_mask": "mri",
    "DEFAULT_CENTER_FRACTIONS": "mri",
    "SingleCoilMRI": "mri",
    "MultiCoilMRI": "mri",
    "rss": "mri",
    "simulate_sensitivity_maps": "mri",
    # ct
    "ParallelBeamRadon": "ct",
    "sparse_view_angles": "ct",
    "limited_angle_angles": "ct",
    "ramp_filter": "ct",
    "fbp": "ct",
    # baselines
    "tv_denoise": "baselines",
    "zero_filled": "baselines",
    "pocs_tv": "baselines",
    "fbp_baseline": "baselines",
    "tv_iterative": "baselines",
    # phantoms
    "random_ellipse_phantoms": "phantoms",
    "random_ellipsoid_volume": "phantoms",
    "smooth_noise": "phantoms",
    "pydicom_examples": "phantoms",
    # io
    "DicomImage": "io",
    "NiftiImage": "io",
    "FastMRIData": "io",
    "read_dicom": "io",
    "read_dicom_series": "io",
    "write_dicom_series": "io",
    "read_nifti": "io",
    "write_nifti": "io",
    "read_fastmri": "io",
    "write_fastmri_like": "io",
    # metrics
    "psnr": "metrics",
    "ssim_fastmri": "metrics",
    "ssim_gaussian": "metrics",
    "nmse": "metrics",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
