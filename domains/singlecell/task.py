"""The single-cell task: perturbation response of a held-out cell type, and lineage inference.

- prepare: the perturbation simulator on pbmc68k_reduced's ``.raw`` (:mod:`.simulate`):
  ``control.h5ad`` (half of every cell type's cells; carries the PCA latent),
  ``train_perturbed.h5ad`` (populations of every cell type but the held-out one, plus
  ``mixture_populations`` per perturbation mixing those cell types in Dirichlet proportions:
  without them the model memorised the six training cell types' responses and failed on the
  held-out one, top-50-DE R^2 -4.5 vs 0.75 with them in a 3000-step pilot),
  ``truth.h5ad`` (held-out cell type, ``test_draws`` hidden-factor draws per perturbation),
  ``simulator.json`` (the ground-truth programs), ``krumsiek11.h5ad`` (fates, true time).
- train: the core's loop on :class:`~.models.SingleCellModel` (population diffusion + tree
  codebook lineage diffusion, one joint loss).
- infer: ``perturbation.h5ad`` (sampled populations of the held-out cell type, obs
  ``sample``/``perturbation``/``condition``), ``baselines.h5ad`` (identity, mean-shift),
  ``lineage.h5ad`` (krumsiek11 with the model's branch/pseudotime/hierarchy and the DPT and
  PAGA baselines computed with scanpy).
- evaluate: E-distance (pertpy's, euclidean on PCA), MMD, R^2 on all genes and the top-50
  DE genes, coverage of the hidden-factor spread; NMI, dendrogram purity and pseudotime
  Spearman against DPT and PAGA; figures.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from torch import Tensor, nn

from diffsci.core.schedules import LogNormalSigma

from . import io, metrics, pl, simulate, tl
from .models import (
    LineageDiffusion,
    PopulationDenoiser,
    PopulationNet,
    SingleCellModel,
    anchor_index,
    ot_pairing,
    tree_init,
)

__all__ = [
    "SingleCellTask",
    "lineage_baselines",
    "oracle_populations",
    "perturbation_tables",
    "population_items",
]

SCHEMA = Path(__file__).with_name("config.schema.yaml")
KEY = "perturbation_latent"
#: the row of the perturbation tables that is the simulator's ground truth, not a method
ORACLE = "oracle: simulator on control cells (ground truth, not a method)"


def _read(path: Path) -> AnnData:
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (run the prepare stage)")
    return io.read(path)


class _Items(torch.utils.data.Dataset):
    def __init__(self, items: dict[str, Tensor]) -> None:
        self.items = items
        self.n = len(next(iter(items.values())))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[i] for k, v in self.items.items()}


@io.keep_torch_threads()
def lineage_baselines(adata: AnnData, *, n_neighbors: int = 10, resolution: float = 0.5,
                      seed: int = 0) -> None:  # fmt: skip
    """scanpy's DPT (``obs["dpt_pseudotime"]`` from ``uns["iroot"]``) and PAGA over Leiden
    clusters (``obs["leiden"]``, ``uns["paga"]``, plus ``uns["paga_parent"]``: the PAGA
    spanning tree rooted at the root cell's cluster, as a parent array over clusters)."""
    import scanpy as sc

    sc.pp.neighbors(adata, n_neighbors=n_neighbors, use_rep="X", random_state=seed)
    sc.tl.diffmap(adata, random_state=seed)
    sc.tl.dpt(adata, n_branchings=0)
    sc.tl.leiden(adata, resolution=resolution, flavor="igraph", n_iterations=2,
                 random_state=seed)  # fmt: skip
    sc.tl.paga(adata, groups="leiden")
    tree = adata.uns["paga"]["connectivities_tree"]
    tree = (tree + tree.T).tocsr()
    k = tree.shape[0]
    root = int(adata.obs["leiden"].cat.codes.iloc[int(adata.uns["iroot"])])
    parent = np.full(k, -2, dtype=int)
    parent[root] = -1
    queue = [root]
    while queue:
        v = queue.pop(0)
        for u in tree[v].indices:
            if parent[u] == -2:
                parent[u] = v
                queue.append(u)
    parent[parent == -2] = root  # clusters PAGA's tree leaves disconnected hang off the root
    adata.uns["paga_parent"] = parent


def perturbation_tables(control: AnnData, truth: AnnData, preds: dict[str, AnnData],
                        model_key: str, *, perturbation: str, cell_type: str, n_de: int,
                        eval_pcs: int) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:  # fmt: skip
    """Metrics of every prediction in ``preds`` for one held-out (cell type, perturbation).

    The truth is pooled over its hidden-factor draws (``obs["population"]``) and the model's
    prediction over its samples (``obs["sample"]``): both are the marginal over the hidden
    factor. E-distance and MMD are computed on a PCA (``eval_pcs`` components) fitted on the
    control and true cells only, the predictions projected into it. Coverage: each true
    population's response score (:func:`.metrics.response_score` over the top DE genes, signed
    by the true direction) against the 5-95% quantile interval of the model's sampled
    populations' scores; the same for every other prediction made of several populations
    (``obs["sample"]``, e.g. :func:`oracle_populations`).
    """
    ctrl = control[control.obs["cell_type"].astype(str).values == cell_type]
    de = metrics.top_de_genes(truth, ctrl, n=n_de)
    genes = list(map(str, truth.var_names))
    di = [genes.index(g) for g in de]
    basis = AnnData(np.concatenate([io.dense(ctrl.X), io.dense(truth.X)]).astype(np.float32),
                    var=truth.var[[]])  # fmt: skip
    tl.fit_latent(basis, n_comps=min(eval_pcs, basis.n_obs - 1, basis.n_vars - 1), key_added="eval")
    scale = float(basis.uns["eval"]["scale"])
    zt = tl.encode(truth, basis, key="eval") * scale
    signs = np.sign(io.dense(truth.X)[:, di].mean(0) - io.dense(ctrl.X)[:, di].mean(0))
    table: dict[str, dict[str, float]] = {}
    extra: dict[str, Any] = {"de_genes": de}
    for name, p in preds.items():
        zp = tl.encode(p, basis, key="eval") * scale
        row = {
            "E-distance (PCA)": metrics.e_distance(zp, zt),
            "MMD (PCA, rbf)": metrics.mmd(zp, zt),
            "R2 all genes": metrics.r2_means(truth.X, p[:, genes].X),
            f"R2 top-{n_de} DE": metrics.r2_means(truth.X, p[:, genes].X, di),
        }
        if "sample" in p.obs:
            ts = [metrics.response_score(truth[truth.obs["population"] == k].X, di, signs)
                  for k in truth.obs["population"].unique()]  # fmt: skip
            ps = [metrics.response_score(p[p.obs["sample"] == k][:, genes].X, di, signs)
                  for k in p.obs["sample"].unique()]  # fmt: skip
            row["coverage 90% (hidden-factor draws)"] = metrics.population_coverage(ps, ts)
            if name == model_key:
                extra["true_scores"], extra["pred_scores"] = ts, ps
        table[name] = row
    extra["coords"] = {"control": tl.encode(ctrl, basis, key="eval")[:, :2],
                       "truth": zt[:, :2] / scale,
                       **{k: tl.encode(v, basis, key="eval")[:, :2] for k, v in preds.items()}}  # fmt: skip
    return table, extra


def oracle_populations(sim: simulate.PerturbationSimulator, control: AnnData, *,
                       cell_type: str, perturbation: str, n_populations: int, n_cells: int,
                       seed: int) -> AnnData:  # fmt: skip
    """The simulator's own ground truth applied to the held-out cell type's *control* cells.

    Not a method (it knows the gene program, the gains and the hidden-factor distribution):
    the ceiling of any prediction made from the control pool, which holds other cells of the
    cell type than the perturbed pool the truth was simulated on. ``n_populations``
    populations as :func:`.simulate.simulate_populations` draws them (cells resampled with
    replacement, a fresh hidden factor each), ``obs["sample"]`` naming the population.
    """
    pop = simulate.simulate_populations(sim, control, cell_type=cell_type,
                                        perturbation=perturbation, n_populations=n_populations,
                                        n_cells=n_cells, rng=np.random.default_rng(seed),
                                        prefix="oracle")  # fmt: skip
    pop.obs["sample"] = pop.obs["population"].values
    pop.obs["condition"] = "oracle"
    return pop


def population_items(z_control: np.ndarray, control_types: np.ndarray, z_pert: np.ndarray,
                     pert_types: np.ndarray, populations: np.ndarray, pert_index: list[int], *,
                     n_control: int, seed: int) -> tuple[np.ndarray, ...]:  # fmt: skip
    """Training items of the population model from unpaired control and perturbed cells.

    For every perturbed population (``populations`` labels its cells, all of one perturbation):
    a condition of ``n_control`` control cells drawn (with replacement) with the population's
    cell-type composition; ``N`` anchors (the condition itself when ``N == n_control``, else
    ``N`` of its cells) paired with the perturbed cells by :func:`.models.ot_pairing`; the
    target is the displacements ``cells[perm] - anchors``. Returns ``(displacements (P, N, d),
    control (P, M, d), anchors (P, N, d), perturbation (P,))``.
    """
    rng = np.random.default_rng(seed)
    pops, ctrls, anchors, pidx = [], [], [], []
    labels = np.asarray(populations)
    for pid in pd.unique(labels):
        m = labels == pid
        # condition: control cells with the population's cell-type composition
        tt, cnt = np.unique(np.asarray(pert_types)[m], return_counts=True)
        k = np.round(cnt / cnt.sum() * n_control).astype(int)
        k[np.argmax(k)] += n_control - k.sum()
        cs = np.concatenate([z_control[control_types == t][rng.choice(int((control_types == t).sum()), n)]
                             for t, n in zip(tt, k, strict=True)])  # fmt: skip
        cells = z_pert[m]
        n = len(cells)
        anc = cs[anchor_index(n_control, n, rng)]
        perm = ot_pairing(cells, anc)
        pops.append(cells[perm] - anc)
        ctrls.append(cs)
        anchors.append(anc)
        pidx.append(pert_index[int(np.flatnonzero(m)[0])])
    return np.stack(pops), np.stack(ctrls), np.stack(anchors), np.asarray(pidx)


class SingleCellTask:
    """Perturbation response (population diffusion) and lineage (tree-codebook diffusion)."""

    name = "singlecell"
    schema_path = SCHEMA
    training_config_keys = ("seed", "perturbation", "model")

    # ---------------------------------------------------------------- prepare
    @io.keep_torch_threads()
    def prepare(self, cfg: Mapping[str, Any], data_dir: Path) -> None:
        c, seed = cfg["perturbation"], int(cfg["seed"])
        data_dir = Path(data_dir)
        pbmc = simulate.load_pbmc(c["input"], min_cells=c["min_cells"],
                                  cell_type_key=c["cell_type_key"])  # fmt: skip
        held = c["held_out_cell_type"]
        io.require_obs_value(pbmc, "cell_type", held,
                             what=f"{c['input'] or 'pbmc68k_reduced'} (after the min_cells filter)")  # fmt: skip
        sim = simulate.PerturbationSimulator.from_adata(
            pbmc, n_perturbations=c["n_perturbations"], n_up=c["n_up"], n_down=c["n_down"],
            n_responders=c["n_responders"], seed=seed, effect_size=c["effect_size"],
            hidden_sd=c["hidden_sd"], noise=c["noise"])  # fmt: skip
        control, pool = simulate.split_pools(pbmc, seed=seed)
        rng = np.random.default_rng(seed + 1)
        types = sorted(set(pbmc.obs["cell_type"]) - {held})
        train = [simulate.simulate_populations(sim, pool, cell_type=t, perturbation=q,
                                               n_populations=c["train_populations"],
                                               n_cells=c["n_cells"], rng=rng, prefix="train")
                 for t in types for q in sim.programs]  # fmt: skip
        if c["mixture_populations"]:
            # augmentation: populations mixing the training cell types (each cell responds by
            # its own state), so the condition -> response map is learnt between cell types
            train += [simulate.simulate_populations(sim, pool, cell_type=types, perturbation=q,
                                                    n_populations=c["mixture_populations"],
                                                    n_cells=c["n_cells"], rng=rng, prefix="mix",
                                                    mixture=True)
                      for q in sim.programs]  # fmt: skip
        import anndata as ad

        train_ad = ad.concat(train, index_unique="-")
        truth = ad.concat([simulate.simulate_populations(sim, pool, cell_type=held, perturbation=q,
                                                         n_populations=c["test_draws"],
                                                         n_cells=c["n_cells"],
                                                         rng=np.random.default_rng(seed + 2 + k),
                                                         prefix="truth")
                           for k, q in enumerate(sim.programs)], index_unique="-")  # fmt: skip
        fit = AnnData(np.concatenate([io.dense(control.X), io.dense(train_ad.X)]).astype(np.float32),
                      var=control.var[[]])  # fmt: skip
        tl.fit_latent(fit, n_comps=c["n_pcs"], key_added=KEY, perturbations=list(sim.programs))
        control.varm[f"{KEY}_PCs"] = fit.varm[f"{KEY}_PCs"]
        control.uns[KEY] = fit.uns[KEY]
        control.uns["held_out_cell_type"] = held
        io.write_h5ad(control, data_dir / "control.h5ad")
        io.write_h5ad(train_ad, data_dir / "train_perturbed.h5ad")
        io.write_h5ad(truth, data_dir / "truth.h5ad")
        (data_dir / "simulator.json").write_text(sim.to_json())
        io.write_h5ad(simulate.load_krumsiek11(), data_dir / "krumsiek11.h5ad")

    # ---------------------------------------------------------------- model
    def build_model(self, cfg: Mapping[str, Any]) -> nn.Module:
        m, c, lin = cfg["model"], cfg["perturbation"], cfg["lineage"]
        net = PopulationNet(c["n_pcs"], n_perturbations=c["n_perturbations"], width=m["width"],
                            depth=m["depth"], heads=m["heads"])  # fmt: skip
        lineage = LineageDiffusion(11, depth=lin["tree_depth"], branching=lin["branching"],
                                   code_dim=m["lineage_code_dim"], hidden=m["lineage_hidden"],
                                   layers=m["lineage_layers"],
                                   sigma_data=m["lineage_sigma_data"], tau_grid=m["tau_grid"],
                                   em_after=m["em_after"])  # fmt: skip
        mean_sigma = None
        if m.get("mean_sigma_mean") is not None:
            mean_sigma = LogNormalSigma(m["mean_sigma_mean"], m.get("mean_sigma_std", 1.2))
        den = PopulationDenoiser(net, sigma_data=m["sigma_data"], linear=m["linear_response"],
                                 train_sigma=LogNormalSigma(m["train_sigma_mean"], 1.2),
                                 mean_hidden=m.get("mean_hidden", 0),
                                 mean_sigma_data=m.get("mean_sigma_data"),
                                 mean_train_sigma=mean_sigma,
                                 mean_loss_weight=m.get("mean_loss_weight", 1.0))  # fmt: skip
        return SingleCellModel(den, lineage, lineage_weight=m["lineage_weight"])

    @io.keep_torch_threads()
    def train_dataset(self, cfg: Mapping[str, Any], data_dir: Path) -> torch.utils.data.Dataset:
        data_dir = Path(data_dir)
        c, seed = cfg["perturbation"], int(cfg["seed"])
        control = _read(data_dir / "control.h5ad")
        train = _read(data_dir / "train_perturbed.h5ad")
        perts = list(map(str, control.uns[KEY]["perturbations"]))
        zc = tl.encode(control, control, what=str(data_dir / "control.h5ad"))
        zp = tl.encode(train, control, what=str(data_dir / "train_perturbed.h5ad"))
        items = population_items(zc, control.obs["cell_type"].astype(str).values, zp,
                                 train.obs["cell_type"].astype(str).values,
                                 train.obs["population"].values,
                                 [perts.index(str(q)) for q in train.obs["perturbation"].values],
                                 n_control=c["n_control"], seed=seed + 3)  # fmt: skip
        pops, ctrls, anchors, pidx = items
        kr = _read(data_dir / "krumsiek11.h5ad")
        x = io.dense(kr.X)
        parent = self.build_model(cfg).lineage.codebook.parent
        lineage_baselines(kr, n_neighbors=cfg["lineage"]["n_neighbors"],
                          resolution=cfg["lineage"]["leiden_resolution"], seed=seed)  # fmt: skip
        node0, tau0 = tree_init(x, kr.obs["dpt_pseudotime"].values, parent, seed=seed)
        n, per = len(pops), cfg["lineage"]["cells_per_item"]
        cell_idx = (np.arange(n * per) % len(x)).reshape(n, per)
        cell_idx = np.random.default_rng(seed + 4).permutation(len(x))[cell_idx]
        return _Items({
            "population": torch.as_tensor(pops, dtype=torch.float32),
            "control": torch.as_tensor(ctrls, dtype=torch.float32),
            "anchor": torch.as_tensor(anchors, dtype=torch.float32),
            "perturbation": torch.as_tensor(pidx, dtype=torch.long),
            "cells": torch.as_tensor(x[cell_idx], dtype=torch.float32),
            "node0": torch.as_tensor(node0[cell_idx], dtype=torch.long),
            "tau0": torch.as_tensor(tau0[cell_idx], dtype=torch.float32),
        })  # fmt: skip

    def loss(self, model: nn.Module, batch: Any, rng) -> dict[str, Tensor]:
        return model(batch, rng)

    # ---------------------------------------------------------------- inference
    @io.keep_torch_threads()
    def infer(self, cfg: Mapping[str, Any], model: nn.Module, data_dir: Path, out_dir: Path, *,
              device: torch.device, progress: bool) -> None:  # fmt: skip
        import anndata as ad

        data_dir, out_dir = Path(data_dir), Path(out_dir)
        c, s, seed = cfg["perturbation"], cfg["sampling"], int(cfg["seed"])
        control = _read(data_dir / "control.h5ad")
        train = _read(data_dir / "train_perturbed.h5ad")
        held = str(control.uns["held_out_cell_type"])
        preds, bases = [], []
        for k, q in enumerate(map(str, control.uns[KEY]["perturbations"])):
            preds.append(tl.predict_perturbation(
                control, model, perturbation=q, cell_type=held, n_samples=s["samples"],
                n_cells=c["n_cells"], n_control=c["n_control"], steps=s["steps"],
                sampler=s["sampler"], start_sigma=s["start_sigma"], start=s["start"],
                sigma_max=s["sigma_max"], seed=seed + 10 + k,
                device=device, progress=progress))  # fmt: skip
            bases.append(tl.identity_baseline(control, cell_type=held, perturbation=q))
            bases.append(tl.mean_shift_baseline(control, train, cell_type=held, perturbation=q))
        for p in preds:
            del p.uns["predict_perturbation"]
        io.write_h5ad(
            ad.concat(preds, index_unique="-", merge="same"), out_dir / "perturbation.h5ad"
        )
        io.write_h5ad(ad.concat(bases, index_unique="-"), out_dir / "baselines.h5ad")
        kr = _read(data_dir / "krumsiek11.h5ad")
        lin = cfg["lineage"]
        tl.lineage(kr, model.cpu(), tau_grid=lin["infer_tau_grid"], n_noise=lin["infer_noise"],
                   seed=seed)  # fmt: skip
        lineage_baselines(kr, n_neighbors=lin["n_neighbors"], resolution=lin["leiden_resolution"],
                          seed=seed)  # fmt: skip
        io.write_h5ad(kr, out_dir / "lineage.h5ad")

    # ---------------------------------------------------------------- evaluation
    @io.keep_torch_threads()
    def evaluate(self, cfg: Mapping[str, Any], data_dir: Path, pred_dir: Path,
                 fig_dir: Path) -> dict[str, Any]:  # fmt: skip
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        data_dir, pred_dir, fig_dir = Path(data_dir), Path(pred_dir), Path(fig_dir)
        c = cfg["perturbation"]
        control = _read(data_dir / "control.h5ad")
        truth = _read(data_dir / "truth.h5ad")
        pred = _read(pred_dir / "perturbation.h5ad")
        base = _read(pred_dir / "baselines.h5ad")
        held = str(control.uns["held_out_cell_type"])
        sim = simulate.PerturbationSimulator.from_json((data_dir / "simulator.json").read_text())
        tables: dict[str, Any] = {}
        per_pert: dict[str, dict[str, dict[str, float]]] = {}
        figures = []
        perts = list(map(str, control.uns[KEY]["perturbations"]))
        fig, axes = plt.subplots(2, len(perts), figsize=(4.2 * len(perts), 7.5), squeeze=False)
        for j, q in enumerate(perts):
            t = truth[truth.obs["perturbation"] == q]
            preds = {"diffusion (population samples)": pred[pred.obs["perturbation"] == q],
                     "identity (control)": base[(base.obs["perturbation"] == q).values
                                                & (base.obs["condition"] == "identity").values],
                     "mean-shift": base[(base.obs["perturbation"] == q).values
                                        & (base.obs["condition"] == "mean-shift").values],
                     ORACLE: oracle_populations(sim, control, cell_type=held, perturbation=q,
                                                n_populations=cfg["sampling"]["samples"],
                                                n_cells=c["n_cells"],
                                                seed=int(cfg["seed"]) + 20 + j)}  # fmt: skip
            table, extra = perturbation_tables(control, t, preds, "diffusion (population samples)",
                                               perturbation=q, cell_type=held, n_de=c["n_de"],
                                               eval_pcs=c["eval_pcs"])  # fmt: skip
            per_pert[q] = table
            tables[f"Perturbation {q}, held-out cell type {held}"] = table
            pl.populations(extra["coords"], ax=axes[0, j], title=f"{q}: eval PCA")
            pl.de_scatter(
                t, preds, extra["de_genes"], ax=axes[1, j], title=f"{q}: top-{c['n_de']} DE"
            )
        fig.tight_layout()
        fig.savefig(fig_dir / "perturbation.png", dpi=90)
        plt.close(fig)
        figures.append("figures/perturbation.png")
        mean_table = {
            m: {k: float(np.mean([per_pert[q][m][k] for q in perts])) for k in per_pert[perts[0]][m]}
            for m in per_pert[perts[0]]
        }  # fmt: skip
        tables = {f"Perturbation, mean over {len(perts)} perturbations ({held} held out)":
                  mean_table, **tables}  # fmt: skip

        kr = _read(pred_dir / "lineage.h5ad")
        fate, tt = kr.obs["fate"].astype(str).values, kr.obs["true_time"].values
        u = kr.uns["lineage"]
        lin_table = {
            "diffusion tree codebook": {
                "NMI vs fate": metrics.nmi(fate, kr.obs["lineage_branch"]),
                "dendrogram purity": metrics.dendrogram_purity(fate, u["node_of_cell"], u["parent"]),
                "pseudotime Spearman": metrics.spearman(kr.obs["lineage_pseudotime"], tt),
                "branches used": int(kr.obs["lineage_branch"].nunique()),
            },
            "DPT (scanpy)": {"pseudotime Spearman": metrics.spearman(kr.obs["dpt_pseudotime"], tt)},
            "PAGA (Leiden clusters, scanpy)": {
                "NMI vs fate": metrics.nmi(fate, kr.obs["leiden"]),
                "dendrogram purity": metrics.dendrogram_purity(
                    fate, kr.obs["leiden"].cat.codes.values, kr.uns["paga_parent"]),
                "branches used": int(kr.obs["leiden"].nunique()),
            },
        }  # fmt: skip
        tables["Lineage, krumsiek11 (fates and within-trajectory time)"] = lin_table
        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        pl.pseudotime_scatter(tt, {"diffusion": kr.obs["lineage_pseudotime"].values,
                                   "DPT": kr.obs["dpt_pseudotime"].values}, ax=axes[0],
                              title="pseudotime vs truth")  # fmt: skip
        xy = kr.obsm["X_diffmap"][:, 1:3]
        pl.branches(xy, kr.obs["lineage_branch"], ax=axes[1], title="model branches (diffmap)")
        pl.branches(xy, fate, ax=axes[2], title="true fates (diffmap)")
        fig.tight_layout()
        fig.savefig(fig_dir / "lineage.png", dpi=90)
        plt.close(fig)
        figures.append("figures/lineage.png")

        mt = mean_table
        de_key = f"R2 top-{c['n_de']} DE"
        model, ident = mt["diffusion (population samples)"], mt["identity (control)"]
        lm, dpt = lin_table["diffusion tree codebook"], lin_table["DPT (scanpy)"]
        summary = {
            "held-out cell type": held,
            "bar: top-DE R2 >= 0.9": bool(model[de_key] >= 0.9),
            "bar: top-DE R2 >= identity + 0.3": bool(model[de_key] >= ident[de_key] + 0.3),
            "bar: E-distance <= 0.5 x identity": bool(
                model["E-distance (PCA)"] <= 0.5 * ident["E-distance (PCA)"]),
            "bar: coverage >= 0.8": bool(model["coverage 90% (hidden-factor draws)"] >= 0.8),
            "bar: krumsiek11 NMI >= 0.8": bool(lm["NMI vs fate"] >= 0.8),
            "bar: pseudotime Spearman >= DPT": bool(
                lm["pseudotime Spearman"] >= dpt["pseudotime Spearman"]),
        }  # fmt: skip
        return {"tables": tables, "summary": summary, "figures": figures,
                "lower_is_better": ["E-distance (PCA)", "MMD (PCA, rbf)"]}  # fmt: skip
