"""The population and lineage diffusion models: shapes, symmetries, the E-step, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffsci.core.denoisers import KarrasDenoiser
from diffsci.core.samplers import sample
from diffsci.core.schedules import karras
from diffsci.core.training import TrainConfig, train
from diffsci.domains.singlecell.models import (
    LineageDiffusion,
    PopulationNet,
    SingleCellModel,
    TreeCodebook,
    tree_init,
)


def _net():
    torch.manual_seed(0)
    net = PopulationNet(3, n_perturbations=2, width=16, depth=1, heads=2)
    torch.nn.init.normal_(net.out.weight, std=0.1)  # non-zero output for the symmetry tests
    return net


def test_population_net_symmetries():
    net = _net().eval()
    x, c = torch.randn(2, 5, 3), torch.randn(2, 7, 3)
    cond = {"control": c, "perturbation": torch.tensor([0, 1])}
    out = net(x, torch.zeros(2), cond)
    assert out.shape == x.shape
    perm = torch.randperm(5)
    torch.testing.assert_close(net(x[:, perm], torch.zeros(2), cond), out[:, perm])
    cperm = {"control": c[:, torch.randperm(7)], "perturbation": cond["perturbation"]}
    torch.testing.assert_close(net(x, torch.zeros(2), cperm), out, atol=1e-5, rtol=1e-5)
    other = {"control": c, "perturbation": torch.tensor([1, 0])}
    assert not torch.allclose(net(x, torch.zeros(2), other), out)


def test_population_net_bad_cond():
    net = _net()
    with pytest.raises(ValueError, match="cond"):
        net(torch.randn(1, 2, 3), torch.zeros(1), None)
    with pytest.raises(ValueError, match="out of range"):
        net(torch.randn(1, 2, 3), torch.zeros(1),
            {"control": torch.randn(1, 2, 3), "perturbation": torch.tensor([5])})  # fmt: skip


def test_population_model_learns_a_control_dependent_shift():
    """Perturbed population = control population shifted by a * mean(control) (a depends on
    the perturbation): after training, sampled populations of an unseen control location have
    the right mean (a wrong conditioning or centring fails this)."""
    g = torch.Generator().manual_seed(0)
    n, m, d = 12, 12, 2
    a = torch.tensor([0.5, -0.5])
    mus = torch.randn(256, 1, d, generator=g) * 1.0
    ctrl = mus + 0.2 * torch.randn(256, m, d, generator=g)
    p = torch.arange(256) % 2
    pert = mus + 0.2 * torch.randn(256, n, d, generator=g) + a[p].reshape(-1, 1, 1) * mus
    rel = pert - ctrl.mean(1, keepdim=True)
    torch.manual_seed(0)
    den = KarrasDenoiser(PopulationNet(d, n_perturbations=2, width=32, depth=2, heads=2),
                         sigma_data=0.5)  # fmt: skip
    from diffsci.core.denoisers import edm_loss

    data = torch.utils.data.TensorDataset(rel, ctrl, p)
    res = train(den, lambda mod, b, rng: edm_loss(mod, b[0], rng, cond={"control": b[1],
                                                                           "perturbation": b[2]}),
                data, TrainConfig(steps=250, batch_size=32, lr=3e-3, ema_decay=0.95,
                                  progress=False))  # fmt: skip
    mu = torch.tensor([[0.8, -0.6]])
    c = mu + 0.2 * torch.randn(8, m, d, generator=g)
    for k in (0, 1):
        out = sample(res.ema, (8, n, d), karras(20), sampler="heun",
                     cond={"control": c, "perturbation": torch.full((8,), k)}, generator=g)  # fmt: skip
        got = (out + c.mean(1, keepdim=True)).mean((0, 1))
        want = mu[0] * (1 + a[k])
        assert torch.allclose(got, want, atol=0.2), (k, got, want)


def test_tree_codebook_paths():
    cb = TreeCodebook(depth=2, branching=2, dim=4)
    assert cb.parent == [-1, 0, 0, 1, 1, 2, 2] and cb.depth == [0, 1, 1, 2, 2, 2, 2]
    code = cb.code(torch.tensor([3]), torch.tensor([0.0]))
    torch.testing.assert_close(code[0, :4], cb.vectors[[0, 1, 3]].sum(0))
    assert code.shape == (1, cb.cond_dim)


def test_tree_init_recovers_two_branches():
    rng = np.random.default_rng(0)
    t = rng.random(300)
    branch = rng.integers(0, 2, 300)
    x = np.stack([t, np.where(branch == 0, 1, -1) * np.maximum(t - 0.5, 0) * 4], 1)
    x += rng.normal(0, 0.02, x.shape)
    node, tau = tree_init(x, t, [-1, 0, 0], seed=0)
    late = t > 0.55
    assert (node[t < 0.45] == 0).all()
    agree = (node[late] - 1 == branch[late]).mean()
    assert max(agree, 1 - agree) > 0.97
    assert ((tau >= 0) & (tau <= 1)).all()


def test_assign_is_the_argmin_of_candidate_losses():
    torch.manual_seed(0)
    lin = LineageDiffusion(3, depth=1, branching=2, hidden=16, layers=1, tau_grid=5)
    torch.nn.init.normal_(lin.denoiser.net.out.weight, std=0.5)
    x = torch.randn(6, 3)
    noise = torch.randn(6, len(lin.em_sigmas), 3)
    node, tau, loss = lin.assign(x, noise=noise)
    nodes, taus = lin.grid()
    full = lin.candidate_losses(x, noise, nodes, taus)
    torch.testing.assert_close(loss, full.min(1).values)
    assert lin.pseudotime(torch.tensor([0, 1]), torch.tensor([1.0, 0.0])).tolist() == [0.5, 0.5]


def test_joint_model_forward_returns_both_losses():
    from diffsci.core.rng import ShardedRNG

    lin = LineageDiffusion(4, depth=1, branching=2, hidden=8, layers=1, em_after=1)
    net = PopulationNet(3, n_perturbations=2, width=8, depth=1, heads=2)
    model = SingleCellModel(KarrasDenoiser(net), lin)
    batch = {"population": torch.randn(2, 5, 3), "control": torch.randn(2, 4, 3),
             "perturbation": torch.tensor([0, 1]), "cells": torch.rand(2, 3, 4),
             "node0": torch.zeros(2, 3, dtype=torch.long), "tau0": torch.rand(2, 3)}  # fmt: skip
    rng = ShardedRNG(torch.Generator().manual_seed(0))
    out = model(batch, rng)
    assert set(out) == {"loss", "loss_perturbation", "loss_lineage"}
    assert int(lin.steps_seen) == 1
    out = model(batch, rng)  # now through the E-step
    assert torch.isfinite(out["loss"]) and int(lin.steps_seen) == 2
