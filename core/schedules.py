"""Noise schedules (descending float64 sigma arrays ending in 0) and training-sigma samplers.

All schedules live in sigma space (``x = x0 + sigma * n``); VP and flow schedules are mapped
there with ``sigma = sqrt((1 - ab) / ab)`` and ``sigma = t / (1 - t)`` respectively.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "karras",
    "exponential",
    "vp_linear",
    "vp_cosine",
    "flow",
    "ddpm_alphas_cumprod",
    "ddpm_sigmas",
    "get_sigmas",
    "check_sigmas",
    "LogNormalSigma",
    "LogUniformSigma",
    "UniformTimeSigma",
    "DiscreteSigma",
    "refiner_levels",
    "denoiser_sigma_info",
    "default_sigmas",
    "DEFAULT_SIGMA_MAX_FACTOR",
    "DEFAULT_SIGMA_MIN_FACTOR",
    "DEFAULT_RHO",
    "DEFAULT_KNEE_FACTOR",
    "DEFAULT_TABLE",
    "start_std",
]


def _finish(sig: Tensor) -> Tensor:
    return torch.cat([sig.to(torch.float64), sig.new_zeros(1, dtype=torch.float64)])


def _check_n(n: int) -> None:
    if int(n) != n or n < 1:
        raise ValueError(f"n (number of steps) must be a positive integer, got {n}")


def karras(
    n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, *, rho: float = 7.0
) -> Tensor:
    """EDM schedule: ``(s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho``, then 0."""
    _check_n(n)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _finish((hi + ramp * (lo - hi)) ** rho)


def exponential(
    n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, *, knee: float | None = None
) -> Tensor:
    """Log-linear schedule from ``sigma_max`` to ``sigma_min``, then 0.

    With ``knee`` (``sigma_min < knee < sigma_max``, ``n >= 3``) the first step goes straight
    from ``sigma_max`` to ``knee`` and the other ``n - 1`` levels are log-linear from ``knee``
    to ``sigma_min``: far above the data's scale the denoiser is close to the data mean and one
    step crosses that range, the shape of the schedules Align Your Steps optimises (Sabour et
    al. 2024, "Align Your Steps", their Fig. 3 and published 10-step schedules).
    """
    _check_n(n)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    if knee is None or n < 3 or not sigma_min < knee < sigma_max:
        top, levels = None, n
    else:
        top, levels, sigma_max = sigma_max, n - 1, knee
    s = torch.linspace(math.log(sigma_max), math.log(sigma_min), levels, dtype=torch.float64).exp()
    return _finish(s if top is None else torch.cat([s.new_tensor([top]), s]))


def vp_linear(
    n: int, *, beta_min: float = 0.1, beta_max: float = 20.0, eps_t: float = 1e-3
) -> Tensor:
    """Continuous VP (Song et al.) with linear beta: ``sigma(t) = sqrt(exp(bd t^2/2 + bmin t) - 1)``,
    ``t`` uniform from 1 to ``eps_t``."""
    _check_n(n)
    t = torch.linspace(1, eps_t, n, dtype=torch.float64)
    return _finish(torch.special.expm1(0.5 * (beta_max - beta_min) * t**2 + beta_min * t).sqrt())


def vp_cosine(n: int, *, s: float = 0.008, sigma_max: float = 80.0, eps_t: float = 1e-4) -> Tensor:
    """Cosine schedule (Nichol & Dhariwal): ``ab(t) = cos^2((t+s)/(1+s) pi/2) / cos^2(s/(1+s) pi/2)``.

    ``t`` is uniform from ``t_max`` to ``eps_t``, with ``t_max`` where ``sigma = sigma_max``
    (``ab(1) = 0`` would give an infinite sigma).
    """
    _check_n(n)

    def sig(t: Tensor) -> Tensor:
        ab = (
            torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
            / math.cos(s / (1 + s) * math.pi / 2) ** 2
        )
        return ((1 - ab) / ab).sqrt()

    # invert sigma(t) = sigma_max: ab = 1/(1+sigma^2)
    ab_max = 1 / (1 + sigma_max**2)
    c0 = math.cos(s / (1 + s) * math.pi / 2)
    t_max = min(1.0, math.acos(math.sqrt(ab_max) * c0) * 2 / math.pi * (1 + s) - s)
    return _finish(sig(torch.linspace(t_max, eps_t, n, dtype=torch.float64)))


def flow(n: int, *, t_max: float = 0.999, t_min: float = 1e-3, shift: float = 1.0) -> Tensor:
    """Rectified-flow schedule: ``t`` uniform in ``[t_max, t_min]`` (optionally shifted as SD3,
    ``t' = shift t / (1 + (shift-1) t)``), mapped to ``sigma = t/(1-t)``."""
    _check_n(n)
    if not 0 < t_min < t_max < 1:
        raise ValueError(f"need 0 < t_min < t_max < 1, got {t_min}, {t_max}")
    t = torch.linspace(t_max, t_min, n, dtype=torch.float64)
    t = shift * t / (1 + (shift - 1) * t)
    return _finish(t / (1 - t))


def ddpm_alphas_cumprod(
    num_train_timesteps: int = 1000,
    *,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    kind: str = "linear",
) -> Tensor:
    """Discrete DDPM ``alphas_cumprod`` table (``linear``, ``scaled_linear`` or ``cosine``)."""
    T = num_train_timesteps
    if kind == "linear":
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    elif kind == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    elif kind == "cosine":
        f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        betas = torch.tensor(
            [min(1 - f(i + 1) / f(i), 0.999) for i in range(T)], dtype=torch.float64
        )
    else:
        raise ValueError(f"kind must be 'linear', 'scaled_linear' or 'cosine', got {kind!r}")
    return torch.cumprod(1 - betas, 0)


def ddpm_sigmas(alphas_cumprod: Tensor, n: int, *, spacing: str = "leading", steps_offset: int = 0):
    """Sigmas at the discrete timesteps a DDPM/DDIM sampler with ``n`` steps visits.

    ``spacing`` follows diffusers: ``leading`` (``arange(n) * (T // n) + offset``), ``trailing``
    or ``linspace``. Returns ``(sigmas, timesteps)``, sigmas descending and ending in 0.
    """
    _check_n(n)
    ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    T = len(ac)
    if spacing == "leading":
        ts = (torch.arange(n) * (T // n)).flip(0) + steps_offset
    elif spacing == "trailing":
        ts = (torch.arange(T, 0, -T / n).round() - 1).long()
    elif spacing == "linspace":
        ts = torch.linspace(0, T - 1, n, dtype=torch.float64).round().long().flip(0)
    else:
        raise ValueError(f"spacing must be 'leading', 'trailing' or 'linspace', got {spacing!r}")
    ts = ts.long()
    if n > T:
        raise ValueError(f"n={n} steps exceeds the {T} training timesteps")
    if int(ts.min()) < 0 or int(ts.max()) >= T:
        raise ValueError(
            f"timesteps {int(ts.min())}..{int(ts.max())} fall outside [0, {T}) "
            f"(spacing={spacing!r}, steps_offset={steps_offset})"
        )
    a = ac[ts]
    return _finish(((1 - a) / a).sqrt()), ts


def get_sigmas(name: str, n: int, **kwargs) -> Tensor:
    """Schedule by name: ``karras``, ``exponential``, ``vp_linear``, ``vp_cosine`` or ``flow``."""
    table = {
        "karras": karras,
        "exponential": exponential,
        "vp_linear": vp_linear,
        "vp_cosine": vp_cosine,
        "flow": flow,
    }
    if name not in table:
        raise ValueError(f"unknown schedule {name!r}; choose from {sorted(table)}")
    return table[name](n, **kwargs)


def check_sigmas(sigmas: Tensor) -> Tensor:
    """Validate a sampling schedule: 1-D, finite, >= 0, strictly descending; returns float64."""
    sigmas = torch.as_tensor(sigmas)
    if sigmas.dim() != 1 or len(sigmas) < 2:
        raise ValueError(
            f"sigmas must be 1-D with at least 2 entries, got shape {tuple(sigmas.shape)}"
        )
    s = sigmas.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(s).all()):
        raise ValueError("sigmas contain NaN or inf")
    if bool((s < 0).any()):
        raise ValueError("sigmas must be non-negative")
    if not bool((s[1:] < s[:-1]).all()):
        bad = int(torch.nonzero(s[1:] >= s[:-1])[0])
        raise ValueError(
            f"sigmas must be strictly descending; sigmas[{bad}]={s[bad]:.6g} <= sigmas[{bad + 1}]={s[bad + 1]:.6g}"
        )
    return s


class LogNormalSigma:
    """Training sigmas ``exp(N(p_mean, p_std^2))`` (EDM default -1.2, 1.2)."""

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2) -> None:
        self.p_mean, self.p_std = p_mean, p_std

    def __call__(self, n: int, rng, *, device=None) -> Tensor:
        return (rng.randn((n,), device=device) * self.p_std + self.p_mean).exp()


class LogUniformSigma:
    """Training sigmas log-uniform in ``[sigma_min, sigma_max]``."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0) -> None:
        self.lo, self.hi = math.log(sigma_min), math.log(sigma_max)

    def __call__(self, n: int, rng, *, device=None) -> Tensor:
        return (rng.rand((n,), device=device) * (self.hi - self.lo) + self.lo).exp()


class UniformTimeSigma:
    """Training sigmas from uniform time: VP linear (``kind='vp'``) or flow (``kind='flow'``)."""

    def __init__(
        self,
        kind: str = "vp",
        *,
        eps_t: float = 1e-3,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        t_max: float = 0.999,
    ) -> None:
        if kind not in ("vp", "flow"):
            raise ValueError(f"kind must be 'vp' or 'flow', got {kind!r}")
        self.kind, self.eps_t, self.bmin, self.bmax, self.t_max = (
            kind,
            eps_t,
            beta_min,
            beta_max,
            t_max,
        )

    def __call__(self, n: int, rng, *, device=None) -> Tensor:
        u = rng.rand((n,), device=device)
        if self.kind == "vp":
            t = self.eps_t + (1 - self.eps_t) * u
            return torch.special.expm1(0.5 * (self.bmax - self.bmin) * t**2 + self.bmin * t).sqrt()
        t = self.eps_t + (self.t_max - self.eps_t) * u
        return t / (1 - t)


def refiner_levels(k: int, *, sigma_min: float, sigma_max: float = 80.0) -> list[float]:
    """PDE-Refiner's noise levels (Lippe et al. 2023): ``sigma_max`` then ``sigma_min**(j/k)``.

    Level 0 (``sigma_max``) makes the denoiser a one-shot regression of the clean sample from
    the condition; levels ``1..k`` decay geometrically from ``sigma_min**(1/k)`` to
    ``sigma_min`` and refine ever smaller-amplitude (in practice higher-frequency) content.
    The same list, followed by 0, is the sampling schedule (``torch.tensor(levels + [0.0])``).
    """
    _check_n(k)
    if not 0 < sigma_min < 1:
        raise ValueError(f"sigma_min must be in (0, 1), got {sigma_min}")
    if sigma_max <= sigma_min ** (1 / k):
        raise ValueError(f"sigma_max={sigma_max} must exceed the first refinement level")
    return [float(sigma_max)] + [float(sigma_min ** (j / k)) for j in range(1, k + 1)]


class DiscreteSigma:
    """Training sigmas drawn from a fixed set of ``levels`` with probabilities ``probs``.

    For samplers that only ever visit those levels, e.g. :func:`refiner_levels`, where
    PDE-Refiner trains each level with equal probability; ``probs`` (default uniform) can put
    more weight on the regression level.
    """

    def __init__(self, levels: list[float], probs: list[float] | None = None) -> None:
        if not levels or any(s <= 0 for s in levels):
            raise ValueError(f"levels must be a non-empty list of positive sigmas, got {levels}")
        p = [1.0] * len(levels) if probs is None else list(probs)
        if len(p) != len(levels) or any(v < 0 for v in p) or sum(p) <= 0:
            raise ValueError(f"probs must be {len(levels)} non-negative weights, got {probs}")
        self.levels = torch.tensor(levels, dtype=torch.float64)
        self.cdf = torch.tensor(p, dtype=torch.float64).cumsum(0) / sum(p)

    def __call__(self, n: int, rng, *, device=None) -> Tensor:
        u = rng.rand((n,), device=device, dtype=torch.float64)
        idx = torch.searchsorted(self.cdf.to(u.device), u, right=True).clamp_max(len(self.cdf) - 1)
        return self.levels.to(u.device)[idx].float()


# The default schedule's shape, chosen on validation mixtures other than the bar's
# (benchmarks/default_schedule_selection.py -> results/default_schedule_selection.json: log-linear
# from 20 sigma_data had 0.69x the geometric-mean energy distance of Karras rho=7 from 10
# sigma_data, the previous default, over 4 mixtures at 5 and 10 NFE). A knee (first step to
# 3 sigma_data, from 80 sigma_data) scored 0.75x better still on those 4 mixtures but was
# worse on both bar mixtures (at 10 NFE 0.35x and 0.24x diffusers instead of 0.24x and 0.02x):
# UniPC's multistep history spans the one very long step; it is not the default.
DEFAULT_SIGMA_MAX_FACTOR = 20.0
DEFAULT_SIGMA_MIN_FACTOR = 0.02
DEFAULT_RHO = math.inf  # Karras' rho -> inf limit: log-linear ("uniform logSNR") spacing
DEFAULT_KNEE_FACTOR: float | None = None  # log-linear only: first step to knee * sigma_data
# Few-step rows (levels above the final 0, in units of sigma_data) that replace the log-linear
# spacing for these step counts: fitted for UniPC's ODE accuracy, pooled over exact-score
# Gaussian mixtures and stationary Gaussian fields (the second-order model of images), and
# adopted per step count only where they beat log-linear on both validation families, mixtures
# V1-V4 by energy distance and fields W1-W4 by ODE error (the bar's mixtures unseen;
# benchmarks/default_table_selection.py -> results/default_table_selection.json). Ratios to
# log-linear, mixtures / fields: 2 steps 0.95 / 0.75, 4 steps 0.85 / 0.85, 6 steps 0.73 / 0.02,
# 7 steps 0.88 / 0.003. At 3, 5 and 8-10 steps no row won on both families (at 5 steps the
# fields' row is 0.11x on fields and 1.37x on mixtures; a row fitted on mixtures alone was
# 0.81x on mixtures and 2-5x worse on fields), so log-linear stays there. Like Align Your
# Steps' shipped tables (Sabour et al. 2024).
DEFAULT_TABLE: dict[int, tuple[float, ...]] = {
    2: (20, 1.22776),
    4: (20, 3.71203, 1.31004, 0.243854),
    6: (20, 6.36808, 1.67361, 0.50022, 0.202341, 0.075587),
    7: (20, 7.71312, 2.29785, 0.866629, 0.307208, 0.177994, 0.0712504),
}
_WRAPPED = ("denoiser", "model", "module", "inner")


def _find_attr(obj: Any, name: str, depth: int = 4) -> Any:
    """``obj.name``, looking through up to ``depth`` wrapper attributes (``denoiser``, ...)."""
    for _ in range(depth + 1):
        val = getattr(obj, name, None)
        if val is not None:
            return val
        obj = next((getattr(obj, w) for w in _WRAPPED if getattr(obj, w, None) is not None), None)
        if obj is None:
            return None
    return None


def denoiser_sigma_info(denoiser: Any) -> dict[str, float | None]:
    """What a denoiser says about its scale: ``sigma_data`` and its training sigma range.

    ``sigma_data`` is the attribute of that name (:class:`~diffsci.core.denoisers.
    KarrasDenoiser`, or any wrapper exposing it). The training range is, in order: explicit
    ``sigma_min``/``sigma_max`` attributes (:class:`~diffsci.core.denoisers.VPDenoiser`'s
    table), a :class:`LogUniformSigma` ``train_sigma`` (its bounds) or a
    :class:`LogNormalSigma` one (``exp(p_mean +- 3 p_std)``). Unknown values are ``None``.
    """
    sd = _find_attr(denoiser, "sigma_data")
    lo, hi = _find_attr(denoiser, "sigma_min"), _find_attr(denoiser, "sigma_max")
    train = _find_attr(denoiser, "train_sigma")
    if isinstance(train, LogUniformSigma):
        lo, hi = math.exp(train.lo), math.exp(train.hi)
    elif isinstance(train, LogNormalSigma):
        lo = math.exp(train.p_mean - 3 * train.p_std)
        hi = math.exp(train.p_mean + 3 * train.p_std)

    def pos(v: Any) -> float | None:
        return float(v) if isinstance(v, int | float) and 0 < v < math.inf else None

    return {"sigma_data": pos(sd), "train_sigma_min": pos(lo), "train_sigma_max": pos(hi)}


def default_sigmas(
    denoiser: Any,
    n: int,
    *,
    sigma_data: float | None = None,
    rho: float = DEFAULT_RHO,
    sampler: str = "unipc",
    table: bool = True,
) -> Tensor:
    """The schedule :func:`~diffsci.core.samplers.sample` uses when given no sigmas.

    From ``DEFAULT_SIGMA_MAX_FACTOR * sigma_data`` down to a last level of a few hundredths of
    ``sigma_data``, then 0, clipped to the denoiser's training range when it is known
    (:func:`denoiser_sigma_info`): the range scales with the data, where fixed bounds waste the
    few steps of a short schedule on noise levels far above the data's scale (the start is then
    drawn with the marginal's variance ``sigma_max^2 + sigma_data^2``, see ``sample``). With no
    ``sigma_data`` (argument or attribute) it is EDM's ``karras(n)`` over 0.002-80.

    Parameters
    ----------
    denoiser, n
        The denoiser (for its ``sigma_data`` and training range) and the number of steps.
    sigma_data
        Overrides the denoiser's.
    rho
        Karras et al. (2022, EDM)'s exponent; the default ``rho -> inf`` is log-linear spacing
        (uniform in logSNR, which Lu et al. 2022, DPM-Solver, recommend for few steps), down to
        ``DEFAULT_SIGMA_MIN_FACTOR * sigma_data``, raised below 10 steps (``_min_factor``);
        with ``DEFAULT_KNEE_FACTOR`` set, below a first step to that many ``sigma_data``.
    sampler, table
        The solver that will run the schedule. For UniPC and the step counts in
        ``DEFAULT_TABLE`` (rho left at its default, ``table`` true) the spacing is that row
        (fitted and chosen on validation mixtures, see its comment; its own last level; a
        clipped range keeps the row's relative log spacing).
    """
    _check_n(n)
    info = denoiser_sigma_info(denoiser)
    sd = sigma_data if sigma_data is not None else info["sigma_data"]
    if sd is None:
        return karras(n, rho=7.0 if math.isinf(rho) else rho)
    if not sd > 0:
        raise ValueError(f"sigma_data must be > 0, got {sd}")
    tabled = table and sampler == "unipc" and math.isinf(rho) and DEFAULT_KNEE_FACTOR is None
    row = DEFAULT_TABLE.get(n) if tabled else None
    top, bottom = DEFAULT_SIGMA_MAX_FACTOR, _min_factor(n) if row is None else row[-1]
    hi, lo = top * sd, bottom * sd
    if info["train_sigma_max"] is not None:
        hi = min(hi, info["train_sigma_max"])
    if info["train_sigma_min"] is not None:
        lo = max(lo, info["train_sigma_min"])
    if not lo < hi:
        lo, hi = bottom * sd, top * sd
    if row is not None:
        return _table_schedule(row, hi, lo)
    if not math.isinf(rho):
        return karras(n, lo, hi, rho=rho)
    knee = None if DEFAULT_KNEE_FACTOR is None else DEFAULT_KNEE_FACTOR * sd
    return exponential(n, lo, hi, knee=knee)


def _table_schedule(row: tuple[float, ...], hi: float, lo: float) -> Tensor:
    """``row``'s relative log spacing between ``hi`` and ``lo``, then 0 (``row * sigma_data``
    itself when the range is the row's own)."""
    logs = torch.tensor(row, dtype=torch.float64).log()  # rows have 2 or more levels
    frac = (logs[0] - logs) / (logs[0] - logs[-1])
    return _finish(torch.exp(math.log(hi) - frac * (math.log(hi) - math.log(lo))))


def start_std(sigmas: Tensor, sigma_data: float | None) -> float:
    """Standard deviation of the first state of a schedule ``sigmas``: the noisy marginal's
    ``sqrt(sigma_max^2 + sigma_data^2)`` (a :func:`default_sigmas` top a few ``sigma_data``
    up is not much larger than the data's scale), or ``sigma_max`` with no ``sigma_data``."""
    top = float(sigmas[0])
    return top if sigma_data is None else math.hypot(top, sigma_data)


def _min_factor(n: int) -> float:
    """Last non-zero level over ``sigma_data``: raised below 10 steps as ``(10/n)^3``, capped
    at 0.5, so a short schedule does not spend a step on noise far below the data's scale."""
    return min(0.5, DEFAULT_SIGMA_MIN_FACTOR * max(1.0, (10 / n) ** 3))
