"""The few-step solvers (UniPC, DPM-Solver++(3M), iPNDM): exactness against references, order
of convergence, negative controls, and the default schedule.

The statistical checks over every sampler (1-D and 8-D mixtures, determinism, callbacks,
shapes, NFE) run in ``test_samplers.py``, parametrised over :data:`SAMPLERS`; this file adds
what is specific to the multistep solvers:

* UniPC and DPM-Solver++(3M) reproduce diffusers' ``UniPCMultistepScheduler`` and
  ``DPMSolverMultistepScheduler(solver_order=3)`` on the same sigmas, exact denoiser in both
  (diffusers runs in VP space, ``x_vp = x / sqrt(1 + sigma^2)``; both end at ``sigma = 0``).
* Observed orders on the 1-D mixture against the RK4 reference of ``test_samplers.py``.
* Broken variants (a wrong corrector weight, the standard 3M coefficient, fixed iPNDM weights
  on a non-uniform grid) fail where the correct solvers pass.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_samplers import GM1, GM8, N1, FastExact, _matches, _orders, _run, _start
from torch import Tensor

from diffsci.core import samplers as smp
from diffsci.core.samplers import SAMPLERS, sample_dpmpp_3m, sample_ipndm, sample_unipc
from diffsci.core.schedules import karras

# --------------------------------------------------------------------------------------------
# against diffusers (same sigmas, same exact denoiser)
# --------------------------------------------------------------------------------------------


def _run_diffusers(sched, den: FastExact, x: Tensor, sig: Tensor) -> Tensor:
    """diffusers' ``step()`` loop on our ``sig`` (set on the scheduler), x0-prediction."""
    sched.set_timesteps(len(sig) - 1)
    sched.sigmas = sig.clone()
    xv = x / math.sqrt(1 + float(sig[0]) ** 2)
    for i, t in enumerate(sched.timesteps):
        s = float(sig[i])
        m = den(xv * math.sqrt(1 + s * s), torch.full((x.shape[0],), s, dtype=torch.float64))
        xv = sched.step(m, t, xv).prev_sample
    return xv * math.sqrt(1 + float(sig[-1]) ** 2)


@pytest.mark.parametrize("steps", [4, 7, 12])
@pytest.mark.parametrize(("order", "variant"), [(2, "bh2"), (3, "bh2"), (2, "bh1"), (3, "bh1")])
def test_unipc_equals_diffusers(steps: int, order: int, variant: str) -> None:
    diffusers = pytest.importorskip("diffusers")
    x, _ = _start(GM8, 200, seed=0, sigma_max=14.0)
    den = FastExact(GM8)
    # diffusers' bh1 turns NaN on a final sigma of 0 (B(h) = h = -inf), so bh1 ends at sigma_min
    final = "zero" if variant == "bh2" else "sigma_min"
    sig = karras(steps, 0.03, 14.0)
    if final == "sigma_min":
        sig = sig[:-1]
    sched = diffusers.UniPCMultistepScheduler(
        prediction_type="sample",
        solver_order=order,
        solver_type=variant,
        final_sigmas_type=final,
    )
    theirs = _run_diffusers(sched, den, x, sig)
    ours = sample_unipc(den, x, sig, order=order, variant=variant)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)


@pytest.mark.parametrize("steps", [5, 8, 12])
def test_dpmpp_3m_compat_equals_diffusers(steps: int) -> None:
    """``compat=True`` is diffusers' (and k-diffusion's) third-order update; diffusers' own
    second-order step is the ``heun`` form k-diffusion uses. diffusers keeps float32 lambdas,
    hence the tolerance."""
    diffusers = pytest.importorskip("diffusers")
    x, _ = _start(GM8, 200, seed=0, sigma_max=14.0)
    den, sig = FastExact(GM8), karras(steps, 0.03, 14.0)
    sched = diffusers.DPMSolverMultistepScheduler(
        prediction_type="sample",
        solver_order=3,
        algorithm_type="dpmsolver++",
        solver_type="heun",
        final_sigmas_type="zero",
    )
    theirs = _run_diffusers(sched, den, x, sig)
    torch.testing.assert_close(sample_dpmpp_3m(den, x, sig, compat=True), theirs, rtol=0, atol=1e-4)
    # the default (exact third-order weight) differs from it from the third step on
    assert (sample_dpmpp_3m(den, x, sig) - theirs).abs().max().item() > 1e-3


def test_dpmpp_3m_sde_eta0_is_dpmpp_3m() -> None:
    x, _ = _start(GM8, 200, seed=0)
    den, sig = FastExact(GM8), karras(15)
    torch.testing.assert_close(
        SAMPLERS["dpmpp_3m_sde"](den, x, sig, eta=0.0), sample_dpmpp_3m(den, x, sig), rtol=0, atol=0
    )


def _ipndm_fixed(den, x: Tensor, sigmas: Tensor, *, generator=None) -> Tensor:
    """iPNDM with the fixed (uniform-step) Adams-Bashforth weights, as in Zhang & Chen."""
    weights = [
        [1.0],
        [1.5, -0.5],
        [23 / 12, -16 / 12, 5 / 12],
        [55 / 24, -59 / 24, 37 / 24, -9 / 24],
    ]
    s, eps = sigmas.tolist(), []
    for i in range(len(s) - 1):
        d = den(x, x.new_full((x.shape[0],), s[i]))
        if s[i + 1] == 0:
            return d
        eps = [(x - d) / s[i], *eps[:3]]
        k = min(len(eps), len(s) - 1 - i)
        x = x + (s[i + 1] - s[i]) * sum(w * e for w, e in zip(weights[k - 1], eps, strict=False))
    return x


def test_ipndm_on_a_uniform_grid_is_fixed_weight_ipndm() -> None:
    x, _ = _start(GM8, 200, seed=0, sigma_max=10.0)
    den = FastExact(GM8)
    sig = torch.cat([torch.linspace(10.0, 0.5, 12, dtype=torch.float64), torch.zeros(1)])
    torch.testing.assert_close(
        sample_ipndm(den, x, sig), _ipndm_fixed(den, x, sig), rtol=0, atol=1e-12
    )


# --------------------------------------------------------------------------------------------
# order of convergence (1-D mixture, RK4 reference; N = 40, 80, 160)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "opts", "lo", "hi"),
    [
        ("unipc", {}, 2.8, 3.6),  # UniPC-2: predictor order 2 + corrector = order 3
        ("unipc", {"order": 3}, 3.5, 5.0),
        ("unipc", {"corrector": False}, 1.8, 2.4),  # UniP-2 alone
        ("dpmpp_3m", {}, 2.8, 3.6),
        ("ipndm", {}, 3.2, 4.5),
        ("ipndm", {"max_order": 2}, 1.8, 2.3),
    ],
    ids=["unipc2", "unipc3", "unip2", "dpmpp_3m", "ipndm4", "ipndm2"],
)
def test_convergence_order(name: str, opts: dict, lo: float, hi: float) -> None:
    p = _orders(lambda d, x, s: SAMPLERS[name](d, x, s, **opts))
    assert np.all((p > lo) & (p < hi)), p


def test_order_catches_the_standard_3m_coefficient() -> None:
    """diffusers' and k-diffusion's 3M weight the second difference by ``phi_3`` where the
    Taylor expansion needs ``2 phi_3`` (their ``D2`` estimates ``h^2 D''/2``): second order."""
    p = _orders(lambda d, x, s: sample_dpmpp_3m(d, x, s, compat=True))
    assert np.all(p < 2.3), p


def _ipndm_fixed_nonuniform(den, x, sigmas, *, generator=None):
    return _ipndm_fixed(den, x, sigmas)


def test_order_catches_fixed_ipndm_weights_on_karras() -> None:
    # fixed weights assume equal steps: on the Karras grid the fourth-order method drops to
    # second order (measured 1.94, 1.97), where the variable-step weights keep > 3.2
    p = _orders(_ipndm_fixed_nonuniform)
    assert np.all(p < 2.5), p


def _unipc_bad_corrector(monkeypatch: pytest.MonkeyPatch, factor: float) -> None:
    """Patch UniC's weight on the new evaluation ``m_t`` to ``factor`` times its value (the
    weight of ``m_s`` absorbs the difference, so the update stays consistent)."""
    good = smp._unipc_coeffs

    def bad(lam, j, order, variant, corrector):
        a, c = good(lam, j, order, variant, corrector)
        if corrector:
            c = [c[0] + (1 - factor) * c[-1], *c[1:-1], factor * c[-1]]
        return a, c

    monkeypatch.setattr(smp, "_unipc_coeffs", bad)


def test_order_catches_bad_unipc_corrector(monkeypatch: pytest.MonkeyPatch) -> None:
    _unipc_bad_corrector(monkeypatch, 0.8)
    p = _orders(sample_unipc)
    assert np.all(p < 2.4), p


# --------------------------------------------------------------------------------------------
# statistical checks at few steps: the correct solvers pass where broken ones fail
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["unipc", "dpmpp_3m", "ipndm"])
def test_few_step_solvers_match_mixture_1d_at_20_steps(name: str) -> None:
    assert _matches(_run(name, GM1, N1, 20, seed=1), GM1)


def test_broken_unipc_fails_where_correct_one_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """At 25 steps (Karras 0.002-80) the correct UniPC passes (KS p 0.16-0.72 over seeds 1-4)
    and the corrector with its new-evaluation term's sign flipped fails (p < 1e-5)."""
    assert _matches(_run("unipc", GM1, N1, 25, seed=1), GM1)
    _unipc_bad_corrector(monkeypatch, -1.0)
    assert not _matches(_run("unipc", GM1, N1, 25, seed=1), GM1)
