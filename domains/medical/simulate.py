"""Synthetic data for MRI/CT experiments: phantoms, bundled test images, measurements.

- :func:`random_ellipse_phantoms`: random overlapping ellipses with smooth texture, so that
  total variation does not solve reconstruction trivially (the Shepp-Logan phantom is
  piecewise constant and flatters TV); :func:`random_ellipsoid_volume` is its 3-D analogue.
- :func:`pydicom_examples`: pydicom's bundled ``CT_small.dcm`` (128^2) and ``MR_small.dcm``
  (64^2), real scanner images available offline; :func:`held_out_slices` appends them to
  phantoms of a fresh seed.
- :func:`noisy_kspace`, :func:`noisy_sinograms`: measurements with white Gaussian noise.
- :func:`simulate_sensitivity_maps`: smooth birdcage-like coil sensitivities.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from diffsci.core.operators import LinearOperator

from .operators.kspace import fft2c

__all__ = [
    "random_ellipse_phantoms",
    "random_ellipsoid_volume",
    "smooth_noise",
    "pydicom_examples",
    "held_out_slices",
    "noisy_kspace",
    "noisy_sinograms",
    "simulate_sensitivity_maps",
]


def smooth_noise(
    n: int, size: int, *, rng: np.random.Generator, correlation: float = 0.08
) -> np.ndarray:
    """Gaussian-filtered white noise ``(n, size, size)``, scaled to ``[-1, 1]`` per image.

    ``correlation`` is the Gaussian filter's std as a fraction of the image size.
    """
    white = rng.standard_normal((n, size, size))
    f = np.fft.fftfreq(size)
    f2 = f[:, None] ** 2 + f[None, :] ** 2
    sig = correlation * size
    filt = np.exp(-2 * (np.pi * sig) ** 2 * f2)  # FT of a Gaussian of std ``sig`` pixels
    out = np.fft.ifft2(np.fft.fft2(white) * filt).real
    out -= out.mean(axis=(1, 2), keepdims=True)
    out /= np.abs(out).max(axis=(1, 2), keepdims=True) + 1e-12
    return out


def random_ellipse_phantoms(
    n: int,
    size: int,
    *,
    seed: int | None = 0,
    textured: bool = True,
    n_ellipses: tuple[int, int] = (4, 10),
    texture_amplitude: float = 0.3,
) -> np.ndarray:
    """Random ellipse phantoms ``(n, size, size)`` in ``[0, 1]``, float32.

    Each image is a large background ellipse (the "body", intensity 0.3-0.6) with
    ``n_ellipses`` smaller ellipses inside, each with a random centre, semi-axes (4 %-35 % of
    the field), rotation and additive intensity in ``[-0.3, 0.5]`` (overlaps add up). With
    ``textured=True`` every ellipse's intensity is modulated by its own smooth random field
    (``1 + texture_amplitude * noise``, Gaussian-filtered noise of correlation length 8 %
    of the field), and the body gets a second, finer texture. Images are clipped at 0 and
    divided by their maximum.

    Parameters
    ----------
    n
        Number of images.
    size
        Image side in pixels.
    seed
        Seed of ``numpy.random.default_rng``.
    textured
        Add the smooth texture (``False``: piecewise-constant phantoms).
    n_ellipses
        Inclusive range of the number of inner ellipses.
    texture_amplitude
        Relative amplitude of the texture.
    """
    if n < 0 or size < 4:
        raise ValueError(f"need n >= 0 and size >= 4, got n={n}, size={size}")
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    out = np.zeros((n, size, size), dtype=np.float64)

    def ellipse(cx, cy, a, b, phi):
        c, s = np.cos(phi), np.sin(phi)
        u = (xx - cx) * c + (yy - cy) * s
        v = -(xx - cx) * s + (yy - cy) * c
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0

    for i in range(n):
        tex = smooth_noise(12, size, rng=rng) if textured else np.zeros((12, size, size))
        fine = smooth_noise(1, size, rng=rng, correlation=0.03)[0] if textured else 0.0
        body = ellipse(
            rng.uniform(-0.05, 0.05),
            rng.uniform(-0.05, 0.05),
            rng.uniform(0.75, 0.92),
            rng.uniform(0.6, 0.85),
            rng.uniform(0, np.pi),
        )
        img = rng.uniform(0.3, 0.6) * body * (1 + texture_amplitude * (tex[0] + 0.5 * fine))
        k = int(rng.integers(n_ellipses[0], n_ellipses[1] + 1))
        for j in range(k):
            a, b = rng.uniform(0.04, 0.35, size=2)
            r = rng.uniform(0, 0.55)
            ang = rng.uniform(0, 2 * np.pi)
            e = ellipse(r * np.cos(ang), r * np.sin(ang), a, b, rng.uniform(0, np.pi))
            val = rng.uniform(-0.3, 0.5)
            img = img + val * (e & body) * (1 + texture_amplitude * tex[1 + j % 11])
        img = np.clip(img, 0, None)
        out[i] = img / max(img.max(), 1e-12)
    return out.astype(np.float32)


def pydicom_examples(size: int | None = None) -> dict[str, np.ndarray]:
    """pydicom's bundled ``CT_small.dcm`` and ``MR_small.dcm`` as float32 images in ``[0, 1]``.

    Values are rescaled with RescaleSlope/RescaleIntercept (Hounsfield units for CT), resized
    to ``(size, size)`` with anti-aliasing (``skimage.transform.resize``; ``None`` keeps the
    native 128^2 / 64^2) and min-max normalised to ``[0, 1]``. Offline:
    ``get_testdata_file(name, download=False)``.

    Returns
    -------
    dict
        ``{"CT_small": (size, size), "MR_small": (size, size)}``.
    """
    from pydicom.data import get_testdata_file
    from skimage.transform import resize

    from .io import read_dicom

    out: dict[str, np.ndarray] = {}
    for name in ("CT_small", "MR_small"):
        path = get_testdata_file(f"{name}.dcm", download=False)
        if path is None:
            raise FileNotFoundError(f"pydicom's bundled test file {name}.dcm is missing")
        img = read_dicom(path).array.astype(np.float64)
        if size is not None and img.shape != (size, size):
            img = resize(img, (size, size), order=1, anti_aliasing=True, preserve_range=True)
        lo, hi = img.min(), img.max()
        out[name] = ((img - lo) / max(hi - lo, 1e-12)).astype(np.float32)
    return out


def random_ellipsoid_volume(
    n_slices: int,
    size: int,
    *,
    seed: int | None = 0,
    n_ellipsoids: tuple[int, int] = (4, 10),
    texture_amplitude: float = 0.3,
    z_extent: float = 0.3,
) -> np.ndarray:
    """A textured random-ellipsoid volume ``(n_slices, size, size)`` in ``[0, 1]``, float32.

    The 3-D analogue of :func:`random_ellipse_phantoms`: a body ellipsoid with smaller
    ellipsoids inside (random centres, semi-axes, in-plane rotation, additive intensities),
    each modulated by a smooth 3-D random field, sampled on ``n_slices`` planes spanning
    ``[-z_extent, z_extent]`` of the body (so neighbouring slices are correlated, as in a
    scan). Used to test a 3-D reconstruction from a 2-D prior.
    """
    from scipy.ndimage import gaussian_filter

    if n_slices < 1 or size < 4:
        raise ValueError(f"need n_slices >= 1 and size >= 4, got {n_slices}, {size}")
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(
        np.linspace(-z_extent, z_extent, n_slices) * 0.8,
        np.linspace(-1, 1, size),
        np.linspace(-1, 1, size),
        indexing="ij",
    )

    # texture correlation length 0.16 (8 % of the field) in physical units on every axis
    dz = 1.6 * z_extent / max(n_slices - 1, 1)
    dxy = 2.0 / (size - 1)
    sigma = (0.16 / dz, 0.16 / dxy, 0.16 / dxy)

    def tex() -> np.ndarray:
        t = gaussian_filter(rng.standard_normal(zz.shape), sigma, mode="wrap")
        return t / (np.abs(t).max() + 1e-12)

    def ellipsoid(c, axes, phi) -> np.ndarray:
        co, si = np.cos(phi), np.sin(phi)
        u = (xx - c[0]) * co + (yy - c[1]) * si
        v = -(xx - c[0]) * si + (yy - c[1]) * co
        return (u / axes[0]) ** 2 + (v / axes[1]) ** 2 + ((zz - c[2]) / axes[2]) ** 2 <= 1.0

    body = ellipsoid(
        rng.uniform(-0.05, 0.05, 3),
        (rng.uniform(0.75, 0.92), rng.uniform(0.6, 0.85), 1.0),
        rng.uniform(0, np.pi),
    )
    vol = rng.uniform(0.3, 0.6) * body * (1 + texture_amplitude * tex())
    for _ in range(int(rng.integers(n_ellipsoids[0], n_ellipsoids[1] + 1))):
        r, ang = rng.uniform(0, 0.55), rng.uniform(0, 2 * np.pi)
        c = (r * np.cos(ang), r * np.sin(ang), rng.uniform(-0.5, 0.5))
        e = ellipsoid(
            c, (*rng.uniform(0.04, 0.35, 2), rng.uniform(0.2, 0.6)), rng.uniform(0, np.pi)
        )
        vol = vol + rng.uniform(-0.3, 0.5) * (e & body) * (1 + texture_amplitude * tex())
    vol = np.clip(vol, 0, None)
    return (vol / max(vol.max(), 1e-12)).astype(np.float32)


def held_out_slices(n: int, size: int, *, seed: int, bundled: bool = True) -> np.ndarray:
    """Evaluation slices ``(n [+ 2], size, size)`` float32: phantoms of ``seed``, then (if
    ``bundled``) pydicom's ``CT_small`` and ``MR_small`` (:func:`pydicom_examples`)."""
    test = np.asarray(random_ellipse_phantoms(n, size, seed=seed), dtype=np.float32)
    if bundled:
        ex = pydicom_examples(size)
        test = np.concatenate([test, np.stack([ex[k] for k in sorted(ex)]).astype(np.float32)])
    return test


def noisy_kspace(images: Tensor, *, noise_std: float, seed: int) -> Tensor:
    """Fully sampled k-space ``fft2c(images)`` (``complex64``) plus complex white noise.

    The noise has std ``noise_std`` per k-space sample (``noise_std / sqrt 2`` on the real and
    the imaginary part, drawn in that order from ``torch.Generator().manual_seed(seed)``);
    ``noise_std = 0`` adds none.
    """
    kspace = fft2c(images.to(torch.complex64))
    if noise_std > 0:
        g = torch.Generator().manual_seed(seed)
        re, im = torch.randn((2, *kspace.shape), generator=g) * noise_std / 2**0.5
        kspace = kspace + torch.complex(re, im)
    return kspace


def noisy_sinograms(op: LinearOperator, images: Tensor, *, noise_std: float, seed: int) -> Tensor:
    """Sinograms ``op(images)`` plus white Gaussian noise of std ``noise_std`` (drawn from
    ``torch.Generator().manual_seed(seed)``; ``noise_std = 0`` adds none)."""
    sino = op.forward(images)
    if noise_std > 0:
        g = torch.Generator().manual_seed(seed)
        sino = sino + torch.randn(sino.shape, generator=g) * noise_std
    return sino


def simulate_sensitivity_maps(
    n_coils: int,
    shape: tuple[int, int],
    *,
    width: float = 0.6,
    seed: int | None = 0,
    dtype: torch.dtype = torch.complex64,
) -> Tensor:
    """Smooth birdcage-like complex coil sensitivities, normalised to ``sum_c |S_c|^2 = 1``.

    Coil ``c`` sits on a circle of radius 1.2 (in units of the half field of view) at angle
    ``2 pi c / C`` (plus a small random jitter); its magnitude is a Gaussian of the distance
    to the coil (std ``width``) and its phase the coil angle plus a smooth random linear
    ramp, so neighbouring coils overlap and the maps vary slowly, like measured ones.

    Parameters
    ----------
    n_coils
        Number of coils ``C``.
    shape
        Image size ``(H, W)``.
    width
        Gaussian width of each coil's profile, in half-fields of view.
    seed
        Seed for the jitter and phase ramps (``None``: no randomness).
    dtype
        Complex dtype of the result.

    Returns
    -------
    Tensor
        ``(1, C, H, W)`` complex maps with ``sum_c |S_c|^2 = 1`` at every pixel.
    """
    if n_coils < 1:
        raise ValueError(f"n_coils must be >= 1, got {n_coils}")
    h, w = (int(v) for v in shape)
    rng = np.random.default_rng(seed) if seed is not None else None
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    maps = np.empty((n_coils, h, w), dtype=np.complex128)
    for c in range(n_coils):
        ang = 2 * math.pi * c / n_coils
        jitter = rng.normal(0, 0.1, size=3) if rng is not None else np.zeros(3)
        cx, cy = 1.2 * math.cos(ang + jitter[0]), 1.2 * math.sin(ang + jitter[0])
        mag = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * width**2))
        phase = ang + jitter[1] * math.pi * xx + jitter[2] * math.pi * yy
        maps[c] = mag * np.exp(1j * phase)
    maps /= np.sqrt((np.abs(maps) ** 2).sum(axis=0, keepdims=True))
    return torch.as_tensor(maps).to(dtype).unsqueeze(0)
