"""The generic pipeline stages every domain runs: prepare, train, infer, evaluate, report.

Each stage reads a validated config, calls the domain's :class:`~diffsci.core.task.Task`, and
writes its outputs so that a failed run never leaves an output that looks complete: folders
are built under a temporary name and renamed into place, files are replaced atomically.
Every output carries a provenance record (config, seed, versions, git commit).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from .fileio import atomic_dir, atomic_path
from .provenance import provenance, write_json_atomic
from .task import Task, TaskPaths, get_task
from .training import TrainConfig, train

__all__ = ["load_config", "run_stage", "STAGES", "TRAINING_CONFIG_KEYS"]

STAGES = ("prepare", "train", "infer", "evaluate", "report")
#: Config keys whose values are saved with a training checkpoint and must match on resume (a
#: task may name its own in ``training_config_keys``).
TRAINING_CONFIG_KEYS = ("seed", "data", "model", "loss")


def load_config(path: str | Path, task: Task) -> dict[str, Any]:
    """Read a YAML config and validate it against the task's JSON schema (defaults filled)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: top level must be a mapping, got {type(cfg).__name__}")
    validate_config(cfg, task.schema_path, source=str(path))
    return cfg


def validate_config(cfg: dict[str, Any], schema_path: Path, *, source: str = "config") -> None:
    """Validate ``cfg`` in place (defaults filled) with the same schema Snakemake uses."""
    import jsonschema

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator_cls = jsonschema.validators.validator_for(schema)

    def set_defaults(validator, properties, instance, schema):
        for prop, sub in properties.items():
            if isinstance(instance, dict) and "default" in sub:
                instance.setdefault(prop, copy.deepcopy(sub["default"]))
        yield from validator_cls.VALIDATORS["properties"](validator, properties, instance, schema)

    filling = jsonschema.validators.extend(validator_cls, {"properties": set_defaults})
    errors = sorted(filling(schema).iter_errors(cfg), key=lambda e: list(e.path))
    if errors:
        lines = [f"  {'/'.join(map(str, e.path)) or '<top>'}: {e.message}" for e in errors[:10]]
        raise ValueError(f"{source} fails the schema {schema_path.name}:\n" + "\n".join(lines))


def _device(cfg: Mapping[str, Any]) -> torch.device:
    want = str(cfg.get("device", "auto"))
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"config device={want!r} but no CUDA device is available on this machine")
    return torch.device(want)


def run_prepare(task: Task, cfg: dict[str, Any], paths: TaskPaths, **_: Any) -> None:
    with atomic_dir(paths.data) as tmp:
        task.prepare(cfg, tmp)
        write_json_atomic(tmp / "provenance.json", provenance(config=cfg, seed=cfg.get("seed")))


def run_train(task: Task, cfg: dict[str, Any], paths: TaskPaths, *, progress: bool = True,
              ckpt_dir: str | Path | None = None, **_: Any) -> None:  # fmt: skip
    torch.manual_seed(int(cfg.get("seed", 0)))
    model = task.build_model(cfg)
    data = task.train_dataset(cfg, paths.data)
    tcfg = TrainConfig(**{**cfg["train"], "seed": int(cfg.get("seed", 0)), "progress": progress,
                          "ckpt_dir": str(ckpt_dir or paths.checkpoints)})  # fmt: skip
    keys = getattr(task, "training_config_keys", TRAINING_CONFIG_KEYS)
    result = train(model, task.loss, data, tcfg, device=_device(cfg),
                   settings={k: cfg[k] for k in keys if k in cfg})  # fmt: skip
    net = result.ema if result.ema is not None else result.model
    payload = {"state_dict": {k: v.cpu() for k, v in net.state_dict().items()},
               "step": result.step, "provenance": provenance(config=cfg, seed=cfg.get("seed"))}  # fmt: skip
    with atomic_path(paths.model) as tmp:
        torch.save(payload, tmp)


def load_model(task: Task, cfg: Mapping[str, Any], path: Path) -> torch.nn.Module:
    """Build the task's model and load trained weights from ``model.pt``."""
    model = task.build_model(cfg)
    if not path.is_file():
        raise FileNotFoundError(f"trained model not found: {path} (run the train stage first)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(payload["state_dict"])
    except Exception as e:  # noqa: BLE001 - any failure here means the file is unusable
        raise ValueError(f"{path}: cannot load model weights ({type(e).__name__}: {e})") from e
    return model.eval()


def run_infer(task: Task, cfg: dict[str, Any], paths: TaskPaths, *, progress: bool = True,
              **_: Any) -> None:  # fmt: skip
    device = _device(cfg)
    model = load_model(task, cfg, paths.model).to(device)
    with atomic_dir(paths.predictions) as tmp:
        task.infer(cfg, model, paths.data, tmp, device=device, progress=progress)
        write_json_atomic(tmp / "provenance.json", provenance(config=cfg, seed=cfg.get("seed")))


def run_evaluate(task: Task, cfg: dict[str, Any], paths: TaskPaths, **_: Any) -> None:
    with atomic_dir(paths.figures) as tmp:
        result = task.evaluate(cfg, paths.data, paths.predictions, tmp)
    result["provenance"] = provenance(config=cfg, seed=cfg.get("seed"))
    result["domain"] = task.name
    write_json_atomic(paths.metrics, result)


def run_report(task: Task, cfg: dict[str, Any], paths: TaskPaths, **_: Any) -> None:
    from .report import write_report

    write_report(paths.report, [paths.metrics], title=f"diffsci report: {task.name}")


_RUNNERS = {"prepare": run_prepare, "train": run_train, "infer": run_infer,
            "evaluate": run_evaluate, "report": run_report}  # fmt: skip


def run_stage(stage: str, *, domain: str, config: str | Path, workdir: str | Path,
              progress: bool = True, **kwargs: Any) -> None:  # fmt: skip
    """Run one stage of ``domain`` with the config file ``config`` under ``workdir``."""
    if stage not in _RUNNERS:
        raise ValueError(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")
    task = get_task(domain)
    cfg = load_config(config, task)
    _RUNNERS[stage](task, cfg, TaskPaths(workdir), progress=progress, **kwargs)
