"""Ultrasound processing chain in torch: IQ demodulation, delay-and-sum, envelope, log
compression, mu-law companding, scan conversion.

The linear steps are :class:`~diffsci.core.operators.LinearOperator`s with exact adjoints
(the contract test checks each entry of :data:`OPERATORS`):

- :class:`IQDemodulation`: RF ``(..., n_ax, n_el)`` -> complex baseband IQ, ``2 LPF(rf(t)
  exp(-2 pi i f_d t))`` with a Hann-windowed sinc low-pass (zea's ``demodulate``: mixing
  down by the demodulation frequency, low-pass filtering, factor 2 for the single side band).
- :class:`DelayAndSum`: channel data ``(B, n_tx, n_ax, n_el)`` (RF real or IQ complex) ->
  beamformed image ``(B, nz, nx)``: time of flight ``t = tau_tx(p) + |p - e| / c -
  initial_time`` (plane or diverging transmits, :func:`~.simulate.transmit_delay`), linear
  interpolation in time, phase rotation ``exp(2 pi i f_d t)`` for IQ data (Perrot et al., "So
  you think you can DAS?", Ultrasonics 2021), receive apodisation by F-number
  (aperture ``|x_p - x_e| <= z / (2 F)``, Hann- or box-shaped) and the mean over transmits
  (coherent compounding, Montaldo et al. 2009).

Non-linear steps are plain functions: :func:`envelope`, :func:`log_compress` (20 log10 of the
envelope normalised to its maximum, clipped to ``(-dynamic_range, 0)`` dB), :func:`mu_law` and
:func:`mu_law_inverse` (``sign(x) log(1 + mu |x|) / log(1 + mu)``, ``mu = 255``, input clipped
to ``[-1, 1]``), :func:`scan_convert` (polar sector data to a Cartesian grid).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from diffsci.core.operators import LinearOperator, OperatorCase

from .io import Scan
from .simulate import ImageGrid, LinearArray, plane_wave_scan, transmit_delay

__all__ = [
    "IQDemodulation",
    "DelayAndSum",
    "envelope",
    "log_compress",
    "mu_law",
    "mu_law_inverse",
    "scan_convert",
    "lowpass_taps",
    "OPERATORS",
]


def lowpass_taps(cutoff: float, fs: float, n_taps: int = 31) -> Tensor:
    """Hann-windowed sinc low-pass FIR (cutoff in Hz), unit DC gain."""
    n = torch.arange(n_taps, dtype=torch.float64) - (n_taps - 1) / 2
    h = torch.sinc(2 * cutoff / fs * n) * torch.hann_window(
        n_taps, periodic=False, dtype=torch.float64
    )
    return h / h.sum()


class IQDemodulation(LinearOperator):
    """RF -> IQ along axis ``-2`` (``n_ax``): ``2 (h * (rf exp(-2 pi i f_d t)))``.

    Parameters
    ----------
    fs, f_demod
        Sampling and demodulation frequency (Hz).
    cutoff
        Low-pass cutoff (Hz); default ``f_demod`` (keeps the band, removes ``2 f_d``).
    t0
        Time of sample 0 (s), so the phase reference is absolute.
    """

    def __init__(
        self,
        fs: float,
        f_demod: float,
        *,
        cutoff: float | None = None,
        t0: float = 0.0,
        n_taps: int = 31,
    ) -> None:
        self.fs, self.fd, self.t0 = float(fs), float(f_demod), float(t0)
        self.taps = lowpass_taps(cutoff or f_demod, fs, n_taps)

    def _phase(self, n_ax: int, dtype: torch.dtype, device) -> Tensor:
        t = self.t0 + torch.arange(n_ax, dtype=torch.float64) / self.fs
        return torch.exp(-2j * math.pi * self.fd * t).to(dtype=dtype, device=device)

    def _filter(self, x: Tensor, flip: bool) -> Tensor:
        """Same-size FIR along axis -2 (real taps, applied to real and imaginary parts)."""
        h = self.taps.to(x.real.dtype).to(x.device)
        h = h if flip else h.flip(0)  # conv1d is correlation: flip for convolution
        shp = x.shape
        v = x.movedim(-2, -1).reshape(-1, 1, shp[-2])
        pad = (len(h) - 1) // 2

        def conv(r: Tensor) -> Tensor:
            return F.conv1d(r, h[None, None], padding=pad)

        y = torch.complex(conv(v.real), conv(v.imag)) if v.is_complex() else conv(v)
        return y.reshape(*shp[:-2], shp[-1], shp[-2]).movedim(-1, -2)

    def forward(self, x: Tensor) -> Tensor:
        cdt = torch.complex128 if x.dtype == torch.float64 else torch.complex64
        ph = self._phase(x.shape[-2], cdt, x.device)[:, None]
        return 2 * self._filter(x.to(cdt) * ph, flip=False)

    def adjoint(self, y: Tensor) -> Tensor:
        ph = self._phase(y.shape[-2], y.dtype, y.device)[:, None]
        return (2 * self._filter(y, flip=True) * ph.conj()).real


class DelayAndSum(LinearOperator):
    """Delay-and-sum beamforming of one acquisition geometry onto a pixel grid.

    ``forward``: channel data ``(B, n_tx, n_ax, n_el)`` (real RF, or complex IQ when
    ``iq=True``) -> image ``(B, nz, nx)`` (real or complex). The interpolation weights are
    precomputed once: a sparse linear map whose adjoint scatters the image back.

    Parameters
    ----------
    scan
        Geometry and transmits (zea conventions, :class:`~.io.Scan`).
    grid
        Pixel grid.
    n_ax
        Samples per channel.
    f_number
        Receive F-number (aperture half-width ``z / (2 F)``); 0 disables it.
    apodization
        ``"hann"`` or ``"box"`` weighting over the receive aperture.
    iq
        Channel data are complex IQ demodulated at ``scan.demodulation_frequency``.
    """

    def __init__(
        self,
        scan: Scan,
        grid: ImageGrid,
        n_ax: int,
        *,
        f_number: float = 1.5,
        apodization: str = "hann",
        iq: bool = False,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        if apodization not in ("hann", "box"):
            raise ValueError(f"apodization must be 'hann' or 'box', got {apodization!r}")
        self.scan, self.grid, self.n_ax, self.iq = scan, grid, int(n_ax), iq
        self.n_tx, self.n_el = scan.n_tx, scan.n_el
        self.shape = grid.shape
        self.idx, self.w = self._weights(f_number, apodization, dtype)

    def _weights(self, f_number: float, apodization: str, dtype) -> tuple[Tensor, Tensor]:
        s, fs, c = self.scan, self.scan.sampling_frequency, self.scan.sound_speed
        zz, xx = torch.meshgrid(
            torch.as_tensor(self.grid.z, dtype=torch.float64),
            torch.as_tensor(self.grid.x, dtype=torch.float64),
            indexing="ij",
        )
        z, x = zz.reshape(-1), xx.reshape(-1)  # (P,)
        xe = torch.as_tensor(s.probe_geometry[:, 0], dtype=torch.float64)
        dx = x[:, None] - xe[None]  # (P, E)
        rx = torch.sqrt(dx**2 + z[:, None] ** 2)
        apod = _apodization(dx, z[:, None], f_number, apodization)
        ttx = transmit_delay(s, x, z)  # (T, P)
        t = (
            ttx[:, :, None]
            + rx[None] / c
            - torch.as_tensor(s.initial_times, dtype=torch.float64)[:, None, None]
        )
        pos = t * fs
        i0 = torch.floor(pos)
        frac = pos - i0
        i0 = i0.long()
        ok = (i0 >= 0) & (i0 + 1 < self.n_ax)
        base = (
            torch.arange(self.n_tx)[:, None, None] * (self.n_ax * self.n_el)
            + torch.arange(self.n_el)[None, None]
        )
        idx0 = base + i0.clamp(0, self.n_ax - 2) * self.n_el
        w = apod[None] * ok / self.n_tx
        wts = torch.stack([w * (1 - frac), w * frac], -1)  # (T, P, E, 2)
        idx = torch.stack([idx0, idx0 + self.n_el], -1)
        if self.iq:
            rot = torch.exp(2j * math.pi * s.demodulation_frequency * t)
            wts = wts * rot[..., None]
            dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        p = z.numel()
        idx = idx.permute(1, 0, 2, 3).reshape(p, -1)
        wts = wts.permute(1, 0, 2, 3).reshape(p, -1).to(dtype)
        return idx, wts

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        flat = x.reshape(b, -1)
        w = self.w.to(flat.device)
        vals = flat[:, self.idx.to(flat.device)]  # (B, P, K)
        out = (vals * w).sum(-1)
        return out.reshape(b, *self.shape)

    def adjoint(self, y: Tensor) -> Tensor:
        b = y.shape[0]
        w = self.w.to(y.device)
        contrib = y.reshape(b, -1, 1) * (w.conj() if w.is_complex() else w)
        dt = contrib.dtype if (self.iq or contrib.is_complex()) else y.dtype
        out = torch.zeros(b, self.n_tx * self.n_ax * self.n_el, dtype=dt, device=y.device)
        out.index_add_(1, self.idx.to(y.device).reshape(-1), contrib.reshape(b, -1).to(dt))
        if not self.iq and out.is_complex():
            out = out.real
        return out.reshape(b, self.n_tx, self.n_ax, self.n_el)


def _apodization(dx: Tensor, z: Tensor, f_number: float, kind: str) -> Tensor:
    """Receive apodisation over the aperture ``|dx| <= z / (2 F)`` (``F = 0``: all ones)."""
    if f_number <= 0:
        return torch.ones_like(dx)
    half = (z / (2 * f_number)).clamp_min(1e-9)
    u = (dx.abs() / half).clamp(max=1.0)
    inside = (dx.abs() <= half).to(dx.dtype)
    if kind == "box":
        return inside
    return torch.cos(0.5 * math.pi * u) ** 2 * inside


def envelope(iq: Tensor) -> Tensor:
    """Envelope ``|IQ|`` of complex beamformed data (the analytic signal's magnitude)."""
    return iq.abs() if iq.is_complex() else iq.abs()


def log_compress(
    env: Tensor, dynamic_range: float = 60.0, *, reference: Tensor | float | None = None
) -> Tensor:
    """B-mode in dB: ``20 log10(env / ref)`` clipped to ``[-dynamic_range, 0]``; ``ref`` is the
    per-image maximum unless given (a fixed reference compares images on one scale)."""
    if reference is None:
        reference = env.flatten(-2).amax(-1)[..., None, None]
    db = 20 * torch.log10(env.clamp_min(1e-30) / torch.as_tensor(reference).clamp_min(1e-30))
    return db.clamp(-dynamic_range, 0.0)


def mu_law(x: Tensor, mu: float = 255.0) -> Tensor:
    """mu-law companding ``sign(x) log(1 + mu |x|) / log(1 + mu)`` (ITU-T G.711), ``x`` clipped
    to ``[-1, 1]``."""
    x = x.clamp(-1, 1)
    return torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)


def mu_law_inverse(y: Tensor, mu: float = 255.0) -> Tensor:
    """Inverse of :func:`mu_law`: ``sign(y) ((1 + mu)^|y| - 1) / mu``."""
    return torch.sign(y) * (torch.pow(1 + mu, y.abs()) - 1) / mu


def scan_convert(
    polar: Tensor, r: np.ndarray, theta: np.ndarray, grid: ImageGrid, fill: float = 0.0
) -> Tensor:
    """Sector data ``(..., n_r, n_theta)`` on radii ``r`` and angles ``theta`` (rad, from the
    z axis) -> the Cartesian ``grid`` by bilinear interpolation; outside the sector ``fill``."""
    zz, xx = np.meshgrid(grid.z, grid.x, indexing="ij")
    rr, tt = np.hypot(xx, zz), np.arctan2(xx, zz)
    u = (tt - theta[0]) / (theta[-1] - theta[0]) * 2 - 1
    v = (rr - r[0]) / (r[-1] - r[0]) * 2 - 1
    g = torch.as_tensor(np.stack([u, v], -1), dtype=polar.real.dtype)[None]
    lead = polar.shape[:-2]
    img = polar.reshape(-1, 1, *polar.shape[-2:])
    out = F.grid_sample(
        img, g.expand(img.shape[0], -1, -1, -1), align_corners=True, padding_mode="zeros"
    )
    inside = torch.as_tensor((np.abs(u) <= 1) & (np.abs(v) <= 1))
    out = torch.where(inside, out[:, 0], torch.full_like(out[:, 0], fill))
    return out.reshape(*lead, *grid.shape)


# ----------------------------------------------------------------------------- registry
def _small_case(iq: bool) -> Callable[[], OperatorCase]:
    def make() -> OperatorCase:
        probe = LinearArray(n_el=8, pitch=0.3e-3, center_frequency=3.5e6, sampling_frequency=14e6)
        scan = plane_wave_scan(probe, [-5.0, 0.0, 5.0])
        grid = ImageGrid.regular(6, 5, 0.2e-3, 0.2e-3, 3e-3)
        op = DelayAndSum(scan, grid, 64, iq=iq)
        dt = torch.complex128 if iq else torch.float64
        return OperatorCase(op, (2, 3, 64, 8), dtype=dt)

    return make


def _demod_case() -> OperatorCase:
    return OperatorCase(IQDemodulation(14e6, 3.5e6, t0=1e-6), (2, 3, 40, 4), dtype=torch.float64)


#: ``{name: factory -> OperatorCase}``: adjoint-checked by the shared contract test.
OPERATORS: dict[str, Callable[[], OperatorCase]] = {
    "das_rf": _small_case(False),
    "das_iq": _small_case(True),
    "iq_demodulation": _demod_case,
}


def beamform_iq(rf: Tensor, scan: Scan, grid: ImageGrid, *, f_number: float = 1.5) -> Tensor:
    """RF channel data ``(B, n_tx, n_ax, n_el)`` -> beamformed complex IQ ``(B, nz, nx)``:
    :class:`IQDemodulation` then :class:`DelayAndSum` (IQ, phase-rotated)."""
    demod = IQDemodulation(scan.sampling_frequency, scan.demodulation_frequency)
    iq = demod(rf.double())
    das = DelayAndSum(scan, grid, rf.shape[-2], f_number=f_number, iq=True)
    return das(iq)
