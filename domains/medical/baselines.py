"""Classical reconstruction baselines for undersampled MRI and sparse-view CT.

- :func:`zero_filled`: ``A^H y`` (MRI: inverse FFT of the zero-filled k-space).
- :func:`pocs_tv`: projections onto convex sets: total-variation denoising alternated with
  k-space data consistency (the compressed-sensing baseline, Lustig et al. 2007 style).
- :func:`fbp`: filtered back-projection with the Ram-Lak ramp or a windowed one
  (:func:`ramp_filter`; Kak & Slaney 1988, ch. 3); :func:`fbp_baseline` optionally clips it.
- :func:`tv_iterative`: ``argmin_x |A x - y|^2 / 2 + lam TV(x)`` subject to ``x >= 0`` by the
  primal-dual algorithm of Chambolle & Pock (2011).
- :func:`tv_denoise`: isotropic TV proximal map (Chambolle's dual projection, FGP-accelerated)
  in torch, batched over leading dims.

All functions take and return torch tensors; images are ``(B, 1, H, W)`` (any ``(..., H, W)``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from diffsci.core.operators import LinearOperator

from .operators import ParallelBeamRadon, SingleCoilMRI

__all__ = [
    "grad2d",
    "div2d",
    "tv_denoise",
    "zero_filled",
    "pocs_tv",
    "ramp_filter",
    "fbp",
    "fbp_baseline",
    "tv_iterative",
]


def grad2d(x: Tensor) -> Tensor:
    """Forward differences over the last two dims, Neumann boundary: ``(2, ..., H, W)``."""
    gy = torch.zeros_like(x)
    gx = torch.zeros_like(x)
    gy[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    gx[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    return torch.stack([gy, gx])


def div2d(p: Tensor) -> Tensor:
    """Divergence, the negative adjoint of :func:`grad2d`: ``<grad x, p> = -<x, div p>``."""
    py, px = p[0], p[1]
    dy = torch.zeros_like(py)
    dx = torch.zeros_like(px)
    dy[..., 0, :] = py[..., 0, :]
    dy[..., 1:-1, :] = py[..., 1:-1, :] - py[..., :-2, :]
    dy[..., -1, :] = -py[..., -2, :]
    dx[..., :, 0] = px[..., :, 0]
    dx[..., :, 1:-1] = px[..., :, 1:-1] - px[..., :, :-2]
    dx[..., :, -1] = -px[..., :, -2]
    return dy + dx


def _project_dual(p: Tensor, lam: float | Tensor) -> Tensor:
    """Project each pixel's gradient-dual vector onto the ball of radius ``lam``."""
    if p.is_complex():
        mag = (p.real.square() + p.imag.square()).sum(0).sqrt()
    else:
        mag = p.square().sum(0).sqrt()
    return p / torch.clamp(mag / lam, min=1.0)


def tv_denoise(x: Tensor, weight: float | Tensor, *, iters: int = 50) -> Tensor:
    """Isotropic TV prox ``argmin_u |u - x|^2 / 2 + weight * sum |grad u|``.

    Fast gradient projection on the dual (Beck & Teboulle 2009), step 1/8. Complex inputs are
    denoised with a joint (real + imaginary) isotropic norm. ``weight`` may be a tensor
    broadcastable to ``x`` (e.g. one weight per batch item ``(B, 1, 1, 1)``).
    """
    if isinstance(weight, int | float) and weight <= 0:
        return x
    p = torch.zeros((2, *x.shape), dtype=x.dtype, device=x.device)
    q, t = p, 1.0
    for _ in range(iters):
        u = x + div2d(q)
        p_new = _project_dual(q + grad2d(u) / 8.0, weight)
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        q = p_new + ((t - 1) / t_new) * (p_new - p)
        p, t = p_new, t_new
    return x + div2d(p)


def zero_filled(y: Tensor, op: LinearOperator) -> Tensor:
    """The adjoint reconstruction ``A^H y`` (zero-filled inverse FFT for MRI)."""
    return op.adjoint(y)


def pocs_tv(
    y: Tensor,
    op: SingleCoilMRI,
    *,
    iters: int = 100,
    lam: float = 0.05,
    lam_final: float | None = 0.001,
    tv_iters: int = 20,
    real: bool = True,
    nonneg: bool = True,
    momentum: bool = True,
) -> Tensor:
    """POCS-TV for undersampled single-coil MRI.

    Starting from the zero-filled image, alternate (i) a TV proximal step of weight
    ``lam_k`` (relative to the zero-filled image's maximum, decaying geometrically from
    ``lam`` to ``lam_final`` over the iterations: continuation), (ii) the image-domain
    constraints (real part, ``>= 0``) and (iii) exact k-space data consistency
    ``x <- x - A^H (A x - y)``. The result is the image after the last data-consistency step
    (real part if ``real``). Since ``|A| = 1``, one such sweep is an ISTA step (gradient
    step of size 1 on ``|A x - y|^2 / 2`` = data consistency, then the TV prox), and
    ``momentum=True`` adds FISTA's extrapolation (Beck & Teboulle 2009), which converges in
    far fewer iterations than plain POCS.

    Parameters
    ----------
    y
        Measured k-space ``(B, 1, H, W)``, zero off the mask.
    op
        The :class:`~diffsci.domains.medical.operators.SingleCoilMRI` that produced ``y``.
    iters
        Outer iterations.
    lam, lam_final
        Initial and final TV weights, as fractions of ``max |zero-filled|`` per item
        (``lam_final=None``: constant ``lam``).
    tv_iters
        Inner iterations of :func:`tv_denoise`.
    real, nonneg
        Enforce a real (resp. non-negative) image before each data-consistency step.
    momentum
        FISTA extrapolation between sweeps.

    Returns
    -------
    Tensor
        Real images ``(B, 1, H, W)`` if ``real`` (else complex).
    """
    x = op.adjoint(y)
    scale = x.abs().flatten(1).amax(dim=1).clamp_min(1e-12)
    scale = scale.reshape(-1, *([1] * (x.dim() - 1)))
    lam_end = lam if lam_final is None else lam_final
    v, t = x, 1.0
    for k in range(iters):
        frac = k / max(iters - 1, 1)
        w = lam * (lam_end / lam) ** frac if lam > 0 and lam_end > 0 else lam
        z = v.real if real else v
        z = tv_denoise(z, w * scale, iters=tv_iters)
        if nonneg and real:
            z = z.clamp_min(0)
        x_new = z - op.adjoint(op.forward(z) - y)
        if momentum:
            t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
            v = x_new + ((t - 1) / t_new) * (x_new - x)
            t = t_new
        else:
            v = x_new
        x = x_new
    return x.real if real else x


def ramp_filter(n_det: int, *, filter: str = "ramp", dtype=torch.float64) -> tuple[Tensor, int]:
    """Frequency response of the FBP filter on the zero-padded detector axis.

    The Ram-Lak ramp is built from its band-limited spatial kernel (Kak & Slaney eq. 61:
    ``h(0) = 1/4``, ``h(n) = -1 / (pi n)^2`` for odd ``n``, 0 for even), which avoids the DC
    offset of a sampled ``|f|``; ``"shepp-logan"``, ``"cosine"`` and ``"hann"`` multiply it
    by the usual windows (as skimage's ``iradon``).

    Returns
    -------
    (response, n_pad)
        Real response ``(n_pad,)`` in ``torch.fft.fft`` ordering and the padded length.
    """
    n_pad = max(64, int(2 ** math.ceil(math.log2(2 * n_det))))
    k = torch.cat([torch.arange(1, n_pad // 2 + 1, 2), torch.arange(n_pad // 2 - 1, 0, -2)])
    h = torch.zeros(n_pad, dtype=torch.float64)
    h[0] = 0.25
    h[1::2] = -1.0 / (math.pi * k.to(torch.float64)) ** 2
    resp = 2 * torch.fft.fft(h).real  # ~ 2|f| in cycles/sample: skimage's scaling
    omega = math.pi * torch.fft.fftfreq(n_pad, dtype=torch.float64)
    if filter == "ramp":
        pass
    elif filter == "shepp-logan":
        w = torch.ones_like(omega)
        nz = omega != 0
        w[nz] = torch.sin(omega[nz]) / omega[nz]
        resp = resp * w
    elif filter == "cosine":
        resp = resp * torch.fft.fftshift(torch.sin(torch.linspace(0, math.pi, n_pad + 1)[:-1]))
    elif filter == "hann":
        resp = resp * torch.fft.fftshift(
            torch.hann_window(n_pad, periodic=True, dtype=torch.float64)
        )
    else:
        raise ValueError(
            f"filter must be 'ramp', 'shepp-logan', 'cosine' or 'hann', got {filter!r}"
        )
    return resp.to(dtype), n_pad


def _angle_step(angles_deg: np.ndarray) -> float:
    """Angular weight (radians) of one view: the spacing of uniform angles, else pi / n."""
    a = np.sort(np.mod(angles_deg, 180.0))
    if a.size < 2:
        return math.pi
    d = np.diff(a)
    return float(np.deg2rad(np.median(d))) if np.allclose(d, d[0]) else math.pi / a.size


def fbp(sino: Tensor, op: ParallelBeamRadon, *, filter: str = "ramp") -> Tensor:
    """Filtered back-projection ``dtheta * A^T (h * p)``.

    The ramp filter (:func:`ramp_filter`, ``2|f|`` scaling) is applied along the detector axis
    with zero padding, then :meth:`ParallelBeamRadon.adjoint` back-projects and the result is
    weighted by ``dtheta / 2`` (``dtheta`` = the spacing of uniform angles, ``pi / 180 * 180 /
    n_angles`` for a full scan, else ``pi / n_angles``), which reproduces skimage's
    ``iradon`` scale: a full-view FBP of a disk returns its value.

    Parameters
    ----------
    sino
        Sinograms ``(..., n_angles, n_det)``.
    op
        The projector that produced them.
    filter
        ``"ramp"`` (Ram-Lak), ``"shepp-logan"``, ``"cosine"`` or ``"hann"``.

    Returns
    -------
    Tensor
        Images ``(..., N, N)``.
    """
    if sino.is_complex():
        raise ValueError("sinograms must be real")
    dt = sino.dtype if sino.dtype in (torch.float32, torch.float64) else torch.float32
    sino = sino.to(dt)
    resp, n_pad = ramp_filter(op.n_det, filter=filter, dtype=dt)
    spec = torch.fft.fft(sino, n=n_pad, dim=-1) * resp.to(sino.device)
    filt = torch.fft.ifft(spec, dim=-1).real[..., : op.n_det]
    return op.adjoint(filt) * (_angle_step(op.angles_deg) / 2)


def fbp_baseline(
    sino: Tensor,
    op: ParallelBeamRadon,
    *,
    filter: str = "ramp",
    clip: tuple[float, float] | None = None,
) -> Tensor:
    """Filtered back-projection (:func:`fbp`).

    ``clip=(0, 1)`` clamps the result to the image range: sparse-view FBP has large negative
    streaks, and clipping changes its PSNR a lot; report which.
    """
    x = fbp(sino, op, filter=filter)
    return x if clip is None else x.clamp(clip[0], clip[1])


def tv_iterative(
    y: Tensor,
    op: LinearOperator,
    *,
    iters: int = 300,
    lam: float = 0.02,
    nonneg: bool = True,
    x0: Tensor | None = None,
    opnorm: float | None = None,
) -> Tensor:
    """TV-regularised least squares ``argmin_{x >= 0} |A x - y|^2 / 2 + lam |grad x|_1``.

    Chambolle-Pock primal-dual iterations (2011, Alg. 1 with ``theta = 1``) on
    ``K = [A / |A|; grad]`` (the data operator is scaled to unit norm so that both blocks
    are balanced; the problem is unchanged), ``tau = sigma = 0.99 / sqrt(1 + 8)``.

    Parameters
    ----------
    y
        Measurements (CT: sinograms ``(B, 1, n_angles, n_det)``).
    op
        Real linear operator (e.g. :class:`~diffsci.domains.medical.operators.ParallelBeamRadon`).
    iters
        Iterations.
    lam
        TV weight for images in ``[0, 1]`` with the CT projector of this package (pixel
        units); scale with the image's intensity range.
    nonneg
        Constrain ``x >= 0``.
    x0
        Starting image (default zeros).
    opnorm
        ``|A|_2`` if known (default: ``op.opnorm()`` if present, else 30 power iterations).

    Returns
    -------
    Tensor
        Images, the shape of ``op.adjoint(y)``.
    """
    if opnorm is None:
        if hasattr(op, "opnorm"):
            opnorm = float(op.opnorm())
        else:
            v = torch.randn_like(op.adjoint(y))
            for _ in range(30):
                v = op.normal(v)
                s = float(v.norm())
                v = v / s
            opnorm = math.sqrt(s)
    a = float(opnorm)
    yy = y / a  # data term a^2/2 |A' x - y'|^2 with A' = A / a, y' = y / a
    x = torch.zeros_like(op.adjoint(y)) if x0 is None else x0.clone()
    xbar = x.clone()
    p = torch.zeros_like(y)
    q = torch.zeros((2, *x.shape), dtype=x.dtype, device=x.device)
    tau = sigma = 0.99 / 3.0
    for _ in range(iters):
        # dual ascent, then prox of the conjugates
        p = (p + sigma * (op.forward(xbar) / a - yy)) / (1 + sigma / a**2)
        q = _project_dual(q + sigma * grad2d(xbar), lam)
        x_old = x
        x = x - tau * (op.adjoint(p) / a - div2d(q))
        if nonneg:
            x = x.clamp_min(0)
        xbar = 2 * x - x_old
    return x
