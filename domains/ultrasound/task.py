"""The ultrasound task: plane-wave channel data -> DAS -> joint diffusion dehazing (glue).

- prepare: simulated speckle phantoms with cysts and point targets, near-field reverberation
  haze mixed in with the stated weight (:mod:`.simulate`), beamformed training patches of
  tissue and haze, held-out hazy frames and their clean truth as zea files (:mod:`.data`,
  :mod:`.io`); or the user's zea / PICMUS files (``source: {kind: files}``).
- train: the core's loop on both priors (:mod:`.models`).
- infer: the hazy frames beamformed (:mod:`.operators`), the joint posterior of tissue and
  haze sampled patch-wise (:mod:`.dehaze`, core ``JointPosterior`` and tiling); baselines:
  no processing, Lee filter, single-prior DPS, and on a moving sequence the SVD clutter
  filter and SeqDiff warm starts (:mod:`.baselines`). Outputs: a zea file of the dehazed IQ,
  envelope and B-mode, and ``methods.h5`` with every method's envelope and cost.
- evaluate: the labelled metrics of :mod:`.metrics` per method, B-mode figures (:mod:`.plots`).
- ``apply``: a trained model on the user's zea / PICMUS files, checked against its card.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diffsci.core import Card, Config, DomainTask, EvalResult, Files, LossFn, Runtime, TaskPaths
from diffsci.core.datasource import resolve_source
from diffsci.core.fileio import atomic_path, open_hdf5
from diffsci.core.modelcard import Incompatible, require

from . import baselines, data, io, metrics, models, plots
from .dehaze import SamplingOptions, dehaze_frames, single_prior_dps
from .simulate import ImageGrid

__all__ = ["UltrasoundTask"]

SCHEMA = Path(__file__).with_name("config.schema.yaml")
LOWER_IS_BETTER = [
    "KS vs clean (tissue)",
    "seconds per frame",
    "network evaluations per frame",
]
JOINT = "joint diffusion (tissue + haze priors)"
WIENER = "Wiener split (training spectra)"
SUPERVISED = "supervised UNet (hazy -> clean pairs)"


def _grid(meta: dict[str, Any]) -> ImageGrid:
    return ImageGrid(x=np.asarray(meta["grid"]["x"]), z=np.asarray(meta["grid"]["z"]))


def _write_methods(
    path: Path, env: dict[str, np.ndarray], cost: dict[str, dict[str, float]]
) -> None:
    import h5py

    with atomic_path(path, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        for name, e in env.items():
            ds = f.create_dataset(f"envelope/{name}", data=np.asarray(e, np.float32))
            ds.attrs["unit"], ds.attrs["description"] = "-", f"envelope of {name} (frames, z, x)"
            for k, v in cost.get(name, {}).items():
                ds.attrs[k] = v


def _read_methods(path: Path) -> tuple[dict[str, np.ndarray], dict[str, dict[str, float]]]:
    with open_hdf5(path, what="predictions") as f:
        env = {k: f[f"envelope/{k}"][()] for k in f["envelope"]}
        cost = {
            k: {
                a: float(v)
                for a, v in f[f"envelope/{k}"].attrs.items()
                if a not in ("unit", "description")
            }
            for k in f["envelope"]
        }
    return env, cost


def _products(iq: torch.Tensor, grid: ImageGrid, dr: float) -> dict[str, io.Product]:
    env = iq.abs()
    db = 20 * torch.log10(env.clamp_min(1e-30) / env.flatten(1).amax(1)[:, None, None])
    c = grid.coordinates()
    return {
        "beamformed_data": io.Product(
            torch.stack([iq.real, iq.imag], -1).numpy().astype(np.float32),
            c,
            "-",
            "dehazed beamformed IQ (tissue posterior)",
        ),
        "envelope_data": io.Product(
            env.numpy().astype(np.float32), c, "-", "envelope of the dehazed IQ"
        ),
        "image": io.Product(
            db.clamp(-dr, 0).numpy().astype(np.float32), c, "dB", f"B-mode, {dr:g} dB dynamic range"
        ),
    }


def train_supervised(
    cfg: Config, data_dir: Path, *, device: torch.device | str = "cpu", progress: bool = False
) -> nn.Module:
    """The supervised baseline: :class:`.models.SupervisedDehazer` trained on the (hazy, clean)
    pairs of the training patches for ``baselines.supervised_steps`` steps (eval mode)."""
    from diffsci.core.training import TrainConfig, train

    tissue, haze, _ = data.read_train(Path(data_dir) / "train.h5")
    w, t, seed = cfg["haze"]["weight"], cfg["train"], int(cfg["seed"])
    pairs = torch.utils.data.TensorDataset((1 - w) * tissue + w * haze, tissue)
    tcfg = TrainConfig(
        steps=cfg["baselines"]["supervised_steps"],
        batch_size=t["batch_size"],
        lr=t["lr"],
        ema_decay=None,
        grad_clip=None,
        seed=seed,
        progress=progress,
        ckpt_dir=None,
    )
    torch.manual_seed(seed)
    net = models.SupervisedDehazer(cfg["model"])
    return train(net, models.supervised_loss, pairs, tcfg, device=device).model.eval()


class UltrasoundTask(DomainTask):
    """Dehazing plane-wave ultrasound with two diffusion priors."""

    name = "ultrasound"
    schema_path = SCHEMA
    packages = ("h5py", "hdf5plugin", "scipy")
    training_config_keys = (
        "seed",
        "data",
        "model",
        "source",
        "probe",
        "acquisition",
        "grid",
        "phantom",
        "haze",
    )

    # ---------------------------------------------------------------- prepare
    def prepare(self, cfg: Config, data_dir: Path) -> None:
        files = resolve_source(cfg)
        if files is None:
            data.prepare_simulated(cfg, Path(data_dir))
        else:
            data.prepare_files(cfg, files, Path(data_dir))

    # ---------------------------------------------------------------- model
    def build_model(self, cfg: Config) -> nn.Module:
        return models.build_priors(cfg["model"])

    def train_dataset(self, cfg: Config, data_dir: Path) -> torch.utils.data.Dataset:
        tissue, haze, _ = data.read_train(Path(data_dir) / "train.h5")
        return torch.utils.data.TensorDataset(tissue, haze)

    def make_loss(self, cfg: Config, data_dir: Path) -> LossFn:
        return models.dehaze_loss

    # ---------------------------------------------------------------- card and checks
    def model_card(self, cfg: Config, data_dir: Path) -> dict[str, Any]:
        meta = data.read_meta(Path(data_dir))
        g = _grid(meta)
        return {
            "serves": {
                "n_el": meta["n_el"],
                "center_frequency": meta["center_frequency"],
                "sampling_frequency": meta["sampling_frequency"],
                "pixel_spacing_m": float(g.x[1] - g.x[0]),
                "tile": cfg["sampling"]["tile"],
                "haze_weight": meta["haze_weight"],
                "domain": "beamformed IQ (I, Q channels) / scale",
            },
            "normalisation": {
                "scale": meta["scale"],
                "haze_std_model_units": meta["haze_std_model_units"],
            },
            "sigma": {
                "data_tissue": cfg["model"]["sigma_data_tissue"],
                "data_haze": cfg["model"]["sigma_data_haze"],
            },
        }

    def check_inputs(self, cfg: Config, card: dict[str, Any], data_dir: Path) -> None:
        path = Path(data_dir) / "test_hazy.hdf5"
        _check_scan(io.read_zea(path).scan, card, str(path))

    # ---------------------------------------------------------------- trained baselines
    def baselines(self, cfg: Config, data_dir: Path, out_dir: Path, rt: Runtime) -> None:
        """The supervised UNet on (hazy, clean) pairs of the training patches, applied to the
        held-out frames; ``baselines/supervised.h5`` holds its envelopes and cost."""
        if cfg["baselines"]["supervised_steps"] == 0:
            return
        net = train_supervised(cfg, data_dir, device=rt.device, progress=rt.progress)
        meta = data.read_meta(Path(data_dir))
        scale = meta["scale"]
        acq = io.read_zea(Path(data_dir) / "test_hazy.hdf5")
        y = models.iq_to_channels(
            data.beamform(acq, _grid(meta), cfg["acquisition"]["f_number"]), scale
        )
        t0 = time.perf_counter()
        x = baselines.apply_tiled(net, y, cfg["sampling"]["tile"], cfg["sampling"]["overlap"])
        sec = (time.perf_counter() - t0) / y.shape[0]
        env = {SUPERVISED: models.channels_to_iq(x, scale).abs().numpy()}
        _write_methods(
            Path(out_dir) / "supervised.h5", env, {SUPERVISED: {"seconds per frame": sec}}
        )

    # ---------------------------------------------------------------- inference
    def infer(
        self, cfg: Config, model: nn.Module, data_dir: Path, out_dir: Path, rt: Runtime
    ) -> None:
        data_dir, out_dir = Path(data_dir), Path(out_dir)
        meta = data.read_meta(data_dir)
        grid, scale, seed = _grid(meta), meta["scale"], int(cfg["seed"]) + 1
        opt = SamplingOptions.from_config(cfg)
        acq = io.read_zea(data_dir / "test_hazy.hdf5")
        y_iq = data.beamform(acq, grid, cfg["acquisition"]["f_number"])
        y = models.iq_to_channels(y_iq, scale)
        x, _, info = dehaze_frames(model, y, opt, seed=seed)
        x_iq = models.channels_to_iq(x, scale)
        dr = cfg["metrics"]["dynamic_range"]
        out = io.Acquisition(
            None,
            acq.scan,
            _products(x_iq, grid, dr),
            probe_name=acq.probe_name,
            us_machine=acq.us_machine,
            description="dehazed by diffsci (joint diffusion)",
        )
        io.write_zea(out_dir / "dehazed.hdf5", out)
        env = {"no processing (hazy)": y_iq.abs().numpy(), JOINT: x_iq.abs().numpy()}
        cost = {
            JOINT: {
                "seconds per frame": info["seconds_per_frame"],
                "network evaluations per frame": info["nfe_per_frame"],
            }
        }
        env["Lee filter"] = baselines.lee_filter(y_iq.abs().numpy(), cfg["baselines"]["lee_size"])
        env[WIENER] = _wiener(data_dir, y, opt, scale)
        if cfg["baselines"]["single_prior_dps"]:
            xd, inf2 = single_prior_dps(
                model.tissue, y, opt, meta["haze_std_model_units"], seed=seed
            )
            env["single-prior DPS (haze as Gaussian noise)"] = (
                models.channels_to_iq(xd, scale).abs().numpy()
            )
            cost["single-prior DPS (haze as Gaussian noise)"] = {
                "seconds per frame": inf2["seconds_per_frame"],
                "network evaluations per frame": inf2["nfe_per_frame"],
            }
        _write_methods(out_dir / "methods.h5", env, cost)
        if (data_dir / "sequence_hazy.hdf5").is_file():
            self._infer_sequence(cfg, model, data_dir, out_dir, grid, scale, opt, seed)

    @staticmethod
    def _infer_sequence(cfg, model, data_dir, out_dir, grid, scale, opt, seed) -> None:
        s = cfg["sequence"]
        acq = io.read_zea(data_dir / "sequence_hazy.hdf5")
        y_iq = data.beamform(acq, grid, cfg["acquisition"]["f_number"])
        y = models.iq_to_channels(y_iq, scale)
        env, cost = {"no processing (hazy)": y_iq.abs().numpy()}, {}
        runs = {
            "joint diffusion, every frame from noise": (opt, False),
            "joint diffusion, SeqDiff warm start": (opt.with_sequence(s), True),
        }
        for name, (o, seq) in runs.items():
            x, _, info = dehaze_frames(model, y, o, seed=seed, sequence=seq)
            env[name] = models.channels_to_iq(x, scale).abs().numpy()
            cost[name] = {
                "seconds per frame": info["seconds_per_frame"],
                "network evaluations per frame": info["nfe_per_frame"],
            }
        svd = baselines.svd_clutter_filter(y_iq, cfg["baselines"]["svd_rank"])
        env[f"SVD clutter filter (rank {cfg['baselines']['svd_rank']})"] = svd.abs().numpy()
        _write_methods(out_dir / "sequence_methods.h5", env, cost)

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, cfg: Config, paths: TaskPaths, fig_dir: Path) -> EvalResult:
        meta = data.read_meta(paths.data)
        grid, dr = _grid(meta), cfg["metrics"]["dynamic_range"]
        env, cost = _read_methods(paths.predictions / "methods.h5")
        if (paths.baselines / "supervised.h5").is_file():
            senv, scost = _read_methods(paths.baselines / "supervised.h5")
            env, cost = {**env, **senv}, {**cost, **scost}
        tables: dict[str, Any] = {}
        figures: list[str] = []
        clean_path = paths.data / "test_clean.hdf5"
        if clean_path.is_file():
            clean = _clean_env(clean_path)
            title = f"Dehazing: {clean.shape[0]} held-out cyst + haze frames, haze weight {meta['haze_weight']:g}, B-mode {dr:g} dB"
            tables[title] = _table(env, cost, clean, meta["rois"], grid, dr)
            rows = {
                f"frame {i}": {
                    "clean": _db(clean[i], dr),
                    **{_short(k): _db(v[i], dr) for k, v in env.items()},
                }
                for i in range(min(2, clean.shape[0]))
            }
        else:  # the user's hazy files: no truth, no-reference numbers only
            tables["Dehazing (no clean truth): hazy vs dehazed"] = _noref_table(env, cost, dr)
            rows = {"frame 0": {_short(k): _db(v[0], dr) for k, v in env.items()}}
        figures.append(
            plots.save_bmode_grid(
                Path(fig_dir) / "bmode_examples.png", rows, grid.x, grid.z, dynamic_range=dr
            )
        )
        seq = paths.predictions / "sequence_methods.h5"
        if seq.is_file():
            senv, scost = _read_methods(seq)
            sclean = _clean_env(paths.data / "sequence_clean.hdf5")
            tables[f"Sequence: {sclean.shape[0]}-frame moving phantom (SeqDiff warm starts)"] = (
                _table(senv, scost, sclean, meta["sequence_rois"], grid, dr)
            )
        return EvalResult(
            tables=tables,
            lower_is_better=[
                m
                for m in LOWER_IS_BETTER
                if any(m in r for t in tables.values() for r in t.values())
            ],
            figures=[str(Path("figures") / Path(f).name) for f in figures],
            summary={
                "frames": int(next(iter(env.values())).shape[0]),
                "grid": f"{len(grid.z)} x {len(grid.x)} pixels of {1e3 * (grid.x[1] - grid.x[0]):.3f} mm",
                "haze_weight": meta["haze_weight"],
                "dynamic_range_dB": dr,
                "sampling": f"{cfg['sampling']['sampler']}, {cfg['sampling']['steps']} steps, tiles {cfg['sampling']['tile']} overlap {cfg['sampling']['overlap']}",
            },
        )

    # ---------------------------------------------------------------- apply
    def apply(
        self, cfg: Config, model: nn.Module, card: Card, inputs: Files, out_dir: Path, rt: Runtime
    ) -> None:
        norm = card.get("normalisation", {})
        if "scale" not in norm:
            raise Incompatible(
                "model card has no normalisation.scale; retrain the model with this diffsci"
            )
        opt = SamplingOptions.from_config(
            {**cfg, "haze": {"weight": card["serves"]["haze_weight"]}}
        )
        dr = cfg["metrics"]["dynamic_range"]
        for path in map(Path, inputs):
            acq = io.read_acquisition(path)
            _check_scan(acq.scan, card, str(path))
            if acq.raw_data is None:
                raise Incompatible(f"{path}: no raw_data (channel data) to beamform and dehaze")
            grid = data.grid_for(cfg, acq.scan.sound_speed / acq.scan.center_frequency)
            y_iq = data.beamform(acq, grid, cfg["acquisition"]["f_number"])
            x, _, _ = dehaze_frames(
                model, models.iq_to_channels(y_iq, norm["scale"]), opt, seed=int(cfg["seed"])
            )
            x_iq = models.channels_to_iq(x, norm["scale"])
            stem = path.name.rsplit(".", 1)[0]
            out = io.Acquisition(
                None,
                acq.scan,
                _products(x_iq, grid, dr),
                probe_name=acq.probe_name,
                us_machine=acq.us_machine,
                description=f"dehazed from {path.name} by diffsci",
            )
            io.write_zea(Path(out_dir) / f"{stem}_dehazed.hdf5", out)
            rows = {
                stem: {
                    "input (hazy)": _db(y_iq.abs()[0].numpy(), dr),
                    "dehazed": _db(x_iq.abs()[0].numpy(), dr),
                }
            }
            plots.save_bmode_grid(
                Path(out_dir) / f"{stem}_bmode.png", rows, grid.x, grid.z, dynamic_range=dr
            )


def _wiener(data_dir: Path, y: torch.Tensor, opt: SamplingOptions, scale: float) -> np.ndarray:
    """Envelopes of the Wiener split (spectra of the training patches), frames ``y``."""
    tissue, haze, _ = data.read_train(Path(data_dir) / "train.h5")
    px, ph = baselines.patch_spectra(tissue), baselines.patch_spectra(haze)
    yn = (y / (1 - opt.haze_weight)).numpy()
    x = np.stack([baselines.wiener_separation(f, px, ph, opt.gamma) for f in yn])
    return models.channels_to_iq(torch.from_numpy(x), scale).abs().numpy()


def _check_scan(scan: io.Scan, card: dict[str, Any], source: str) -> None:
    s = card["serves"]
    fix = "train a model on acquisitions of this probe and transmit settings"
    require("number of elements", scan.n_el, s["n_el"], source=source, fix=fix)
    for key in ("center_frequency", "sampling_frequency"):
        got, want = float(getattr(scan, key)), float(s[key])
        if not np.isclose(got, want, rtol=1e-3):
            raise Incompatible(
                f"{source}: {key} is {got:g} Hz but the model serves {want:g} Hz; {fix}"
            )


def _clean_env(path: Path) -> np.ndarray:
    v = io.read_zea(path).products["beamformed_data"].values
    return np.hypot(v[..., 0], v[..., 1]).astype(np.float64)


def _db(env: np.ndarray, dr: float) -> np.ndarray:
    e = np.asarray(env, np.float64)
    return np.clip(20 * np.log10(np.maximum(e, 1e-30) / e.max()), -dr, 0)


def _short(name: str) -> str:
    return name.split(" (")[0]


def _table(env, cost, clean, rois, grid: ImageGrid, dr: float) -> dict[str, dict[str, float]]:
    """``{method: {metric: mean over frames}}`` with the clean truth as a reference row."""
    hazy = env["no processing (hazy)"]
    rows: dict[str, dict[str, float]] = {}
    for name, e in {"clean (reference)": clean, **env}.items():
        per = [
            metrics.frame_metrics(
                e[i],
                clean[i],
                hazy[i],
                metrics.roi_masks(rois[i]["cysts"], rois[i]["points"], grid.x, grid.z),
                dr,
            )
            for i in range(clean.shape[0])
        ]
        row = {k: float(np.mean([p[k] for p in per])) for k in per[0]}
        row.update(cost.get(name, {}))
        rows[name] = row
    return rows


def _noref_table(env, cost, dr: float) -> dict[str, dict[str, float]]:
    hazy = env["no processing (hazy)"]
    rows = {}
    for name, e in env.items():
        ks = [metrics.ks_challenge(_db(hazy[i], dr), _db(e[i], dr)) for i in range(e.shape[0])]
        rows[name] = {
            "KS hazy vs dehazed (whole image)": float(np.mean([k["statistic"] for k in ks])),
            "mean B-mode (dB)": float(np.mean([_db(e[i], dr).mean() for i in range(e.shape[0])])),
            **cost.get(name, {}),
        }
    return rows
