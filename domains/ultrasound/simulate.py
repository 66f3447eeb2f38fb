"""Synthetic ultrasound channel data: a linear array, point-scatterer phantoms, haze.

- :class:`LinearArray`: the probe preset (pitch, element width, centre frequency, -6 dB
  fractional bandwidth, sampling frequency, speed of sound).
- :func:`plane_wave_scan` / :func:`diverging_wave_scan`: zea :class:`~.io.Scan` objects of a
  transmit sequence (t0 delays, initial times, focus distances: inf = plane wave, < 0 =
  diverging wave from a virtual source behind the array).
- :func:`simulate_rf`: RF channel data ``(B, n_tx, n_ax, n_el)`` of point scatterers in torch,
  batched over frames: a Gaussian-modulated two-way pulse (its -6 dB bandwidth as stated),
  frequency-dependent attenuation at the centre frequency (dB/cm/MHz, two-way path), element
  directivity ``sinc(w sin(theta)/lambda) cos(theta)`` (soft baffle, as pymust's ``simus``),
  2-D cylindrical spreading ``1/sqrt(r)``. The scatterer's echo is evaluated exactly at the
  samples within +-4 pulse standard deviations of its arrival (sub-sample accurate).
- :func:`speckle_phantom`: fully developed speckle (Gaussian amplitudes, about 10 scatterers
  per resolution cell) with anechoic and hyperechoic cysts and point targets; the ROIs are
  returned for the metrics. :func:`moving_phantoms`: a cardiac-like sequence (periodic affine
  contraction and drift; cysts move with the tissue).
- :func:`haze_rf`: structured near-field reverberation clutter: delayed, attenuated
  re-transmissions of the echoes of shallow layers (``r^k`` at delays ``k * 2 d / c``, with a
  small per-element jitter that defocuses them as multiple paths do) plus diffuse band-limited
  clutter decaying with depth; scaled to the clean frame's channel RMS, it is mixed as
  ``hazy = (1 - haze_weight) * clean + haze_weight * haze``, so every hazy frame has its clean
  truth. (The mixing follows the joint-diffusion dehazing code of Stevens et al., IEEE TMI
  2024; their gamma is a dehazing-strength knob, not this weight.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .io import Scan, plane_wave_t0_delays

__all__ = [
    "LinearArray",
    "Cyst",
    "Phantom",
    "plane_wave_scan",
    "diverging_wave_scan",
    "transmit_delay",
    "pulse",
    "simulate_rf",
    "speckle_phantom",
    "moving_phantoms",
    "haze_rf",
    "mix_haze",
    "ImageGrid",
]


@dataclass(frozen=True)
class LinearArray:
    """A linear-array probe preset (SI units; ``bandwidth`` is the -6 dB fractional
    bandwidth of the two-way pulse)."""

    n_el: int = 64
    pitch: float = 0.3e-3
    element_width: float = 0.27e-3
    center_frequency: float = 3.5e6
    bandwidth: float = 0.6
    sampling_frequency: float = 14e6
    sound_speed: float = 1540.0

    @property
    def x(self) -> np.ndarray:
        """Element x positions, centred on 0."""
        return (np.arange(self.n_el) - (self.n_el - 1) / 2) * self.pitch

    @property
    def geometry(self) -> np.ndarray:
        """``(n_el, 3)`` element positions ``(x, 0, 0)``."""
        g = np.zeros((self.n_el, 3))
        g[:, 0] = self.x
        return g

    @property
    def wavelength(self) -> float:
        return self.sound_speed / self.center_frequency


@dataclass(frozen=True)
class ImageGrid:
    """A Cartesian pixel grid: ``z`` (rows, depth) and ``x`` (columns), metres."""

    x: np.ndarray
    z: np.ndarray

    @classmethod
    def regular(cls, nz: int, nx: int, dz: float, dx: float, z0: float) -> ImageGrid:
        x = (np.arange(nx) - (nx - 1) / 2) * dx
        return cls(x=x, z=z0 + np.arange(nz) * dz)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.z), len(self.x))

    def coordinates(self) -> np.ndarray:
        """``(nz, nx, 3)`` pixel positions ``[x, y, z]`` (zea's ``coordinates``)."""
        zz, xx = np.meshgrid(self.z, self.x, indexing="ij")
        return np.stack([xx, np.zeros_like(xx), zz], -1).astype(np.float32)


def _scan(probe: LinearArray, t0: np.ndarray, focus: np.ndarray, angles: np.ndarray) -> Scan:
    n_tx = len(angles)
    return Scan(
        probe_geometry=probe.geometry,
        sampling_frequency=probe.sampling_frequency,
        center_frequency=probe.center_frequency,
        demodulation_frequency=probe.center_frequency,
        initial_times=np.zeros(n_tx),
        t0_delays=t0,
        tx_apodizations=np.ones((n_tx, probe.n_el)),
        focus_distances=focus,
        transmit_origins=np.zeros((n_tx, 3)),
        polar_angles=np.asarray(angles, np.float64),
        sound_speed=probe.sound_speed,
        element_width=probe.element_width,
    )


def plane_wave_scan(probe: LinearArray, angles_deg: list[float] | np.ndarray) -> Scan:
    """Steered plane waves at ``angles_deg``; zea conventions (first element fires at 0), the
    recording of every transmit starting when its wavefront crosses the array centre (so the
    acquisition is also expressible in PICMUS's single ``initial_time`` of 0)."""
    ang = np.deg2rad(np.asarray(angles_deg, np.float64))
    t0 = plane_wave_t0_delays(probe.x, ang, probe.sound_speed)
    scan = _scan(probe, t0, np.full(len(ang), np.inf), ang)
    # sampling starts when the wavefront crosses the array centre (PICMUS's time origin)
    scan.initial_times = -(np.sin(ang)[:, None] * probe.x[None]).min(1) / probe.sound_speed
    return scan


def diverging_wave_scan(
    probe: LinearArray, angles_deg: list[float] | np.ndarray, source_depth: float
) -> Scan:
    """Diverging waves from virtual sources ``source_depth`` (> 0) behind the array centre,
    tilted by ``angles_deg``; zea stores them as negative focus distances."""
    if source_depth <= 0:
        raise ValueError(f"source_depth must be > 0 (behind the array), got {source_depth}")
    ang = np.deg2rad(np.asarray(angles_deg, np.float64))
    v = _virtual_sources(np.full(len(ang), -source_depth), ang)
    d = np.hypot(probe.x[None] - v[:, :1], v[:, 1:2])
    t0 = (d - d.min(1, keepdims=True)) / probe.sound_speed
    return _scan(probe, t0, np.full(len(ang), -source_depth), ang)


def _virtual_sources(focus: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """``(n_tx, 2)`` virtual source ``(x, z)``: origin + focus * (sin, cos)."""
    return np.stack([focus * np.sin(angles), focus * np.cos(angles)], -1)


def transmit_delay(scan: Scan, x: Tensor, z: Tensor) -> Tensor:
    """Arrival time of each transmit's wavefront at points ``(x, z)``: ``(n_tx, *x.shape)``,
    in zea's time reference (the first element fires at 0).

    Plane waves: ``(x sin t + z cos t - min_e x_e sin t) / c``. Diverging waves (virtual source
    ``v`` behind the array): ``(|p - v| - min_e |e - v|) / c``. Focused transmits are refused.
    """
    c = scan.sound_speed
    x_el = torch.as_tensor(scan.probe_geometry[:, 0], dtype=x.dtype, device=x.device)
    out = []
    for k in range(scan.n_tx):
        th, f = float(scan.polar_angles[k]), float(scan.focus_distances[k])
        if math.isinf(f) or f == 0:
            m = float((x_el * math.sin(th)).min())
            out.append((x * math.sin(th) + z * math.cos(th) - m) / c)
        elif f < 0:
            vx, vz = f * math.sin(th), f * math.cos(th)
            d0 = float(torch.sqrt((x_el - vx) ** 2 + vz**2).min())
            out.append((torch.sqrt((x - vx) ** 2 + (z - vz) ** 2) - d0) / c)
        else:
            raise ValueError(
                f"transmit {k}: focused transmits (focus distance {f} m > 0) are not supported; "
                "plane (inf or 0) and diverging (< 0) waves are"
            )
    return torch.stack(out)


def _pulse_sigma(probe: LinearArray) -> float:
    """Std (s) of the Gaussian envelope whose spectrum has -6 dB fractional ``bandwidth``:
    the spectrum ``exp(-(f - fc)^2 / (2 sf^2))`` is -6 dB (amplitude 1/2) at
    ``fc +- B fc / 2``, so ``sf = B fc / (2 sqrt(2 ln 2))`` and ``st = 1 / (2 pi sf)``."""
    sf = probe.bandwidth * probe.center_frequency / (2 * math.sqrt(2 * math.log(2)))
    return 1.0 / (2 * math.pi * sf)


def pulse(t: Tensor, probe: LinearArray) -> Tensor:
    """Two-way pulse-echo waveform ``exp(-t^2 / (2 st^2)) cos(2 pi fc t)``."""
    st = _pulse_sigma(probe)
    return torch.exp(-0.5 * (t / st) ** 2) * torch.cos(2 * math.pi * probe.center_frequency * t)


def _directivity(sin_t: Tensor, cos_t: Tensor, probe: LinearArray) -> Tensor:
    return torch.sinc(probe.element_width * sin_t / probe.wavelength) * cos_t.clamp_min(0)


def simulate_rf(
    probe: LinearArray,
    scan: Scan,
    positions: Tensor,
    amplitudes: Tensor,
    *,
    n_ax: int,
    attenuation: float = 0.5,
    chunk: int = 4096,
) -> Tensor:
    """RF channel data ``(B, n_tx, n_ax, n_el)`` of point scatterers.

    Parameters
    ----------
    positions
        ``(B, S, 2)`` scatterer ``(x, z)`` in metres (``z > 0``).
    amplitudes
        ``(B, S)`` reflectivities (0 for padding).
    n_ax
        Samples per channel, from ``scan.initial_times``.
    attenuation
        dB/cm/MHz, applied at the centre frequency over the two-way path.
    """
    if positions.dim() != 3 or positions.shape[-1] != 2:
        raise ValueError(f"positions must be (B, S, 2), got {tuple(positions.shape)}")
    b, s = positions.shape[:2]
    dt = positions.dtype
    fs, c = probe.sampling_frequency, probe.sound_speed
    x_el = torch.as_tensor(scan.probe_geometry[:, 0], dtype=dt)
    half = int(math.ceil(4 * _pulse_sigma(probe) * fs))
    taps = torch.arange(-half, half + 1)
    out = torch.zeros(b, scan.n_tx, n_ax * scan.n_el, dtype=dt)
    att = attenuation * probe.center_frequency / 1e6 / 100 / 20 * math.log(10)  # neper / m
    for i in range(0, s, chunk):
        px, pz = positions[:, i : i + chunk, 0], positions[:, i : i + chunk, 1]
        amp = amplitudes[:, i : i + chunk]
        dx = px[..., None] - x_el  # (B, s, E)
        r = torch.sqrt(dx**2 + pz[..., None] ** 2).clamp_min(1e-6)
        gain = _directivity(dx.abs() / r, pz[..., None] / r, probe) / torch.sqrt(r)
        ttx = transmit_delay(scan, px, pz)  # (T, B, s)
        for k in range(scan.n_tx):
            t = ttx[k][..., None] + r / c - float(scan.initial_times[k])  # (B, s, E)
            a = amp[..., None] * gain * torch.exp(-att * c * t)
            i0 = torch.round(t * fs).long()
            idx = i0[..., None] + taps  # (B, s, E, K)
            val = a[..., None] * pulse(idx / fs - t[..., None], probe)
            ok = (idx >= 0) & (idx < n_ax)
            flat = (idx.clamp(0, n_ax - 1) * scan.n_el + torch.arange(scan.n_el)[:, None]).reshape(
                b, -1
            )
            out[:, k].scatter_add_(1, flat, (val * ok).reshape(b, -1))
    return out.reshape(b, scan.n_tx, n_ax, scan.n_el)


# ----------------------------------------------------------------------------- phantoms
@dataclass(frozen=True)
class Cyst:
    """A circular inclusion: ``kind`` ``"anechoic"`` (no scatterers) or ``"hyperechoic"``
    (amplitudes times ``contrast``), centre ``(x, z)`` and radius in metres."""

    x: float
    z: float
    radius: float
    kind: str = "anechoic"
    contrast: float = 1.0


@dataclass
class Phantom:
    """Scatterers of one frame and its regions of interest."""

    positions: np.ndarray  # (S, 2)
    amplitudes: np.ndarray  # (S,)
    cysts: list[Cyst] = field(default_factory=list)
    points: list[tuple[float, float]] = field(default_factory=list)
    #: True for the scatterers of the shallow layers (the source of the reverberation haze).
    shallow: np.ndarray | None = None


def _resolution_cell(probe: LinearArray) -> float:
    """Area (m^2) of one resolution cell: lateral ~ lambda, axial ~ pulse length / 2."""
    lam = probe.wavelength
    return lam * (probe.sound_speed * 2.355 * _pulse_sigma(probe) / 2)


def speckle_phantom(
    probe: LinearArray,
    rng: np.random.Generator,
    *,
    x_span: tuple[float, float],
    z_span: tuple[float, float],
    n_cysts: int = 2,
    n_points: int = 1,
    per_cell: float = 10.0,
    radius: tuple[float, float] = (1.5e-3, 2.5e-3),
    hyper_contrast: float = 3.0,
    layers: tuple[float, ...] = (1.2e-3, 2.0e-3),
    layer_amplitude: float = 4.0,
    point_amplitude: float = 10.0,
) -> Phantom:
    """Speckle with ``n_cysts`` cysts (alternating anechoic / hyperechoic), point targets and
    bright shallow layers (above the image, at depths ``layers``: the source of reverberation).

    Scatterer amplitudes are standard normal (fully developed speckle, Rayleigh envelope;
    Wagner et al. 1983), ``per_cell`` per resolution cell.
    """
    (x0, x1), (z0, z1) = x_span, z_span
    n = int(per_cell * (x1 - x0) * (z1 - z0) / _resolution_cell(probe))
    pos = np.stack([rng.uniform(x0, x1, n), rng.uniform(z0, z1, n)], -1)
    amp = rng.standard_normal(n)
    cysts = _place_cysts(rng, n_cysts, x_span, z_span, radius, hyper_contrast)
    for cy in cysts:
        inside = (pos[:, 0] - cy.x) ** 2 + (pos[:, 1] - cy.z) ** 2 < cy.radius**2
        amp[inside] *= 0.0 if cy.kind == "anechoic" else cy.contrast
    points = _place_points(rng, n_points, x_span, z_span, cysts)
    extra_pos, extra_amp = [], []
    for px, pz in points:
        extra_pos.append([px, pz])
        extra_amp.append(point_amplitude)
    nl = int(per_cell * (x1 - x0) * 0.3e-3 / _resolution_cell(probe))
    for d in layers:
        lp = np.stack([rng.uniform(x0, x1, nl), d + rng.uniform(-0.15e-3, 0.15e-3, nl)], -1)
        extra_pos += lp.tolist()
        extra_amp += (layer_amplitude * (1 + 0.2 * rng.standard_normal(nl))).tolist()
    shallow = np.zeros(len(pos) + len(extra_pos), dtype=bool)
    shallow[len(pos) + len(points) :] = True
    if extra_pos:
        pos = np.concatenate([pos, np.asarray(extra_pos)])
        amp = np.concatenate([amp, np.asarray(extra_amp)])
    return Phantom(pos, amp, cysts, points, shallow)


def _place_cysts(rng, n, x_span, z_span, radius, contrast) -> list[Cyst]:
    (x0, x1), (z0, z1) = x_span, z_span
    if 3 * radius[1] > min(x1 - x0, z1 - z0):
        raise ValueError(
            f"cyst radius up to {radius[1]} m does not fit 1.5 radii from the borders of the "
            f"phantom ({x1 - x0:.4g} x {z1 - z0:.4g} m): use smaller cysts or a larger grid"
        )
    out: list[Cyst] = []
    for i in range(n):
        for _ in range(100):
            r = rng.uniform(*radius)
            cx = rng.uniform(x0 + 1.5 * r, x1 - 1.5 * r)
            cz = rng.uniform(z0 + 1.5 * r, z1 - 1.5 * r)
            if all(math.hypot(cx - o.x, cz - o.z) > r + o.radius + 1e-3 for o in out):
                kind = "anechoic" if i % 2 == 0 else "hyperechoic"
                out.append(Cyst(cx, cz, r, kind, 1.0 if kind == "anechoic" else contrast))
                break
    return out


def _place_points(rng, n, x_span, z_span, cysts) -> list[tuple[float, float]]:
    (x0, x1), (z0, z1) = x_span, z_span
    pts: list[tuple[float, float]] = []
    for _ in range(n):
        for _ in range(100):
            px, pz = rng.uniform(x0 + 1e-3, x1 - 1e-3), rng.uniform(z0 + 1e-3, z1 - 1e-3)
            if all(math.hypot(px - c.x, pz - c.z) > c.radius + 1e-3 for c in cysts):
                pts.append((px, pz))
                break
    return pts


def moving_phantoms(
    base: Phantom, n_frames: int, *, strain: float = 0.04, drift: float = 0.2e-3, period: int = 16
) -> list[Phantom]:
    """A cardiac-like sequence: frame ``t`` applies the affine map ``p -> c + s_t (p - c) +
    d_t`` (contraction ``s_t = 1 - strain * sin^2(pi t / period)`` about the scatterers'
    centre ``c``, lateral drift ``d_t = drift * sin(2 pi t / period)``); cysts and points move
    with the tissue (their radii scale with ``s_t``), so the ROIs stay exact. The shallow
    layers stay still (as a chest wall under the probe), so their reverberation is static."""
    c = base.positions.mean(0)
    out = []
    for t in range(n_frames):
        s = 1 - strain * math.sin(math.pi * t / period) ** 2
        d = np.array([drift * math.sin(2 * math.pi * t / period), 0.0])

        def move(p: np.ndarray, s: float = s, d: np.ndarray = d) -> np.ndarray:
            return c + s * (np.asarray(p) - c) + d

        cysts = [
            Cyst(*move([cy.x, cy.z]).tolist(), cy.radius * s, cy.kind, cy.contrast)
            for cy in base.cysts
        ]
        pts = [tuple(move(p).tolist()) for p in base.points]
        pos = move(base.positions)
        if base.shallow is not None:  # the near-field layers (the reverberation source) stay put
            pos[base.shallow] = base.positions[base.shallow]
        out.append(Phantom(pos, base.amplitudes.copy(), cysts, pts, base.shallow))
    return out


# ----------------------------------------------------------------------------- haze
def haze_rf(
    probe: LinearArray,
    scan: Scan,
    shallow: Tensor,
    generator: torch.Generator,
    *,
    layer_depth: float = 1.6e-3,
    reflection: float = 0.6,
    orders: int = 6,
    jitter: float = 0.25,
    diffuse: float = 0.5,
    clutter_depth: float = 5e-3,
    clutter_correlation: float = 0.25,
    clutter_frequency: float = 0.6,
    clutter_bandwidth: float = 0.3,
) -> Tensor:
    """Near-field reverberation clutter ``(B, n_tx, n_ax, n_el)`` from the shallow echoes.

    Parameters
    ----------
    shallow
        RF channel data of the shallow layers alone (same shape as the output).
    layer_depth
        Depth of the reverberating interface: order ``k`` arrives ``k * 2 * d / c`` later.
    reflection
        Amplitude ratio between successive orders (``reflection^k``).
    jitter
        Peak extra delay of each order, in wavelengths, varying smoothly across the aperture
        (a random low-order profile: the reverberating interfaces are not exactly flat).
    diffuse
        Relative RMS of the diffuse clutter added to the reverberations: band-limited (the
        pulse spectrum), correlated across elements over ``clutter_correlation`` of the
        aperture (wavefronts that do not come from a point in the image, so they do not
        focus), with an amplitude ``exp(-z / clutter_depth)`` at the depth ``z = c t / 2``
        it appears at (near-field haze). Its spectrum is centred at ``clutter_frequency``
        times the probe's centre frequency with fractional bandwidth ``clutter_bandwidth``:
        the multiply reflected paths are longer, and frequency-dependent attenuation along
        them shifts their spectrum down and narrows it (the haze is coarser than speckle).
    """
    b, n_tx, n_ax, n_el = shallow.shape
    fs, c, dt = probe.sampling_frequency, probe.sound_speed, shallow.dtype
    out = torch.zeros_like(shallow)
    spec = torch.fft.rfft(shallow, dim=2)
    f = torch.fft.rfftfreq(n_ax, 1 / fs).to(dt)
    u = torch.linspace(-1, 1, n_el, dtype=dt)
    for k in range(1, orders + 1):
        coef = torch.rand(b, 3, generator=generator, dtype=dt) * 2 - 1  # smooth profile
        prof = coef[:, :1] + coef[:, 1:2] * u + coef[:, 2:] * (2 * u**2 - 1)
        dj = jitter / probe.center_frequency * prof / 3
        delay = (k * 2 * layer_depth / c + dj)[:, None, None, :]  # (B, 1, 1, E)
        phase = torch.exp(-2j * math.pi * f[None, None, :, None] * delay)
        out = out + reflection**k * torch.fft.irfft(spec * phase, n=n_ax, dim=2)
    low = replace(
        probe,
        center_frequency=clutter_frequency * probe.center_frequency,
        bandwidth=clutter_bandwidth,
    )
    nz = _diffuse_clutter(low, shallow.shape, generator, dt, clutter_correlation)
    z = torch.arange(n_ax, dtype=dt) / fs * c / 2
    nz = nz * torch.exp(-z / clutter_depth)[None, None, :, None]
    rms = lambda v: v.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-20)  # noqa: E731
    return out / rms(out) + diffuse * nz / rms(nz)


def _diffuse_clutter(probe, shape, generator, dt, correlation: float) -> Tensor:
    """White noise filtered by the pulse along time and by a Gaussian along the elements."""
    b, n_tx, n_ax, n_el = shape
    fs = probe.sampling_frequency
    noise = torch.randn(shape, generator=generator, dtype=dt)
    half = int(4 * _pulse_sigma(probe) * fs)
    kern = pulse(torch.arange(-half, half + 1).to(dt) / fs, probe)
    v = noise.permute(0, 1, 3, 2).reshape(-1, 1, n_ax)
    v = F.conv1d(v, kern.flip(0)[None, None], padding=half).reshape(b, n_tx, n_el, n_ax)
    width = max(correlation * n_el, 1e-3)
    e = torch.arange(n_el, dtype=dt) - (n_el - 1) / 2
    g = torch.exp(-0.5 * (e / width) ** 2)
    v = v.permute(0, 1, 3, 2).reshape(-1, 1, n_el)  # smooth across the elements
    v = F.conv1d(F.pad(v, (n_el // 2, n_el - 1 - n_el // 2), mode="reflect"), g[None, None])
    return v.reshape(b, n_tx, n_ax, n_el)


def mix_haze(clean: Tensor, haze: Tensor, haze_weight: float) -> tuple[Tensor, Tensor]:
    """``hazy = (1 - w) clean + w h`` with ``h`` the haze scaled to the clean frame's channel
    RMS (so ``w`` alone sets the haze-to-tissue energy); returns ``(hazy, h)``."""
    if not 0 <= haze_weight < 1:
        raise ValueError(f"haze_weight must be in [0, 1), got {haze_weight}")
    dims = tuple(range(1, clean.dim()))
    rc = clean.pow(2).mean(dims, keepdim=True).sqrt()
    rh = haze.pow(2).mean(dims, keepdim=True).sqrt().clamp_min(1e-20)
    h = haze * rc / rh
    return (1 - haze_weight) * clean + haze_weight * h, h


# ----------------------------------------------------------------------------- datasets
@dataclass
class Frames:
    """Simulated frames: clean, haze (scaled, see :func:`mix_haze`) and hazy RF channel data
    ``(B, n_tx, n_ax, n_el)`` float32, and each frame's phantom (ROIs)."""

    clean: Tensor
    haze: Tensor
    hazy: Tensor
    phantoms: list[Phantom]


def n_samples(scan: Scan, grid: ImageGrid, probe: LinearArray) -> int:
    """Samples per channel covering the grid's deepest pixel from the farthest element."""
    x_el = scan.probe_geometry[:, 0]
    far = math.hypot(float(np.abs(x_el).max()) + float(np.abs(grid.x).max()), float(grid.z.max()))
    t = (float(grid.z.max()) + far) / probe.sound_speed + float(np.max(scan.t0_delays))
    return int(math.ceil(t * probe.sampling_frequency)) + 32


def _pad(phantoms: list[Phantom], select: str) -> tuple[Tensor, Tensor]:
    """Stack the phantoms' scatterers (``select``: all, or the shallow layers) zero-padded."""
    sel = []
    for p in phantoms:
        m = np.ones(len(p.amplitudes), bool) if select == "all" else p.shallow
        sel.append((p.positions[m], p.amplitudes[m]))
    s = max(len(a) for _, a in sel)
    pos = np.zeros((len(sel), s, 2))
    pos[..., 1] = 1e-3
    amp = np.zeros((len(sel), s))
    for i, (p, a) in enumerate(sel):
        pos[i, : len(a)], amp[i, : len(a)] = p, a
    return torch.tensor(pos, dtype=torch.float32), torch.tensor(amp, dtype=torch.float32)


def simulate_frames(
    probe: LinearArray,
    scan: Scan,
    phantoms: list[Phantom],
    n_ax: int,
    *,
    haze_weight: float,
    seed: int,
    haze_options: dict | None = None,
) -> Frames:
    """Clean, haze and hazy RF channel data of ``phantoms`` (every frame's haze comes from its
    own shallow layers plus its own diffuse clutter, drawn from ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    pos, amp = _pad(phantoms, "all")
    clean = simulate_rf(probe, scan, pos, amp, n_ax=n_ax)
    spos, samp = _pad(phantoms, "shallow")
    shallow = simulate_rf(probe, scan, spos, samp, n_ax=n_ax)
    haze = haze_rf(probe, scan, shallow, g, **(haze_options or {}))
    hazy, h = mix_haze(clean, haze, haze_weight)
    return Frames(clean.float(), h.float(), hazy.float(), phantoms)
