"""The PDE task's glue: configs, loss from the config, the stages end to end."""

from __future__ import annotations

import torch
import yaml

from diffsci.core.stages import validate_config
from diffsci.domains.pde.models import check_grid
from diffsci.domains.pde.task import SCHEMA, PDETask


def test_default_configs_validate():
    root = SCHEMA.parents[2]
    for name in (root / "workflows/config/pde.yaml", root / "workflows/config/pde_gpu.yaml"):
        cfg = yaml.safe_load(name.read_text())
        validate_config(cfg, SCHEMA, source=str(name))
        for g in set(cfg["data"]["train_nx"]) | set(cfg["data"]["eval_nx"]):
            check_grid(cfg, cfg["data"]["nt"], g, source=str(name))
    assert PDETask().name == "pde"


def test_make_loss_drops_the_condition_with_the_configured_probability(tmp_path, make_cfg):
    from diffsci.core.denoisers import edm_loss
    from diffsci.core.rng import ShardedRNG

    cfg = make_cfg(channels=[8, 16], attention_levels=[False, False])
    assert cfg["model"]["cond_dropout"] == 0.1  # the schema's default
    torch.manual_seed(0)
    model = PDETask().build_model(cfg)
    g = torch.Generator().manual_seed(1)
    batch = {"x": torch.randn(1, 4, 4, 4, 16, generator=g), "cond": torch.randn(1, 4, 4, 4, 16)}
    for p, cond in ((1.0, torch.zeros(4, 4, 4, 16)), (0.0, batch["cond"][0])):
        cfg["model"]["cond_dropout"] = p
        got = PDETask().make_loss(cfg, tmp_path)(model, batch, ShardedRNG(torch.Generator()))
        rng = ShardedRNG(torch.Generator())
        rng.rand((4,))  # the dropout draw comes first
        assert torch.equal(got, edm_loss(model, batch["x"][0], rng, cond=cond))


def test_stages_end_to_end(tmp_path):
    """prepare -> train -> baselines -> infer -> evaluate on a tiny config: every table, the
    FNO read from the baselines stage's folder, the figures on disk."""
    import json

    from diffsci.core.stages import (
        run_baselines,
        run_evaluate,
        run_infer,
        run_prepare,
        run_train,
    )
    from diffsci.core.task import EvalResult, TaskPaths

    cfg = {
        "seed": 0,
        "device": "cpu",
        "train_chunk": 4,
        "data": {
            "nu": 0.05,
            "t_end": 0.5,
            "nt": 8,
            "train_nx": [32],
            "eval_nx": [32],
            "solver_nx": 32,
            "n_train": 8,
            "n_test": 2,
        },
        "model": {"channels": [8, 16], "attention_levels": [False, False]},
        "train": {"steps": 2, "batch_size": 1, "ckpt_every": 2},
        "sampling": {"steps": 2, "members": 2, "batch": 2},
        "fno": {"modes": [2, 4], "width": 8, "depth": 1},
        "events": {"n_samples": 2, "n_mc": 4},
    }
    validate_config(cfg, SCHEMA)
    task, paths = PDETask(), TaskPaths(tmp_path / "w")
    for run in (run_prepare, run_train, run_baselines, run_infer, run_evaluate):
        run(task, cfg, paths, progress=False)
    assert (paths.baselines / "fno_nx32.h5").is_file() and (paths.root / "checkpoints_fno").is_dir()
    m = json.loads(paths.metrics.read_text())
    res = EvalResult(**{k: m[k] for k in ("tables", "lower_is_better", "figures", "summary")})
    assert set(res.tables["Burgers forecast, nx=32"]) == {
        "persistence",
        "diffusion (ens. mean)",
        "fno",
    }
    da = res.tables["Burgers assimilation (sparse noisy sensors), nx=32"]
    assert set(da) == {"interpolation of sensors", "diffusion DA (ens. mean)"}
    assert any(t.startswith("Event probability") for t in res.tables)
    assert res.figures == ["figures/forecast_nx32.png", "figures/nrmse_per_frame_nx32.png"]
    assert all((paths.root / f).is_file() for f in res.figures)
    assert res.summary == {"equation": "burgers", "nu": 0.05, "members": 2}
