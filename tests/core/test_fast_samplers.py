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

import json
import math

import numpy as np
import pytest
import torch
from test_samplers import GM1, GM8, N1, FastExact, _matches, _orders, _run, _start
from torch import Tensor

from diffsci.core import samplers as smp
from diffsci.core.analytic import GaussianMixture
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


GAUSS = GaussianMixture(torch.ones(1), torch.tensor([[0.3]]), torch.tensor([[[0.49]]]))


@pytest.mark.parametrize(
    ("name", "opts", "lo", "hi"),
    [
        ("unipc", {}, 2.8, 3.6),
        ("dpmpp_3m", {}, 2.8, 3.6),
        ("ipndm", {}, 3.2, 4.5),
        ("dpmpp_3m", {"compat": True}, 1.0, 2.0),
    ],
    ids=["unipc2", "dpmpp_3m", "ipndm4", "dpmpp_3m_compat"],
)
def test_convergence_order_on_a_gaussian(name: str, opts: dict, lo: float, hi: float) -> None:
    # N(0.3, 0.7^2): linear ODE; measured unipc 3.09, 3.05; dpmpp_3m 3.15, 3.07; ipndm 3.61,
    # 3.81; the standard 3M weight 1.42, 1.81
    p = _orders(lambda d, x, s: SAMPLERS[name](d, x, s, **opts), GAUSS, 1000)
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


# --------------------------------------------------------------------------------------------
# defaults: schedule from the denoiser's scale, sample() without sigmas, optimised schedules
# --------------------------------------------------------------------------------------------


class _Scaled(FastExact):
    def __init__(self, gm, sigma_data: float, **attrs: object) -> None:
        super().__init__(gm)
        self.sigma_data = sigma_data
        for k, v in attrs.items():
            setattr(self, k, v)


def test_default_sigmas_follow_sigma_data_and_training_range() -> None:
    from diffsci.core.denoisers import KarrasDenoiser
    from diffsci.core.schedules import (
        DEFAULT_SIGMA_MAX_FACTOR,
        LogNormalSigma,
        LogUniformSigma,
        default_sigmas,
        denoiser_sigma_info,
    )

    a, b = default_sigmas(_Scaled(GM8, 1.0), 10), default_sigmas(_Scaled(GM8, 3.0), 10)
    torch.testing.assert_close(b, 3 * a, rtol=1e-12, atol=0)  # scale-equivariant
    assert math.isclose(a[0].item(), DEFAULT_SIGMA_MAX_FACTOR) and a[-1].item() == 0.0
    # fewer steps: the last non-zero level is higher
    assert default_sigmas(_Scaled(GM8, 1.0), 5)[-2] > a[-2]
    # no sigma_data anywhere: EDM's range
    torch.testing.assert_close(default_sigmas(FastExact(GM8), 10), karras(10))
    # training range clips (KarrasDenoiser: sigma_data and train_sigma)
    net = torch.nn.Identity()
    kd = KarrasDenoiser(net, sigma_data=2.0, train_sigma=LogUniformSigma(0.1, 8.0))
    info = denoiser_sigma_info(kd)
    assert info["sigma_data"] == 2.0 and math.isclose(info["train_sigma_max"], 8.0)
    sig = default_sigmas(kd, 10)
    assert math.isclose(sig[0].item(), 8.0) and math.isclose(sig[-2].item(), 0.1)
    kd = KarrasDenoiser(net, sigma_data=0.5, train_sigma=LogNormalSigma(-1.2, 1.2))
    top = min(DEFAULT_SIGMA_MAX_FACTOR * 0.5, math.exp(-1.2 + 3 * 1.2))  # log-normal's +3 sd
    assert math.isclose(default_sigmas(kd, 10)[0].item(), top)
    with pytest.raises(ValueError, match="sigma_data"):
        default_sigmas(kd, 10, sigma_data=-1.0)


def test_default_table_rows_scale_with_sigma_data_and_keep_their_spacing_when_clipped() -> None:
    from diffsci.core.denoisers import KarrasDenoiser
    from diffsci.core.schedules import (
        DEFAULT_SIGMA_MAX_FACTOR,
        DEFAULT_TABLE,
        LogUniformSigma,
        default_sigmas,
        exponential,
    )

    for n, row in DEFAULT_TABLE.items():
        assert len(row) == n and row[0] == DEFAULT_SIGMA_MAX_FACTOR
        assert all(a > b > 0 for a, b in zip(row, row[1:], strict=False))
        sig = default_sigmas(_Scaled(GM8, 3.0), n)
        torch.testing.assert_close(sig[:-1], 3.0 * torch.tensor(row, dtype=torch.float64))
        assert sig[-1].item() == 0.0
    # table=False (or another rho) gives the log-linear / Karras spacing over the same range
    ll = default_sigmas(_Scaled(GM8, 1.0), 4, table=False)
    torch.testing.assert_close(ll, exponential(4, float(ll[-2]), DEFAULT_SIGMA_MAX_FACTOR))
    # a training range narrower than the row: same relative log spacing inside it
    row = torch.tensor(DEFAULT_TABLE[4], dtype=torch.float64)
    kd = KarrasDenoiser(torch.nn.Identity(), sigma_data=1.0, train_sigma=LogUniformSigma(0.3, 8.0))
    sig = default_sigmas(kd, 4)[:-1]
    assert math.isclose(sig[0].item(), 8.0) and math.isclose(sig[-1].item(), 0.3)
    frac = (row[0].log() - row.log()) / (row[0].log() - row[-1].log())
    torch.testing.assert_close((sig[0].log() - sig.log()) / (sig[0].log() - sig[-1].log()), frac)


def test_default_table_beats_log_linear_on_a_field_it_was_not_fitted_on() -> None:
    """UniPC's ODE error with each table row on a stationary Gaussian field (spectrum exponent
    2.2, k0 1.5: neither a fit nor a validation field of ``benchmarks/default_table_selection``)
    is below log-linear's (measured 0.02-0.8x); a table equal to log-linear scores 1x."""
    from benchmarks.default_table_selection import FitProblem
    from diffsci.core.schedules import DEFAULT_TABLE, default_sigmas

    prob = FitProblem((2.2, 1.5), samples=16)
    for n in DEFAULT_TABLE:
        table, ll = default_sigmas(prob.den, n), default_sigmas(prob.den, n, table=False)
        assert prob.log_error(table) < prob.log_error(ll) + math.log(0.9), n


def test_sample_without_sigmas_uses_the_defaults() -> None:
    from diffsci.core.samplers import DEFAULT_SAMPLER, sample
    from diffsci.core.schedules import default_sigmas

    den = _Scaled(GM8, 3.0)
    out = sample(
        den, (50, 8), steps=6, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    sig = default_sigmas(den, 6)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 8, generator=g, dtype=torch.float64) * math.hypot(float(sig[0]), 3.0)
    assert torch.equal(out, SAMPLERS[DEFAULT_SAMPLER](den, x, sig, generator=g))
    with pytest.raises(ValueError, match="not both"):
        sample(den, (5, 8), karras(5), steps=5)
    # with sigmas the old behaviour is kept: dpmpp_2m from randn * sigmas[0]
    g = torch.Generator().manual_seed(2)
    ref = SAMPLERS["dpmpp_2m"](den, torch.randn(5, 8, generator=g) * 80.0, karras(5))
    assert torch.equal(
        sample(den, (5, 8), karras(5), generator=torch.Generator().manual_seed(2)), ref
    )


def test_optimized_schedule_reduces_the_ode_error_and_is_cached() -> None:
    from diffsci.core import schedule_opt as so
    from diffsci.core.schedules import default_sigmas

    # the 8-D mixture of benchmarks/fast_sampling.py (means N(0, 9 I), component std 0.5)
    g = torch.Generator().manual_seed(0)
    means = 3.0 * torch.randn(4, 8, generator=g, dtype=torch.float64)
    gm = GaussianMixture(
        torch.ones(4), means, 0.25 * torch.eye(8, dtype=torch.float64).expand(4, 8, 8)
    )
    sd = math.hypot(3.0, 0.5)
    den, n = _Scaled(gm, sd), 5
    so.clear_cache()
    # from the log-linear schedule (the fitted DEFAULT_TABLE row is already near an optimum)
    start = default_sigmas(den, n, table=False)
    sig = so.optimize_sigmas(
        den, n, (8,), sigmas=start, n_samples=128, ref_steps=100, max_evals=120
    )
    assert sig.dtype == torch.float64 and len(sig) == n + 1 and sig[-1].item() == 0.0
    assert bool((sig[1:] < sig[:-1]).all())
    assert math.isclose(sig[0].item(), default_sigmas(den, n)[0].item(), rel_tol=1e-12)
    # evaluated on other starting points than the optimiser's
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    x = x * math.hypot(float(sig[0]), sd)
    ref = sample_unipc(den, x, karras(200, float(start[-2]) / 10, float(sig[0])))
    err_opt = (sample_unipc(den, x, sig) - ref).pow(2).mean().item()
    err_def = (sample_unipc(den, x, start) - ref).pow(2).mean().item()
    assert err_opt < 0.95 * err_def, (err_opt, err_def)  # measured 0.85x
    again = so.optimize_sigmas(
        den, n, (8,), sigmas=start, n_samples=128, ref_steps=100, max_evals=120
    )
    so._CACHE[den][(n, (8,), "unipc", 256, 200, 0)] = sig  # what sample(optimize=True) asks for
    assert torch.equal(again, sig)
    assert len(so._CACHE) == 1
    # sample(optimize=True) uses the cached schedule
    from diffsci.core.samplers import sample

    g = torch.Generator().manual_seed(3)
    out = sample(den, (20, 8), steps=n, optimize=True, generator=g, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(20, 8, generator=g, dtype=torch.float64) * math.hypot(float(sig[0]), sd)
    assert torch.equal(out, sample_unipc(den, x, sig))
    # params round trip
    th = so._params_from_schedule(sig)
    torch.testing.assert_close(so.schedule_from_params(th, float(sig[0])), sig)


def _disk_cached(tmp_path) -> tuple[torch.nn.Module, dict, Tensor]:
    """A small untrained network, the optimiser's settings with ``cache_dir=tmp_path`` and
    the 3-step schedule optimised (and written) with them, memory cache cleared before."""
    from diffsci.core import schedule_opt as so
    from diffsci.core.denoisers import KarrasDenoiser
    from diffsci.core.networks import MLPDenoiser

    torch.manual_seed(0)
    den = KarrasDenoiser(MLPDenoiser(2), sigma_data=0.5).eval()
    so.clear_cache()
    kw = dict(n_samples=8, ref_steps=20, max_evals=20, cache_dir=tmp_path, dtype=torch.float32)
    with torch.no_grad():
        sig = so.optimize_sigmas(den, 3, (2,), **kw)
    return den, kw, sig


def test_optimized_schedule_is_kept_on_disk_per_network_weights(tmp_path, monkeypatch) -> None:
    import copy

    from diffsci.core import schedule_opt as so
    from diffsci.core.samplers import sample

    den, kw, sig = _disk_cached(tmp_path)
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["sigmas"] == sig.tolist()
    # another process (empty memory cache), same weights in another object: read, not rerun
    so.clear_cache()

    def no_rerun(*a, **k):
        raise AssertionError("optimised again despite the file")

    monkeypatch.setattr(so, "minimize", no_rerun)
    twin = copy.deepcopy(den)
    assert so.weights_digest(twin) == so.weights_digest(den)
    assert torch.equal(so.optimize_sigmas(twin, 3, (2,), **kw), sig)
    # other weights are another model: their own file
    with torch.no_grad():
        next(twin.parameters()).add_(1.0)
    assert so.weights_digest(twin) != so.weights_digest(den)
    with pytest.raises(AssertionError, match="optimised again"):
        so.optimize_sigmas(twin, 3, (2,), **kw)
    with pytest.raises(ValueError, match="optimize=True"):
        sample(den, (4, 2), steps=3, schedule_cache=tmp_path)


def test_a_damaged_cached_schedule_is_optimised_again(tmp_path) -> None:
    from diffsci.core import schedule_opt as so

    den, kw, sig = _disk_cached(tmp_path)
    (path,) = tmp_path.glob("*.json")
    path.write_text('{"sigmas": [1.0, 2.0]')  # cut short
    so.clear_cache()
    with pytest.warns(UserWarning, match="unreadable cached schedule"), torch.no_grad():
        again = so.optimize_sigmas(den, 3, (2,), **kw)
    assert torch.equal(again, sig)  # the same optimisation (fixed seed), file rewritten
    assert json.loads(path.read_text())["sigmas"] == sig.tolist()
