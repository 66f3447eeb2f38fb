"""The single-cell task: perturbation response of a held-out cell type, and lineage inference.

Glue between the config, the files and the domain's modules:

- prepare: :func:`.simulate.perturbation_data` on pbmc68k_reduced's ``.raw`` writes
  ``control.h5ad`` (half of every cell type's cells; carries the PCA latent of
  :func:`.models.latent.fit_shared_latent`), ``train_perturbed.h5ad`` (populations of every
  cell type but the held-out one, plus ``mixture_populations`` per perturbation mixing them),
  ``truth.h5ad`` (held-out cell type, ``test_draws`` hidden-factor draws per perturbation),
  ``simulator.json`` (the ground-truth programs) and ``krumsiek11.h5ad`` (fates, true time).
- train: the core's loop on :class:`.models.SingleCellModel` (population diffusion + tree
  codebook lineage diffusion, one joint loss) over :func:`.models.population_items` and
  :func:`.models.lineage_items`.
- infer: ``perturbation.h5ad`` (:func:`.models.predict_perturbation` for the held-out cell
  type), ``baselines.h5ad`` (:mod:`.baselines`: identity, mean-shift), ``lineage.h5ad``
  (krumsiek11 with the model's branch/pseudotime/hierarchy, :func:`.models.lineage`, and the
  DPT and PAGA baselines).
- evaluate: :mod:`.metrics` tables (perturbation per perturbation and their mean, lineage),
  the acceptance bars in the summary, :mod:`.plots` figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from anndata import AnnData
from torch import nn

from diffsci.core.schedules import LogNormalSigma
from diffsci.core.task import Config, DomainTask, EvalResult, LossFn, Runtime, TaskPaths

from . import baselines, io, metrics, models, plots, simulate

__all__ = ["SingleCellTask"]

SCHEMA = Path(__file__).with_name("config.schema.yaml")


def _read(path: Path) -> AnnData:
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (run the prepare stage)")
    return io.read(path)


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _rows(adata: AnnData, perturbation: str, condition: str) -> AnnData:
    return adata[
        (adata.obs["perturbation"] == perturbation).values
        & (adata.obs["condition"] == condition).values
    ]


class SingleCellTask(DomainTask):
    """Perturbation response (population diffusion) and lineage (tree-codebook diffusion)."""

    name = "singlecell"
    schema_path = SCHEMA
    training_config_keys = ("seed", "perturbation", "model")
    packages = ("scanpy", "anndata", "pandas", "scikit-learn", "igraph", "matplotlib")

    @io.keep_torch_threads()
    def prepare(self, cfg: Config, data_dir: Path) -> None:
        c, seed = cfg["perturbation"], int(cfg["seed"])
        data_dir = Path(data_dir)
        pbmc = simulate.load_pbmc(
            c["input"], min_cells=c["min_cells"], cell_type_key=c["cell_type_key"]
        )
        held = c["held_out_cell_type"]
        what = f"{c['input'] or 'pbmc68k_reduced'} (after the min_cells filter)"
        io.require_obs_value(pbmc, "cell_type", held, what=what)
        data = simulate.perturbation_data(
            pbmc,
            held_out=held,
            seed=seed,
            n_perturbations=c["n_perturbations"],
            n_up=c["n_up"],
            n_down=c["n_down"],
            n_responders=c["n_responders"],
            effect_size=c["effect_size"],
            hidden_sd=c["hidden_sd"],
            noise=c["noise"],
            train_populations=c["train_populations"],
            mixture_populations=c["mixture_populations"],
            test_draws=c["test_draws"],
            n_cells=c["n_cells"],
        )
        models.fit_shared_latent(
            data.control,
            [data.train],
            n_comps=c["n_pcs"],
            key_added=models.LATENT_KEY,
            perturbations=list(data.simulator.programs),
        )
        data.control.uns["held_out_cell_type"] = held
        io.write_h5ad(data.control, data_dir / "control.h5ad")
        io.write_h5ad(data.train, data_dir / "train_perturbed.h5ad")
        io.write_h5ad(data.truth, data_dir / "truth.h5ad")
        (data_dir / "simulator.json").write_text(data.simulator.to_json())
        io.write_h5ad(simulate.load_krumsiek11(), data_dir / "krumsiek11.h5ad")

    def build_model(self, cfg: Config) -> nn.Module:
        m, c, lin = cfg["model"], cfg["perturbation"], cfg["lineage"]
        net = models.PopulationNet(
            c["n_pcs"],
            n_perturbations=c["n_perturbations"],
            width=m["width"],
            depth=m["depth"],
            heads=m["heads"],
        )
        lineage_model = models.LineageDiffusion(
            11,
            depth=lin["tree_depth"],
            branching=lin["branching"],
            code_dim=m["lineage_code_dim"],
            hidden=m["lineage_hidden"],
            layers=m["lineage_layers"],
            sigma_data=m["lineage_sigma_data"],
            tau_grid=m["tau_grid"],
            em_after=m["em_after"],
        )
        mean_sigma = None
        if m["mean_sigma_mean"] is not None:
            mean_sigma = LogNormalSigma(m["mean_sigma_mean"], m["mean_sigma_std"])
        den = models.PopulationDenoiser(
            net,
            sigma_data=m["sigma_data"],
            linear=m["linear_response"],
            train_sigma=LogNormalSigma(m["train_sigma_mean"], m["train_sigma_std"]),
            mean_hidden=m["mean_hidden"],
            mean_sigma_data=m["mean_sigma_data"],
            mean_train_sigma=mean_sigma,
            mean_loss_weight=m["mean_loss_weight"],
        )
        return models.SingleCellModel(den, lineage_model, lineage_weight=m["lineage_weight"])

    @io.keep_torch_threads()
    def train_dataset(self, cfg: Config, data_dir: Path) -> torch.utils.data.Dataset:
        data_dir = Path(data_dir)
        c, lin, seed = cfg["perturbation"], cfg["lineage"], int(cfg["seed"])
        control = _read(data_dir / "control.h5ad")
        train = _read(data_dir / "train_perturbed.h5ad")
        perts = list(map(str, control.uns[models.LATENT_KEY]["perturbations"]))
        pops, ctrls, anchors, pidx = models.population_items(
            models.encode(control, control, what=str(data_dir / "control.h5ad")),
            control.obs["cell_type"].astype(str).values,
            models.encode(train, control, what=str(data_dir / "train_perturbed.h5ad")),
            train.obs["cell_type"].astype(str).values,
            train.obs["population"].values,
            [perts.index(str(q)) for q in train.obs["perturbation"].values],
            n_control=c["n_control"],
            seed=seed + 3,
        )
        kr = _read(data_dir / "krumsiek11.h5ad")
        parent = self.build_model(cfg).lineage.codebook.parent
        baselines.lineage_baselines(
            kr, n_neighbors=lin["n_neighbors"], resolution=lin["leiden_resolution"], seed=seed
        )
        cells, node0, tau0 = models.lineage_items(
            io.dense(kr.X),
            kr.obs["dpt_pseudotime"].values,
            parent,
            n_items=len(pops),
            per_item=lin["cells_per_item"],
            seed=seed,
            rng=np.random.default_rng(seed + 4),
        )
        return models.TensorItems(
            {
                "population": torch.as_tensor(pops, dtype=torch.float32),
                "control": torch.as_tensor(ctrls, dtype=torch.float32),
                "anchor": torch.as_tensor(anchors, dtype=torch.float32),
                "perturbation": torch.as_tensor(pidx, dtype=torch.long),
                "cells": torch.as_tensor(cells, dtype=torch.float32),
                "node0": torch.as_tensor(node0, dtype=torch.long),
                "tau0": torch.as_tensor(tau0, dtype=torch.float32),
            }
        )

    def make_loss(self, cfg: Config, data_dir: Path) -> LossFn:
        return models.joint_loss

    @io.keep_torch_threads()
    def infer(
        self, cfg: Config, model: nn.Module, data_dir: Path, out_dir: Path, rt: Runtime
    ) -> None:
        device, progress = rt.device, rt.progress
        import anndata as ad

        data_dir, out_dir = Path(data_dir), Path(out_dir)
        c, s, lin, seed = (
            cfg["perturbation"],
            cfg["sampling"],
            cfg["lineage"],
            int(cfg["seed"]),
        )
        control = _read(data_dir / "control.h5ad")
        train = _read(data_dir / "train_perturbed.h5ad")
        held = str(control.uns["held_out_cell_type"])
        preds, bases = [], []
        for k, q in enumerate(map(str, control.uns[models.LATENT_KEY]["perturbations"])):
            p = models.predict_perturbation(
                control,
                model,
                perturbation=q,
                cell_type=held,
                n_samples=s["samples"],
                n_cells=c["n_cells"],
                n_control=c["n_control"],
                steps=s["steps"],
                sampler=s["sampler"],
                start_sigma=s["start_sigma"],
                start=s["start"],
                sigma_max=s["sigma_max"],
                seed=seed + 10 + k,
                device=device,
                progress=progress,
            )
            del p.uns["predict_perturbation"]
            preds.append(p)
            bases.append(baselines.identity_baseline(control, cell_type=held, perturbation=q))
            bases.append(
                baselines.mean_shift_baseline(control, train, cell_type=held, perturbation=q)
            )
        perturbation = ad.concat(preds, index_unique="-", merge="same")
        io.write_h5ad(perturbation, out_dir / "perturbation.h5ad")
        io.write_h5ad(ad.concat(bases, index_unique="-"), out_dir / "baselines.h5ad")
        kr = _read(data_dir / "krumsiek11.h5ad")
        models.lineage(
            kr, model.cpu(), tau_grid=lin["infer_tau_grid"], n_noise=lin["infer_noise"], seed=seed
        )
        baselines.lineage_baselines(
            kr, n_neighbors=lin["n_neighbors"], resolution=lin["leiden_resolution"], seed=seed
        )
        io.write_h5ad(kr, out_dir / "lineage.h5ad")

    @io.keep_torch_threads()
    def evaluate(self, cfg: Config, paths: TaskPaths, fig_dir: Path) -> EvalResult:
        # a bare Figure (no pyplot): no backend to choose, nothing global to close
        from matplotlib.figure import Figure

        c, fig_dir = cfg["perturbation"], Path(fig_dir)
        control = _read(paths.data / "control.h5ad")
        truth = _read(paths.data / "truth.h5ad")
        pred = _read(paths.predictions / "perturbation.h5ad")
        base = _read(paths.predictions / "baselines.h5ad")
        held = str(control.uns["held_out_cell_type"])
        sim = simulate.PerturbationSimulator.from_json((paths.data / "simulator.json").read_text())
        perts = list(map(str, control.uns[models.LATENT_KEY]["perturbations"]))
        per_pert: dict[str, dict[str, dict[str, float]]] = {}
        fig = Figure(figsize=(4.2 * len(perts), 7.5))
        axes = fig.subplots(2, len(perts), squeeze=False)
        for j, q in enumerate(perts):
            t = truth[truth.obs["perturbation"] == q]
            preds = {
                metrics.MODEL: pred[pred.obs["perturbation"] == q],
                metrics.IDENTITY: _rows(base, q, "identity"),
                metrics.MEAN_SHIFT: _rows(base, q, "mean-shift"),
                metrics.ORACLE: simulate.oracle_populations(
                    sim,
                    control,
                    cell_type=held,
                    perturbation=q,
                    n_populations=cfg["sampling"]["samples"],
                    n_cells=c["n_cells"],
                    seed=int(cfg["seed"]) + 20 + j,
                ),
            }
            per_pert[q], extra = metrics.perturbation_tables(
                control,
                t,
                preds,
                metrics.MODEL,
                perturbation=q,
                cell_type=held,
                n_de=c["n_de"],
                eval_pcs=c["eval_pcs"],
            )
            plots.perturbation_panels(axes[:, j], t, preds, extra, perturbation=q, n_de=c["n_de"])
        _save(fig, fig_dir / "perturbation.png")
        mean = metrics.mean_table(per_pert)
        kr = _read(paths.predictions / "lineage.h5ad")
        lin = metrics.lineage_table(kr)
        fig = Figure(figsize=(14, 4))
        axes = fig.subplots(1, 3)
        plots.lineage_panels(axes, kr)
        _save(fig, fig_dir / "lineage.png")
        tables = {
            f"Perturbation, mean over {len(perts)} perturbations ({held} held out)": mean,
            **{f"Perturbation {q}, held-out cell type {held}": per_pert[q] for q in perts},
            "Lineage, krumsiek11 (fates and within-trajectory time)": lin,
        }
        return EvalResult(
            tables=tables,
            lower_is_better=["E-distance (PCA)", "MMD (PCA, rbf)"],
            figures=["figures/perturbation.png", "figures/lineage.png"],
            summary={
                "held-out cell type": held,
                **metrics.acceptance_bars(mean, lin, n_de=c["n_de"]),
            },
        )
