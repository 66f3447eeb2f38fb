"""Reconstruction with a 2-D diffusion prior: the core's posterior pieces on MRI and CT.

Nothing here is a private copy of a sampler: :class:`~diffsci.core.posterior.DataConsistency`
wraps the prior denoiser and any core sampler drives it (DDS-style: the denoised estimate is
projected onto ``{x : A x = y}`` in every reverse step). What is medical-specific:

- :class:`RealImageMRI`: single-coil Cartesian MRI of a *real-valued* image. The k-space of a
  real image is Hermitian-symmetric, so observing line ``k`` also observes ``-k``. Over real
  images the operator ``x -> S F x`` (``S`` = the mask united with its point reflection) has
  ``A A^H = S`` on Hermitian data, so its pseudo-inverse is its adjoint and hard data
  consistency is an exact projection (measured residual ~1e-7 in float32).
- :class:`CGPinv`: an operator whose pseudo-inverse is CG on the normal equations with a fixed
  iteration count (CT's Radon transform has no closed form).
- :class:`AffineData`: the prior lives in ``z = 2 x - 1``; data ``y = A x`` becomes
  ``A z = 2 y - A 1``.
- :class:`SliceTV`: a 3-D volume from a 2-D prior (DiffusionMBIR): slices are denoised as a
  batch and the estimate gets a total-variation proximal step along the slice axis.
- :class:`ClampDenoised`: the denoised estimate clipped to the images' known range before
  the data step (guided-diffusion's ``clip_denoised``); the sample returned is still the
  data projection, so data consistency is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from diffsci.core.operators import LinearOperator
from diffsci.core.posterior import DPS, DataConsistency, ProximalDataStep, start_from
from diffsci.core.samplers import get_sampler
from diffsci.core.schedules import karras

from .mri import fft2c, ifft2c

__all__ = [
    "RealImageMRI",
    "CGPinv",
    "AffineData",
    "SliceTV",
    "ClampDenoised",
    "tv1d_prox",
    "posterior_reconstruct",
]


def _reflect_index(n: int) -> Tensor:
    """Index map of the point reflection ``k -> -k`` on a centered (fftshifted) axis."""
    freqs = torch.fft.fftshift(torch.fft.fftfreq(n) * n).round().long()
    where = {int(f): i for i, f in enumerate(freqs)}
    # the Nyquist bin of an even axis is its own reflection (-n/2 == n/2 mod n)
    return torch.tensor(
        [where.get(int(-f), where.get(int(-f) - n, i)) for i, f in enumerate(freqs)]
    )


def reflect(k: Tensor) -> Tensor:
    """``k(-f)`` for a centered 2-D spectrum over the last two dims."""
    h, w = k.shape[-2:]
    return k.index_select(-2, _reflect_index(h).to(k.device)).index_select(
        -1, _reflect_index(w).to(k.device)
    )


class RealImageMRI(LinearOperator):
    """Undersampled single-coil MRI of real images ``(B, 1, H, W)``, Hermitian-completed.

    Parameters
    ----------
    mask
        0/1 sampling mask broadcastable to ``(H, W)`` (e.g. the ``(W,)`` phase-encode lines of
        :func:`~diffsci.domains.medical.mri.kspace_mask`).
    shape
        ``(H, W)`` of the images.
    """

    def __init__(self, mask: Tensor, shape: tuple[int, int]) -> None:
        m = torch.broadcast_to(torch.as_tensor(mask, dtype=torch.float32), shape).clone()
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError("mask must hold only 0 and 1")
        self.measured = m
        self.support = torch.maximum(m, reflect(m))  # S = M united with its reflection

    def complete(self, y: Tensor) -> Tensor:
        """Measured k-space (zero off the mask) -> its Hermitian completion on ``S``."""
        m = self.measured.to(y.device)
        s = self.support.to(y.device)
        return m * y + (s - m) * reflect(y).conj()

    def forward(self, x: Tensor) -> Tensor:
        return self.support.to(x.device) * fft2c(
            x.to(torch.complex64 if x.dtype != torch.float64 else torch.complex128)
        )

    def adjoint(self, y: Tensor) -> Tensor:
        return ifft2c(self.support.to(y.device) * y).real

    def pinv(self, y: Tensor, **_: Any) -> Tensor:
        # A A^H = S on Hermitian data: the adjoint is the pseudo-inverse.
        return self.adjoint(y)

    def measured_residual(self, x: Tensor, y: Tensor) -> Tensor:
        """``|M (F x) - y| / |y|`` per item: data consistency on the measured lines only."""
        m = self.measured.to(x.device)
        r = m * fft2c(x.to(torch.complex64)) - m * y
        return r.flatten(1).norm(dim=1) / (m * y).flatten(1).norm(dim=1).clamp_min(1e-30)


class CGPinv(LinearOperator):
    """``op`` with ``pinv`` = CG on the normal equations for a fixed number of iterations."""

    def __init__(self, op: LinearOperator, iters: int = 30) -> None:
        self.op, self.iters = op, int(iters)

    def forward(self, x: Tensor) -> Tensor:
        return self.op.forward(x)

    def adjoint(self, y: Tensor) -> Tensor:
        return self.op.adjoint(y)

    def pinv(self, y: Tensor, **_: Any) -> Tensor:
        return LinearOperator.pinv(self, y, iters=self.iters, tol=1e-7)


class AffineData:
    """The prior's variable is ``z = 2 x - 1`` (images in [0, 1] -> [-1, 1])."""

    @staticmethod
    def to_model(x: Tensor) -> Tensor:
        return 2 * x - 1

    @staticmethod
    def to_image(z: Tensor) -> Tensor:
        return (z + 1) / 2

    @staticmethod
    def data(op: LinearOperator, y: Tensor, shape: tuple[int, ...]) -> Tensor:
        """``A x = y``  ->  ``A z = 2 y - A 1``."""
        ones = torch.ones(shape, dtype=torch.float32, device=y.device)
        return 2 * y - op.forward(ones)


def tv1d_prox(u: Tensor, weight: float, *, dim: int = 0, iters: int = 30) -> Tensor:
    """``argmin_v |v - u|^2 / 2 + weight * sum |v_{i+1} - v_i|`` along ``dim`` (dual projected
    gradient, Chambolle 2004, step 1/4)."""
    if weight <= 0 or u.shape[dim] < 2:
        return u
    u = u.movedim(dim, 0)
    p = torch.zeros_like(u[1:])

    def div(p: Tensor) -> Tensor:  # -D^T p
        z = torch.zeros_like(u[:1])
        return torch.cat([p, z]) - torch.cat([z, p])

    for _ in range(iters):
        v = u + div(p)
        p = (p + 0.25 * (v[1:] - v[:-1])).clamp(-weight, weight)
    return (u + div(p)).movedim(0, dim)


class SliceTV(nn.Module):
    """A 3-D prior from a 2-D one (DiffusionMBIR): denoise the slices of one volume as a batch,
    then a TV proximal step of fixed ``weight`` along the slice axis (the batch dimension).

    DiffusionMBIR solves the z-TV step by ADMM inside each reverse step; a proximal step on
    the denoised estimate (then the data projection, when wrapped by
    :class:`~diffsci.core.posterior.DataConsistency`) is the same idea at one inner iteration.
    """

    def __init__(self, denoiser: nn.Module, weight: float, *, iters: int = 30) -> None:
        super().__init__()
        self.denoiser, self.weight, self.iters = denoiser, float(weight), int(iters)

    def forward(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        d = self.denoiser(x, sigma, cond)
        return tv1d_prox(d, self.weight, dim=0, iters=self.iters)


class ClampDenoised(nn.Module):
    """``D(x, sigma).clamp(lo, hi)``: the denoised estimate kept in the prior's data range
    (images in ``[0, 1]`` are ``[-1, 1]`` for the prior, :class:`AffineData`)."""

    def __init__(self, denoiser: nn.Module, lo: float = -1.0, hi: float = 1.0) -> None:
        super().__init__()
        if not lo < hi:
            raise ValueError(f"need lo < hi, got {lo}, {hi}")
        self.denoiser, self.lo, self.hi = denoiser, float(lo), float(hi)

    def forward(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        return self.denoiser(x, sigma, cond).clamp(self.lo, self.hi)


@torch.no_grad()
def posterior_reconstruct(
    prior: nn.Module,
    op: LinearOperator,
    y: Tensor,
    shape: tuple[int, ...],
    *,
    samples: int,
    sampler: str = "ddim",
    steps: int = 50,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    eta: float = 0.85,
    generator: torch.Generator,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    method: str = "hard_dc",
    noise_std: float = 0.0,
    sigma_data: float = 0.5,
    clip_denoised: bool = False,
    init: Tensor | None = None,
    start_sigma: float | None = None,
) -> Tensor:
    """Posterior samples ``(samples, *shape)`` in image space for ``y = A x + n``.

    ``y`` is batched like ``shape`` (one observation per item). ``method``:

    - ``"hard_dc"`` (noiseless data): every reverse step projects the prior's denoised
      estimate onto the data (:class:`DataConsistency`); the sampler's last step returns that
      projection, so each sample fits the data to solver precision.
    - ``"dps"``: likelihood gradient through the denoiser with the PiGDM variance
      (:class:`DPS`), for noisy data of std ``noise_std`` (image units).
    - ``"prox"``: proximal data step on the denoised estimate (:class:`ProximalDataStep`).

    ``wrap`` modifies the prior before the data step (e.g. :class:`SliceTV`);
    ``clip_denoised`` then clamps its estimate to the image range ``[0, 1]``
    (:class:`ClampDenoised`) before the data step.

    ``init`` (image space, ``shape``) with ``start_sigma``: CCDF warm start (Chung, Sim & Ye,
    CVPR 2022): each sample starts from ``init`` (clamped to ``[0, 1]``) noised to
    ``start_sigma`` in the prior's units and runs only the reverse steps below it
    (:func:`~diffsci.core.posterior.start_from`), e.g. from a TV reconstruction.
    """
    if method not in ("hard_dc", "dps", "prox"):
        raise ValueError(f"method must be 'hard_dc', 'dps' or 'prox', got {method!r}")
    if method != "hard_dc" and noise_std <= 0:
        raise ValueError(f"method {method!r} needs noise_std > 0 (noiseless data: 'hard_dc')")
    if (init is None) != (start_sigma is None):
        raise ValueError("a warm start needs both init and start_sigma")
    if init is not None and tuple(init.shape) != tuple(shape):
        raise ValueError(f"init has shape {tuple(init.shape)}, expected {tuple(shape)}")
    dev = y.device
    y_model = AffineData.data(op, y, shape)
    den = prior if wrap is None else wrap(prior)
    if clip_denoised:
        den = ClampDenoised(den)
    sig = karras(steps, sigma_min, sigma_max)
    opts = {"eta": eta} if sampler in ("ddim", "euler_ancestral") else {}
    s_model = 2 * noise_std  # z = 2 x - 1 doubles the noise
    out = []
    for _ in range(samples):
        if method == "hard_dc":
            dc = DataConsistency(den, op, y_model)
        elif method == "dps":
            dc = DPS(den, op, y_model, noise_std=s_model, sigma_data=sigma_data)
        else:
            dc = ProximalDataStep(den, op, y_model, noise_std=s_model)
        if init is not None:
            z0 = AffineData.to_model(init.clamp(0, 1).to(dev, torch.float32))
            z = start_from(dc, z0, sig, sigma_start=float(start_sigma), sampler=sampler,
                           generator=generator, **opts)  # fmt: skip
        else:
            x = torch.randn(shape, generator=generator, dtype=torch.float32).to(dev) * float(sig[0])
            z = get_sampler(sampler)(dc, x, sig, generator=generator, **opts)
        out.append(AffineData.to_image(z))
    return torch.stack(out)
