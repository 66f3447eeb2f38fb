"""The event study: forecast-based probabilities against the solver, prior and guided rows."""

from __future__ import annotations

import pytest
import torch

from diffsci.core.stages import validate_config
from diffsci.domains.pde.task import SCHEMA, PDETask


class _Zero(torch.nn.Module):
    """Denoiser that always returns 0: the null-condition prior then never reaches the event."""

    def forward(self, x, sigma, cond=None):
        return x * 0.0  # keeps the graph: the event-guided run differentiates through it


def test_event_study_scores_an_oracle_and_a_never_forecaster(tmp_path, make_cfg):
    """The forecast-based event probability is paired with the solver on the same initial
    states: a perfect forecaster reproduces the solver's rate with Brier 0, one that never
    forecasts the event gets Brier = base rate and negative skill."""
    import numpy as np

    from diffsci.domains.pde.events import event_study
    from diffsci.domains.pde.io import read_pdebench
    from diffsci.domains.pde.models import serves_prior
    from diffsci.domains.pde.simulate import burgers_1d, random_initial_conditions

    cfg = make_cfg()
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


def test_event_statistic_and_its_smoothed_log_indicator():
    from diffsci.domains.pde.events import event_stat, log_event

    u = torch.zeros(2, 8, 4)
    u[0, -1, 2] = -3.0  # last quarter = frames 6, 7
    u[1, 0, 0] = 5.0  # outside the last quarter
    assert event_stat(u).tolist() == [3.0, 0.0]
    lp = log_event(u, 1.0, 0.02)
    assert lp[0] == pytest.approx(0.0, abs=1e-6) and lp[1] < -40


def test_event_guidance_adds_sigma_squared_times_the_gradient_through_the_denoiser():
    from diffsci.domains.pde.events import EventGuidance

    class Half(torch.nn.Module):
        def forward(self, x, sigma, cond=None):
            return 0.5 * x

    x = torch.randn(3, 4, 2, 2)
    sigma = torch.tensor([0.1, 1.0, 2.0])
    guided = EventGuidance(Half(), lambda d: d.flatten(1).sum(1), scale=0.3)(x, sigma)
    # grad_x sum(D(x)) = 0.5 everywhere
    expect = 0.5 * x + 0.3 * sigma.reshape(-1, 1, 1, 1) ** 2 * 0.5
    assert torch.allclose(guided, expect)
    assert torch.equal(
        EventGuidance(Half(), lambda d: d.sum((1, 2, 3)), scale=0.0)(x, sigma), 0.5 * x
    )
