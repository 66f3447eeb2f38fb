"""The PDE task: diffusion over whole trajectories in the wavelet domain (WDNO-style).

A trajectory ``u(t, x)`` is a 2-D (time x space) grid, normalised by a global scale and
encoded by an orthonormal 2-D DWT (:mod:`.models.codec`); a conditional diffusion model
(:mod:`.models.denoiser`) learns the distribution of the coefficients given the initial state.
Forecasts and data assimilation are posterior samples (:mod:`.sampling`), the event study is
:mod:`.events`; the baselines (:mod:`.baselines`) are persistence, interpolation of the sensors
and an FNO trained on the same data for the same number of steps. This module only plugs those
into the core's stages.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffsci.core import Card, Config, DomainTask, EvalResult, Files, LossFn, Runtime, TaskPaths
from diffsci.core.datasource import data_record, resolve_source
from diffsci.core.modelcard import Incompatible, new_card
from diffsci.core.modelfile import save_model_file
from diffsci.core.provenance import write_json_atomic

from . import baselines, io, metrics, plots, sampling, userdata
from .events import event_study
from .models import TrajectoryChunks, build_denoiser, check_grid, chunk_loss, codec, serves_prior
from .simulate import burgers_dataset, periodic_grid, solver_grid

__all__ = ["PDETask", "SCHEMA"]

SCHEMA = Path(__file__).with_name("config.schema.yaml")


def _trajectories(data_dir: Path, grids: list[int]) -> list[Tensor]:
    files = io.split_files(data_dir, "train")
    missing = [g for g in grids if g not in files]
    if missing:
        raise FileNotFoundError(f"{data_dir}: no training data for grids {missing}")
    return [torch.from_numpy(io.read_pdebench(files[g]).u).float() for g in grids]


def _check_chunks(cfg: Config) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if len(cfg["data"]["train_nx"]) > 1 and cfg["train"]["batch_size"] != world:
        raise ValueError(
            f"multi-resolution training (data.train_nx={cfg['data']['train_nx']}) needs one "
            f"chunk per process per step so a batch never mixes grids: set train.batch_size to "
            f"the number of processes ({world}) and put the per-step sample count in train_chunk"
        )


def _test_data(path: Path, cfg: Config) -> io.PDEData:
    data = io.read_pdebench(path)
    if data.spatial_dims != 1:
        raise ValueError(f"{path}: expected 1-D trajectories (N, nt, nx), got {data.u.shape}")
    check_grid(cfg, data.u.shape[1], data.u.shape[2], source=str(path))
    return data


#: How tables and summaries name an equation given by a file's ``equation`` attribute.
EQUATION_NAMES = {
    "burgers": "Burgers",
    "kdv": "KdV",
    "korteweg-de vries": "KdV",
    "ks": "Kuramoto-Sivashinsky",
    "kuramoto-sivashinsky": "Kuramoto-Sivashinsky",
    "advection": "Advection",
}


def _equation(attrs: dict[str, Any]) -> str:
    eq = str(attrs.get("equation", "burgers"))
    return EQUATION_NAMES.get(eq.lower(), eq)


def _nu(attrs: dict[str, Any]) -> Any:
    """The viscosity of a prepared file: one value, the list of values, or None (unknown)."""
    if "nu" in attrs:
        return attrs["nu"]
    values = attrs.get("nu_values")
    return None if values is None else [float(v) for v in values]


class PDETask(DomainTask):
    """Forecasting and assimilation of 1-D trajectories (Burgers by default, or the user's own
    equation from their files) with a wavelet-domain diffusion model."""

    name = "pde"
    schema_path = SCHEMA
    training_config_keys = ("seed", "data", "model", "train_chunk")
    packages = ("matplotlib",)

    def prepare(self, cfg: Config, data_dir: Path) -> None:
        """Solve Burgers once on the finest grid and subsample, so every grid holds the same
        trajectories; write ``{train,test}_nx<N>.h5`` and the training data's scale. With
        ``source.kind: files`` the user's files are read instead
        (:func:`~diffsci.domains.pde.userdata.prepare_files`)."""
        files = resolve_source(cfg)
        if files is not None:
            userdata.prepare_files(cfg, Path(data_dir), files)
            return
        d = cfg["data"]
        grids = sorted(set(d["train_nx"]) | set(d["eval_nx"]))
        fine = solver_grid(grids, d["solver_nx"])
        for g in grids:
            check_grid(cfg, d["nt"], g, source="config data.nt / data.*_nx")
        splits = {
            "train": (0, d["n_train"], d["train_nx"]),
            "test": (10_000, d["n_test"], d["eval_nx"]),
        }
        attrs = {"nu": d["nu"], "equation": "burgers"}
        for split, (offset, n, wanted) in splits.items():
            sim = {k: d[k] for k in ("nu", "t_end", "nt", "initial")}
            _, u, t = burgers_dataset(n, fine, seed=int(cfg["seed"]) + offset, **sim)
            if split == "train":
                io.write_scale(data_dir, float(u.std()))
            for g in wanted:
                io.write_pdebench(
                    data_dir / f"{split}_nx{g}.h5",
                    u[..., :: fine // g],
                    x=periodic_grid(g),
                    t=t,
                    attrs={**attrs, "split": split},
                )

    def build_model(self, cfg: Config) -> nn.Module:
        """The denoiser; the FNO baseline's network for the config of its model card
        (``network: fno``, so ``diffsci apply`` runs ``<workdir>/fno.pt`` too)."""
        if cfg.get("network", "diffusion") == "fno":
            return baselines.build_fno(cfg)
        return build_denoiser(cfg)

    def train_dataset(self, cfg: Config, data_dir: Path) -> TrajectoryChunks:
        if cfg.get("network", "diffusion") != "diffusion":
            raise ValueError(
                "config network: fno belongs to the FNO baseline's model card (the baselines "
                "stage trains it); train the diffusion model with network: diffusion"
            )
        _check_chunks(cfg)
        trajs = _trajectories(Path(data_dir), cfg["data"]["train_nx"])
        scale = io.read_scale(data_dir)
        return TrajectoryChunks(trajs, chunk=cfg["train_chunk"], scale=scale, **codec(cfg))

    def make_loss(self, cfg: Config, data_dir: Path) -> LossFn:
        return chunk_loss(cfg["model"]["cond_dropout"])

    def baselines(self, cfg: Config, data_dir: Path, out_dir: Path, rt: Runtime) -> None:
        """Train the FNO (resumable checkpoints in ``<workdir>/checkpoints_fno``, outside the
        stage's output) and write its test predictions ``fno_nx<N>.h5``; the trained FNO and
        its model card go beside the diffusion model (``<workdir>/fno.pt``,
        ``fno_card.json``)."""
        device, progress = rt.device, rt.progress
        scale = io.read_scale(data_dir)
        trajs = _trajectories(Path(data_dir), cfg["data"]["train_nx"])
        ckpt = Path(data_dir).parent / "checkpoints_fno"
        net = baselines.train_fno(
            cfg, trajs, scale, ckpt_dir=ckpt, device=device, progress=progress
        )
        for nx, path in io.split_files(data_dir, "test").items():
            data = io.read_pdebench(path)
            pred = baselines.predict_fno(net, torch.from_numpy(data.u).float(), scale)
            io.write_pdebench(
                out_dir / f"fno_nx{nx}.h5", pred, x=data.x, t=data.t, attrs={"method": "fno"}
            )
        _save_fno(self, cfg, Path(data_dir), net)

    def infer(
        self, cfg: Config, model: nn.Module, data_dir: Path, out_dir: Path, rt: Runtime
    ) -> None:
        """Ensemble forecasts (and assimilation) of every test grid; the event study on the
        coarsest one. One generator (``seed + 1``) drives every sampler run, in that order."""
        device, progress = rt.device, rt.progress
        scale = io.read_scale(data_dir)
        g = torch.Generator().manual_seed(int(cfg["seed"]) + 1)
        kw = {"cfg": cfg, "scale": scale, "generator": g, "device": device}
        for nx, path in io.split_files(data_dir, "test").items():
            data = _test_data(path, cfg)
            u = torch.from_numpy(data.u).float()
            ens = sampling.forecast_ensemble(model, u, progress=progress, **kw)
            attrs = {"method": "diffusion", "members": ens.shape[0]}
            io.write_ensemble(
                out_dir / f"diffusion_nx{nx}.h5", ens, x=data.x, t=data.t, attrs=attrs
            )
            if self._assimilates(cfg):
                y, mask = sampling.sensor_observations(u, cfg)
                ens = sampling.assimilation_ensemble(model, y, mask, **kw)
                a = cfg["assimilation"]
                attrs = {
                    "method": "diffusion assimilation",
                    "members": cfg["sampling"]["members"],
                    **{k: a[k] for k in ("sensor_every", "frame_every", "noise_std")},
                }
                target = out_dir / f"assimilation_nx{nx}.h5"
                io.write_assimilation(
                    target, ens, y.numpy(), mask.numpy(), x=data.x, t=data.t, attrs=attrs
                )
        if self._events(cfg):
            nx = min(io.split_files(data_dir, "test"))
            ev = event_study(model, cfg, data_dir, nx=nx, scale=scale, device=device)
            (out_dir / "events.json").write_text(json.dumps(ev, indent=2))

    @staticmethod
    def _events(cfg: Config) -> bool:
        if not cfg.get("events", {}).get("enabled", True):
            return False
        if resolve_source(cfg) is not None:
            warnings.warn(
                "event study skipped: its reference is a Monte Carlo of the Burgers solver on the "
                "config's data.nu, which does not describe the user's files (source.kind files)",
                stacklevel=3,
            )
            return False
        return True

    @staticmethod
    def _assimilates(cfg: Config) -> bool:
        if not cfg.get("assimilation", {}).get("enabled", True):
            return False
        if not serves_prior(cfg):
            warnings.warn(
                "assimilation skipped: model.sigma_schedule refiner trains no prior (use "
                "lognormal for assimilation)",
                stacklevel=3,
            )
            return False
        return True

    def model_card(self, cfg: Config, data_dir: Path) -> dict[str, Any]:
        """Equation, viscosities, domain, grids, frames, scale and sigma range of the trained
        model (:func:`~diffsci.domains.pde.userdata.card`)."""
        return userdata.card(cfg, Path(data_dir))

    def check_inputs(self, cfg: Config, card: dict[str, Any], data_dir: Path) -> None:
        """Every test file of ``data_dir`` checked against ``card``
        (:func:`~diffsci.domains.pde.userdata.check`)."""
        for path in io.split_files(data_dir, "test").values():
            data, phys = userdata.prepared_physics(path)
            userdata.check(data, phys, card, source=str(path))

    def apply(
        self, cfg: Config, model: nn.Module, card: Card, inputs: Files, out_dir: Path, rt: Runtime
    ) -> None:
        """Ensemble forecasts from the first frame of every trajectory of each input file (read
        as in ``prepare``, checked against ``card`` by
        :func:`~diffsci.domains.pde.userdata.load_checked`), ``card.serves.nt`` frames at its
        frame spacing (the output's ``t-coordinate``), written as PDEBench HDF5 ``<stem>.h5``
        (``tensor`` = the ensemble mean, ``ensemble``, the file's ``x``, attributes: equation,
        nu, method, source file); with the FNO baseline's card, its forecast ``fno_<stem>.h5``.
        One generator (``seed + 1``) drives every file in the order given."""
        scale = card["normalisation"]["scale"]
        sv = card["serves"]
        g = torch.Generator().manual_seed(int(cfg["seed"]) + 1)
        fno = cfg.get("network", "diffusion") == "fno"
        names = [Path(f).stem for f in inputs]
        if len(set(names)) < len(names):
            raise Incompatible(f"input files share a name stem ({names}); outputs would clash")
        for path in map(Path, inputs):
            data, phys = userdata.load_checked(path, cfg, card)
            u = torch.zeros(data.u.shape[0], sv["nt"], data.u.shape[2])
            u[:, 0] = torch.from_numpy(data.u[:, 0])
            t = float(data.t[0]) + sv["dt"] * torch.arange(sv["nt"], dtype=torch.float64).numpy()
            attrs = {
                "equation": phys["equation"],
                "source_file": str(path),
                **({"nu": phys["nu"]} if phys["nu"] is not None else {}),
            }
            if fno:
                pred = baselines.predict_fno(model.to(rt.device), u, scale)
                target = out_dir / f"fno_{path.stem}.h5"
                io.write_pdebench(target, pred, x=data.x, t=t, attrs={**attrs, "method": "fno"})
                continue
            ens = sampling.forecast_ensemble(
                model, u, cfg=cfg, scale=scale, generator=g, device=rt.device, progress=rt.progress
            )
            attrs = {**attrs, "method": "diffusion", "members": ens.shape[0]}
            io.write_ensemble(out_dir / f"{path.stem}.h5", ens, x=data.x, t=t, attrs=attrs)

    def evaluate(self, cfg: Config, paths: TaskPaths, fig_dir: Path) -> EvalResult:
        tables: dict[str, dict[str, dict[str, Any]]] = {}
        figures: list[Path] = []
        attrs: dict[str, Any] = {}
        for nx, path in io.split_files(paths.data, "test").items():
            data = io.read_pdebench(path)
            attrs, eq = data.attrs, _equation(data.attrs)
            true = torch.from_numpy(data.u).float()
            tables.update(_forecast_tables(paths, nx, true, fig_dir, figures, eq))
            tables.update(_event_tables(paths, nx))
            tables.update(_assimilation_tables(paths, nx, true, eq))
        return EvalResult(
            tables=tables,
            lower_is_better=list(metrics.LOWER_IS_BETTER),
            figures=[str(Path("figures") / Path(f).name) for f in figures if f],
            summary={
                "equation": str(attrs.get("equation", "burgers")),
                "nu": _nu(attrs),
                "members": cfg["sampling"]["members"],
            },
        )


def _save_fno(task: PDETask, cfg: Config, data_dir: Path, net: nn.Module) -> None:
    """The trained FNO as ``<workdir>/fno.pt`` (beside ``model.pt``, written atomically) with
    its model card (also ``fno_card.json``): the card's config says ``network: fno``, so
    ``diffsci apply --model <workdir>/fno.pt`` builds and runs the FNO on new files (outputs
    ``fno_<file>.h5``)."""
    data = data_record(cfg, data_dir)
    part = task.model_card(cfg, data_dir)
    card = new_card(
        task.name,
        config={**cfg, "network": "fno"},
        data=data,
        serves={**part["serves"], "network": "fno"},
        normalisation=part["normalisation"],
    )
    root = data_dir.parent
    write_json_atomic(root / "fno_card.json", card)
    save_model_file(root / "fno.pt", net.state_dict(), card=card)


def _forecast_tables(
    paths: TaskPaths, nx: int, true: Tensor, fig_dir: Path, figures: list[Path], eq: str
) -> dict[str, Any]:
    """The forecast table of grid ``nx`` (persistence, the diffusion ensemble mean, the FNO);
    appends its figures to ``figures``."""
    preds = {"persistence": baselines.persistence(true)}
    ensembles = {}
    dpath = paths.predictions / f"diffusion_nx{nx}.h5"
    if dpath.is_file():
        ens = torch.from_numpy(io.read_ensemble(dpath))
        preds["diffusion (ens. mean)"] = ens.mean(0)
        ensembles["diffusion (ens. mean)"] = ens
    fpath = paths.baselines / f"fno_nx{nx}.h5"
    if fpath.is_file():
        preds["fno"] = torch.from_numpy(io.read_pdebench(fpath).u)
    rows, per_frame = metrics.forecast_table(preds, true, ensembles=ensembles)
    if ensembles:
        ens = ensembles["diffusion (ens. mean)"]
        fig = plots.save_forecast(
            fig_dir / f"forecast_nx{nx}.png", true[0], ens[:, 0], preds.get("fno")
        )
        figures.append(fig)
    figures.append(plots.save_nrmse_per_frame(fig_dir / f"nrmse_per_frame_nx{nx}.png", per_frame))
    return {f"{eq} forecast, nx={nx}": rows}


def _event_tables(paths: TaskPaths, nx: int) -> dict[str, Any]:
    evp = paths.predictions / "events.json"
    if not evp.is_file():
        return {}
    ev = json.loads(evp.read_text())
    if ev["grid_nx"] != nx:
        return {}
    return {f"Event probability ({ev['event']}), nx={nx}": metrics.event_table(ev)}


def _assimilation_tables(paths: TaskPaths, nx: int, true: Tensor, eq: str) -> dict[str, Any]:
    apath = paths.predictions / f"assimilation_nx{nx}.h5"
    if not apath.is_file():
        return {}
    ens, obs, mask = (torch.from_numpy(a) for a in io.read_assimilation(apath))
    interp = baselines.interpolate_observations(obs, mask.float())
    rows = metrics.assimilation_table(
        {"interpolation of sensors": interp}, {"diffusion DA (ens. mean)": ens}, true
    )
    return {f"{eq} assimilation (sparse noisy sensors), nx={nx}": rows}
