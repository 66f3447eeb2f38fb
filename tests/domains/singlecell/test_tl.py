"""Tools: latent round trip, predictions and baselines, lineage outputs, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData

from diffsci.domains.singlecell import tl
from diffsci.domains.singlecell.models import LineageDiffusion, PopulationDenoiser, PopulationNet


def _control(n=40, g=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 0.5, (n, g)).astype(np.float32)
    obs = pd.DataFrame(
        {"cell_type": np.where(np.arange(n) % 2, "A", "B")}, index=[f"c{i}" for i in range(n)]
    )
    return AnnData(x, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(g)]))


def test_fit_latent_roundtrip_and_copy():
    a = _control()
    out = tl.fit_latent(a, n_comps=11, perturbations=["P1"], copy=True)
    assert "perturbation_latent" not in a.uns and out is not a
    z = tl.encode(a, out)
    np.testing.assert_allclose(z, out.obsm["X_perturbation_latent"], atol=1e-6)
    # 11 of 12 components: the reconstruction error is the last component only, so the
    # residual matrix has rank 1 (a wrong centring, scale or basis would leave rank > 1)
    rec = tl.decode(z, out)
    sv = np.linalg.svd(rec - a.X, compute_uv=False)
    assert sv[0] > 0.1 and sv[1] < 1e-4 * sv[0]
    assert tl.fit_latent(a, n_comps=3) is None and "perturbation_latent" in a.uns
    assert out.uns["perturbation_latent"]["scale"] > 0


def _model(d):
    torch.manual_seed(0)
    return PopulationDenoiser(PopulationNet(d, n_perturbations=2, width=16, depth=1, heads=2))


def test_predict_perturbation_outputs_and_leaves_input_alone():
    a = _control()
    tl.fit_latent(a, n_comps=4, perturbations=["P1", "P2"])
    before = a.X.copy()
    out = tl.predict_perturbation(
        a, _model(4), perturbation="P2", cell_type="A", n_samples=3, n_cells=5, n_control=6, steps=3
    )
    np.testing.assert_array_equal(a.X, before)
    assert out.shape == (15, 12) and list(out.var_names) == list(a.var_names)
    assert out.obs["sample"].nunique() == 3 and (out.obs["condition"] == "predicted").all()
    assert out.obsm["X_latent"].shape == (15, 4)
    # (that a trained model learns the shift: test_models.py, control-dependent shift test)
    assert np.isfinite(out.X).all()
    warm = tl.predict_perturbation(
        a,
        _model(4),
        perturbation="P1",
        cell_type="B",
        n_samples=2,
        n_cells=4,
        n_control=6,
        steps=3,
        start_sigma=0.5,
    )
    assert warm.uns["predict_perturbation"]["start_sigma"] == 0.5 and warm.n_obs == 8


class _NoResponse(torch.nn.Module):
    """A denoiser whose every population has zero displacement from its anchors."""

    def forward(self, x, sigma, cond=None):
        return torch.zeros_like(x)


def test_predict_perturbation_cells_are_anchors_plus_displacement():
    """Zero displacement: every predicted cell is one of the cell type's control cells, in all
    genes (not only in the latent), and its latent is that cell's encoding."""
    a = _control()
    tl.fit_latent(a, n_comps=4, perturbations=["P1"])
    out = tl.predict_perturbation(
        a,
        _NoResponse(),
        perturbation="P1",
        cell_type="A",
        n_samples=3,
        n_cells=6,
        n_control=6,
        steps=4,
    )
    ctrl = a[a.obs["cell_type"] == "A"]
    dist = ((out.X[:, None] - ctrl.X[None]) ** 2).sum(-1)
    assert np.allclose(dist.min(1), 0.0, atol=1e-8)
    np.testing.assert_allclose(out.obsm["X_latent"], tl.encode(ctrl, a)[dist.argmin(1)], atol=1e-5)
    # n_cells != n_control: anchors drawn among the condition's cells
    more = tl.predict_perturbation(
        a,
        _NoResponse(),
        perturbation="P1",
        cell_type="A",
        n_samples=2,
        n_cells=9,
        n_control=4,
        steps=3,
    )
    assert more.n_obs == 18
    for k in range(2):
        cells = more[more.obs["sample"] == f"sample{k}"].X
        assert len(np.unique(cells, axis=0)) <= 4


class _Frozen(PopulationDenoiser):
    """``D(x) = x``: the probability-flow ODE leaves the initial state where it is."""

    def forward(self, x, sigma, cond):
        return x


def test_predict_perturbation_start_and_sigma_max():
    """The initial state is ``centre + sigma_max * noise``: centred on zero displacement or on
    the denoiser's linear response of every anchor (``start="linear"``)."""
    a = _control()
    tl.fit_latent(a, n_comps=4, perturbations=["P1", "P2"])
    torch.manual_seed(0)
    den = _Frozen(PopulationNet(4, n_perturbations=2, width=16, depth=1, heads=2))
    with torch.no_grad():
        den.weight.normal_()
    kw = {
        "perturbation": "P2",
        "cell_type": "A",
        "n_samples": 3,
        "n_cells": 6,
        "n_control": 6,
        "steps": 3,
        "sigma_max": 0.01,
    }
    ctrl = a[a.obs["cell_type"] == "A"]
    zc = tl.encode(ctrl, a)
    zero = tl.predict_perturbation(a, den, **kw)
    lin = tl.predict_perturbation(a, den, start="linear", **kw)
    assert lin.uns["predict_perturbation"]["start"] == "linear"
    # the same anchors (same seed); zero start: cells = anchors + O(sigma_max)
    anchors = zero.obsm["X_latent"]
    dist = ((anchors[:, None] - zc[None]) ** 2).sum(-1)
    assert dist.min(1).max() < 4e-3
    anc = torch.as_tensor(zc[dist.argmin(1)].reshape(3, 6, 4), dtype=torch.float32)
    cond = {"control": anc, "anchor": anc, "perturbation": torch.full((3,), 1)}
    m = den.linear_response(cond).detach().numpy().reshape(-1, 4)
    np.testing.assert_allclose(lin.obsm["X_latent"] - zc[dist.argmin(1)], m, atol=0.05)
    assert np.abs(m).max() > 0.5
    with pytest.raises(ValueError, match="start must be"):
        tl.predict_perturbation(a, den, start="mean", **kw)
    with pytest.raises(ValueError, match="linear_response"):
        tl.predict_perturbation(a, _NoResponse(), start="linear", **kw)


@pytest.mark.parametrize(
    "kw, err, match",
    [
        ({"perturbation": "KO"}, KeyError, "unknown perturbation 'KO'"),
        ({"cell_type": "Z"}, KeyError, "unknown cell_type 'Z'"),
    ],
)
def test_predict_perturbation_bad_names(kw, err, match):
    a = _control()
    tl.fit_latent(a, n_comps=4, perturbations=["P1"])
    args = {"perturbation": "P1", "cell_type": "A", **kw}
    with pytest.raises(err, match=match):
        tl.predict_perturbation(a, _model(4), n_samples=2, n_cells=2, steps=2, **args)


def test_genes_absent_and_non_finite_and_no_latent():
    ref = _control()
    tl.fit_latent(ref, n_comps=4, perturbations=["P1"])
    other = _control()[:, 2:].copy()
    with pytest.raises(KeyError, match="2 genes of the model absent, e.g. g0, g1"):
        tl.predict_perturbation(
            other,
            _model(4),
            reference=ref,
            perturbation="P1",
            cell_type="A",
            n_samples=2,
            n_cells=2,
            steps=2,
        )
    bad = _control()
    bad.X[3, 1] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        tl.encode(bad, ref, what="control adata")
    with pytest.raises(KeyError, match="run tl.fit_latent first"):
        tl.encode(_control(), _control())


def test_baselines():
    a = _control()
    pert = _control(seed=1)
    pert.obs["perturbation"] = "P1"
    pert.X[pert.obs["cell_type"] == "B"] += 1.0  # B shifts by +1 under P1
    ident = tl.identity_baseline(a, cell_type="A", perturbation="P1")
    np.testing.assert_array_equal(ident.X, a[a.obs["cell_type"] == "A"].X)
    ms = tl.mean_shift_baseline(a, pert, cell_type="A", perturbation="P1")
    b_ctrl = a[a.obs["cell_type"] == "B"].X.mean(0)
    b_pert = pert[pert.obs["cell_type"] == "B"].X.mean(0)
    np.testing.assert_allclose(
        ms.X - ident.X, np.broadcast_to(b_pert - b_ctrl, ms.shape), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(KeyError, match="unknown perturbation 'P9'"):
        tl.mean_shift_baseline(a, pert, cell_type="A", perturbation="P9")


def test_lineage_writes_scanpy_style_keys():
    torch.manual_seed(0)
    lin = LineageDiffusion(3, depth=1, branching=2, hidden=8, layers=1)
    a = AnnData(np.random.default_rng(0).random((10, 3)).astype(np.float32))
    out = tl.lineage(a, lin, tau_grid=5, n_noise=2, copy=True)
    assert "lineage_branch" not in a.obs
    assert set(out.obs["lineage_branch"].cat.categories) == {"root", "0", "1"}
    pt = out.obs["lineage_pseudotime"]
    assert ((pt >= 0) & (pt <= 1)).all()
    assert out.obsm["X_lineage"].shape[0] == 10
    assert list(out.uns["lineage"]["parent"]) == [-1, 0, 0]
    assert tl.lineage(a, lin, tau_grid=5, n_noise=1, key_added="hd") is None
    assert "hd_pseudotime" in a.obs
    with pytest.raises(ValueError, match="4 genes, the lineage model 3"):
        tl.lineage(AnnData(np.zeros((2, 4), np.float32)), lin)
