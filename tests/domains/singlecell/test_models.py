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
    PopulationDenoiser,
    PopulationNet,
    SingleCellModel,
    TreeCodebook,
    ot_pairing,
    tree_init,
)


def _net():
    torch.manual_seed(0)
    net = PopulationNet(3, n_perturbations=2, width=16, depth=1, heads=2)
    torch.nn.init.normal_(net.out.weight, std=0.1)  # non-zero output for the symmetry tests
    return net


def test_population_net_symmetries():
    net = _net().eval()
    x, a, c = torch.randn(2, 5, 3), torch.randn(2, 5, 3), torch.randn(2, 7, 3)
    p = torch.tensor([0, 1])
    out = net(x, torch.zeros(2), {"control": c, "anchor": a, "perturbation": p})
    assert out.shape == x.shape
    perm = torch.randperm(5)  # (displacement, anchor) pairs permuted together
    torch.testing.assert_close(
        net(x[:, perm], torch.zeros(2), {"control": c, "anchor": a[:, perm], "perturbation": p}),
        out[:, perm],
        atol=1e-5,
        rtol=1e-5,
    )
    cperm = {"control": c[:, torch.randperm(7)], "anchor": a, "perturbation": p}
    torch.testing.assert_close(net(x, torch.zeros(2), cperm), out, atol=1e-5, rtol=1e-5)
    # the anchors are read: swapping two anchors (not their displacements) changes the output
    swap = a.clone()
    swap[:, [0, 1]] = a[:, [1, 0]]
    assert not torch.allclose(
        net(x, torch.zeros(2), {"control": c, "anchor": swap, "perturbation": p})[:, 0], out[:, 0]
    )
    other = {"control": c, "anchor": a, "perturbation": torch.tensor([1, 0])}
    assert not torch.allclose(net(x, torch.zeros(2), other), out)


def test_population_net_bad_cond():
    net = _net()
    with pytest.raises(ValueError, match="cond"):
        net(torch.randn(1, 2, 3), torch.zeros(1), None)
    with pytest.raises(ValueError, match="anchor"):
        net(
            torch.randn(1, 2, 3),
            torch.zeros(1),
            {"control": torch.randn(1, 2, 3), "perturbation": torch.tensor([0])},
        )
    with pytest.raises(ValueError, match="out of range"):
        net(
            torch.randn(1, 2, 3),
            torch.zeros(1),
            {
                "control": torch.randn(1, 2, 3),
                "anchor": torch.randn(1, 2, 3),
                "perturbation": torch.tensor([5]),
            },
        )


def test_population_denoiser_is_linear_response_plus_karras():
    net = _net()
    den = PopulationDenoiser(net, sigma_data=0.5)
    assert isinstance(den.weight, torch.nn.Parameter)
    x, a, c = torch.randn(2, 5, 3), torch.randn(2, 5, 3), torch.randn(2, 7, 3)
    cond = {"control": c, "anchor": a, "perturbation": torch.tensor([0, 1])}
    sig = torch.tensor([0.3, 2.0])
    karras = KarrasDenoiser(net, sigma_data=0.5)
    torch.testing.assert_close(den(x, sig, cond), karras(x, sig, cond))  # m = 0 at init
    with torch.no_grad():
        den.weight.normal_()
    feats = torch.cat([a, a - c.mean(1, keepdim=True), torch.ones(2, 5, 1)], -1)
    m = torch.stack([feats[b] @ den.weight[k] for b, k in enumerate([0, 1])])
    torch.testing.assert_close(den.linear_response(cond), m)
    torch.testing.assert_close(den(x, sig, cond), m + karras(x - m, sig, cond))
    assert den.loss_weight(sig).tolist() == karras.loss_weight(sig).tolist()
    with pytest.raises(ValueError, match="anchor"):
        den(x, sig, {"control": c, "perturbation": torch.tensor([0, 1])})
    with pytest.raises(ValueError, match="linear"):
        PopulationDenoiser(net, linear="adam")


def test_population_denoiser_mean_head_splits_mean_and_deviations():
    """With a mean head, the population mean of ``D - m`` is the head's denoised mean of
    ``x - m`` at noise level ``sigma / sqrt(N)`` and the deviations from it are the
    transformer's; still equivariant to permutations of the (displacement, anchor) pairs."""
    net = _net()
    den = PopulationDenoiser(net, sigma_data=0.5, mean_hidden=8, mean_depth=1).eval()
    head = den.mean_head
    torch.nn.init.normal_(head.net.out.weight, std=0.1)
    with torch.no_grad():
        den.weight.normal_()
    x, a, c = torch.randn(2, 5, 3), torch.randn(2, 5, 3), torch.randn(2, 7, 3)
    p = torch.tensor([0, 1])
    cond = {"control": c, "anchor": a, "perturbation": p}
    sig = torch.tensor([0.3, 2.0])
    m = den.linear_response(cond)
    out = den(x, sig, cond)
    hc = torch.cat([c.mean(1), c.std(1), a.mean(1), torch.eye(2)[p]], -1)
    torch.testing.assert_close(den.mean_cond(cond), hc)
    want_mean = head((x - m).mean(1), sig / 5**0.5, hc)
    torch.testing.assert_close((out - m).mean(1), want_mean)
    k = KarrasDenoiser(net, sigma_data=0.5)(x - m, sig, cond)
    r = out - m
    torch.testing.assert_close(r - r.mean(1, keepdim=True), k - k.mean(1, keepdim=True))
    perm = torch.randperm(5)
    torch.testing.assert_close(
        den(x[:, perm], sig, {"control": c, "anchor": a[:, perm], "perturbation": p}),
        out[:, perm],
        atol=1e-5,
        rtol=1e-5,
    )
    assert PopulationDenoiser(_net()).mean_head is None  # off by default


def test_population_denoiser_least_squares_linear_response():
    """``fit_linear`` accumulated over batches is the ridge solution on all of them (numpy),
    per perturbation, and recovers an exactly linear response."""
    torch.manual_seed(0)
    den = PopulationDenoiser(_net(), linear="lstsq", ridge=1e-6)
    assert "weight" in dict(den.named_buffers())
    w_true = torch.randn(2, 7, 3, dtype=torch.float64)
    batches = []
    for _ in range(4):
        a, c = torch.randn(16, 5, 3), torch.randn(16, 6, 3)
        cond = {"control": c, "anchor": a, "perturbation": torch.arange(16) % 2}
        feats = den.features(cond).double()
        y = torch.einsum("bnf,bfd->bnd", feats, w_true[cond["perturbation"]]).float()
        y = y + 0.1 * torch.randn_like(y)
        den.fit_linear(y, cond)
        batches.append((feats, y, cond["perturbation"]))
    for k in (0, 1):
        f = torch.cat([fb[pb == k].flatten(0, 1) for fb, _, pb in batches]).numpy()
        t = torch.cat([yb[pb == k].flatten(0, 1) for _, yb, pb in batches]).double().numpy()
        want = np.linalg.lstsq(f, t, rcond=None)[0]
        np.testing.assert_allclose(den.weight[k].double().numpy(), want, atol=1e-4)
        np.testing.assert_allclose(want, w_true[k].numpy(), atol=0.15)
    sgd = PopulationDenoiser(_net(), linear="sgd")
    sgd.fit_linear(y, cond)  # no-op
    assert (sgd.weight == 0).all()


def test_ot_pairing_is_optimal_and_translation_invariant():
    from itertools import permutations

    rng = np.random.default_rng(0)
    cells, anchors = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
    perm = ot_pairing(cells, anchors)
    assert sorted(perm) == list(range(6))
    cost = ((cells[perm] - anchors) ** 2).sum()
    brute = min(((cells[list(q)] - anchors) ** 2).sum() for q in permutations(range(6)))
    assert cost == pytest.approx(brute)
    np.testing.assert_array_equal(ot_pairing(cells + np.array([5.0, -3.0]), anchors), perm)
    # a shuffled, shifted copy of the anchors pairs every cell with its own anchor
    shuffle = rng.permutation(6)
    np.testing.assert_array_equal(
        shuffle[ot_pairing(anchors[shuffle] + 2.0, anchors)], np.arange(6)
    )
    with pytest.raises(ValueError, match="two"):
        ot_pairing(cells, anchors[:5])


def test_population_model_learns_a_cell_dependent_response():
    """Every perturbed cell moves by ``a_p * (its own first coordinate)``. Trained on unpaired
    populations (OT-paired by :func:`population_items`), the populations sampled for an unseen
    control location must have that location's response (the average shift of the training
    populations is 0: a model that ignored its condition would miss it)."""
    from diffsci.core.denoisers import edm_loss
    from diffsci.domains.singlecell.models import population_items

    g = np.random.default_rng(0)
    n, d, pops = 12, 2, 256
    a = np.array([1.0, -0.5])
    mus = g.normal(0, 1.0, (pops, 1, d))
    types = np.repeat(np.arange(pops), 2 * n).astype(str)
    ctrl = (mus + 0.2 * g.normal(size=(pops, 2 * n, d))).reshape(-1, d)
    base = mus + 0.2 * g.normal(size=(pops, n, d))
    p = np.arange(pops) % 2
    pert = base.copy()
    pert[..., 1] += a[p][:, None] * base[..., 0]
    labels = np.repeat(np.arange(pops), n)
    disp, c, anchors, pidx = population_items(
        ctrl,
        types,
        pert.reshape(-1, d),
        np.repeat(np.arange(pops), n).astype(str),
        labels,
        list(np.repeat(p, n)),
        n_control=n,
        seed=0,
    )
    assert disp.shape == (pops, n, d) and anchors.shape == (pops, n, d)
    np.testing.assert_array_equal(pidx, p)
    torch.manual_seed(0)
    den = PopulationDenoiser(
        PopulationNet(d, n_perturbations=2, width=32, depth=2, heads=2), sigma_data=0.5
    )
    data = torch.utils.data.TensorDataset(
        *(torch.as_tensor(v, dtype=torch.float32) for v in (disp, c, anchors)),
        torch.as_tensor(pidx),
    )
    res = train(
        den,
        lambda mod, b, rng: edm_loss(
            mod, b[0], rng, cond={"control": b[1], "anchor": b[2], "perturbation": b[3]}
        ),
        data,
        TrainConfig(steps=300, batch_size=32, lr=3e-3, ema_decay=0.95, progress=False),
    )
    gen = torch.Generator().manual_seed(0)
    mu = torch.tensor([[0.8, -0.6]])
    c = mu + 0.2 * torch.randn(8, n, d, generator=gen)
    for k in (0, 1):
        out = sample(
            res.ema,
            (8, n, d),
            karras(20),
            sampler="heun",
            generator=gen,
            cond={"control": c, "anchor": c, "perturbation": torch.full((8,), k)},
        )
        got = (out + c).mean((0, 1))
        want = torch.tensor([0.8, -0.6 + a[k] * 0.8], dtype=got.dtype)
        assert torch.allclose(got, want, atol=0.15), (k, got, want)


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
    model = SingleCellModel(PopulationDenoiser(net), lin)
    batch = {
        "population": torch.randn(2, 5, 3),
        "control": torch.randn(2, 4, 3),
        "anchor": torch.randn(2, 5, 3),
        "perturbation": torch.tensor([0, 1]),
        "cells": torch.rand(2, 3, 4),
        "node0": torch.zeros(2, 3, dtype=torch.long),
        "tau0": torch.rand(2, 3),
    }
    rng = ShardedRNG(torch.Generator().manual_seed(0))
    out = model(batch, rng)
    assert set(out) == {"loss", "loss_perturbation", "loss_lineage"}
    assert int(lin.steps_seen) == 1
    out = model(batch, rng)  # now through the E-step
    assert torch.isfinite(out["loss"]) and int(lin.steps_seen) == 2


class _FixedSigma:
    """A sigma 'sampler' returning given levels (and drawing nothing)."""

    def __init__(self, sigma: torch.Tensor) -> None:
        self.sigma = sigma

    def __call__(self, n: int, rng, *, device=None) -> torch.Tensor:
        return self.sigma[:n].to(device)


def test_own_mean_loss_is_an_exact_split_of_the_edm_loss():
    """The EDM loss of :meth:`forward` is the deviations' loss plus the mean head's loss at
    ``sigma / sqrt(N)`` weighted by ``loss_weight(sigma)``: training the mean head at its own
    level changes only that level and weight. ``mean_loss`` uses ``sqrt(N) mean(noise)`` as its
    standard normal and draws only its sigma."""
    from diffsci.core.denoisers import edm_loss
    from diffsci.core.rng import ShardedRNG

    torch.manual_seed(0)
    sig = torch.tensor([0.3, 2.0, 7.0])
    n = 5
    den = PopulationDenoiser(
        _net(),
        sigma_data=0.5,
        mean_hidden=8,
        mean_depth=1,
        train_sigma=_FixedSigma(sig),
        mean_train_sigma=_FixedSigma(sig / n**0.5),
    )
    torch.nn.init.normal_(den.mean_head.net.out.weight, std=0.1)
    with torch.no_grad():
        den.weight.normal_()
    x0 = torch.randn(3, n, 3)
    cond = {
        "control": torch.randn(3, 7, 3),
        "anchor": torch.randn(3, n, 3),
        "perturbation": torch.tensor([0, 1, 0]),
    }
    full = edm_loss(den, x0, ShardedRNG(torch.Generator().manual_seed(1)), cond=cond)
    rng = ShardedRNG(torch.Generator().manual_seed(1))
    dev, noise = den.deviation_loss(x0, rng, cond=cond)
    noise_again = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(noise, noise_again)  # the same draw as edm_loss's
    mean = den.mean_loss(x0, rng, cond=cond, noise=noise)
    s = sig / n**0.5
    target = (x0 - den.linear_response(cond)).mean(1)
    pred = den.mean_head(target + s[:, None] * noise.mean(1) * n**0.5, s, den.mean_cond(cond))
    err = ((pred - target) ** 2).mean(1)
    torch.testing.assert_close(mean, (den.mean_head.loss_weight(s) * err).mean())
    torch.testing.assert_close(dev + (den.loss_weight(sig) * err).mean(), full)
    torch.testing.assert_close(
        den.loss(x0, ShardedRNG(torch.Generator().manual_seed(1)), cond=cond), dev + mean
    )
    with pytest.raises(ValueError, match="mean head"):
        PopulationDenoiser(_net(), mean_train_sigma=_FixedSigma(sig))
    # the mean head's own preconditioning scale
    assert PopulationDenoiser(_net(), sigma_data=0.5, mean_hidden=4).mean_head.sigma_data == 0.5
    two = PopulationDenoiser(_net(), sigma_data=0.5, mean_hidden=4, mean_sigma_data=2.0)
    assert two.mean_head.sigma_data == 2.0 and two.sigma_data == 0.5


def test_joint_model_own_mean_loss_keeps_the_lineage_random_stream():
    """The mean head's own sigma is drawn after the lineage loss, so the lineage model's loss
    is the same with and without it."""
    import copy

    from diffsci.core.rng import ShardedRNG
    from diffsci.core.schedules import LogNormalSigma

    torch.manual_seed(0)
    lin = LineageDiffusion(4, depth=1, branching=2, hidden=8, layers=1)
    net = PopulationNet(3, n_perturbations=2, width=8, depth=1, heads=2)
    plain = PopulationDenoiser(net, mean_hidden=8, mean_depth=1)
    own = copy.deepcopy(plain)
    own.mean_train_sigma = LogNormalSigma(0.0, 1.5)
    batch = {
        "population": torch.randn(2, 5, 3),
        "control": torch.randn(2, 4, 3),
        "anchor": torch.randn(2, 5, 3),
        "perturbation": torch.tensor([0, 1]),
        "cells": torch.rand(2, 3, 4),
        "node0": torch.zeros(2, 3, dtype=torch.long),
        "tau0": torch.rand(2, 3),
    }
    a = SingleCellModel(plain, copy.deepcopy(lin))(
        batch, ShardedRNG(torch.Generator().manual_seed(0))
    )
    b = SingleCellModel(own, copy.deepcopy(lin))(
        batch, ShardedRNG(torch.Generator().manual_seed(0))
    )
    torch.testing.assert_close(a["loss_lineage"], b["loss_lineage"])
    assert not torch.allclose(a["loss_perturbation"], b["loss_perturbation"])


@pytest.mark.parametrize("method", ["pt2e", "eager"])
def test_population_denoiser_int8_copy_tracks_fp32_and_still_checks_its_condition(method):
    """The pt2e int8 path exports the population transformer (its value check of the
    perturbation index cannot be traced, so the denoiser's eager check must still refuse); the
    eager path leaves the attention layers' projections alone (they are read as weights)."""
    from diffsci.core.quantize import calibration_batches, have_pt2e, quantize_int8

    if method == "pt2e" and not have_pt2e():
        pytest.skip("torchao (extra int8) missing")
    den = PopulationDenoiser(_net(), sigma_data=0.5, mean_hidden=8, mean_depth=1).eval()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 5, 3, generator=g)
    cond = {
        "control": torch.randn(4, 7, 3, generator=g),
        "anchor": torch.randn(4, 5, 3, generator=g),
        "perturbation": torch.tensor([0, 1, 0, 1]),
    }
    q = quantize_int8(den, calibration_batches(x0, karras(8, 0.01, 10.0)), cond=cond, method=method)
    with torch.no_grad():
        x, s = x0 + 0.5 * torch.randn(x0.shape, generator=g), torch.full((4,), 0.5)
        ref = den(x, s, cond)
        assert float((q(x, s, cond) - ref).norm() / ref.norm()) < 0.2
        with pytest.raises(ValueError, match="perturbation index out of range"):
            q(x, s, {**cond, "perturbation": torch.tensor([0, 1, 0, 2])})
