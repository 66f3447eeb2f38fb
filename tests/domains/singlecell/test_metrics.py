"""The fields' metrics against independent computations."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData

from diffsci.core.metrics import energy_distance
from diffsci.domains.singlecell import metrics


def _mean_dist(a, b):
    return sum(np.linalg.norm(u - v) for u in a for v in b) / (len(a) * len(b))


def test_e_distance_equals_pertpy_formula_to_1e8():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 7)), rng.normal(0.3, 1.5, size=(45, 7))
    ref = 2 * _mean_dist(x, y) - _mean_dist(x, x) - _mean_dist(y, y)  # pertpy: means incl. i=j
    assert abs(metrics.e_distance(x, y) - ref) <= 1e-8
    assert (
        abs(metrics.e_distance(x, y) - float(energy_distance(torch.tensor(x), torch.tensor(y))))
        < 1e-10
    )
    # not the squared-euclidean variant of old pertpy, nor the U-statistic
    sq = lambda a, b: np.mean(((a[:, None] - b[None]) ** 2).sum(-1))  # noqa: E731
    assert abs(metrics.e_distance(x, y) - (2 * sq(x, y) - sq(x, x) - sq(y, y))) > 0.1
    assert metrics.e_distance(x, x) == pytest.approx(0.0, abs=1e-12)


def test_mmd_detects_a_shift():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(80, 3)), rng.normal(size=(80, 3))
    assert abs(metrics.mmd(x, y)) < 0.05
    assert metrics.mmd(x, y + 1.0) > 0.2


def test_r2_means_is_sklearn_r2_of_gene_means():
    rng = np.random.default_rng(2)
    t, p = rng.random((20, 6)), rng.random((30, 6))
    mt, mp = t.mean(0), p.mean(0)
    ref = 1 - ((mt - mp) ** 2).sum() / ((mt - mt.mean()) ** 2).sum()
    assert metrics.r2_means(t, p) == pytest.approx(ref, abs=1e-12)
    assert metrics.r2_means(t, t + 0.0) == 1.0
    sub = [1, 3, 4]
    ref = 1 - ((mt[sub] - mp[sub]) ** 2).sum() / ((mt[sub] - mt[sub].mean()) ** 2).sum()
    assert metrics.r2_means(t, p, sub) == pytest.approx(ref, abs=1e-12)


def test_top_de_genes_finds_planted_up_and_down_genes():
    rng = np.random.default_rng(3)
    genes = [f"g{i}" for i in range(40)]
    ctrl = rng.normal(2, 0.3, (60, 40)).clip(0)
    pert = rng.normal(2, 0.3, (60, 40)).clip(0)
    pert[:, 5] += 1.5
    pert[:, 17] -= 1.2
    var = pd.DataFrame(index=genes)
    top = metrics.top_de_genes(AnnData(pert, var=var), AnnData(ctrl, var=var), n=2)
    assert set(top) == {"g5", "g17"}


def _brute_purity(labels, node, parent):
    """Heller & Ghahramani with each node's own cells as a leaf cluster under it."""
    labels, node = np.asarray(labels), np.asarray(node)

    def anc(v):
        out = [v]
        while parent[v] >= 0:
            v = parent[v]
            out.append(v)
        return out

    def subtree_cells(v):
        return [i for i in range(len(node)) if v in anc(node[i])]

    vals = []
    for i, j in itertools.combinations(range(len(node)), 2):
        if labels[i] != labels[j]:
            continue
        if node[i] == node[j]:
            cells = [k for k in range(len(node)) if node[k] == node[i]]
        else:
            a = anc(node[i])
            lca = next(v for v in anc(node[j]) if v in a)
            cells = subtree_cells(lca)
        vals.append(np.mean(labels[cells] == labels[i]))
    return float(np.mean(vals))


def test_dendrogram_purity_matches_brute_force():
    rng = np.random.default_rng(4)
    parent = [-1, 0, 0, 1, 1, 2, 2]
    for _ in range(3):
        node = rng.integers(0, 7, 40)
        labels = rng.choice(list("abc"), 40)
        assert metrics.dendrogram_purity(labels, node, parent) == pytest.approx(
            _brute_purity(labels, node, parent), abs=1e-12
        )


def test_dendrogram_purity_extremes():
    parent = [-1, 0, 0]
    assert metrics.dendrogram_purity(list("aabb"), [1, 1, 2, 2], parent) == 1.0
    # one class per leaf, but both classes mixed in each leaf: purity 1/2
    assert metrics.dendrogram_purity(list("abab"), [1, 1, 2, 2], parent) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        metrics.dendrogram_purity(list("ab"), [1, 2], parent)


def test_nmi_spearman_coverage():
    assert metrics.nmi(list("aabb"), [1, 1, 0, 0]) == pytest.approx(1.0)
    assert metrics.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    pred = np.linspace(0, 1, 101)  # 5-95% interval = [0.05, 0.95]
    assert metrics.population_coverage(pred, [0.5, 0.06, 0.94, 0.99, -0.2]) == pytest.approx(0.6)
    x = np.ones((4, 3))
    assert metrics.response_score(x * [1, 2, 3], [0, 2], [1, -1]) == pytest.approx((1 - 3) / 2)
