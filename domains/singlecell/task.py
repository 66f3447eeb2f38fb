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

With ``source.kind: files`` the lineage part runs on the user's cells instead of krumsiek11:
prepare reads them (:func:`.io.read_cells`), fits a PCA codec of their genes
(:class:`.models.GeneCodec`) on the train (and validation) files and writes
``lineage_train.h5ad`` and ``lineage_test.h5ad`` (the latent, time points, fates, clonal
barcodes, DPT's root); the model card records the genes by name and the codec, and ``apply``
runs the trained lineage model on new files of the same genes. With ``files.perturbation_key``
the files are a perturbation screen instead (:mod:`.screen`): the perturbation model trains on
it and is scored on its test files (no ``simulator.json``, no oracle row), the lineage model on
krumsiek11.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from torch import nn

from diffsci.core import Card, Config, DomainTask, EvalResult, Files, LossFn, Runtime, TaskPaths
from diffsci.core.datasource import FileSplits, resolve_source
from diffsci.core.modelcard import Incompatible, require, warn_outside
from diffsci.core.schedules import LogNormalSigma

from . import baselines, io, metrics, models, plots, screen, simulate

__all__ = ["SingleCellTask"]

SCHEMA = Path(__file__).with_name("config.schema.yaml")


def _read(path: Path) -> AnnData:
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (run the prepare stage)")
    return io.read(path)


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)


KRUMSIEK = "krumsiek11.h5ad"
LINEAGE_TRAIN, LINEAGE_TEST = "lineage_train.h5ad", "lineage_test.h5ad"


def _simulated(cfg: Config) -> bool:
    return (cfg.get("source") or {}).get("kind", "simulate") == "simulate"


def _lineage_files(cfg: Config) -> tuple[str, str]:
    """The lineage model's training file and evaluation file in the data folder."""
    return (LINEAGE_TRAIN, LINEAGE_TEST) if _lineage_on_files(cfg) else (KRUMSIEK, KRUMSIEK)


def _lineage_inputs(cfg: Config) -> int:
    """The lineage model's input width: krumsiek11's 11 genes, or the PCA latent's size."""
    return int(cfg["files"]["lineage_pcs"]) if _lineage_on_files(cfg) else 11


def _screen(cfg: Config) -> bool:
    """The user's files are a perturbation screen (the lineage model stays on krumsiek11)."""
    return not _simulated(cfg) and cfg["files"]["perturbation_key"] is not None


def _lineage_on_files(cfg: Config) -> bool:
    """The user's files are lineage data (the perturbation model stays on simulated data)."""
    return not _simulated(cfg) and cfg["files"]["perturbation_key"] is None


def _simulated_perturbations(cfg: Config) -> tuple[AnnData, AnnData, AnnData, list[str], str]:
    """The demo's perturbation data: programs simulated on ``perturbation.input``."""
    c, seed = cfg["perturbation"], int(cfg["seed"])
    pbmc = simulate.load_pbmc(
        c["input"],
        min_cells=c["min_cells"],
        cell_type_key=c["cell_type_key"],
        counts=cfg["files"]["counts"],
        target_sum=cfg["files"]["target_sum"],
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
    perts = list(data.simulator.programs)
    return data.control, data.train, data.truth, perts, data.simulator.to_json()


def _screen_data(cfg: Config, files: FileSplits) -> tuple[AnnData, AnnData, AnnData, list[str]]:
    """The user's perturbation screen (:mod:`.screen`): train (and validation) files for the
    control cells and training populations, test files for the held-out cell type's truth."""
    f, c = cfg["files"], cfg["perturbation"]
    keys = {
        "perturbation_key": f["perturbation_key"],
        "control_label": f["control_label"],
        "cell_type_key": c["cell_type_key"],
    }
    train = screen.read_screen(files.train + files.validation, keys=keys, opts=f)
    test = screen.read_screen(files.test, keys=keys, opts=f)
    if list(test.var_names) != list(train.var_names):
        test = models.select_genes(test, list(map(str, train.var_names)), what="the test files")
    return screen.screen_data(train, test, cfg=cfg)


def _cells_opts(cfg: Config) -> dict[str, Any]:
    return dict(cfg["files"])


def _root(z: AnnData, cells: AnnData, f: Config, what: str) -> int:
    """DPT's root: the file's own ``uns["iroot"]``, else :func:`.baselines.find_root`."""
    if "iroot" in cells.uns:
        return int(cells.uns["iroot"])
    return baselines.find_root(
        z,
        root=f["root"],
        root_key="is_root" if "is_root" in z.obs else None,
        time=z.obs["time_point"].to_numpy() if "time_point" in z.obs else None,
        what=what,
    )


def _latent_cells(
    cells: AnnData,
    codec: models.GeneCodec | None,
    cfg: Config,
    what: str,
    genes: Sequence[str] = (),
    *,
    need_root: bool = True,
) -> AnnData:
    """The lineage model's layout of ``cells``: ``X`` the codec's latent (or, without a codec,
    ``genes`` selected by name), the truth columns and clonal barcodes carried, DPT's root in
    ``uns["iroot"]`` (:func:`_root`; refused without one unless not ``need_root``: then a
    warning, and no DPT / PAGA)."""
    f = cfg["files"]
    if codec is None:
        x = io.dense(models.select_genes(cells, list(genes), what=what).X).astype(np.float32)
        z = AnnData(X=x, obs=cells.obs.copy())
        z.var_names = list(genes)
    else:
        z = AnnData(X=codec.encode(cells, what=what), obs=cells.obs.copy())
        z.var_names = [f"PC{i + 1}" for i in range(codec.n_comps)]
    if "X_clone" in cells.obsm:
        z.obsm["X_clone"] = cells.obsm["X_clone"]
    try:
        z.uns["iroot"] = _root(z, cells, f, what)
    except ValueError as e:
        if need_root:
            raise
        warnings.warn(f"{e}; DPT and PAGA are skipped for this file", stacklevel=2)
    z.uns["expression"] = cells.uns["expression"]
    return z


def _prepare_lineage(cfg: Config, files: FileSplits, data_dir: Path) -> None:
    """The user's cells into ``lineage_train.h5ad`` (train + validation files: the lineage
    model has no early stopping) and ``lineage_test.h5ad``, in the codec's latent."""
    opts = _cells_opts(cfg)
    train_files = files.train + files.validation
    train = io.read_cells(train_files, **opts)
    test = io.read_cells(files.test, **opts)
    what = ", ".join(map(str, train_files))
    codec = models.GeneCodec.fit(
        train, cfg["files"]["lineage_pcs"], target_sd=cfg["model"]["lineage_sigma_data"], what=what
    )
    zt = _latent_cells(train, codec, cfg, what)
    zt.uns["lineage_codec"] = {k: v for k, v in codec.to_card().items() if k != "kind"}
    io.write_h5ad(zt, data_dir / LINEAGE_TRAIN)
    zs = _latent_cells(test, codec, cfg, ", ".join(map(str, files.test)))
    zs.uns["lineage_genes"] = np.asarray(test.var_names, dtype=str)
    io.write_h5ad(zs, data_dir / LINEAGE_TEST)


def _rows(adata: AnnData, perturbation: str, condition: str) -> AnnData:
    return adata[
        (adata.obs["perturbation"] == perturbation).values
        & (adata.obs["condition"] == condition).values
    ]


def _input_norms(x: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(x, np.float64), axis=1)


def _lineage_card(cfg: Config, data_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``serves`` and ``normalisation`` of the lineage model: its genes by name, its input
    (genes, or the PCA codec) and the 1st-99th percentile of its inputs' norms."""
    kr = _read(Path(data_dir) / _lineage_files(cfg)[0])
    f = cfg["files"]
    norms = np.percentile(_input_norms(io.dense(kr.X)), [1, 99]).tolist()
    if not _lineage_on_files(cfg):
        genes, norm = list(map(str, kr.var_names)), {"kind": "genes"}
    else:
        norm = {"kind": "pca", **{k: _plain(v) for k, v in kr.uns["lineage_codec"].items()}}
        genes = list(norm["genes"])
    serves = {
        "data": "files" if _lineage_on_files(cfg) else "krumsiek11",
        "genes": genes,
        "n_genes": len(genes),
        "inputs": norm["kind"],
        "n_inputs": _lineage_inputs(cfg),
        "cells": int(kr.n_obs),
        "expression": _plain(kr.uns.get("expression", {"normalisation": "krumsiek11 as bundled"})),
        **{k: f[k] for k in ("time_key", "fate_key", "clone_key", "root", "root_key")},
    }
    return serves, {**norm, "input_norm_p01_p99": norms}


def _plain(v: Any) -> Any:
    """An h5ad-read value as JSON-ready Python."""
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _check_genes(found: list[str], served: list[str], *, source: str) -> None:
    """Refuse cells missing any of the model's genes (extra genes are dropped later)."""
    models.select_genes(AnnData(var=pd.DataFrame(index=found)), served, what=source)


def _warn_norms(x: np.ndarray, card: dict[str, Any], *, source: str) -> None:
    """Warn when the median input norm of the cells lies outside the training cells' 1st-99th
    percentile range."""
    lo, hi = card["normalisation"]["lineage"]["input_norm_p01_p99"]
    med = float(np.median(_input_norms(x)))
    warn_outside("median norm of the lineage model's inputs", med, lo, hi, source=source)


def _run_lineage(cfg: Config, model: nn.Module, z: AnnData) -> None:
    """The lineage model's E-step and the DPT / PAGA baselines on ``z`` (the model's inputs)."""
    lin, seed = cfg["lineage"], int(cfg["seed"])
    models.lineage(
        z, model.cpu(), tau_grid=lin["infer_tau_grid"], n_noise=lin["infer_noise"], seed=seed
    )
    if "iroot" in z.uns:
        baselines.lineage_baselines(
            z, n_neighbors=lin["n_neighbors"], resolution=lin["leiden_resolution"], seed=seed
        )


def _applied(cells: AnnData, z: AnnData, card: dict[str, Any]) -> AnnData:
    """The user's cells (genes as read) with the lineage results of ``z``."""
    out = cells.copy()
    for k in ("lineage_branch", "lineage_pseudotime", "dpt_pseudotime", "leiden"):
        if k in z.obs:
            out.obs[k] = z.obs[k].values
    out.obsm["X_lineage"] = z.obsm["X_lineage"]
    out.obsm["X_lineage_input"] = np.asarray(z.X)
    out.uns["lineage"] = z.uns["lineage"]
    if "iroot" in z.uns:
        out.obsm["X_diffmap"] = z.obsm["X_diffmap"]
        out.uns["paga_parent"] = np.asarray(z.uns["paga_parent"])
        out.uns["iroot"] = int(z.uns["iroot"])
    out.uns["lineage_metrics"] = metrics.user_lineage_table(z)  # the truth the file carries
    out.uns["lineage_model"] = {
        "data_fingerprint": str(card.get("data", {}).get("fingerprint")),
        "inputs": str(card["serves"]["lineage"]["inputs"]),
    }
    return out


def _stem(p: Path) -> str:
    return p.name.removesuffix(".h5ad").removesuffix(".h5") or "cells"


def _oracle(
    sim: simulate.PerturbationSimulator | None,
    cfg: Config,
    control: AnnData,
    held: str,
    q: str,
    j: int,
) -> dict[str, AnnData]:
    """The simulator's ground truth on the held-out control cells (none for a user's screen)."""
    if sim is None:
        return {}
    return {
        metrics.ORACLE: simulate.oracle_populations(
            sim,
            control,
            cell_type=held,
            perturbation=q,
            n_populations=cfg["sampling"]["samples"],
            n_cells=cfg["perturbation"]["n_cells"],
            seed=int(cfg["seed"]) + 20 + j,
        )
    }


def _lineage_tables(kr: AnnData, lin: dict, sim: bool) -> dict[str, dict]:
    """The lineage table (and, on clonal data, the clone coupling of the model's branches)."""
    if sim:
        return {"Lineage, krumsiek11 (fates and within-trajectory time)": lin}
    out = {"Lineage, your test cells (time points, fates and clones they carry)": lin}
    if "X_clone" in kr.obsm:
        names, m = metrics.clone_coupling(kr.obsm["X_clone"], kr.obs["lineage_branch"])
        rows = {a: {b: float(m[i, j]) for j, b in enumerate(names)} for i, a in enumerate(names)}
        out["Clone coupling between the model's branches (CoSpar-style, X_clone)"] = rows
    return out


class SingleCellTask(DomainTask):
    """Perturbation response (population diffusion) and lineage (tree-codebook diffusion)."""

    name = "singlecell"
    schema_path = SCHEMA
    training_config_keys = ("seed", "perturbation", "model")
    packages = ("scanpy", "anndata", "pandas", "scikit-learn", "igraph", "matplotlib")

    @io.keep_torch_threads()
    def prepare(self, cfg: Config, data_dir: Path) -> None:
        c, data_dir = cfg["perturbation"], Path(data_dir)
        files = resolve_source(cfg)
        if _screen(cfg):
            control, train, truth, perts = _screen_data(cfg, files)
            sim_json = None
        else:
            control, train, truth, perts, sim_json = _simulated_perturbations(cfg)
        models.fit_shared_latent(
            control, [train], n_comps=c["n_pcs"], key_added=models.LATENT_KEY, perturbations=perts
        )
        control.uns["held_out_cell_type"] = c["held_out_cell_type"]
        io.write_h5ad(control, data_dir / "control.h5ad")
        io.write_h5ad(train, data_dir / "train_perturbed.h5ad")
        io.write_h5ad(truth, data_dir / "truth.h5ad")
        if sim_json is not None:
            (data_dir / "simulator.json").write_text(sim_json)
        if _lineage_on_files(cfg):
            _prepare_lineage(cfg, files, data_dir)
        else:
            io.write_h5ad(simulate.load_krumsiek11(), data_dir / KRUMSIEK)

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
            _lineage_inputs(cfg),
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
        kr = _read(data_dir / _lineage_files(cfg)[0])
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

    def model_card(self, cfg: Config, data_dir: Path) -> dict[str, Any]:
        """Genes by name (lineage and perturbation models), the lineage codec and input
        range, the perturbations and held-out cell type, sigma settings."""
        control = _read(Path(data_dir) / "control.h5ad")
        lin_serves, lin_norm = _lineage_card(cfg, data_dir)
        m, c = cfg["model"], cfg["perturbation"]
        pert = {
            "genes": list(map(str, control.var_names)),
            "perturbations": list(map(str, control.uns[models.LATENT_KEY]["perturbations"])),
            "held_out_cell_type": str(control.uns["held_out_cell_type"]),
            "latent_pcs": int(c["n_pcs"]),
            "cells_per_population": int(c["n_cells"]),
        }
        sigma = {
            "data": m["sigma_data"],
            "lineage_data": m["lineage_sigma_data"],
            "train_log_mean": m["train_sigma_mean"],
            "train_log_std": m["train_sigma_std"],
            "max": cfg["sampling"]["sigma_max"],
        }
        return {
            "serves": {"lineage": lin_serves, "perturbation": pert},
            "normalisation": {"lineage": lin_norm},
            "sigma": sigma,
        }

    def check_inputs(self, cfg: Config, card: dict[str, Any], data_dir: Path) -> None:
        """The evaluation cells against the card: the lineage model's input width and genes
        (refused), their input norms (a warning when outside the training range)."""
        lin = card.get("serves", {}).get("lineage")
        if lin is None:
            return
        path = Path(data_dir) / _lineage_files(cfg)[1]
        fix = "retrain the model on this data (diffsci train, or the train rule)"
        require("lineage inputs", _lineage_inputs(cfg), lin["n_inputs"], source=str(path), fix=fix)
        kr = _read(path)
        found = kr.uns.get("lineage_genes", kr.var_names)
        _check_genes(list(map(str, found)), lin["genes"], source=str(path))
        _warn_norms(io.dense(kr.X), card, source=str(path))

    @io.keep_torch_threads()
    def apply(
        self, cfg: Config, model: nn.Module, card: Card, inputs: Files, out_dir: Path, rt: Runtime
    ) -> None:
        """The lineage model (and the DPT / PAGA baselines) on the user's new files: one
        ``<name>.h5ad`` per input (anndata), the input's cells and genes with the model's
        ``lineage_branch`` / ``lineage_pseudotime``, ``obsm["X_lineage"]`` (codes) and
        ``obsm["X_lineage_input"]`` (the model's input), DPT's ``dpt_pseudotime``, PAGA's
        ``leiden``, clonal barcodes and time points carried. Every input is checked against the
        card (genes by name) before anything runs."""
        lin = card.get("serves", {}).get("lineage")
        if lin is None:
            raise Incompatible("the model card has no lineage entry; retrain the model")
        codec = models.GeneCodec.from_card(card)
        opts, todo = {**_cells_opts(cfg), "optional_keys": True}, []
        for p in inputs:
            cells = io.read_cells([p], **opts)
            _check_genes(list(map(str, cells.var_names)), lin["genes"], source=str(p))
            z = _latent_cells(cells, codec, cfg, str(p), lin["genes"], need_root=False)
            _warn_norms(z.X, card, source=str(p))
            todo.append((Path(p), cells, z))
        for p, cells, z in todo:
            _run_lineage(cfg, model, z)
            io.write_h5ad(_applied(cells, z, card), Path(out_dir) / f"{_stem(p)}.h5ad")

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
        kr = _read(data_dir / _lineage_files(cfg)[1])
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
        sim_path = paths.data / "simulator.json"  # absent for a user's screen: no oracle
        sim = (
            simulate.PerturbationSimulator.from_json(sim_path.read_text())
            if sim_path.is_file()
            else None
        )
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
                **_oracle(sim, cfg, control, held, q, j),
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
        demo = not _lineage_on_files(cfg)
        lin = metrics.lineage_table(kr) if demo else metrics.user_lineage_table(kr)
        fig = Figure(figsize=(14, 4))
        axes = fig.subplots(1, 3)
        (plots.lineage_panels if demo else plots.user_lineage_panels)(axes, kr)
        _save(fig, fig_dir / "lineage.png")
        tables = {
            f"Perturbation, mean over {len(perts)} perturbations ({held} held out)": mean,
            **{f"Perturbation {q}, held-out cell type {held}": per_pert[q] for q in perts},
            **_lineage_tables(kr, lin, demo),
        }
        return EvalResult(
            tables=tables,
            lower_is_better=["E-distance (PCA)", "MMD (PCA, rbf)"],
            figures=["figures/perturbation.png", "figures/lineage.png"],
            summary={
                "held-out cell type": held,
                **metrics.acceptance_bars(mean, lin if demo else None, n_de=c["n_de"]),
            },
        )
