"""The ``Task`` protocol a domain implements, and the registry the CLI and workflows use.

A task plugs a field into the generic chain ``prepare -> train -> infer -> evaluate ->
report`` (:mod:`diffsci.core.stages`). It owns what is specific to its field (data files,
network, conditioning, inference, metrics, figures); the core owns training, checkpoints,
provenance and reports. Domains register through the ``diffsci.tasks`` entry-point group
(see ``pyproject.toml``), so third-party packages can add their own.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = [
    "Task",
    "TaskPaths",
    "get_task",
    "list_tasks",
    "schema_path",
    "config_path",
    "ENTRY_POINT_GROUP",
]

ENTRY_POINT_GROUP = "diffsci.tasks"


class TaskPaths:
    """Where a domain's stages read and write, under one work directory.

    ``data/`` (prepare), ``model.pt`` (train), ``checkpoints/`` (train's resumable state; not
    a Snakemake output, so a failed job never deletes it), ``predictions/`` (infer),
    ``metrics.json`` and ``figures/`` (evaluate), ``report.html`` (report).
    """

    def __init__(self, workdir: str | Path) -> None:
        self.root = Path(workdir)
        self.data = self.root / "data"
        self.model = self.root / "model.pt"
        self.checkpoints = self.root / "checkpoints"
        self.predictions = self.root / "predictions"
        self.metrics = self.root / "metrics.json"
        self.figures = self.root / "figures"
        self.report = self.root / "report.html"


@runtime_checkable
class Task(Protocol):
    """What a domain provides. ``cfg`` is the validated config mapping of the domain.

    Optional attribute ``training_config_keys``: the config's top-level keys that shape the
    trained weights besides ``train`` (default :data:`~diffsci.core.stages.TRAINING_CONFIG_KEYS`);
    the train stage refuses to resume a checkpoint made under other values of them.
    """

    name: str
    #: Path of the JSON schema (YAML) the config is validated against.
    schema_path: Path

    def prepare(self, cfg: Mapping[str, Any], data_dir: Path) -> None:
        """Write the training/evaluation data (field-native formats) into ``data_dir``."""

    def build_model(self, cfg: Mapping[str, Any]) -> nn.Module:
        """The denoiser ``D(x, sigma, cond)`` (untrained)."""

    def train_dataset(self, cfg: Mapping[str, Any], data_dir: Path) -> torch.utils.data.Dataset:
        """Training samples; items are what :meth:`loss` receives (collated)."""

    def loss(self, model: nn.Module, batch: Any, rng) -> torch.Tensor:
        """Training loss for one (local) batch; all randomness through ``rng``."""

    def infer(self, cfg: Mapping[str, Any], model: nn.Module, data_dir: Path, out_dir: Path,
              *, device: torch.device, progress: bool) -> None:  # fmt: skip
        """Run inference on the evaluation data; write predictions (native formats)."""

    def evaluate(self, cfg: Mapping[str, Any], data_dir: Path, pred_dir: Path,
                 fig_dir: Path) -> dict[str, Any]:  # fmt: skip
        """Metrics of the model and the baselines; may write figures into ``fig_dir``.

        Returns ``{"tables": {name: {method: {metric: value}}}, "summary": {...}}``.
        """


def _entry_points() -> dict[str, md.EntryPoint]:
    return {ep.name: ep for ep in md.entry_points(group=ENTRY_POINT_GROUP)}


def list_tasks() -> list[str]:
    """Names of the registered domains."""
    return sorted(_entry_points())


def get_task(name: str) -> Task:
    """Instantiate the registered task ``name``."""
    eps = _entry_points()
    if name not in eps:
        raise KeyError(f"unknown domain {name!r}; registered: {', '.join(sorted(eps)) or 'none'}")
    obj = eps[name].load()
    task = obj() if isinstance(obj, type) else obj
    if not isinstance(task, Task):
        raise TypeError(f"entry point {name!r} does not implement the Task protocol")
    return task


def schema_path(name: str) -> Path:
    """The config schema of domain ``name`` without importing its (heavy) task module.

    Convention: ``config.schema.yaml`` beside the module the entry point names.
    """
    eps = _entry_points()
    if name not in eps:
        raise KeyError(f"unknown domain {name!r}; registered: {', '.join(sorted(eps)) or 'none'}")
    spec = importlib.util.find_spec(eps[name].module)
    if spec is None or spec.origin is None:
        raise KeyError(f"domain {name!r}: module {eps[name].module} not found")
    path = Path(spec.origin).with_name("config.schema.yaml")
    if not path.is_file():
        raise FileNotFoundError(f"domain {name!r}: schema {path} missing")
    return path


def config_path(domain: str, overrides: Mapping[str, Any] | None = None) -> str:
    """Config file of ``domain`` for the workflows: ``<domain>_config`` in the Snakemake config
    (``--config pde_config=FILE``) overrides ``workflows/config/<domain>.yaml``."""
    return str((overrides or {}).get(f"{domain}_config", f"workflows/config/{domain}.yaml"))
