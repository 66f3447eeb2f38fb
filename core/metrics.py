"""Evaluation metrics: image quality, probabilistic forecasts and two-sample distances.

Every function takes torch tensors (numpy arrays are converted with ``torch.as_tensor``) and
returns torch tensors. Image metrics follow fastMRI (PSNR, NMSE, SSIM through
``skimage.metrics.structural_similarity``) and MONAI (Gaussian-window SSIM); ensemble metrics
follow the usual forecast-verification definitions (Gneiting & Raftery 2007, Ferro 2014,
Fortin et al. 2014, Hamill 2001). The sample distances (energy distance, MMD, sliced
Wasserstein) are differentiable and can be used as training losses.

Inputs are validated: shape mismatches and non-finite values raise ``ValueError`` naming the
argument.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "crps_ensemble",
    "energy_distance",
    "interval_coverage",
    "ks_statistic",
    "mmd",
    "nmse",
    "psnr",
    "rank_histogram",
    "sliced_wasserstein",
    "spread_skill",
    "ssim",
]

ArrayLike = Any  # torch.Tensor | np.ndarray | nested sequences of numbers
Dim = int | Sequence[int] | None


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _tensor(x: ArrayLike, name: str) -> torch.Tensor:
    """Convert to a floating tensor and reject non-finite values."""
    t = torch.as_tensor(x)
    if not (t.is_floating_point() or t.is_complex()):
        t = t.to(torch.get_default_dtype())
    if t.is_complex():
        raise ValueError(f"{name} must be real, got dtype {t.dtype}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains non-finite values (nan or inf)")
    return t


def _param(value: float | ArrayLike, name: str, like: torch.Tensor) -> torch.Tensor:
    """A parameter (data range, bandwidth) in ``like``'s dtype, without a float32 detour."""
    if isinstance(value, torch.Tensor):
        t = value.to(device=like.device, dtype=like.dtype)
    else:
        t = torch.as_tensor(np.asarray(value, dtype=np.float64)).to(like.device, like.dtype)
    if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
        raise ValueError(f"{name} must be positive and finite")
    return t


def _pair(a: ArrayLike, b: ArrayLike, na: str, nb: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Two tensors of identical shape, promoted to a common dtype and device."""
    x, y = _tensor(a, na), _tensor(b, nb)
    if x.shape != y.shape:
        raise ValueError(
            f"{na} and {nb} must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    dt = torch.promote_types(x.dtype, y.dtype)
    return x.to(dt), y.to(device=x.device, dtype=dt)


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def _reduce(v: torch.Tensor, reduction: str) -> torch.Tensor:
    return v.mean() if reduction == "mean" else v


def _dims(dim: Dim, ndim: int) -> tuple[int, ...]:
    if dim is None:
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return tuple(d % ndim for d in dims) if ndim else ()


def _ensemble(
    ensemble: ArrayLike, obs: ArrayLike, member_dim: int, ne: str = "ensemble", no: str = "obs"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ensemble with members moved to the last axis, and the matching observations."""
    e, y = _tensor(ensemble, ne), _tensor(obs, no)
    if e.ndim == 0:
        raise ValueError(f"{ne} must have a member dimension")
    if not -e.ndim <= member_dim < e.ndim:
        raise ValueError(
            f"member_dim={member_dim} is out of range for {ne} of shape {tuple(e.shape)}"
        )
    e = e.movedim(member_dim, -1)
    if e.shape[:-1] != y.shape:
        raise ValueError(
            f"{no} must have the shape of {ne} without its member dimension {member_dim}: "
            f"expected {tuple(e.shape[:-1])}, got {tuple(y.shape)}"
        )
    dt = torch.promote_types(e.dtype, y.dtype)
    return e.to(dt), y.to(device=e.device, dtype=dt)


def _samples(x: ArrayLike, name: str) -> torch.Tensor:
    """Samples as an (n, d) matrix; 1-D input is n scalar samples (d = 1)."""
    t = _tensor(x, name)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise ValueError(f"{name} must be (n,) or (n, d), got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    return t


def _sample_pair(
    a: ArrayLike, b: ArrayLike, na: str = "x", nb: str = "y"
) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _samples(a, na), _samples(b, nb)
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"{na} and {nb} must have the same dimension d, got {x.shape[1]} and {y.shape[1]}"
        )
    dt = torch.promote_types(x.dtype, y.dtype)
    return x.to(dt), y.to(device=x.device, dtype=dt)


def _cdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # The matmul shortcut loses precision (non-zero self-distances); use the direct form.
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


# --------------------------------------------------------------------------------------------
# image metrics
# --------------------------------------------------------------------------------------------


def psnr(
    pred: ArrayLike,
    target: ArrayLike,
    *,
    data_range: float | ArrayLike | None = None,
    dim: Dim = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Peak signal-to-noise ratio ``10 log10(data_range**2 / MSE)`` in dB.

    Parameters
    ----------
    pred, target
        Arrays of identical shape.
    data_range
        Peak value. Default: ``target.max()`` over ``dim`` (fastMRI convention: the maximum of
        the ground-truth volume, not ``max - min``).
    dim
        Axes over which MSE (and the default ``data_range``) are computed; ``None`` (default)
        uses the whole array, giving a single PSNR as in fastMRI.
    reduction
        ``"mean"`` averages the PSNRs of the remaining axes; ``"none"`` returns them.

    Returns
    -------
    torch.Tensor
        PSNR in dB (``inf`` where the MSE is zero).
    """
    _check_reduction(reduction)
    x, y = _pair(pred, target, "pred", "target")
    dims = _dims(dim, x.ndim)
    mse = (x - y).square().mean(dim=dims) if dims else (x - y).square()
    if data_range is None:
        peak = y.amax(dim=dims) if dims else y
    else:
        peak = _param(data_range, "data_range", x)
    if bool((peak <= 0).any()):
        raise ValueError("data_range must be positive (default: target.max())")
    return _reduce(10.0 * torch.log10(peak.square() / mse), reduction)


def nmse(
    pred: ArrayLike, target: ArrayLike, *, dim: Dim = None, reduction: str = "mean"
) -> torch.Tensor:
    """Normalised mean squared error ``||pred - target||^2 / ||target||^2`` (fastMRI).

    Parameters
    ----------
    pred, target
        Arrays of identical shape.
    dim
        Axes over which the norms are taken; ``None`` (default) uses the whole array.
    reduction
        ``"mean"`` averages over the remaining axes; ``"none"`` returns them.
    """
    _check_reduction(reduction)
    x, y = _pair(pred, target, "pred", "target")
    dims = _dims(dim, x.ndim)
    num = (x - y).square().sum(dim=dims) if dims else (x - y).square()
    den = y.square().sum(dim=dims) if dims else y.square()
    return _reduce(num / den, reduction)


def _window_1d(window: str, size: int, sigma: float, dtype, device) -> torch.Tensor:
    if window == "uniform":
        return torch.full((size,), 1.0 / size, dtype=dtype, device=device)
    # MONAI's monai.metrics.regression._gaussian_kernel: offsets -(size-1)/2 ... (size-1)/2.
    r = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-0.5 * (r / sigma) ** 2)
    return g / g.sum()


def ssim(
    pred: ArrayLike,
    target: ArrayLike,
    *,
    data_range: float | ArrayLike,
    window: str = "uniform",
    win_size: int | None = None,
    k1: float = 0.01,
    k2: float = 0.03,
    gaussian_sigma: float = 1.5,
    sample_covariance: bool | None = None,
    spatial_dims: int = 2,
    reduction: str = "mean",
) -> torch.Tensor:
    """Structural similarity index (Wang et al. 2004) over the valid window positions.

    Local statistics are computed with a sliding window that lies entirely inside the image
    (equivalently: skimage filters the whole image and crops ``(win_size - 1) // 2`` pixels on
    every side), then the SSIM map is averaged per image.

    * ``window="uniform"`` (default, ``win_size=7``, sample covariance) equals
      ``skimage.metrics.structural_similarity(target, pred, data_range=..., win_size=7)``,
      i.e. fastMRI's SSIM (fastMRI averages the per-slice values of a volume, which is what
      ``reduction="mean"`` does for a ``(slices, H, W)`` input).
    * ``window="gaussian"`` (default ``win_size=11``, ``gaussian_sigma=1.5``, population
      covariance) equals ``monai.metrics.SSIMMetric(kernel_type="gaussian")`` and skimage's
      ``gaussian_weights=True, use_sample_covariance=False``.

    Parameters
    ----------
    pred, target
        Images of identical shape ``(..., H, W)`` (or ``(..., D, H, W)`` with
        ``spatial_dims=3``); leading axes are batch axes.
    data_range
        Dynamic range ``L`` in ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2``; a scalar or a tensor
        broadcastable to the batch shape. fastMRI uses ``target.max()`` of the volume.
    window
        ``"uniform"`` or ``"gaussian"``.
    win_size
        Odd window width; default 7 (uniform) or 11 (gaussian).
    k1, k2
        Stability constants.
    gaussian_sigma
        Standard deviation of the Gaussian window, in pixels.
    sample_covariance
        Scale (co)variances by ``N / (N - 1)`` with ``N = win_size**spatial_dims`` (skimage's
        ``use_sample_covariance``). Default: ``True`` for the uniform window, ``False`` for the
        Gaussian one, matching the two references above.
    spatial_dims
        2 or 3.
    reduction
        ``"mean"`` averages over the batch axes; ``"none"`` returns one SSIM per image.
    """
    _check_reduction(reduction)
    if window not in ("uniform", "gaussian"):
        raise ValueError(f"window must be 'uniform' or 'gaussian', got {window!r}")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if win_size is None:
        win_size = 7 if window == "uniform" else 11
    if win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"win_size must be a positive odd integer, got {win_size}")
    if gaussian_sigma <= 0:
        raise ValueError(f"gaussian_sigma must be positive, got {gaussian_sigma}")
    if sample_covariance is None:
        sample_covariance = window == "uniform"
    x, y = _pair(pred, target, "pred", "target")
    if x.ndim < spatial_dims:
        raise ValueError(
            f"pred must have at least {spatial_dims} dimensions, got shape {tuple(x.shape)}"
        )
    spatial = tuple(x.shape[-spatial_dims:])
    if min(spatial) < win_size:
        raise ValueError(f"win_size={win_size} exceeds the image size {spatial}")
    if x.dtype not in (torch.float32, torch.float64):
        x, y = x.float(), y.float()
    batch = tuple(x.shape[:-spatial_dims])
    b = math.prod(batch)
    L = _param(data_range, "data_range", x)
    L = torch.broadcast_to(L, batch).reshape(b, *([1] * (spatial_dims + 1)))

    xb = x.reshape(b, 1, *spatial)
    yb = y.reshape(b, 1, *spatial)
    maps = torch.cat([xb, yb, xb * xb, yb * yb, xb * yb], dim=1)  # (b, 5, *spatial)
    w = _window_1d(window, win_size, gaussian_sigma, x.dtype, x.device)
    conv = F.conv2d if spatial_dims == 2 else F.conv3d
    for ax in range(spatial_dims):  # separable filter, valid positions only
        shape = [1] * spatial_dims
        shape[ax] = win_size
        maps = conv(maps, w.reshape(1, 1, *shape).expand(5, 1, *shape), groups=5)
    mx, my, mxx, myy, mxy = maps.unbind(dim=1)
    mx, my, mxx, myy, mxy = (m.unsqueeze(1) for m in (mx, my, mxx, myy, mxy))
    n = win_size**spatial_dims
    cov_norm = n / (n - 1) if (sample_covariance and n > 1) else 1.0
    vx = cov_norm * (mxx - mx * mx)
    vy = cov_norm * (myy - my * my)
    vxy = cov_norm * (mxy - mx * my)
    c1 = (k1 * L) ** 2
    c2 = (k2 * L) ** 2
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    per_image = s.reshape(b, -1).mean(dim=1).reshape(batch)
    return _reduce(per_image, reduction)


# --------------------------------------------------------------------------------------------
# ensemble / probabilistic forecast metrics
# --------------------------------------------------------------------------------------------


def crps_ensemble(
    ensemble: ArrayLike,
    obs: ArrayLike,
    *,
    member_dim: int = 0,
    fair: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    """Continuous ranked probability score of an ensemble forecast.

    ``CRPS = mean_i |x_i - y| - 1/(2 M^2) sum_ij |x_i - x_j|``, the CRPS of the empirical
    distribution of the ``M`` members (Gneiting & Raftery 2007). With ``fair=True`` the
    second sum is divided by ``2 M (M - 1)`` instead (Ferro 2014): an unbiased estimate of
    the CRPS of the distribution the members are drawn from. The pair sum uses the sorted
    ``O(M log M)`` identity ``sum_ij |x_i - x_j| = 2 sum_k (2k - M - 1) x_(k)``.

    Parameters
    ----------
    ensemble
        Members along ``member_dim``.
    obs
        Observations, the shape of ``ensemble`` without ``member_dim``.
    member_dim
        Axis of the members.
    fair
        Use the fair (unbiased) estimator; needs ``M >= 2``.
    reduction
        ``"mean"`` (default) or ``"none"`` (one score per observation).
    """
    _check_reduction(reduction)
    e, y = _ensemble(ensemble, obs, member_dim)
    m = e.shape[-1]
    if m == 0 or (fair and m < 2):
        raise ValueError(f"ensemble needs at least {2 if fair else 1} members, got {m}")
    skill = (e - y.unsqueeze(-1)).abs().mean(dim=-1)
    xs = e.sort(dim=-1).values
    k = torch.arange(1, m + 1, device=e.device, dtype=e.dtype)
    pair_sum = 2.0 * (xs * (2 * k - m - 1)).sum(dim=-1)  # sum over all ordered pairs
    spread = pair_sum / (2 * m * (m - 1)) if fair else pair_sum / (2 * m * m)
    return _reduce(skill - spread, reduction)


def spread_skill(
    ensemble: ArrayLike,
    obs: ArrayLike,
    *,
    member_dim: int = 0,
    adjusted: bool = True,
    spread: str = "rms",
) -> torch.Tensor:
    """Spread-skill ratio: ensemble spread over the RMSE of the ensemble mean.

    ``spread = sqrt(mean over points of the unbiased (1/(M-1)) ensemble variance)`` and
    ``skill = sqrt(mean over points of (ensemble mean - obs)^2)``. Variances, not standard
    deviations, are averaged, because the identity ``E[(mean - y)^2] = (M+1)/M E[s^2]`` of a
    perfectly calibrated (exchangeable) ensemble holds for them (Fortin et al. 2014); with
    ``adjusted=True`` the ratio is multiplied by ``sqrt((M+1)/M)`` so that such an ensemble
    scores 1 for every ``M``. Ratios below 1 mean under-dispersion.

    Parameters
    ----------
    ensemble
        Members along ``member_dim`` (``M >= 2``).
    obs
        Observations, the shape of ``ensemble`` without ``member_dim``.
    member_dim
        Axis of the members.
    adjusted
        Apply the finite-ensemble factor ``sqrt((M+1)/M)``.
    spread
        ``"rms"`` (above, calibrated = 1) or ``"mean_std"``: the mean of the per-point
        (unbiased-variance) standard deviations, the literal "mean ensemble std" some papers
        use; by Jensen it is lower wherever the spread varies, so it reads a calibrated
        ensemble as under-dispersed. Label which one is reported.
    """
    e, y = _ensemble(ensemble, obs, member_dim)
    m = e.shape[-1]
    if m < 2:
        raise ValueError(f"ensemble needs at least 2 members, got {m}")
    var = e.var(dim=-1, correction=1)
    if spread == "rms":
        s = var.mean().sqrt()
    elif spread == "mean_std":
        s = var.sqrt().mean()
    else:
        raise ValueError(f"spread must be 'rms' or 'mean_std', got {spread!r}")
    skill = (e.mean(dim=-1) - y).square().mean().sqrt()
    ratio = s / skill
    return ratio * math.sqrt((m + 1) / m) if adjusted else ratio


def rank_histogram(
    ensemble: ArrayLike,
    obs: ArrayLike,
    *,
    member_dim: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Rank (Talagrand) histogram: counts of the observation's rank among the members.

    The rank of ``y`` is the number of members strictly below it, plus a uniform random
    integer in ``[0, ties]`` where ``ties`` is the number of members equal to it (Hamill
    2001), so a calibrated discrete ensemble also gives a flat histogram.

    Parameters
    ----------
    ensemble
        Members along ``member_dim``.
    obs
        Observations, the shape of ``ensemble`` without ``member_dim``.
    member_dim
        Axis of the members.
    generator
        Random stream for tie breaking (on the device of ``ensemble``).

    Returns
    -------
    torch.Tensor
        ``int64`` counts of shape ``(M + 1,)``; bin ``k`` counts observations with rank ``k``.
    """
    e, y = _ensemble(ensemble, obs, member_dim)
    m = e.shape[-1]
    yy = y.unsqueeze(-1)
    below = (e < yy).sum(dim=-1)
    ties = (e == yy).sum(dim=-1)
    u = torch.rand(y.shape, generator=generator, device=e.device, dtype=torch.float64)
    extra = torch.floor(u * (ties + 1).to(torch.float64)).long().clamp_max(ties)
    rank = (below + extra).reshape(-1)
    return torch.bincount(rank, minlength=m + 1)


def _quantile_sorted(xs: torch.Tensor, q: float) -> torch.Tensor:
    """numpy's default ("linear", Hyndman-Fan type 7) quantile along the last axis."""
    m = xs.shape[-1]
    pos = q * (m - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, m - 1)
    frac = pos - lo
    return xs[..., lo] + frac * (xs[..., hi] - xs[..., lo])


def interval_coverage(
    samples: ArrayLike, truth: ArrayLike, *, level: float = 0.9, member_dim: int = 0
) -> torch.Tensor:
    """Fraction of points whose truth lies in the central ``level`` interval of the samples.

    The interval is ``[q_{(1-level)/2}, q_{(1+level)/2}]`` (closed) with empirical quantiles
    of the samples by linear interpolation (numpy's default, Hyndman-Fan type 7). Note that
    with ``M`` samples the expected coverage of this interval for a calibrated sampler is
    ``level`` only up to ``O(1/M)``.

    Parameters
    ----------
    samples
        Samples along ``member_dim``.
    truth
        True values, the shape of ``samples`` without ``member_dim``.
    level
        Nominal coverage in ``(0, 1)``.
    member_dim
        Axis of the samples.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    e, y = _ensemble(samples, truth, member_dim, "samples", "truth")
    if e.shape[-1] == 0:
        raise ValueError("samples has no members")
    xs = e.sort(dim=-1).values
    lo = _quantile_sorted(xs, (1.0 - level) / 2)
    hi = _quantile_sorted(xs, (1.0 + level) / 2)
    inside = (y >= lo) & (y <= hi)
    return inside.to(e.dtype).mean()


# --------------------------------------------------------------------------------------------
# two-sample distances
# --------------------------------------------------------------------------------------------


def energy_distance(x: ArrayLike, y: ArrayLike) -> torch.Tensor:
    """Energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` with Euclidean norms.

    V-statistic: every expectation is the mean over all pairs, ``i = j`` included (the
    convention of ``scipy.stats.energy_distance``, which returns the square root of this
    value, and of pertpy). Differentiable.

    Parameters
    ----------
    x, y
        Samples ``(n, d)`` and ``(m, d)``; 1-D inputs are scalar samples (``d = 1``).
    """
    a, b = _sample_pair(x, y)
    return 2 * _cdist(a, b).mean() - _cdist(a, a).mean() - _cdist(b, b).mean()


def _median_bandwidth(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    z = torch.cat([a, b]).detach()
    d = _cdist(z, z)
    iu = torch.triu_indices(len(z), len(z), offset=1, device=z.device)
    v = d[iu[0], iu[1]]
    k = v.numel()  # numpy's median: the mean of the two middle values when k is even
    med = (torch.kthvalue(v, (k + 1) // 2).values + torch.kthvalue(v, k // 2 + 1).values) / 2
    if not bool(med > 0):
        raise ValueError("median heuristic gave a zero bandwidth (too many identical samples)")
    return med


def mmd(
    x: ArrayLike,
    y: ArrayLike,
    *,
    kernel: str = "rbf",
    bandwidth: float | Sequence[float] | None = None,
    unbiased: bool = True,
) -> torch.Tensor:
    """Squared maximum mean discrepancy with a Gaussian RBF kernel (Gretton et al. 2012).

    ``k(a, b) = sum_s exp(-|a - b|^2 / (2 s^2))`` over the bandwidths ``s``.

    Parameters
    ----------
    x, y
        Samples ``(n, d)`` and ``(m, d)``; 1-D inputs are scalar samples (``d = 1``).
    kernel
        Only ``"rbf"``.
    bandwidth
        Kernel width ``s`` or a list of widths (kernels summed). ``None``: the median
        heuristic, ``s`` = median (numpy's, averaging the middle two) Euclidean distance
        over distinct pairs ``i < j`` of the pooled sample, treated as a constant (no gradient flows through it).
    unbiased
        ``True``: U-statistic (within-sample sums skip ``i = j``; may be slightly negative),
        needs ``n, m >= 2``. ``False``: V-statistic (all pairs), always ``>= 0``.
    """
    if kernel != "rbf":
        raise ValueError(f"kernel must be 'rbf', got {kernel!r}")
    a, b = _sample_pair(x, y)
    n, m = len(a), len(b)
    if unbiased and min(n, m) < 2:
        raise ValueError("the unbiased MMD needs at least 2 samples in x and in y")
    if bandwidth is None:
        bws = _median_bandwidth(a, b).reshape(1)
    else:
        bws = _param(bandwidth, "bandwidth", a).reshape(-1)
        if bws.numel() == 0:
            raise ValueError("bandwidth must not be empty")

    def gram(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        d2 = _cdist(u, v).square()
        return torch.exp(-d2.unsqueeze(-1) / (2 * bws.square())).sum(dim=-1)

    kxx, kyy, kxy = gram(a, a), gram(b, b), gram(a, b)
    if unbiased:
        # The diagonal is k(a, a) = number of bandwidths exactly.
        nb = bws.numel()
        txx = (kxx.sum() - nb * n) / (n * (n - 1))
        tyy = (kyy.sum() - nb * m) / (m * (m - 1))
    else:
        txx, tyy = kxx.mean(), kyy.mean()
    return txx + tyy - 2 * kxy.mean()


def _wasserstein_1d_pp(xs: torch.Tensor, ys: torch.Tensor, p: float) -> torch.Tensor:
    """Exact ``W_p^p`` between empirical measures; rows of ``xs``/``ys`` sorted (last axis)."""
    n, m = xs.shape[-1], ys.shape[-1]
    if n == m:
        return (xs - ys).abs().pow(p).mean(dim=-1)
    # Quantile functions are step functions with jumps at i/n and j/m: integrate exactly over
    # the merged partition of (0, 1).
    t = torch.cat(
        [torch.arange(n + 1, dtype=torch.float64) / n, torch.arange(m + 1, dtype=torch.float64) / m]
    )
    t = torch.unique(t)  # sorted
    widths = (t[1:] - t[:-1]).to(device=xs.device, dtype=xs.dtype)
    mid = (t[1:] + t[:-1]) / 2
    ix = torch.clamp((mid * n).floor().long(), max=n - 1).to(xs.device)
    iy = torch.clamp((mid * m).floor().long(), max=m - 1).to(xs.device)
    return ((xs[:, ix] - ys[:, iy]).abs().pow(p) * widths).sum(dim=-1)


def sliced_wasserstein(
    x: ArrayLike,
    y: ArrayLike,
    *,
    n_projections: int = 100,
    p: float = 2,
    generator: torch.Generator | None = None,
    projections: ArrayLike | None = None,
) -> torch.Tensor:
    """Monte-Carlo sliced Wasserstein distance ``SW_p`` (Bonneel et al. 2015).

    ``SW_p = (mean over directions theta of W_p^p(theta.x, theta.y))^(1/p)`` with directions
    uniform on the unit sphere. Each 1-D ``W_p^p`` is exact between the empirical measures
    of the projections: for equal sample sizes the mean of ``|x_(i) - y_(i)|^p`` over sorted
    projections; for unequal sizes the integral over ``t`` in (0, 1) of the difference of
    the two empirical quantile (step) functions, evaluated exactly on the merged partition
    ``{i/n} U {j/m}`` (no interpolation). Differentiable in ``x`` and ``y`` (except where
    ``SW_p`` is exactly 0, where the ``1/p`` root has no finite gradient).

    Parameters
    ----------
    x, y
        Samples ``(n, d)`` and ``(m, d)``; 1-D inputs are scalar samples (``d = 1``).
    n_projections
        Number of random directions.
    p
        Order, ``p >= 1``.
    generator
        Random stream for the directions (drawn on the generator's device, then moved).
    projections
        Explicit directions ``(L, d)`` (normalised here); overrides ``n_projections``.
    """
    if p < 1:
        raise ValueError(f"p must be >= 1, got {p}")
    a, b = _sample_pair(x, y)
    d = a.shape[1]
    if projections is None:
        if n_projections < 1:
            raise ValueError(f"n_projections must be >= 1, got {n_projections}")
        dev = generator.device if generator is not None else a.device
        theta = torch.randn(n_projections, d, generator=generator, device=dev, dtype=a.dtype)
        theta = theta.to(a.device)
    else:
        theta = _tensor(projections, "projections").to(device=a.device, dtype=a.dtype)
        if theta.ndim == 1:
            theta = theta[None]
        if theta.ndim != 2 or theta.shape[1] != d:
            raise ValueError(f"projections must be (L, {d}), got shape {tuple(theta.shape)}")
    norms = theta.norm(dim=1, keepdim=True)
    if bool((norms == 0).any()):
        raise ValueError("projections contains a zero direction")
    theta = theta / norms
    xs = (theta @ a.T).sort(dim=-1).values  # (L, n)
    ys = (theta @ b.T).sort(dim=-1).values
    return _wasserstein_1d_pp(xs, ys, p).mean().pow(1.0 / p)


def ks_statistic(
    x: ArrayLike, y: ArrayLike, *, alternative: str = "two-sided", method: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-sample Kolmogorov-Smirnov test per dimension (``scipy.stats.ks_2samp``).

    Parameters
    ----------
    x, y
        Samples ``(n, d)`` and ``(m, d)``; 1-D inputs are scalar samples (``d = 1``).
    alternative, method
        Passed to ``scipy.stats.ks_2samp``.

    Returns
    -------
    statistic, pvalue
        ``float64`` tensors of shape ``(d,)``. Not differentiable.
    """
    from scipy import stats

    a, b = _sample_pair(x, y)
    an = a.detach().cpu().double().numpy()
    bn = b.detach().cpu().double().numpy()
    res = [
        stats.ks_2samp(an[:, j], bn[:, j], alternative=alternative, method=method)
        for j in range(an.shape[1])
    ]
    stat = torch.as_tensor(np.array([r.statistic for r in res], dtype=np.float64))
    pval = torch.as_tensor(np.array([r.pvalue for r in res], dtype=np.float64))
    return stat, pval
