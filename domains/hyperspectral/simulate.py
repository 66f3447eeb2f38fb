"""Synthetic hyperspectral scenes and the QRNN3D noise protocol.

Scenes (:func:`make_scene`) follow the linear mixing model ``x(b, p) = l(p) sum_m a_m(p)
s_m(b; p)`` (Keshava & Mustard, "Spectral unmixing", IEEE SPM 2002) with physically shaped
reflectance spectra (:func:`endmember_library`): green vegetation (chlorophyll absorption at
680 nm, red edge near 720 nm, NIR plateau, leaf-water absorptions at 1450/1940 nm), soil
(rising continuum, clay absorption at 2200 nm), water (blue-green maximum, ~0 beyond 900 nm)
and man-made surfaces (asphalt, concrete, red roof). Abundances are spatially structured:
segments from a thresholded Gaussian random field, within-segment texture (vegetation/soil
fractions), straight roads, and small square targets. Each pixel's spectra vary (a smooth
multiplicative spectral perturbation scaled by a per-pixel field: endmember variability) and
a smooth illumination field multiplies the whole pixel. Such cubes are still close to
low-rank (a few endmembers plus variability), which flatters SVD-type methods; the
texture, variability and illumination keep them from being exactly rank-M.

Noise (:func:`add_noise`) follows the test protocol of QRNN3D (Wei, Fu & Huang, "3-D
Quasi-Recurrent Neural Network for Hyperspectral Image Denoising", IEEE TNNLS 2021; code
Zeqiang-Lai/QRNN3D ``utility/dataset.py``: ``AddNoise``, ``AddNoiseBlind``,
``AddNoiseNoniid``, ``_AddNoiseStripe``, ``_AddNoiseDeadline``, ``_AddNoiseImpulse``,
``AddNoiseComplex``) on a cube in ``[0, 1]``, values in 1/255 units:

- ``gaussian30/50/70``: i.i.d. ``N(0, (s/255)^2)``;
- ``blind``: one ``s ~ U(10, 70)`` per cube (the blind ICVL test set);
- ``noniid``: per band ``s`` drawn from ``{10, 30, 50, 70}``;
- ``stripe`` / ``deadline`` / ``impulse``: non-i.i.d. Gaussian, then on ``floor(B/3)`` bands
  (QRNN3D's ``num_bands = [1/3]``: 10 of ICVL's 31): stripes on ``randint(floor(0.05 W),
  floor(0.15 W))`` columns, each column shifted by ``-U(-0.25, 0.25)``; deadlines: columns
  ``randint(ceil(0.05 W), ceil(0.15 W))`` set to 0; impulse: salt-and-pepper (1 / 0, half
  each) on a fraction of pixels drawn per band from ``{0.1, 0.3, 0.5, 0.7}``;
- ``mixture``: non-i.i.d. Gaussian, then stripe, deadline and impulse on three disjoint
  thirds of a band permutation (``AddNoiseComplex``);
- beyond QRNN3D: ``deadpixels`` (non-i.i.d. Gaussian plus a fraction of pixels 0 in every
  band) and ``dropped`` (non-i.i.d. Gaussian plus whole bands lost, set to 0).

Every generator draws from a :class:`numpy.random.Generator` (seeded), never the global RNG,
and returns what it did (:class:`Corruption`) so that tests and metrics can check it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "NOISE_CASES",
    "Corruption",
    "endmember_library",
    "gaussian_random_field",
    "make_scene",
    "make_scenes",
    "add_noise",
    "add_stripe",
    "add_deadline",
    "add_impulse",
    "noniid_sigmas",
    "minmax_normalize",
]

NOISE_CASES = (
    "gaussian30",
    "gaussian50",
    "gaussian70",
    "blind",
    "noniid",
    "stripe",
    "deadline",
    "impulse",
    "mixture",
    "deadpixels",
    "dropped",
)
NONIID_SIGMAS = (10, 30, 50, 70)
IMPULSE_AMOUNTS = (0.1, 0.3, 0.5, 0.7)
COLUMN_FRACTION = (0.05, 0.15)
STRIPE_HALF_WIDTH = 0.25


# ----------------------------------------------------------------------------- spectra
def _gauss(wl: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((wl - centre) / width) ** 2)


def _sigmoid(wl: np.ndarray, centre: float, width: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(wl - centre) / width))


def _water_bands(wl: np.ndarray, depth: float) -> np.ndarray:
    """Multiplicative liquid/atmospheric water absorptions at 970, 1200, 1450 and 1940 nm."""
    a = 0.15 * _gauss(wl, 970, 25) + 0.15 * _gauss(wl, 1200, 35)
    a += 0.6 * _gauss(wl, 1450, 60) + 0.7 * _gauss(wl, 1940, 70)
    return 1.0 - depth * a


def vegetation(wl: np.ndarray, *, red_edge: float = 715.0, lai: float = 1.0) -> np.ndarray:
    """Green-leaf reflectance: green peak at 550 nm, chlorophyll absorption at 680 nm, red edge
    (sigmoid near ``red_edge``), NIR plateau, SWIR decline with leaf-water absorptions."""
    vis = 0.04 + 0.06 * _gauss(wl, 550, 35) - 0.02 * _gauss(wl, 675, 20)
    nir = (0.42 + 0.06 * (lai - 1.0)) * _sigmoid(wl, red_edge, 12.0)
    swir_decay = np.where(wl > 1100, np.exp(-(wl - 1100) / 1800.0), 1.0)
    return np.clip((vis + nir * swir_decay) * _water_bands(wl, 0.9), 0.005, None)


def soil(wl: np.ndarray, *, brightness: float = 1.0) -> np.ndarray:
    """Bare-soil reflectance: rising continuum saturating in the SWIR, iron-oxide shoulder
    below 600 nm, clay (Al-OH) absorption at 2200 nm, weak water absorptions."""
    cont = 0.08 + 0.30 * (1 - np.exp(-(wl - 350) / 700.0))
    cont *= 1 - 0.25 * _gauss(wl, 2200, 40) - 0.1 * _gauss(wl, 480, 60)
    return brightness * cont * _water_bands(wl, 0.4)


def water(wl: np.ndarray, *, turbidity: float = 0.0) -> np.ndarray:
    """Open water: a few percent in the blue-green, ~0 beyond 900 nm (strong absorption)."""
    r = 0.05 * _gauss(wl, 480, 80) + 0.02 + turbidity * 0.04 * _gauss(wl, 580, 60)
    return r * np.exp(-np.clip(wl - 650, 0, None) / 120.0) + 0.003


def asphalt(wl: np.ndarray) -> np.ndarray:
    """Asphalt road: dark, slowly rising, hydrocarbon features near 1730/2300 nm."""
    r = 0.06 + 0.06 * (wl - 400) / 2100
    return r * (1 - 0.1 * _gauss(wl, 1730, 30) - 0.1 * _gauss(wl, 2300, 40))


def concrete(wl: np.ndarray) -> np.ndarray:
    """Concrete: bright, flat, slight rise in the visible and a carbonate dip at 2340 nm."""
    r = 0.25 + 0.12 * _sigmoid(wl, 520, 60)
    return r * (1 - 0.12 * _gauss(wl, 2340, 40)) * _water_bands(wl, 0.15)


def red_roof(wl: np.ndarray) -> np.ndarray:
    """Red clay-tile roof: low blue/green, steep rise at 580-620 nm, high NIR/SWIR."""
    return 0.07 + 0.35 * _sigmoid(wl, 600, 18) - 0.05 * _gauss(wl, 900, 80)


_LIBRARY = {
    "vegetation": vegetation,
    "soil": soil,
    "water": water,
    "asphalt": asphalt,
    "concrete": concrete,
    "roof": red_roof,
}


def endmember_library(
    wl: np.ndarray, rng: np.random.Generator | None = None
) -> dict[str, np.ndarray]:
    """The scene's endmember spectra at ``wl`` (nm); with ``rng``, each scene's endmembers vary
    (red-edge position +-10 nm, leaf area, soil brightness, water turbidity)."""
    wl = np.asarray(wl, dtype=np.float64)
    if rng is None:
        return {k: f(wl) for k, f in _LIBRARY.items()}
    return {
        "vegetation": vegetation(
            wl, red_edge=715 + rng.uniform(-10, 10), lai=rng.uniform(0.6, 1.4)
        ),
        "soil": soil(wl, brightness=rng.uniform(0.7, 1.3)),
        "water": water(wl, turbidity=rng.uniform(0, 1)),
        "asphalt": asphalt(wl) * rng.uniform(0.8, 1.2),
        "concrete": concrete(wl) * rng.uniform(0.85, 1.15),
        "roof": red_roof(wl),
    }


# ----------------------------------------------------------------------------- fields
def gaussian_random_field(
    shape: tuple[int, int], rng: np.random.Generator, *, slope: float = 3.0
) -> np.ndarray:
    """A zero-mean, unit-variance Gaussian random field with power spectrum ``k^-slope``."""
    h, w = shape
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.fftfreq(w)[None, :]
    k = np.sqrt(kx**2 + ky**2)
    k[0, 0] = 1.0
    amp = k ** (-slope / 2)
    amp[0, 0] = 0.0
    f = np.fft.ifft2(amp * np.fft.fft2(rng.standard_normal((h, w)))).real
    return (f - f.mean()) / (f.std() + 1e-12)


def _segments(shape: tuple[int, int], rng: np.random.Generator, n_classes: int) -> np.ndarray:
    """Integer class map: ``argmax`` of ``n_classes`` smooth random fields (irregular fields)."""
    fields = np.stack([gaussian_random_field(shape, rng, slope=4.0) for _ in range(n_classes)])
    return fields.argmax(0)


def _roads(shape: tuple[int, int], rng: np.random.Generator, n: int) -> np.ndarray:
    """A boolean map of ``n`` straight roads, 1-3 pixels wide, at random angles."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.zeros(shape, bool)
    for _ in range(n):
        theta = rng.uniform(0, np.pi)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        d = np.abs((yy - cy) * np.cos(theta) - (xx - cx) * np.sin(theta))
        out |= d < rng.uniform(0.5, 1.5)
    return out


def _targets(shape: tuple[int, int], rng: np.random.Generator, n: int) -> np.ndarray:
    """A boolean map of ``n`` small square targets (1-3 pixels a side)."""
    h, w = shape
    out = np.zeros(shape, bool)
    for _ in range(n):
        s = int(rng.integers(1, 4))
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        out[y : y + s, x : x + s] = True
    return out


def _abundances(shape: tuple[int, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Abundance maps summing to one: segments (vegetation/soil mixtures with texture, water,
    concrete, roof blocks), roads of asphalt and small roof/concrete targets."""
    names = list(_LIBRARY)
    seg = _segments(shape, rng, 5)
    texture = 1 / (1 + np.exp(-1.5 * gaussian_random_field(shape, rng, slope=2.0)))
    a = {k: np.zeros(shape) for k in names}
    # class 0-1: vegetation/soil mixtures with texture; 2: water; 3: urban (concrete/roof)
    mix0 = 0.75 * texture + 0.2
    a["vegetation"] += np.where(seg <= 1, np.where(seg == 0, mix0, 1 - mix0), 0)
    a["soil"] += np.where(seg <= 1, np.where(seg == 0, 1 - mix0, mix0), 0)
    a["water"] += seg == 2
    urban = seg >= 3
    roof_share = (gaussian_random_field(shape, rng, slope=1.5) > 0.3).astype(float)
    a["roof"] += urban * roof_share
    a["concrete"] += urban * (1 - roof_share)
    for mask, kind in ((_roads(shape, rng, 2), "asphalt"), (_targets(shape, rng, 6), "roof")):
        for k in names:
            a[k] = np.where(mask, float(k == kind), a[k])
    return a


def make_scene(
    wavelength: Sequence[float] | np.ndarray,
    size: int | tuple[int, int],
    rng: np.random.Generator,
    *,
    variability: float = 0.15,
    illumination: float = 0.2,
) -> np.ndarray:
    """One reflectance cube ``(bands, size, size)`` in ``[0, 1]`` (float32).

    Parameters
    ----------
    wavelength
        Band centres (nm), any count and range (e.g. 31 bands at 400-700 nm as ICVL, or 200+
        over 400-2500 nm as AVIRIS).
    size
        Side (or ``(rows, columns)``).
    variability
        Amplitude of the per-pixel endmember variability (smooth spectral perturbation).
    illumination
        Relative amplitude of the smooth illumination (shading) field.
    """
    wl = np.asarray(wavelength, dtype=np.float64)
    shape = (size, size) if isinstance(size, int) else tuple(size)
    lib = endmember_library(wl, rng)
    ab = _abundances(shape, rng)
    # endmember variability: s_m(b) (1 + v * g_m(p) * shape_m(b)), shape_m a smooth curve
    t = (wl - wl.min()) / max(float(np.ptp(wl)), 1.0)
    x = np.zeros((wl.size, *shape))
    for name, s in lib.items():
        if not ab[name].any():
            continue
        phase = rng.uniform(0, 2 * np.pi)
        bend = np.cos(2 * np.pi * t * rng.uniform(0.3, 1.2) + phase)
        g = gaussian_random_field(shape, rng, slope=2.5)
        spec = s[:, None, None] * (1 + variability * g[None] * bend[:, None, None])
        x += ab[name][None] * spec
    light = 1 + illumination * np.tanh(gaussian_random_field(shape, rng, slope=3.5))
    return np.clip(x * light[None], 0.0, 1.0).astype(np.float32)


def make_scenes(
    n: int,
    size: int,
    wavelength: Sequence[float] | np.ndarray,
    *,
    seed: int,
    variability: float = 0.15,
    illumination: float = 0.2,
) -> np.ndarray:
    """``n`` independent scenes ``(n, bands, size, size)`` from ``seed``."""
    rng = np.random.default_rng(seed)
    out = [
        minmax_normalize(
            make_scene(wavelength, size, rng, variability=variability, illumination=illumination)
        )
        for _ in range(n)
    ]
    return np.stack(out)


def minmax_normalize(x: np.ndarray) -> np.ndarray:
    """``(x - min) / (max - min)`` over the cube: QRNN3D's ``minmax_normalize``, applied to every
    ICVL cube before noise is added (so the protocol's sigmas are relative to a range of 1)."""
    lo, hi = float(x.min()), float(x.max())
    return ((x - lo) / max(hi - lo, 1e-12)).astype(np.float32)


# ----------------------------------------------------------------------------- noise
@dataclass
class Corruption:
    """What :func:`add_noise` did: per-band Gaussian std (in [0, 1] units) and the bands and
    masks of the sparse corruptions."""

    case: str
    sigma: np.ndarray
    stripe_bands: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    deadline_bands: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    impulse_bands: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    impulse_amounts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    dropped_bands: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    dead_pixels: np.ndarray | None = None


def noniid_sigmas(
    bands: int, rng: np.random.Generator, choices: Sequence[float] = NONIID_SIGMAS
) -> np.ndarray:
    """Per-band std (``[0, 1]`` units) drawn from ``choices`` (1/255 units): QRNN3D's
    ``AddNoiseNoniid``."""
    return np.asarray(choices, dtype=np.float64)[rng.integers(0, len(choices), bands)] / 255.0


def add_stripe(x: np.ndarray, bands: Sequence[int], rng: np.random.Generator) -> None:
    """In place: QRNN3D's ``_AddNoiseStripe(0.05, 0.15)`` on ``bands`` of ``x (B, H, W)``."""
    w = x.shape[2]
    lo, hi = int(np.floor(COLUMN_FRACTION[0] * w)), int(np.floor(COLUMN_FRACTION[1] * w))
    for b, n in zip(bands, rng.integers(lo, max(hi, lo + 1), len(bands)), strict=True):
        loc = rng.permutation(w)[:n]
        stripe = rng.uniform(0, 1, size=n) * 2 * STRIPE_HALF_WIDTH - STRIPE_HALF_WIDTH
        x[b][:, loc] -= stripe[None, :]


def add_deadline(x: np.ndarray, bands: Sequence[int], rng: np.random.Generator) -> None:
    """In place: QRNN3D's ``_AddNoiseDeadline(0.05, 0.15)``: whole columns set to 0."""
    w = x.shape[2]
    lo, hi = int(np.ceil(COLUMN_FRACTION[0] * w)), int(np.ceil(COLUMN_FRACTION[1] * w))
    for b, n in zip(bands, rng.integers(lo, max(hi, lo + 1), len(bands)), strict=True):
        x[b][:, rng.permutation(w)[:n]] = 0.0


def add_impulse(
    x: np.ndarray, bands: Sequence[int], rng: np.random.Generator, s_vs_p: float = 0.5
) -> np.ndarray:
    """In place: QRNN3D's ``_AddNoiseImpulse([0.1, 0.3, 0.5, 0.7])``: salt (1) and pepper (0)
    on a per-band fraction of the pixels; returns the fractions drawn."""
    amounts = np.asarray(IMPULSE_AMOUNTS)[rng.integers(0, len(IMPULSE_AMOUNTS), len(bands))]
    for b, p in zip(bands, amounts, strict=True):
        flipped = rng.random(x.shape[1:]) < p
        salted = rng.random(x.shape[1:]) < s_vs_p
        x[b][flipped & salted] = 1.0
        x[b][flipped & ~salted] = 0.0
    return amounts


def _gaussian(x: np.ndarray, sigma: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return x + rng.standard_normal(x.shape) * sigma[:, None, None]


def _sparse(case: str, y: np.ndarray, rng: np.random.Generator, c: Corruption) -> None:
    """The sparse part of ``stripe``/``deadline``/``impulse``/``mixture`` (in place)."""
    bands = y.shape[0]
    third = bands // 3
    perm = rng.permutation(bands)
    if case == "stripe":
        c.stripe_bands = np.sort(perm[:third])
        add_stripe(y, perm[:third], rng)
    elif case == "deadline":
        c.deadline_bands = np.sort(perm[:third])
        add_deadline(y, perm[:third], rng)
    elif case == "impulse":
        c.impulse_bands = perm[:third]
        c.impulse_amounts = add_impulse(y, perm[:third], rng)
    else:  # mixture: AddNoiseComplex, disjoint thirds in this order
        s, d, i = perm[:third], perm[third : 2 * third], perm[2 * third : 3 * third]
        add_stripe(y, s, rng)
        add_deadline(y, d, rng)
        c.impulse_amounts = add_impulse(y, i, rng)
        c.stripe_bands, c.deadline_bands, c.impulse_bands = np.sort(s), np.sort(d), i


def add_noise(
    x: np.ndarray,
    case: str,
    rng: np.random.Generator,
    *,
    dead_pixel_fraction: float = 0.01,
    dropped_fraction: float = 0.1,
) -> tuple[np.ndarray, Corruption]:
    """Corrupt a clean cube ``x (B, H, W)`` in ``[0, 1]`` by the protocol case ``case``.

    Returns the noisy cube (float32, a new array; ``x`` is not modified) and the
    :class:`Corruption` applied. See the module docstring for the cases.
    """
    if case not in NOISE_CASES:
        raise ValueError(f"unknown noise case {case!r}; choose from {', '.join(NOISE_CASES)}")
    bands = x.shape[0]
    x = np.asarray(x, dtype=np.float64)
    if case.startswith("gaussian"):
        sigma = np.full(bands, float(case[len("gaussian") :]) / 255.0)
    elif case == "blind":
        sigma = np.full(bands, rng.uniform(10, 70) / 255.0)
    else:
        sigma = noniid_sigmas(bands, rng)
    c = Corruption(case, sigma)
    y = _gaussian(x, sigma, rng)
    if case in ("stripe", "deadline", "impulse", "mixture"):
        _sparse(case, y, rng, c)
    elif case == "deadpixels":
        c.dead_pixels = rng.random(x.shape[1:]) < dead_pixel_fraction
        y[:, c.dead_pixels] = 0.0
    elif case == "dropped":
        n = max(1, int(round(dropped_fraction * bands)))
        c.dropped_bands = np.sort(rng.permutation(bands)[:n])
        y[c.dropped_bands] = 0.0
    return y.astype(np.float32), c
