"""PDE baselines: interpolation of the sensors, the FNO."""

from __future__ import annotations

import numpy as np
import torch

from diffsci.core.task import Runtime
from diffsci.domains.pde.baselines import interpolate_observations
from diffsci.domains.pde.operators import observation_mask


def test_interpolation_baseline_is_exact_for_linear_fields():
    nt, nx = 5, 16
    mask = observation_mask(nt, nx, sensor_every=4, frame_every=2)
    assert mask.sum() == 3 * 4 and mask[0, 0, 0] == 1 and mask[0, 1].sum() == 0
    t = torch.arange(nt, dtype=torch.float32)[:, None]
    # constant in space, linear in time: interpolation reproduces it exactly
    u = (2.0 + 0.5 * t).expand(nt, nx)[None]
    got = interpolate_observations(mask * u, mask)
    assert torch.allclose(got, u, atol=1e-6)


def test_persistence_holds_the_first_frame():
    from diffsci.domains.pde.baselines import persistence

    u = torch.randn(2, 5, 8)
    p = persistence(u)
    assert p.shape == u.shape and torch.equal(p, u[:, :1].expand(-1, 5, -1))


def _fno_cfg(make_cfg, steps):
    cfg = make_cfg()
    cfg["fno"].update(modes=[2, 4], width=8, depth=1)
    cfg["train"].update(steps=steps, batch_size=1, ckpt_every=2)
    cfg["train_chunk"] = 2
    return cfg


def test_fno_trains_resumes_from_its_checkpoints_and_predicts(tmp_path, make_cfg):
    from diffsci.domains.pde.baselines import FNOChunks, predict_fno, train_fno

    trajs = [torch.randn(4, 8, 16, generator=torch.Generator().manual_seed(0))]
    data = FNOChunks(trajs, 2, 0.5)
    assert len(data) == 2 and data[0]["u"].shape == data[0]["u0"].shape == (2, 1, 8, 16)
    assert torch.equal(data[0]["u0"][:, :, 3], trajs[0][:2, None, 0] / 0.5)
    cfg = _fno_cfg(make_cfg, 3)
    net = train_fno(cfg, trajs, 0.5, ckpt_dir=tmp_path / "ck", progress=False)
    assert (tmp_path / "ck" / "last.pt").is_file() and not net.training
    pred = predict_fno(net, trajs[0], 0.5)
    assert pred.shape == (4, 8, 16) and pred.dtype == np.float32
    # a second call resumes from the finished run's checkpoint: the same network
    again = train_fno(cfg, trajs, 0.5, ckpt_dir=tmp_path / "ck", progress=False)
    a, b = net.state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_baselines_stage_writes_fno_predictions_and_keeps_checkpoints_outside(tmp_path, make_cfg):
    from diffsci.domains.pde.io import read_pdebench
    from diffsci.domains.pde.task import PDETask

    cfg = _fno_cfg(make_cfg, 2)
    cfg["data"].update(solver_nx=32, n_train=4, n_test=2)
    task = PDETask()
    (tmp_path / "data").mkdir()
    task.prepare(cfg, tmp_path / "data")
    out = tmp_path / "baselines.tmp"
    out.mkdir()
    task.baselines(cfg, tmp_path / "data", out, Runtime(torch.device("cpu")))
    assert sorted(p.name for p in out.iterdir()) == ["fno_nx32.h5"]
    fno = read_pdebench(out / "fno_nx32.h5")
    assert fno.u.shape == (2, 8, 32) and fno.attrs["method"] == "fno"
    assert (tmp_path / "checkpoints_fno").is_dir()
