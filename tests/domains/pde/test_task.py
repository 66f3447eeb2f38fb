"""PDE task pieces: the wavelet-domain observation operator, grid checks, DA baseline."""

from __future__ import annotations

import pytest
import torch
import yaml

from diffsci.core.operators import check_adjoint
from diffsci.core.stages import validate_config
from diffsci.domains.pde.baselines import interpolate_observations
from diffsci.domains.pde.models import band_gain, check_grid, codec, decode, encode
from diffsci.domains.pde.operators import FrameMask, observation_mask
from diffsci.domains.pde.task import SCHEMA, PDETask
from diffsci.domains.pde.wavelets import dwt2


def _cfg(**model):
    cfg = {
        "data": {
            "nu": 0.01,
            "t_end": 1.0,
            "nt": 8,
            "train_nx": [32],
            "eval_nx": [32],
            "n_train": 4,
            "n_test": 2,
        },
        "model": model,
        "train": {"steps": 1, "batch_size": 1},
        "sampling": {},
    }
    validate_config(cfg, SCHEMA)
    return cfg


@pytest.mark.parametrize("wavelet,level", [("haar", 1), ("db2", 1), ("haar", 2)])
def test_frame_mask_is_adjoint_and_pinv_is_exact(wavelet, level):
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(1, 16, 32, generator=g) > 0.7).double()
    op = FrameMask(mask, wavelet=wavelet, level=level)
    check_adjoint(op, (3, 4**level, 16 // 2**level, 32 // 2**level), rtol=1e-12)
    y = mask * torch.randn(3, 16, 32, generator=g, dtype=torch.float64)
    assert torch.allclose(op.forward(op.pinv(y)), y, atol=1e-12)


def test_prox_matches_dense_solution():
    g = torch.Generator().manual_seed(1)
    mask = (torch.rand(1, 8, 8, generator=g) > 0.5).double()
    op = FrameMask(mask, wavelet="haar", level=1)
    z = torch.randn(2, 4, 4, 4, generator=g, dtype=torch.float64)
    y = mask * torch.randn(2, 8, 8, generator=g, dtype=torch.float64)
    rho = torch.tensor([0.5, 3.0], dtype=torch.float64).reshape(2, 1, 1, 1)
    got = op.prox_l2(z, y, rho, noise_std=0.2)
    ref = type(op).__mro__[1].prox_l2(op, z, y, rho, noise_std=0.2, iters=200, tol=1e-14)
    assert torch.allclose(got, ref, atol=1e-8)


def test_encode_decode_round_trip():
    u = torch.randn(2, 16, 32, dtype=torch.float64)
    c = encode(u, scale=0.7, wavelet="db2", level=1)
    assert c.shape == (2, 4, 8, 16)
    assert torch.allclose(decode(c, scale=0.7, wavelet="db2", level=1), u, atol=1e-12)
    assert torch.allclose(c, dwt2(u / 0.7, wavelet="db2", level=1))


def _smooth(nx: int, nt: int = 16) -> torch.Tensor:
    t = torch.linspace(0, 1, nt, dtype=torch.float64)[:, None]
    x = torch.arange(nx, dtype=torch.float64)[None] / nx
    return (
        torch.sin(2 * torch.pi * x + 0.3) * torch.cos(2 * t) + 0.5 * torch.cos(4 * torch.pi * x) * t
    )[None]


@pytest.mark.parametrize("level", [1, 2])
def test_band_gain_makes_smooth_bands_grid_invariant(level):
    # x-high-pass bands of a smooth field shrink ~2x per grid doubling; the gains undo it
    rms = {}
    for nx in (64, 128):
        u = _smooth(nx)
        plain = encode(u, scale=1.0, wavelet="haar", level=level)
        scaled = encode(u, scale=1.0, wavelet="haar", level=level, nx_ref=64)
        assert torch.allclose(
            decode(scaled, scale=1.0, wavelet="haar", level=level, nx_ref=64), u, atol=1e-12
        )
        rms[nx] = (plain.square().mean((0, 2, 3)).sqrt(), scaled.square().mean((0, 2, 3)).sqrt())
    xhigh = 2 if level == 1 else 8  # band cV (level 1); LL then cV (level 2)
    assert rms[128][0][xhigh] / rms[64][0][xhigh] < 0.55  # plain: halves
    assert rms[128][1][xhigh] / rms[64][1][xhigh] == pytest.approx(1.0, abs=0.03)
    assert torch.allclose(rms[128][1][0], rms[64][1][0], rtol=0.02)  # LL needs no gain
    g = band_gain(level, 128, 64)
    assert g.shape == (4**level, 1, 1) and g[0].item() == 1.0 and g.max().item() == 2.0**level
    assert band_gain(level, 64, 64) is None and band_gain(level, 128, None) is None


def test_codec_reference_grid_is_the_finest_training_grid():
    cfg = _cfg()
    cfg["data"]["train_nx"] = [32, 64]
    assert codec(cfg) == {"wavelet": "haar", "level": 1, "nx_ref": 64}
    cfg["model"]["band_scaling"] = "none"
    assert codec(cfg)["nx_ref"] is None


@pytest.mark.parametrize("level", [1, 2])
def test_frame_mask_with_band_gains(level):
    g = torch.Generator().manual_seed(3)
    mask = (torch.rand(1, 8, 16, generator=g) > 0.6).double()
    op = FrameMask(mask, wavelet="haar", level=level, nx_ref=8)
    shape = (2, 4**level, 8 // 2**level, 16 // 2**level)
    check_adjoint(op, shape, rtol=1e-12)
    y = mask * torch.randn(2, 8, 16, generator=g, dtype=torch.float64)
    assert torch.allclose(op.forward(op.pinv(y)), y, atol=1e-12)
    # forward is mask * decode(c): the operator sees the physical trajectory
    c = torch.randn(shape, generator=g, dtype=torch.float64)
    assert torch.allclose(
        op.forward(c), mask * decode(c, scale=1.0, wavelet="haar", level=level, nx_ref=8)
    )
    # prox_l2 (CG fallback with gains) against a dense solve of the normal equations
    n = c[0].numel()
    A = torch.stack(
        [
            op.forward(e.reshape(1, *shape[1:]))[0].flatten()
            for e in torch.eye(n, dtype=torch.float64)
        ],
        1,
    )
    rho = torch.tensor([0.5, 3.0], dtype=torch.float64)
    got = op.prox_l2(c, y, rho, noise_std=0.2, iters=400, tol=1e-20)
    for b in range(2):
        lhs = A.T @ A / 0.04 + rho[b] * torch.eye(n, dtype=torch.float64)
        ref = torch.linalg.solve(lhs, A.T @ y[b].flatten() / 0.04 + rho[b] * c[b].flatten())
        assert torch.allclose(got[b].flatten(), ref, atol=1e-8)


def test_grid_the_model_cannot_serve_is_named():
    cfg = _cfg(channels=[16, 32, 32])  # level 1 + 3 UNet levels -> multiples of 8
    check_grid(cfg, 16, 64, source="ok")
    with pytest.raises(ValueError, match=r"nt=16, nx=36 cannot be served.*multiples of 8"):
        check_grid(cfg, 16, 36, source="test.h5")


def test_interpolation_baseline_is_exact_for_linear_fields():
    nt, nx = 5, 16
    mask = observation_mask(nt, nx, sensor_every=4, frame_every=2)
    assert mask.sum() == 3 * 4 and mask[0, 0, 0] == 1 and mask[0, 1].sum() == 0
    t = torch.arange(nt, dtype=torch.float32)[:, None]
    # constant in space, linear in time: interpolation reproduces it exactly
    u = (2.0 + 0.5 * t).expand(nt, nx)[None]
    got = interpolate_observations(mask * u, mask)
    assert torch.allclose(got, u, atol=1e-6)


def test_default_configs_validate():
    root = SCHEMA.parents[2]
    for name in (root / "workflows/config/pde.yaml", root / "workflows/config/pde_gpu.yaml"):
        cfg = yaml.safe_load(name.read_text())
        validate_config(cfg, SCHEMA, source=str(name))
        for g in set(cfg["data"]["train_nx"]) | set(cfg["data"]["eval_nx"]):
            check_grid(cfg, cfg["data"]["nt"], g, source=str(name))
    assert PDETask().name == "pde"


def test_fno_backbone_serves_any_even_grid_and_uses_the_training_sigmas():
    from diffsci.core.schedules import LogNormalSigma
    from diffsci.domains.pde.models.fno import FNODenoiserNet

    cfg = _cfg(backbone="fno", modes=[4, 4], width=8, depth=2, p_mean=0.5, p_std=0.7)
    check_grid(cfg, 8, 36, source="ok")  # only the wavelet level constrains the grid
    with pytest.raises(ValueError, match="backbone fno"):
        check_grid(cfg, 8, 35, source="odd.h5")
    den = PDETask().build_model(cfg)
    assert isinstance(den.net, FNODenoiserNet)
    assert isinstance(den.train_sigma, LogNormalSigma)
    assert (den.train_sigma.p_mean, den.train_sigma.p_std) == (0.5, 0.7)
    x = torch.randn(2, 4, 4, 18)
    assert den(x, torch.ones(2), torch.zeros_like(x)).shape == x.shape


def test_refiner_schedule_trains_and_samples_on_the_same_levels():
    from diffsci.core.schedules import DiscreteSigma
    from diffsci.domains.pde.models import sampling_sigmas

    cfg = _cfg(
        backbone="fno",
        modes=[4, 4],
        width=8,
        depth=2,
        sigma_schedule="refiner",
        refiner_k=2,
        refiner_sigma_min=0.01,
        refiner_sigma_max=80.0,
        refiner_regression_weight=2.0,
    )
    den = PDETask().build_model(cfg)
    assert isinstance(den.train_sigma, DiscreteSigma)
    assert den.train_sigma.levels.tolist() == pytest.approx([80.0, 0.1, 0.01])
    assert den.train_sigma.cdf.tolist() == pytest.approx([0.5, 0.75, 1.0])
    assert sampling_sigmas(cfg).tolist() == pytest.approx([80.0, 0.1, 0.01, 0.0])
    # the exact regression step is the default: the regression level (and nothing below it)
    # gets the zero input
    assert 0.1 < den.regression_sigma < 80.0
    cfg["model"]["refiner_zero_input"] = False
    assert PDETask().build_model(cfg).regression_sigma is None
    bad = _cfg(sigma_schedule="refiner", refiner_k=1, refiner_sigma_min=0.5, refiner_sigma_max=0.4)
    with pytest.raises(ValueError, match="model.refiner_"):
        PDETask().build_model(bad)
    # the default stays the EDM log-normal training and a Karras sampling schedule
    cfg = _cfg()
    cfg["sampling"].update(steps=5, sigma_min=0.002, sigma_max=80.0)
    sig = sampling_sigmas(cfg)
    assert len(sig) == 6 and sig[0] == 80.0 and sig[-1] == 0.0


class _Zero(torch.nn.Module):
    """Denoiser that always returns 0: the null-condition prior then never reaches the event."""

    def forward(self, x, sigma, cond=None):
        return x * 0.0  # keeps the graph: the event-guided run differentiates through it


def test_event_study_scores_an_oracle_and_a_never_forecaster(tmp_path):
    """The forecast-based event probability is paired with the solver on the same initial
    states: a perfect forecaster reproduces the solver's rate with Brier 0, one that never
    forecasts the event gets Brier = base rate and negative skill."""
    import numpy as np

    from diffsci.domains.pde.events import event_study
    from diffsci.domains.pde.io import read_pdebench
    from diffsci.domains.pde.models import serves_prior
    from diffsci.domains.pde.simulate import burgers_1d, random_initial_conditions

    cfg = _cfg()
    cfg.update(
        seed=0,
        events={"quantile": 0.5, "n_samples": 24, "n_mc": 40},
        sampling={
            "steps": 2,
            "members": 3,
            "batch": 8,
            "sampler": "euler",
            "sigma_min": 0.002,
            "sigma_max": 80.0,
        },
    )
    validate_config(cfg, SCHEMA)
    d = cfg["data"]
    PDETask().prepare(cfg, tmp_path)
    scale = float(np.std(read_pdebench(tmp_path / "train_nx32.h5").u))
    # the solver on the Monte Carlo states event_study draws (same seed), for the oracle
    fine = d["solver_nx"]
    u0 = random_initial_conditions(40, fine, seed=20_000, **d["initial"])
    u, _ = burgers_1d(u0, nu=d["nu"], t_end=d["t_end"], nt=d["nt"], progress=False)
    table0 = torch.from_numpy(u0[:, :: fine // 32]).float()
    table = torch.from_numpy(u[..., :: fine // 32]).float()

    def oracle(model, u0b, nt, *, members, **_):
        idx = torch.cdist(u0b.float(), table0).argmin(1)
        return table[idx][None].expand(members, -1, -1, -1)

    def never(model, u0b, nt, *, members, **_):
        return torch.zeros(members, len(u0b), nt, u0b.shape[1])

    kw = dict(nx=32, scale=scale, device=torch.device("cpu"))
    ev = event_study(_Zero(), cfg, tmp_path, forecast=oracle, **kw)
    base = ev["p_solver_same_initial_states"]
    assert 0 < base < 1 and ev["n_initial_states"] == 24
    assert ev["p_model_forecast"] == pytest.approx(base)
    assert ev["brier_score"] == 0 and ev["brier_skill_score"] == 1
    assert ev["p_model_unconditional"] == 0
    ev = event_study(_Zero(), cfg, tmp_path, forecast=never, **kw)
    assert ev["p_model_forecast"] == 0
    assert ev["brier_score"] == pytest.approx(base)
    assert ev["brier_skill_score"] == pytest.approx(1 - 1 / (1 - base))
    # a refiner model has no prior: the forecast-based rows stay, the prior/guided ones go
    assert not serves_prior(cfg | {"model": {**cfg["model"], "sigma_schedule": "refiner"}})
    cfg["model"]["sigma_schedule"] = "refiner"
    ev = event_study(_Zero(), cfg, tmp_path, forecast=oracle, **kw)
    assert ev["p_model_forecast"] == pytest.approx(base) and ev["brier_score"] == 0
    assert "p_model_unconditional" not in ev and "event_conditioned_hit_rate" not in ev
