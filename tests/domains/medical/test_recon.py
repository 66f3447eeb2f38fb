"""Reconstruction pieces: the Hermitian-completed MRI operator, CT's CG pseudo-inverse, the
slice-axis TV step, and posterior sampling that meets the data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffsci.core.operators import check_adjoint
from diffsci.domains.medical import operators as ops
from diffsci.domains.medical.models import AffineData, ClampDenoised, SliceTV, tv1d_prox
from diffsci.domains.medical.operators import CGPinv, RealImageMRI, reflect
from diffsci.domains.medical.posterior import posterior_reconstruct


class _Flat(torch.nn.Module):
    """Exact denoiser of an isotropic Gaussian prior (std 0.5); records the sigmas it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.sigmas: list[float] = []

    def forward(self, x, sigma, cond=None):
        self.sigmas.append(float(sigma.reshape(-1)[0]))
        return x * 0.25 / (0.25 + sigma.reshape(-1, 1, 1, 1) ** 2)


def _mri_case(shape):
    """A 4x equispaced single-coil case: operator, two images, their k-space, the data."""
    m = ops.kspace_mask(shape, acceleration=4, kind="equispaced", seed=0)
    op = RealImageMRI(m, shape)
    x = torch.rand(2, 1, *shape, generator=torch.Generator().manual_seed(3))
    k = ops.fft2c(x)
    return op, x, k, op.complete(op.measured * k)


@pytest.mark.parametrize("shape", [(32, 32), (33, 31), (64, 48)])
def test_real_mri_adjoint_completion_and_projection(shape):
    m = ops.kspace_mask(shape, acceleration=4, kind="random", seed=1)
    op = RealImageMRI(m, shape)
    check_adjoint(op, (2, 1, *shape))
    # the support is the mask united with its reflection, and is itself symmetric
    assert torch.equal(op.support, reflect(op.support))
    assert op.support.sum() >= op.measured.sum()
    x = torch.rand(3, 1, *shape, generator=torch.Generator().manual_seed(0))
    k = ops.fft2c(x)
    y = op.complete(op.measured * k)
    torch.testing.assert_close(y, op.support * k, atol=1e-5, rtol=0)
    d = torch.rand(3, 1, *shape, generator=torch.Generator().manual_seed(1))
    proj = d + op.pinv(y - op.forward(d))
    assert proj.dtype == torch.float32
    assert float(op.measured_residual(proj, k).max()) < 1e-5
    # a projection: applying it twice changes nothing
    again = proj + op.pinv(y - op.forward(proj))
    torch.testing.assert_close(again, proj, atol=1e-5, rtol=0)


def test_mask_must_be_binary():
    with pytest.raises(ValueError, match="0 and 1"):
        RealImageMRI(torch.full((8,), 0.5), (8, 8))


def test_cg_pinv_projects_onto_ct_data():
    n = 24
    radon = ops.ParallelBeamRadon(n, ops.sparse_view_angles(6))
    op = CGPinv(radon, iters=200)
    x = torch.rand(2, 1, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = radon.forward(x)
    d = torch.zeros_like(x)
    proj = d + op.pinv(y - radon.forward(d))
    rel = (radon.forward(proj) - y).norm() / y.norm()
    assert float(rel) < 1e-4


def test_tv1d_prox_limits_and_optimality():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(12, 3, generator=g, dtype=torch.float64)
    assert torch.equal(tv1d_prox(u, 0.0), u)
    # huge weight -> the mean along the axis
    torch.testing.assert_close(
        tv1d_prox(u, 1e3, iters=3000), u.mean(0, keepdim=True).expand_as(u), atol=1e-3, rtol=0
    )

    def obj(v, lam=0.3):
        return 0.5 * ((v - u) ** 2).sum() + lam * (v[1:] - v[:-1]).abs().sum()

    v = tv1d_prox(u, 0.3, iters=2000)
    for _ in range(50):  # no random perturbation does better
        w = v + 1e-3 * torch.randn(v.shape, generator=g, dtype=v.dtype)
        assert obj(w) >= obj(v) - 1e-9
    assert obj(v) < obj(u)


@pytest.mark.parametrize("clip", [False, True])
def test_posterior_samples_meet_mri_data_exactly(clip):
    shape = (16, 16)
    op, x, k, y = _mri_case(shape)
    s = posterior_reconstruct(
        _Flat(),
        op,
        y,
        (2, 1, *shape),
        samples=3,
        steps=10,
        generator=torch.Generator().manual_seed(0),
        clip_denoised=clip,
    )
    assert s.shape == (3, 2, 1, *shape)
    assert float(op.measured_residual(s.flatten(0, 1), k.repeat(3, 1, 1, 1)).max()) < 1e-5
    assert float(s.std(0).mean()) > 1e-3  # the samples differ off the data


def test_clamp_denoised_keeps_the_estimate_in_range():
    den = ClampDenoised(lambda x, s, c=None: 3 * x)
    x = torch.linspace(-1, 1, 9).reshape(1, 1, 3, 3)
    out = den(x, torch.ones(1))
    assert float(out.min()) == -1.0 and float(out.max()) == 1.0
    inside = (3 * x).abs() <= 1
    torch.testing.assert_close(out[inside], 3 * x[inside])
    with pytest.raises(ValueError, match="lo < hi"):
        ClampDenoised(den, 1.0, -1.0)


def test_slice_tv_smooths_along_slices_only():
    den = SliceTV(lambda x, s, c=None: x, 10.0, iters=500)
    x = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    out = den(x, torch.ones(6))
    assert float((out[1:] - out[:-1]).abs().sum()) < 0.05 * float((x[1:] - x[:-1]).abs().sum())
    torch.testing.assert_close(out.mean(0), x.mean(0), atol=1e-4, rtol=0)


def test_affine_data_maps_measurements_to_the_prior_variable():
    op = RealImageMRI(np.ones(8, dtype=np.float32), (8, 8))
    x = torch.rand(1, 1, 8, 8)
    z = AffineData.to_model(x)
    torch.testing.assert_close(
        op.forward(z), AffineData.data(op, op.forward(x), (1, 1, 8, 8)), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(AffineData.to_image(z), x)


@pytest.mark.parametrize("method", ["dps", "prox"])
def test_noisy_data_methods_fit_to_the_noise_level(method):
    shape = (16, 16)
    op, x, k, y = _mri_case(shape)
    s = posterior_reconstruct(
        _Flat(),
        op,
        y,
        (2, 1, *shape),
        samples=2,
        steps=20,
        method=method,
        noise_std=0.05,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.isfinite(s).all()
    # the data pull the samples far closer than the prior mean (0.5) alone would be
    prior_only = float(op.measured_residual(torch.full_like(x, 0.5), k).mean())
    assert (
        float(op.measured_residual(s.flatten(0, 1), k.repeat(2, 1, 1, 1)).mean()) < 0.5 * prior_only
    )


def test_method_and_noise_are_checked():
    op = RealImageMRI(torch.ones(8), (8, 8))
    y = torch.zeros(1, 1, 8, 8, dtype=torch.complex64)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="noise_std > 0"):
        posterior_reconstruct(
            lambda x, s, c=None: x, op, y, (1, 1, 8, 8), samples=1, method="dps", generator=g
        )
    with pytest.raises(ValueError, match="method must be"):
        posterior_reconstruct(
            lambda x, s, c=None: x, op, y, (1, 1, 8, 8), samples=1, method="tv", generator=g
        )


def test_warm_start_keeps_the_initial_estimate_and_fits_the_data():
    shape = (16, 16)
    op, x, k, y = _mri_case(shape)
    kw = dict(samples=2, steps=20, generator=torch.Generator().manual_seed(0))
    flat_cold, flat_warm = _Flat(), _Flat()
    cold = posterior_reconstruct(flat_cold, op, y, (2, 1, *shape), **kw)
    warm = posterior_reconstruct(flat_warm, op, y, (2, 1, *shape), init=x, start_sigma=0.05, **kw)
    # only the reverse steps below the start sigma run
    calls, n_cold = flat_warm.sigmas, len(flat_cold.sigmas)
    assert 0 < len(calls) < n_cold / 2 and max(calls) <= 0.05 + 1e-6
    assert float(op.measured_residual(warm.flatten(0, 1), k.repeat(2, 1, 1, 1)).max()) < 1e-5
    # started from the truth, the off-data part stays close to it; from noise it does not
    err = lambda s: float((s.mean(0) - x).pow(2).mean().sqrt())  # noqa: E731
    assert err(warm) < 0.3 * err(cold)
    with pytest.raises(ValueError, match="both init and start_sigma"):
        posterior_reconstruct(_Flat(), op, y, (2, 1, *shape), init=x, **kw)
    with pytest.raises(ValueError, match="init has shape"):
        posterior_reconstruct(_Flat(), op, y, (2, 1, *shape), init=x[:1], start_sigma=0.1, **kw)


@torch.no_grad()
def _hand_assembled(
    prior,
    op,
    y,
    shape,
    *,
    samples,
    sampler="ddim",
    steps=50,
    eta=0.85,
    generator,
    wrap=None,
    method="hard_dc",
    noise_std=0.0,
    sigma_data=0.5,
    clip_denoised=False,
    init=None,
    start_sigma=None,
):
    """The posterior sampler as it was before it called ``core.posterior.reconstruct``: the
    data step and the sampler assembled by hand, one sample after the other."""
    from diffsci.core.posterior import DPS, DataConsistency, ProximalDataStep, start_from
    from diffsci.core.samplers import get_sampler
    from diffsci.core.schedules import karras

    dev = y.device
    y_model = AffineData.data(op, y, shape)
    den = prior if wrap is None else wrap(prior)
    if clip_denoised:
        den = ClampDenoised(den)
    sig = karras(steps, 0.002, 80.0)
    opts = {"eta": eta} if sampler in ("ddim", "euler_ancestral") else {}
    s_model = 2 * noise_std
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
            z = start_from(
                dc,
                z0,
                sig,
                sigma_start=float(start_sigma),
                sampler=sampler,
                generator=generator,
                **opts,
            )
        else:
            x = torch.randn(shape, generator=generator, dtype=torch.float32).to(dev) * float(sig[0])
            z = get_sampler(sampler)(dc, x, sig, generator=generator, **opts)
        out.append(AffineData.to_image(z))
    return torch.stack(out)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"clip_denoised": True, "sampler": "dpmpp_2m"},
        {"method": "dps", "noise_std": 0.05, "sampler": "euler_ancestral", "eta": 0.5},
        {"method": "prox", "noise_std": 0.05, "sampler": "euler"},
        {"warm": 0.3},
        {"warm": 0.5, "method": "dps", "noise_std": 0.05, "clip_denoised": True},
        {"wrap": True, "sampler": "dpmpp_2m_sde"},
    ],
)
def test_core_reconstruct_gives_the_hand_assembled_samples(kw):
    """posterior_reconstruct through core.posterior.reconstruct draws the same noise in the same
    order as the hand-assembled loop it replaced: bit-identical samples, same generator state."""
    kw = dict(kw)
    shape = (16, 16)
    op, x, _, y = _mri_case(shape)
    if kw.pop("wrap", False):
        kw["wrap"] = lambda d: SliceTV(d, 0.2)
    warm = kw.pop("warm", None)
    if warm is not None:
        kw.update(init=x.flip(-1), start_sigma=warm)
    g_new, g_old = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    new = posterior_reconstruct(
        _Flat(), op, y, (2, 1, *shape), samples=3, steps=8, generator=g_new, **kw
    )
    old = _hand_assembled(_Flat(), op, y, (2, 1, *shape), samples=3, steps=8, generator=g_old, **kw)
    assert torch.equal(new, old)
    assert torch.equal(g_new.get_state(), g_old.get_state())


def test_core_reconstruct_gives_the_hand_assembled_ct_samples():
    n = 16
    radon = ops.ParallelBeamRadon(n, ops.sparse_view_angles(6))
    op = CGPinv(radon, iters=5)
    x = torch.rand(2, 1, n, n, generator=torch.Generator().manual_seed(0))
    y = radon.forward(x)
    g_new, g_old = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    new = posterior_reconstruct(_Flat(), op, y, (2, 1, n, n), samples=2, steps=6, generator=g_new)
    old = _hand_assembled(_Flat(), op, y, (2, 1, n, n), samples=2, steps=6, generator=g_old)
    assert torch.equal(new, old)
