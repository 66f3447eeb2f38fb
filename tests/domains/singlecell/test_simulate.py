"""The perturbation simulator and the lineage data: ground truth as documented."""

from __future__ import annotations

import numpy as np
import pytest

from diffsci.domains.singlecell import simulate


@pytest.fixture(scope="module")
def pbmc():
    return simulate.load_pbmc(min_cells=30)


@pytest.fixture(scope="module")
def sim(pbmc):
    return simulate.PerturbationSimulator.from_adata(pbmc, n_perturbations=3, seed=0)


def test_pbmc_is_log_normalised_raw(pbmc):
    assert pbmc.n_vars == 765 and (pbmc.obs["cell_type"].value_counts() >= 30).all()
    assert pbmc.X.min() >= 0 and np.isfinite(pbmc.X).all()


def test_programs_are_disjoint_and_roundtrip(sim):
    genes = [g for p in sim.programs.values() for g in p.up + p.down + p.responders]
    assert len(genes) == len(set(genes))
    back = simulate.PerturbationSimulator.from_json(sim.to_json())
    assert back.programs == sim.programs and back.genes == sim.genes


def test_effects_follow_the_model(pbmc, sim):
    x = np.asarray(pbmc.X[:200], np.float64)
    p = sim.programs["P1"]
    sim_nonoise = simulate.PerturbationSimulator(sim.genes, sim.programs, noise=0.0)
    y = sim_nonoise.apply(x, "P1", hidden=1.3, rng=np.random.default_rng(0))
    up = [sim.genes.index(g) for g in p.up]
    down = [sim.genes.index(g) for g in p.down]
    other = sorted(set(range(len(sim.genes))) - set(up) - set(down))
    np.testing.assert_array_equal(y[:, other], x[:, other])
    gain = sim.gain(x, "P1")
    exp_up = x[:, up] + 1.3 * gain[:, None] * sim.effect_size * np.asarray(p.up_weight)
    np.testing.assert_allclose(y[:, up], exp_up)
    np.testing.assert_allclose(
        y[:, down], x[:, down] * (1 - np.minimum(0.95, 1.3 * np.asarray(p.down_frac)))
    )
    assert (0.5 <= gain).all() and (gain <= 1.5).all()


def test_gain_depends_on_cell_type(pbmc, sim):
    x = np.asarray(pbmc.X, np.float64)
    t = pbmc.obs["cell_type"].values
    means = [sim.gain(x[t == c], "P1").mean() for c in np.unique(t)]
    assert max(means) - min(means) > 0.3


def test_unknown_perturbation_is_an_error(pbmc, sim):
    with pytest.raises(KeyError, match="unknown perturbation 'KO'"):
        sim.apply(np.asarray(pbmc.X[:3]), "KO", hidden=1.0, rng=np.random.default_rng(0))


def test_populations_share_a_hidden_factor_and_pools_are_disjoint(pbmc, sim):
    ctrl, pool = simulate.split_pools(pbmc, seed=0)
    assert not set(ctrl.obs_names) & set(pool.obs_names)
    assert ctrl.n_obs + pool.n_obs == pbmc.n_obs
    pops = simulate.simulate_populations(
        sim,
        pool,
        cell_type="CD19+ B",
        perturbation="P2",
        n_populations=5,
        n_cells=20,
        rng=np.random.default_rng(0),
    )
    assert pops.n_obs == 100
    h = pops.obs.groupby("population")["hidden_factor"].nunique()
    assert (h == 1).all() and pops.obs["hidden_factor"].nunique() == 5
    with pytest.raises(KeyError, match="no cells of cell type"):
        simulate.simulate_populations(
            sim,
            pool,
            cell_type="Neuron",
            perturbation="P2",
            n_populations=1,
            n_cells=2,
            rng=np.random.default_rng(0),
        )


def test_hidden_factor_is_lognormal(sim):
    h = sim.draw_hidden(np.random.default_rng(0), 20000)
    assert abs(np.log(h).mean()) < 0.01 and abs(np.log(h).std() - sim.hidden_sd) < 0.01


def test_krumsiek11_ground_truth():
    k = simulate.load_krumsiek11()
    assert k.shape == (640, 11) and k.uns["iroot"] == 0
    assert set(k.obs["trajectory"]) == {"Mo", "Ery", "Mk", "Neu"}
    assert (k.obs["fate"][k.obs["true_time"] < 0.49] == "progenitor").all()
    assert k.obs["true_time"].min() == 0 and k.obs["true_time"].max() == 1


def test_mixture_populations_mix_cell_types(pbmc, sim):
    _, pool = simulate.split_pools(pbmc, seed=0)
    types = ["CD19+ B", "CD14+ Monocyte", "Dendritic"]
    pops = simulate.simulate_populations(
        sim,
        pool,
        cell_type=types,
        perturbation="P1",
        n_populations=6,
        n_cells=30,
        mixture=True,
        rng=np.random.default_rng(1),
    )
    comp = pops.obs.groupby("population")["cell_type"].nunique()
    assert comp.max() >= 2 and set(pops.obs["cell_type"]) <= set(types)
    frac_b = pops.obs.assign(b=pops.obs["cell_type"] == "CD19+ B").groupby("population")["b"].mean()
    assert frac_b.std() > 0.05  # proportions differ between populations


def test_oracle_populations_apply_the_simulator_to_control_cells():
    """The oracle row: populations of the held-out type's control cells under the simulator's
    program, one fresh hidden factor each; seeded; the control AnnData is untouched."""
    import pandas as pd
    from anndata import AnnData

    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(40)]
    x = rng.gamma(2.0, 0.5, (30, 40)).astype(np.float32)
    control = AnnData(
        x,
        obs=pd.DataFrame(
            {"cell_type": ["B"] * 12 + ["T"] * 18}, index=[f"c{i}" for i in range(30)]
        ),
        var=pd.DataFrame(index=genes),
    )
    sim = simulate.PerturbationSimulator.from_adata(
        control, n_perturbations=1, n_up=5, n_down=5, n_responders=3, seed=0
    )
    before = control.X.copy()
    pop = simulate.oracle_populations(
        sim, control, cell_type="B", perturbation="P1", n_populations=6, n_cells=10, seed=3
    )
    again = simulate.oracle_populations(
        sim, control, cell_type="B", perturbation="P1", n_populations=6, n_cells=10, seed=3
    )
    np.testing.assert_array_equal(pop.X, again.X)
    np.testing.assert_array_equal(control.X, before)
    assert pop.shape == (60, 40) and pop.obs["sample"].nunique() == 6
    assert (pop.obs["cell_type"] == "B").all() and (pop.obs["condition"] == "oracle").all()
    h = pop.obs.groupby("sample")["hidden_factor"].first().values
    assert len(np.unique(h)) == 6 and (h > 0).all()
    # untouched genes are exact copies of B control cells; induced genes rose
    up = [genes.index(g) for g in sim.programs["P1"].up]
    other = [
        i
        for i in range(40)
        if genes[i] not in set(sim.programs["P1"].up) | set(sim.programs["P1"].down)
    ]
    rows_b = {tuple(r) for r in x[:12][:, other]}
    assert all(tuple(r) in rows_b for r in pop.X[:, other])
    assert pop.X[:, up].mean() > x[:12][:, up].mean() + 0.5
