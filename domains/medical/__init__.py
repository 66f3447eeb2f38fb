"""diffsci.domains.medical: MRI and CT reconstruction with a 2-D diffusion prior.

Modules, by role: :mod:`.operators` (centered FFTs, MONAI-identical k-space masks,
single/multi-coil and real-image MRI, parallel-beam Radon, CG pseudo-inverse; the
``OPERATORS`` registry), :mod:`.simulate` (textured ellipse phantoms, pydicom's bundled
images, noisy measurements, coil maps), :mod:`.models` (the prior, its loss and wrappers),
:mod:`.posterior` (posterior sampling through :func:`diffsci.core.posterior.reconstruct`),
:mod:`.baselines` (zero-filled, POCS-TV, FBP, TV-iterative), :mod:`.io` (DICOM, NIfTI,
fastMRI HDF5, the task's files), :mod:`.metrics` (fastMRI PSNR/SSIM/NMSE), :mod:`.plots` and
:mod:`.task` (glue). Their public names are re-exported here lazily.
"""

from __future__ import annotations

from diffsci.core.lazy import lazy_exports

_EXPORTS = {
    # operators
    "fft2c": "operators",
    "ifft2c": "operators",
    "kspace_mask": "operators",
    "DEFAULT_CENTER_FRACTIONS": "operators",
    "SingleCoilMRI": "operators",
    "MultiCoilMRI": "operators",
    "RealImageMRI": "operators",
    "CGPinv": "operators",
    "rss": "operators",
    "ParallelBeamRadon": "operators",
    "sparse_view_angles": "operators",
    "limited_angle_angles": "operators",
    "OPERATORS": "operators",
    # baselines
    "ramp_filter": "baselines",
    "fbp": "baselines",
    "tv_denoise": "baselines",
    "zero_filled": "baselines",
    "pocs_tv": "baselines",
    "fbp_baseline": "baselines",
    "tv_iterative": "baselines",
    # simulate
    "random_ellipse_phantoms": "simulate",
    "random_ellipsoid_volume": "simulate",
    "smooth_noise": "simulate",
    "pydicom_examples": "simulate",
    "simulate_sensitivity_maps": "simulate",
    # models and posterior sampling
    "AffineData": "models",
    "ClampDenoised": "models",
    "SliceTV": "models",
    "posterior_reconstruct": "posterior",
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

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
